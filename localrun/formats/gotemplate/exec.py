"""Go text/template, executed as Go executes it: the parsed set, its budget, the executor.

Data is plain Python standing for Go values: None is nil (what a missing map key gives), bool, int,
float (float64), str, bytes, list or tuple (a slice), dict (a map, ranged over in sorted key order
as Go does), and dataclass instances (structs). A struct's fields, and nothing else, are reachable
by name; never methods, never dunders. An object with a `go_string()` method prints through it, as a
Go value with a String() method does. A dataclass with `go_pointer = True` stands for a pointer to a
struct: print and printf show it as `&{...}`, an action as `{...}`.

The template is hostile input. Every action, function call and range iteration spends one of
MAX_STEPS. Template calls nest at most MAX_CALLS deep and all control nesting at most MAX_NESTING.
Every value a function builds, the output, and printf widths and precisions stay under
sandbox.limit() characters. A breach, and any failure, is a TemplateError naming the line. The time
bound is the caller's (sandbox.call()).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any

from localrun.errors import TemplateError
from localrun.formats import sandbox
from localrun.formats.gotemplate.fmt import (
    Fail,
    format_value,
    go_type,
    is_struct,
    sorted_keys,
    struct_fields,
)
from localrun.formats.gotemplate.funcs import ARITY, builtin, func_arity, truth
from localrun.formats.gotemplate.lex import looks_like_go as looks_like_go  # re-exported
from localrun.formats.gotemplate.lex import one_line
from localrun.formats.gotemplate.parse import (
    BUILTINS,
    Action,
    Branch,
    Break,
    Chain,
    Command,
    Continue,
    Dot,
    Field,
    Identifier,
    ListNode,
    Literal,
    Nil,
    Node,
    Pipe,
    TemplateCall,
    Text,
    Variable,
    parse_trees,
)

MAX_STEPS = 1_000_000
MAX_CALLS = 100  # Go allows 100000 nested template calls; no chat template needs more than a few
MAX_NESTING = 120  # if/range/with levels and template calls, while executing


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


_MISSING: Any = object()  # no final value piped into a command


class Budget:
    """What the executions that build one prompt may spend, together."""

    __slots__ = ("limit", "size", "steps")

    def __init__(self, limit: int | None = None) -> None:
        self.steps = MAX_STEPS
        self.size = 0  # characters written
        self.limit = sandbox.limit() if limit is None else limit


class GoTemplate:
    """A parsed template set: the root tree (named "") and every {{define}}d one."""

    __slots__ = ("source", "trees")

    def __init__(self, trees: Mapping[str, ListNode], source: str = "") -> None:
        self.trees = dict(trees)
        self.source = source

    @property
    def root(self) -> ListNode:
        return self.trees[""]

    def execute(
        self,
        data: Any,
        funcs: Mapping[str, Callable[..., Any]] | None = None,
        *,
        budget: Budget | None = None,
    ) -> str:
        """Render with `data` as dot and `$`; `funcs` are the functions beyond Go's builtins.

        Executions that build one prompt share a `budget` of steps and output size.
        """
        run = _Exec(self.trees, funcs or {}, budget or Budget())
        try:
            run.vars = [["$", data]]
            run.walk(data, self.root)
        except Fail as exc:
            raise TemplateError(
                f"the Go template failed: {one_line(str(exc))} (line {run.line})",
                hint="fix the TEMPLATE in the Modelfile (Go text/template)",
            ) from None
        except RecursionError:
            raise TemplateError("the Go template nests too deeply") from None
        except MemoryError:
            raise TemplateError("the Go template ran out of memory") from None
        return "".join(run.out)

    def fields(self) -> frozenset[str]:
        """Every field name the template reads (.A.B, $x.A, (...).A), in any of its trees."""
        found: set[str] = set()
        for tree in self.trees.values():
            for node in walk_nodes(tree):
                if isinstance(node, Field):
                    found.update(node.idents)
                elif isinstance(node, Variable):
                    found.update(node.idents[1:])
                elif isinstance(node, Chain):
                    found.update(node.fields)
        return frozenset(found)

    def references(self, name: str) -> bool:
        return name in self.fields()


def walk_nodes(node: Node) -> Iterable[Node]:
    """Every node under `node` (itself included), depth first."""
    stack: list[Node] = [node]
    while stack:
        item = stack.pop()
        yield item
        if isinstance(item, ListNode):
            stack.extend(reversed(item.nodes))
        elif isinstance(item, Action):
            stack.append(item.pipe)
        elif isinstance(item, Branch):
            stack.extend(n for n in (item.orelse, item.body, item.pipe) if n is not None)
        elif isinstance(item, TemplateCall) and item.pipe is not None:
            stack.append(item.pipe)
        elif isinstance(item, Pipe):
            stack.extend(reversed(item.cmds))
        elif isinstance(item, Command):
            stack.extend(reversed(item.args))
        elif isinstance(item, Chain):
            stack.append(item.node)


@lru_cache(maxsize=64)
def parse(source: str, funcs: frozenset[str] = frozenset()) -> GoTemplate:
    """Parse a template; `funcs` names the functions beyond the builtins it may call."""
    return GoTemplate(parse_trees(source, funcs), source)


# -- execution --------------------------------------------------------------------------------


class _Exec:
    def __init__(
        self, trees: Mapping[str, ListNode], funcs: Mapping[str, Callable[..., Any]], budget: Budget
    ) -> None:
        self.trees = trees
        self.funcs = funcs
        self.budget = budget
        self.limit = budget.limit
        self.out: list[str] = []
        self.calls = 0
        self.nesting = 0
        self.line = 1
        self.vars: list[list[Any]] = []

    def charge(self, steps: int) -> None:
        self.budget.steps -= steps
        if self.budget.steps < 0:
            raise Fail(f"the template ran more than {MAX_STEPS} steps (actions and loop turns)")

    def write(self, text: str) -> None:
        self.budget.size += len(text)
        if self.budget.size > self.limit:
            raise Fail(f"the output grew past {self.limit} characters")
        self.out.append(text)

    def walk(self, dot: Any, tree: ListNode) -> None:
        for node in tree.nodes:
            self.charge(1)
            if isinstance(node, Text):
                self.write(node.text)
            elif isinstance(node, Action):
                self.line = node.pipe.line
                value = self.pipeline(dot, node.pipe)
                if not node.pipe.decl:
                    # an action prints what a pointer points to: {...}, where printf gives &{...}
                    self.write("<no value>" if value is None else format_value(value, False))
            elif isinstance(node, Branch):
                self.branch(dot, node)
            elif isinstance(node, TemplateCall):
                self.template(dot, node)
            elif isinstance(node, Break):
                raise _Break
            elif isinstance(node, Continue):
                raise _Continue

    def nest(self, by: int) -> None:
        self.nesting += by
        if self.nesting > MAX_NESTING:
            raise Fail(f"the template nests more than {MAX_NESTING} levels deep")

    def branch(self, dot: Any, node: Branch) -> None:
        self.line = node.pipe.line
        mark = len(self.vars)
        self.nest(1)
        try:
            if node.kind == "range":
                self.range(dot, node)
                return
            value = self.pipeline(dot, node.pipe)
            if truth(value):
                self.walk(value if node.kind == "with" else dot, node.body)
            elif node.orelse is not None:
                self.walk(dot, node.orelse)
        finally:
            del self.vars[mark:]
            self.nesting -= 1

    def range(self, dot: Any, node: Branch) -> None:
        pipe = node.pipe
        value = self.pipeline(dot, pipe)
        pairs: Iterable[tuple[Any, Any]]
        if isinstance(value, list | tuple | bytes):
            self.charge(len(value))
            pairs = enumerate(value)
        elif isinstance(value, dict):
            self.charge(len(value))
            pairs = ((key, value[key]) for key in sorted_keys(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            if len(pipe.decl) > 1:
                raise Fail(f"can't use {value} to iterate over more than one variable")
            self.charge(max(value, 0))
            pairs = ((i, i) for i in range(value))
        elif value is None:
            pairs = ()
        else:
            raise Fail(f"range can't iterate over {format_value(value)}")
        mark = len(self.vars)
        ran = False
        for key, elem in pairs:
            ran = True
            if pipe.decl:
                if pipe.is_assign:
                    self.set_var(pipe.decl[0], key if len(pipe.decl) > 1 else elem)
                    if len(pipe.decl) > 1:
                        self.set_var(pipe.decl[1], elem)
                else:
                    self.vars[mark - 1][1] = elem
                    if len(pipe.decl) > 1:
                        self.vars[mark - 2][1] = key
            try:
                self.walk(elem, node.body)
            except _Continue:
                pass
            except _Break:
                break
            finally:
                del self.vars[mark:]
        if not ran and node.orelse is not None:
            self.walk(dot, node.orelse)

    def template(self, dot: Any, node: TemplateCall) -> None:
        self.line = node.line
        tree = self.trees.get(node.name)
        if tree is None:
            raise Fail(f"no such template {node.name!r}")
        value = self.pipeline(dot, node.pipe) if node.pipe is not None else None
        self.calls += 1
        if self.calls > MAX_CALLS:
            raise Fail(f"exceeded maximum template depth ({MAX_CALLS})")
        saved, self.vars = self.vars, [["$", value]]
        self.nest(1)
        try:
            self.walk(value, tree)
        finally:
            self.vars = saved
            self.calls -= 1
            self.nesting -= 1

    def lookup(self, name: str) -> Any:
        for pair in reversed(self.vars):
            if pair[0] == name:
                return pair[1]
        raise Fail(f"undefined variable: {name}")

    def set_var(self, name: str, value: Any) -> None:
        for pair in reversed(self.vars):
            if pair[0] == name:
                pair[1] = value
                return
        raise Fail(f"undefined variable: {name}")

    def pipeline(self, dot: Any, pipe: Pipe) -> Any:
        value = _MISSING
        for cmd in pipe.cmds:
            value = self.command(dot, cmd, value)
        for name in pipe.decl:
            if pipe.is_assign:
                self.set_var(name, value)
            else:
                self.vars.append([name, value])
        return value

    def command(self, dot: Any, cmd: Command, final: Any) -> Any:
        first, args = cmd.args[0], cmd.args
        if isinstance(first, Field):
            return self.fields(dot, first.idents, args, final)
        if isinstance(first, Chain):
            if isinstance(first.node, Nil):
                raise Fail("indirection through explicit nil")
            return self.fields(self.arg(dot, first.node), first.fields, args, final)
        if isinstance(first, Identifier):
            return self.function(dot, first.name, args, final)
        if isinstance(first, Variable):
            value = self.lookup(first.idents[0])
            if len(first.idents) == 1:
                self.no_args(first, args, final)
                return value
            return self.fields(value, first.idents[1:], args, final)
        self.no_args(first, args, final)
        if isinstance(first, Pipe):
            return self.pipeline(dot, first)
        if isinstance(first, Literal):
            return first.value
        if isinstance(first, Dot):
            return dot
        raise Fail("nil is not a command")

    def no_args(self, first: Node, args: tuple[Node, ...], final: Any) -> None:
        if len(args) > 1 or final is not _MISSING:
            raise Fail(f"can't give argument to non-function {_describe(first)}")

    def fields(
        self, receiver: Any, idents: tuple[str, ...], args: tuple[Node, ...], final: Any
    ) -> Any:
        for name in idents:
            receiver = self.field(receiver, name)
        if len(args) > 1 or final is not _MISSING:
            raise Fail(f"{idents[-1]} is not a method but has arguments")
        return receiver

    def field(self, receiver: Any, name: str) -> Any:
        if receiver is None:
            raise Fail(f"nil pointer evaluating interface {{}}.{name}")
        if isinstance(receiver, dict):
            return receiver.get(name)
        if is_struct(receiver) and name in struct_fields(type(receiver)):
            return getattr(receiver, name)
        raise Fail(f"can't evaluate field {name} in type {go_type(receiver)}")

    def arg(self, dot: Any, node: Node) -> Any:
        if isinstance(node, Dot):
            return dot
        if isinstance(node, Nil):
            return None
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, Field | Variable | Identifier | Chain):
            return self.command(dot, Command((node,)), _MISSING)
        if isinstance(node, Pipe):
            return self.pipeline(dot, node)
        raise Fail(f"can't handle {_describe(node)} as an argument")

    def function(self, dot: Any, name: str, args: tuple[Node, ...], final: Any) -> Any:
        self.charge(1)
        given = len(args) - 1 + (final is not _MISSING)
        fn = None if name in BUILTINS else self.funcs.get(name)
        if name in BUILTINS:
            low, high = ARITY.get(name, (1, None))
        elif fn is None:
            raise Fail(f"{name!r} is not a defined function")
        else:
            low, high = func_arity(fn)
        if given < low or (high is not None and given > high):
            want = f"at least {low}" if high is None else str(high)
            raise Fail(f"wrong number of args for {name}: want {want} got {given}")
        if name in ("and", "or"):
            value: Any = None
            for node in args[1:]:
                value = self.arg(dot, node)
                if truth(value) == (name == "or"):
                    return value
            return final if final is not _MISSING else value
        values = [self.arg(dot, node) for node in args[1:]]
        if final is not _MISSING:
            values.append(final)
        if fn is None:
            result = builtin(name, values, self.limit)
        else:
            try:
                result = fn(*values)
            except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
                raise Fail(f"error calling {name}: {exc}") from None
        if isinstance(result, str) and len(result) > self.limit:
            raise Fail(f"{name} built a value over {self.limit} characters")
        return result


def _describe(node: Node) -> str:
    if isinstance(node, Literal):
        return repr(node.value)
    if isinstance(node, Variable):
        return ".".join(node.idents)
    return type(node).__name__.lower()
