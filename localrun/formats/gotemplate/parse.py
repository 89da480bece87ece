"""Go text/template source -> a tree, as Go's text/template/parse reads it.

    template := (text | '{{' action '}}' | '{{/*' comment '*/}}')*
    action   := 'if' pipeline | 'else' ['if' pipeline | 'with' pipeline] | 'end'
              | 'range' pipeline | 'with' pipeline | 'break' | 'continue' | pipeline
              | 'define' string | 'block' string pipeline | 'template' string [pipeline]
    pipeline := [$var [',' $var] (':=' | '=')] command ('|' command)*
    command  := operand (space operand)*
    operand  := term ('.' Field)*
    term     := function | '.' | '.Field' | '$var' | 'nil' | true | false | number | string
              | '(' pipeline ')'

Go checks at parse time that every function named exists, every variable is declared, `break` and
`continue` sit inside a `range`, and `else` and `end` match; so do we. Nesting is capped (MAX_DEPTH)
below Python's recursion limit. Every error is a TemplateError naming the line.
"""

from __future__ import annotations

from dataclasses import dataclass

from localrun.errors import TemplateError
from localrun.formats.gotemplate.lex import SPACE, Token, invalid, lex, number, unquote

MAX_DEPTH = 100  # nested if/range/with/define and parentheses, while parsing
BUILTINS = frozenset(
    (
        "and", "or", "not", "len", "index", "slice", "print", "printf", "println", "html",
        "js", "urlquery", "call", "eq", "ne", "lt", "le", "gt", "ge",
    )
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Field:
    idents: tuple[str, ...]  # .A.B -> ("A", "B")


@dataclass(frozen=True, slots=True)
class Variable:
    idents: tuple[str, ...]  # $x.A -> ("$x", "A"); $ alone -> ("$",)


@dataclass(frozen=True, slots=True)
class Dot:
    pass


@dataclass(frozen=True, slots=True)
class Nil:
    pass


@dataclass(frozen=True, slots=True)
class Literal:
    value: str | int | float | bool  # a string, number or bool constant


@dataclass(frozen=True, slots=True)
class Identifier:
    name: str  # a function


@dataclass(frozen=True, slots=True)
class Chain:
    node: Node  # (pipeline).A.B
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Command:
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Pipe:
    decl: tuple[str, ...]
    is_assign: bool
    cmds: tuple[Command, ...]
    line: int


@dataclass(frozen=True, slots=True)
class Action:
    pipe: Pipe


@dataclass(frozen=True, slots=True)
class Branch:
    kind: str  # if, with, range
    pipe: Pipe
    body: ListNode
    orelse: ListNode | None


@dataclass(frozen=True, slots=True)
class TemplateCall:
    name: str
    pipe: Pipe | None
    line: int


@dataclass(frozen=True, slots=True)
class Break:
    line: int


@dataclass(frozen=True, slots=True)
class Continue:
    line: int


@dataclass(frozen=True, slots=True)
class ListNode:
    nodes: tuple[Node, ...]


Node = (
    Text
    | Field
    | Variable
    | Dot
    | Nil
    | Literal
    | Identifier
    | Chain
    | Command
    | Pipe
    | Action
    | Branch
    | TemplateCall
    | Break
    | Continue
    | ListNode
)


# -- parser -----------------------------------------------------------------------------------


class Parser:
    """Go's parse.Tree over the token list: the root tree and the defined templates."""

    def __init__(self, src: str, funcs: frozenset[str]) -> None:
        self.tokens = lex(src)
        self.i = 0
        self.funcs = funcs | BUILTINS
        self.vars = ["$"]
        self.range_depth = 0
        self.depth = 0
        self.trees: dict[str, ListNode] = {}

    # tokens
    def next(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def peek(self) -> Token:
        return self.tokens[self.i]

    def next_non_space(self) -> Token:
        tok = self.next()
        while tok.kind == "space":
            tok = self.next()
        return tok

    def peek_non_space(self) -> Token:
        tok = self.next_non_space()
        self.i -= 1
        return tok

    def expect(self, kind: str, context: str) -> Token:
        tok = self.next_non_space()
        if tok.kind != kind:
            raise self.unexpected(tok, context)
        return tok

    def unexpected(self, tok: Token, context: str) -> TemplateError:
        shown = {"}}": "}}", "eof": "EOF"}.get(tok.kind, tok.value)
        return invalid(f"unexpected {shown!r} in {context}", tok.line)

    def nest(self, line: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise invalid(f"nested more than {MAX_DEPTH} levels deep", line)

    # templates
    def parse(self) -> dict[str, ListNode]:
        nodes: list[Node] = []
        while self.peek().kind != "eof":
            if self.peek().kind == "{{":
                start = self.i
                self.next()
                if self.next_non_space().kind == "define":
                    self.definition()
                    continue
                self.i = start
            node, end = self.text_or_action()
            if end:
                raise invalid(f"unexpected {{{{{end}}}}}", self.tokens[self.i - 1].line)
            nodes.append(node)
        self.add("", ListNode(tuple(nodes)), 1)
        return self.trees

    def add(self, name: str, root: ListNode, line: int) -> None:
        old = self.trees.get(name)
        if old is None or not _nonempty(old):
            self.trees[name] = root
        elif _nonempty(root):
            raise invalid(f"multiple definition of template {name!r}", line)

    def template_name(self, context: str) -> tuple[str, int]:
        tok = self.next_non_space()
        if tok.kind not in ("string", "raw"):
            raise self.unexpected(tok, context)
        return unquote(tok.value, tok.line), tok.line

    def definition(self) -> None:
        name, line = self.template_name("define clause")
        self.expect("}}", "define clause")
        self.add(name, self.body(line, "define clause"), line)

    def body(self, line: int, context: str) -> ListNode:
        """A define or block body: a tree of its own, with only `$` declared."""
        saved = self.vars, self.range_depth
        self.vars, self.range_depth = ["$"], 0
        self.nest(line)
        nodes, end = self.item_list()
        self.depth -= 1
        if end != "end":
            raise invalid(f"unexpected {{{{{end}}}}} in {context}", line)
        self.vars, self.range_depth = saved
        return nodes

    def item_list(self) -> tuple[ListNode, str]:
        """Nodes up to an {{end}} or {{else}}; returns which ended them."""
        nodes: list[Node] = []
        while self.peek_non_space().kind != "eof":
            node, end = self.text_or_action()
            if end:
                return ListNode(tuple(nodes)), end
            nodes.append(node)
        raise invalid("unexpected EOF", self.peek().line)

    def text_or_action(self) -> tuple[Node, str]:
        tok = self.next_non_space()
        if tok.kind == "text":
            return Text(tok.value), ""
        if tok.kind == "{{":
            return self.action()
        raise self.unexpected(tok, "input")

    # actions
    def action(self) -> tuple[Node, str]:
        tok = self.next_non_space()
        kind = tok.kind
        if kind in ("if", "range", "with"):
            return self.control(kind, tok.line), ""
        if kind in ("break", "continue"):
            self.expect("}}", f"{{{{{kind}}}}}")
            if not self.range_depth:
                raise invalid(f"{{{{{kind}}}}} outside {{{{range}}}}", tok.line)
            return (Break(tok.line) if kind == "break" else Continue(tok.line)), ""
        if kind == "else":
            if self.peek_non_space().kind not in ("if", "with"):
                self.expect("}}", "else")
            return Text(""), "else"
        if kind == "end":
            self.expect("}}", "end")
            return Text(""), "end"
        if kind == "template":
            name, line = self.template_name("template clause")
            pipe = None
            if self.next_non_space().kind != "}}":
                self.i -= 1
                pipe = self.pipeline("template clause", "}}")
            return TemplateCall(name, pipe, line), ""
        if kind == "block":
            name, line = self.template_name("block clause")
            pipe = self.pipeline("block clause", "}}")
            self.add(name, self.body(line, "block clause"), line)
            return TemplateCall(name, pipe, line), ""
        self.i -= 1
        return Action(self.pipeline("command", "}}")), ""

    def control(self, kind: str, line: int) -> Branch:
        mark = len(self.vars)
        self.nest(line)
        pipe = self.pipeline(kind, "}}")
        self.range_depth += kind == "range"
        body, end = self.item_list()
        self.range_depth -= kind == "range"
        orelse = None
        if end == "else":
            follow = self.peek_non_space()
            if kind in ("if", "with") and follow.kind == kind:
                self.next_non_space()
                orelse = ListNode((self.control(kind, follow.line),))
            else:
                orelse, end = self.item_list()
                if end != "end":
                    raise invalid(f"expected end; found {{{{{end}}}}}", self.peek().line)
        del self.vars[mark:]
        self.depth -= 1
        return Branch(kind, pipe, body, orelse)

    def pipeline(self, context: str, end: str) -> Pipe:
        line = self.peek_non_space().line
        decl: list[str] = []
        is_assign = False
        while self.peek_non_space().kind == "var":
            start = self.i
            var = self.next_non_space()
            after = self.peek_non_space()
            if after.kind in (":=", "="):
                self.next_non_space()
                is_assign = after.kind == "="
                decl.append(var.value)
                self.vars.append(var.value)
                break
            if after.kind == ",":
                self.next_non_space()
                decl.append(var.value)
                self.vars.append(var.value)
                if context == "range" and len(decl) < 2:
                    if self.peek_non_space().kind in ("var", "}}", ")"):
                        continue
                    raise invalid("range can only initialize variables", var.line)
                raise invalid(f"too many declarations in {context}", var.line)
            self.i = start
            break
        cmds: list[Command] = []
        while True:
            tok = self.next_non_space()
            if tok.kind == end:
                break
            if tok.kind in (
                "bool",
                "char",
                "dot",
                "field",
                "ident",
                "number",
                "nil",
                "raw",
                "string",
                "var",
                "(",
            ):
                self.i -= 1
                cmds.append(self.command())
            else:
                raise self.unexpected(tok, context)
        if not cmds:
            raise invalid(f"missing value for {context}", line)
        for stage, cmd in enumerate(cmds[1:], 2):
            if isinstance(cmd.args[0], (Literal, Dot, Nil)):
                raise invalid(f"non executable command in pipeline stage {stage}", line)
        return Pipe(tuple(decl), is_assign, tuple(cmds), line)

    def command(self) -> Command:
        args: list[Node] = []
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                args.append(operand)
            tok = self.next()
            if tok.kind == "space":
                continue
            if tok.kind in ("}}", ")"):
                self.i -= 1
            elif tok.kind != "|":
                raise self.unexpected(tok, "operand")
            break
        if not args:
            raise invalid("empty command", self.peek().line)
        return Command(tuple(args))

    def operand(self) -> Node | None:
        node = self.term()
        if node is None or self.peek().kind != "field":
            return node
        fields: list[str] = []
        while self.peek().kind == "field":
            fields.append(self.next().value[1:])
        if isinstance(node, Field):
            return Field(node.idents + tuple(fields))
        if isinstance(node, Variable):
            return Variable(node.idents + tuple(fields))
        if isinstance(node, (Literal, Nil, Dot)):
            raise invalid("unexpected . after term", self.peek().line)
        return Chain(node, tuple(fields))

    def term(self) -> Node | None:
        tok = self.next_non_space()
        kind = tok.kind
        if kind == "ident":
            if tok.value not in self.funcs:
                raise invalid(f"function {tok.value!r} not defined", tok.line)
            return Identifier(tok.value)
        if kind == "dot":
            return Dot()
        if kind == "nil":
            return Nil()
        if kind == "var":
            name = tok.value
            if name not in self.vars:
                raise invalid(f"undefined variable {name!r}", tok.line)
            return Variable((name,))
        if kind == "field":
            return Field((tok.value[1:],))
        if kind == "bool":
            return Literal(tok.value == "true")
        if kind in ("number", "char"):
            return Literal(number(tok.value, kind, tok.line))
        if kind in ("string", "raw"):
            return Literal(unquote(tok.value, tok.line))
        if kind == "(":
            self.nest(tok.line)
            pipe = self.pipeline("parenthesized pipeline", ")")
            self.depth -= 1
            return pipe
        self.i -= 1
        return None


def _nonempty(root: ListNode) -> bool:
    """Go's IsEmptyTree, negated: anything but white space text."""
    return any(not (isinstance(n, Text) and not n.text.strip(SPACE)) for n in root.nodes)


def parse_trees(src: str, funcs: frozenset[str]) -> dict[str, ListNode]:
    """The root tree (named "") and each defined template, or a TemplateError."""
    try:
        return Parser(src, funcs).parse()
    except RecursionError:
        raise invalid("nested too deeply", 1) from None
