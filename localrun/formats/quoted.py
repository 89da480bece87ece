"""A Lark grammar's language as the inside of a JSON string, for a custom tool's input.

A custom tool's grammar (the Responses API's
`format: {"type": "grammar", "syntax": "lark" | "regex"}`) becomes this where the model writes a
call's input as a JSON string value (`{"input": "..."}`). JSON escaping maps each character to a
fixed text (`"` to `\\"`, a newline to `\\n`, ...), so the quoted language is the grammar with each
terminal quoted. A literal is escaped as `json.dumps` escapes it; a regular expression is rewritten
so each character it matches is matched as its escape. A model writes JSON's canonical spelling, as
json.dumps writes it: the short escapes, and `\\u00XX` for other control characters. A JSON reader
turns that back into the text the grammar describes.

Regular expressions are read with Python's parser (`re._parser`): the syntax shared by Python's and
Rust's (llguidance's) engines. One it cannot read, or a feature a Lark terminal cannot hold
(anchors, back-references, look-arounds, case-insensitive flags), is refused with a BadRequestError
naming it.
"""

from __future__ import annotations

import json
import re
from re import _constants as _c  # type: ignore[attr-defined]
from re import _parser as _sre  # type: ignore[attr-defined]
from typing import Any

from localrun.errors import BadRequestError

# A Lark grammar's pieces: comments, string literals ("..."i) and regular expressions
# (/.../flags); everything else is names and punctuation, kept as written.
_PIECES = re.compile(
    r'(?P<comment>//[^\n]*|#[^\n]*)|(?P<string>"(?:[^"\\\n]|\\.)*"i?)'
    r"|(?P<regex>/(?:[^/\\\n]|\\.)+/[imslux]*)|(?P<import>%import\s+common\.(?P<name>\w+)[^\n]*)"
)
# The characters JSON escapes, and the code points they are.
_UNSAFE = [chr(c) for c in range(0x20)] + ['"', "\\"]
_SAFE_CLASS = r'[^\x00-\x1f"\\]'
# Lark's common terminals (lark's grammars/common.lark), which `%import common.NAME` names.
COMMON = {
    "DIGIT": '"0".."9"',
    "HEXDIGIT": '"a".."f"|"A".."F"|DIGIT',
    "INT": "DIGIT+",
    "SIGNED_INT": '["+"|"-"] INT',
    "DECIMAL": 'INT "." INT? | "." INT',
    "_EXP": '("e"|"E") SIGNED_INT',
    "FLOAT": "INT _EXP | DECIMAL _EXP?",
    "SIGNED_FLOAT": '["+"|"-"] FLOAT',
    "NUMBER": "FLOAT | INT",
    "SIGNED_NUMBER": '["+"|"-"] NUMBER',
    "LCASE_LETTER": '"a".."z"',
    "UCASE_LETTER": '"A".."Z"',
    "LETTER": "UCASE_LETTER | LCASE_LETTER",
    "WORD": "LETTER+",
    "CNAME": '("_"|LETTER) ("_"|LETTER|DIGIT)*',
    "WS_INLINE": '(" "|/\\t/)+',
    "WS": "/[ \\t\\f\\r\\n]/+",
    "CR": "/\\r/",
    "LF": "/\\n/",
    "NEWLINE": "(CR? LF)+",
    "ESCAPED_STRING": '"\\"" /(\\\\.|[^"\\\\\\n])*/ "\\""',
    "SH_COMMENT": "/#[^\\n]*/",
    "CPP_COMMENT": "/\\/\\/[^\\n]*/",
    "C_COMMENT": '"/*" /(.|\\n)*?/ "*/"',
}
# What each common terminal names besides itself.
_NEEDS = {
    "HEXDIGIT": ("DIGIT",),
    "INT": ("DIGIT",),
    "SIGNED_INT": ("INT", "DIGIT"),
    "DECIMAL": ("INT", "DIGIT"),
    "_EXP": ("SIGNED_INT", "INT", "DIGIT"),
    "FLOAT": ("INT", "_EXP", "DECIMAL", "SIGNED_INT", "DIGIT"),
    "SIGNED_FLOAT": ("FLOAT", "INT", "_EXP", "DECIMAL", "SIGNED_INT", "DIGIT"),
    "NUMBER": ("FLOAT", "INT", "_EXP", "DECIMAL", "SIGNED_INT", "DIGIT"),
    "SIGNED_NUMBER": ("NUMBER", "FLOAT", "INT", "_EXP", "DECIMAL", "SIGNED_INT", "DIGIT"),
    "LETTER": ("UCASE_LETTER", "LCASE_LETTER"),
    "WORD": ("LETTER", "UCASE_LETTER", "LCASE_LETTER"),
    "CNAME": ("LETTER", "UCASE_LETTER", "LCASE_LETTER", "DIGIT"),
    "NEWLINE": ("CR", "LF"),
}


def regex_grammar(pattern: str) -> str:
    """A regular expression (a custom tool's `syntax: "regex"`) as a Lark grammar.

    The whole input matches it, so `^` before it and `$` after it are dropped.
    """
    pattern = pattern.removeprefix("^")
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1]
    return "start: /" + pattern.replace("/", "\\/") + "/"


# A terminal's name (`LF`, `_EXP`) and a literal range (`"a".."z"`).
_TERMINAL = re.compile(r"\b_?[A-Z][A-Z0-9_]*\b")
_RANGE = re.compile(r'"((?:[^"\\]|\\.)+)"\s*\.\.\s*"((?:[^"\\]|\\.)+)"')


def json_string(lark: str) -> str:
    """`lark` (a grammar of text) as the grammar of that text JSON-escaped.

    Each terminal becomes a rule, since a lexeme of llguidance's reads greedily. A terminal that
    could go on with the `\\` of an escape would swallow the next terminal's escape, as `/.+/` would
    the `\\n` of a newline after it. Each literal becomes its escape, each regular expression a rule
    of its runs of safe characters and its escapes, and `%import common.NAME` its definition.
    `%ignore` cannot be quoted: what it skips would be skipped inside the call's JSON around it too.
    """
    defined: dict[str, None] = {}

    def imported(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in COMMON:
            raise BadRequestError(f"the grammar imports common.{name}, which is not known")
        for needed in (name, *_NEEDS.get(name, ())):
            defined.setdefault(needed, None)
        return ""

    def piece(match: re.Match[str]) -> str:
        kind, text = match.lastgroup, match[0]
        if kind == "comment":
            return ""
        if kind == "string":
            return _literal(text)
        if kind == "regex":
            return _regex(text)
        return imported(match)

    if re.search(r"^\s*%ignore\b", lark, re.MULTILINE):
        raise BadRequestError("a grammar with %ignore cannot be held inside a JSON string")
    for match in _PIECES.finditer(lark):
        if match.lastgroup == "import":
            imported(match)
    lines = [lark, *(f"{name}: {COMMON[name]}" for name in defined)]
    text = _RANGE.sub(_range, "\n".join(lines))
    out, last = [], 0
    for match in _PIECES.finditer(text):
        out.append(_TERMINAL.sub(_rule, text[last : match.start()]))
        out.append(piece(match))
        last = match.end()
    out.append(_TERMINAL.sub(_rule, text[last:]))
    return "".join(out)


def _rule(match: re.Match[str]) -> str:
    return "q" + match[0].lower()


def _range(match: re.Match[str]) -> str:
    """`"a".."z"` as the regular expression of its characters."""
    low, high = (json.loads(f'"{end}"') for end in match.groups())
    return f"/[{_class_char(low)}-{_class_char(high)}]/"


def _literal(text: str) -> str:
    """A Lark string literal as the literal of its JSON escape."""
    flags = "i" if text.endswith("i") else ""
    inner = text[: -1 if flags else None]
    try:
        value = json.loads(inner)
    except ValueError:
        raise BadRequestError(f"the grammar's literal {inner[:40]} cannot be read") from None
    escaped = json.dumps(value, ensure_ascii=False)[1:-1]
    return json.dumps(escaped, ensure_ascii=False) + flags


def _regex(text: str) -> str:
    """A Lark regular expression (`/.../flags`) as a rule expression, its matches JSON-escaped."""
    end = text.rindex("/")
    pattern, flags = text[1:end].replace("\\/", "/"), text[end + 1 :]
    if "i" in flags:
        raise BadRequestError("a case-insensitive regular expression cannot be quoted")
    try:
        parsed = _sre.parse(pattern, re.DOTALL if "s" in flags else 0)
    except (re.error, RecursionError, OverflowError) as exc:
        raise BadRequestError(f"the grammar's expression /{pattern[:40]}/: {exc}") from None
    if parsed.state.flags & (re.IGNORECASE | re.MULTILINE | re.VERBOSE):
        raise BadRequestError("a regular expression's flags (i, m, x) cannot be quoted")
    return "(" + _Writer(bool(parsed.state.flags & re.DOTALL)).sequence(parsed) + ")"


def _escape(char: str) -> str:
    """A character's JSON escape, as a Lark literal."""
    return json.dumps(json.dumps(char, ensure_ascii=False)[1:-1], ensure_ascii=False)


class _Writer:
    """Writes a parsed regular expression as a Lark rule expression.

    Each character it matches is matched as its JSON escape.
    """

    def __init__(self, dotall: bool) -> None:
        self.dotall = dotall

    def sequence(self, items: Any) -> str:
        parts: list[str] = []
        run: list[str] = []  # literal characters in a row: one literal
        for op, av in items:
            if op is _c.LITERAL:
                run.append(chr(av))
                continue
            if run:
                parts.append(_literal(json.dumps("".join(run), ensure_ascii=False)))
                run = []
            written = self.item(op, av)
            if written:
                parts.append(written)
        if run:
            parts.append(_literal(json.dumps("".join(run), ensure_ascii=False)))
        return " ".join(parts) if parts else '""'

    def item(self, op: Any, av: Any) -> str:
        if op in _CLASSES:
            return self.klass(self._class_of(op, av))
        if op is _c.BRANCH:
            return "(" + " | ".join(self.sequence(alt) for alt in av[1]) + ")"
        if op is _c.SUBPATTERN:
            if av[1] & re.IGNORECASE:
                raise BadRequestError("a case-insensitive group cannot be quoted")
            return "(" + self.sequence(av[3]) + ")"
        if op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
            low, high, body = av
            unbounded = high is _c.MAXREPEAT
            [(inner_op, inner_av)] = list(body) if len(body) == 1 else [(None, None)]
            if unbounded and low <= 1 and inner_op in _CLASSES:
                # A class repeated: runs of its safe characters (one lexeme each) and escapes.
                runs = self.klass(self._class_of(inner_op, inner_av), run=True)
                return runs + ("*" if low == 0 else "+")
            written = f"({self.sequence(body)})"
            if unbounded:
                return written + ("*" if low == 0 else "+" if low == 1 else f"{{{low},}}")
            return written + ("?" if (low, high) == (0, 1) else f"{{{low},{high}}}")
        if op is _c.AT and av in _ENDS:
            return ""  # a terminal is matched whole: its ends are where the value's are
        raise BadRequestError(
            f"a regular expression with {str(op).lower()} (anchors, back-references and "
            "look-arounds) cannot be a grammar's terminal"
        )

    def _class_of(self, op: Any, av: Any) -> str:
        if op is _c.NOT_LITERAL:
            return f"[^{_class_char(chr(av))}]"
        if op is _c.ANY:
            return "(?s:.)" if self.dotall else "."
        return _class_text(av if op is _c.IN else [(op, av)])

    def klass(self, text: str, run: bool = False) -> str:
        """A character class, as Python writes it, matching each of its characters JSON's way.

        The safe ones match as themselves (a run of them, with `run`), the others as their escapes.
        """
        compiled = re.compile(text)
        escapes = [_escape(c) for c in _UNSAFE if compiled.fullmatch(c)]
        # `.` matches every safe character; a class, those of its own that are safe.
        safe = f"[{text}&&{_SAFE_CLASS}]" if text.startswith("[") else _SAFE_CLASS
        return "(" + " | ".join([f"/{safe}{'+' if run else ''}/", *escapes]) + ")"


# What matches one character of a set: a class as Python's parser gives it.
_CLASSES = (_c.IN, _c.ANY, _c.NOT_LITERAL, _c.CATEGORY)
_ENDS = (_c.AT_BEGINNING, _c.AT_BEGINNING_STRING, _c.AT_END, _c.AT_END_STRING)
_CATEGORIES = {
    _c.CATEGORY_DIGIT: r"\d",
    _c.CATEGORY_NOT_DIGIT: r"\D",
    _c.CATEGORY_SPACE: r"\s",
    _c.CATEGORY_NOT_SPACE: r"\S",
    _c.CATEGORY_WORD: r"\w",
    _c.CATEGORY_NOT_WORD: r"\W",
}


def _class_text(items: Any) -> str:
    """A parsed class written back as `[...]`."""
    out = []
    negate = False
    for op, av in items:
        if op is _c.NEGATE:
            negate = True
        elif op is _c.LITERAL:
            out.append(_class_char(chr(av)))
        elif op is _c.RANGE:
            out.append(f"{_class_char(chr(av[0]))}-{_class_char(chr(av[1]))}")
        elif op is _c.CATEGORY and av in _CATEGORIES:
            out.append(_CATEGORIES[av])
        else:
            raise BadRequestError(f"a character class with {str(op).lower()} cannot be quoted")
    return "[" + ("^" if negate else "") + "".join(out) + "]"


def _class_char(char: str) -> str:
    """A character inside a class, as Python's and Rust's engines both read it."""
    if char in "\\]^-[&~|" or not char.isprintable():
        return f"\\U{ord(char):08x}"
    return char
