"""Calls written as Python, read with `ast`: `[get_weather(city="Paris"), ...]` or one bare call.

LFM2, the pythonic family and Llama's built-in tools write them. Values are Python or JSON literals
(true/false/null read as JSON writes them). A set is the list of its items in the order written,
since JSON has no sets. What JSON cannot hold (bytes, a complex number, 1e999, NaN) is not a call:
such a call hung the answer's encoding.

Models write Python that Python refuses, and vLLM reads it anyway. So does this, by repairing the
text before giving up (_repaired). A raw newline, tab or NUL inside a string (a multi-line shell
command) is escaped. A zero-padded integer (`month=07`) is the integer. A quote inside a string that
cannot close it (`command='sed -n '1,5p' f'`) is part of it.
"""

from __future__ import annotations

import ast
import io
import keyword
import math
import re
import tokenize
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from localrun.formats.parsers.base import Malformed, ToolCall

if TYPE_CHECKING:
    from localrun.formats.parsers.base import Syntax

REPAIRS = 32  # passes over the text at most: repaired candidates (each parsed once) or dead ends
_PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError)


def calls(text: str, syntax: Syntax, *, lines: bool = False) -> list[ToolCall]:
    """The calls `text` writes as Python, checked against the syntax's tools.

    The text holds a list of them or one, or with `lines` one a line (MiniCPM 3's
    `f(a=1)\\ng(b=2)`).
    """
    source, renamed = _keyword_names(text.strip())
    tree = _parse(source, "exec" if lines else "eval")
    if isinstance(tree, ast.Module):
        parts: list[ast.AST] = [s.value if isinstance(s, ast.Expr) else s for s in tree.body]
    else:
        parts = [tree.body] if isinstance(tree, ast.Expression) else []
    if len(parts) == 1 and isinstance(parts[0], (ast.List, ast.Tuple)):
        parts = list(parts[0].elts)
    items = parts
    if lines and not items:
        raise Malformed("no calls")
    found = []
    for item in items:
        if not isinstance(item, ast.Call) or item.args:
            raise Malformed("not a call with keyword arguments")
        name = _dotted(item.func)
        arguments = {}
        for argument in item.keywords:
            key = argument.arg
            if key is None:
                raise Malformed("** arguments")
            if renamed and key.endswith(_RENAMED):
                key = key[: -len(_RENAMED)]
            arguments[key] = _literal(argument.value)
        found.append(syntax.call(name, arguments))
    return found


def _parse(source: str, mode: str) -> ast.AST:
    if "\\" not in source:  # (a backslash may be an escape Python warns about: repaired)
        try:
            return ast.parse(source, mode=mode)
        except _PARSE_ERRORS:
            pass
    for candidate in _repaired(source):
        try:
            return ast.parse(candidate, mode=mode)
        except _PARSE_ERRORS:
            continue
    raise Malformed("not a Python call")


# A parameter Python reserves the name of (`from=`, `class=`) is renamed while the text is
# parsed, and named back after: MiniCPM's and Gorilla's readers do the same.
_RENAMED = "__localrun_keyword"
_KEYWORD_ARG = re.compile(r"\b(?:" + "|".join(keyword.kwlist) + r")\s*=(?!=)")


def _keyword_names(source: str) -> tuple[str, bool]:
    """`source` with each keyword argument named by a Python keyword renamed, and whether one was.

    Tokens are read by `tokenize`, so text in strings stays as it is.
    """
    if not _KEYWORD_ARG.search(source):
        return source, False
    starts = [0]  # where each line starts (tokenize counts lines at each \\n alone)
    for line in source.split("\n"):
        starts.append(starts[-1] + len(line) + 1)
    spots = []
    try:
        tokens = [
            t
            for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type not in _NOISE
        ]
    except (tokenize.TokenError, SyntaxError):
        return source, False
    for before, token, after in zip(tokens, tokens[1:], tokens[2:], strict=False):
        if (
            token.type == tokenize.NAME
            and keyword.iskeyword(token.string)
            and before.string in ("(", ",")
            and after.string == "="
        ):
            spots.append(starts[token.end[0] - 1] + token.end[1])
    for spot in reversed(spots):
        source = source[:spot] + _RENAMED + source[spot:]
    return source, bool(spots)


_NOISE = frozenset(
    {tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT}
)


_CONTROL = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES = frozenset("\n\\'\"abfnrtv01234567xNuU")  # what may follow a backslash in a string
_CLOSERS = {")": "(", "]": "[", "}": "{"}


def _escape(char: str) -> str:
    if char in _CONTROL:
        return _CONTROL[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x20 else char


def _may_close(source: str, index: int) -> bool:
    """Whether the quote at `index` can end a string: blanks, then a closer or the end."""
    after = index + 1
    while after < len(source) and source[after] in " \t\r\n":
        after += 1
    return after >= len(source) or source[after] in ",)]}:"


def _repaired(source: str) -> Iterator[str]:
    """Repaired versions of `source`, most likely first, in at most REPAIRS passes.

    The first pass closes each string at its first possible quote; later ones, depth first, close it
    at later quotes. A quote can close a string where blanks and then `,` `)` `]` `}` `:` or the end
    follow. A later quote is tried when the rest does not read: brackets unbalanced, a string never
    closed, `ast` refusing it.
    """
    # Each alternative: where to resume, the pass it branched from and how much of that pass's
    # output it keeps (a pass only appends to its output: the prefix stays as it was), the
    # brackets open, the quote. The quote it keeps as text is appended when it resumes.
    pending: list[tuple[int, list[str], int, list[str], str]] = [(0, [], 0, [], "")]
    for _ in range(REPAIRS):  # passes over the text, each one candidate or a dead end
        if not pending:
            return
        index, base, kept, stack, quote = pending.pop()
        out = base[:kept] + ([f"\\{quote}"] if quote else [])
        alive = True
        while index < len(source) and alive:
            char = source[index]
            if quote:
                if char == "\\" and index + 1 < len(source):
                    after = source[index + 1]
                    out.append(char + after if after in _ESCAPES else "\\\\" + _escape(after))
                    index += 2
                    continue
                if char == quote and _may_close(source, index):
                    # Close here; the alternative keeps the quote as text.
                    pending.append((index + 1, out, len(out), list(stack), quote))
                    quote = ""
                    out.append(char)
                elif char == quote:
                    out.append("\\" + char)
                else:
                    out.append(_escape(char))
            elif char in "\"'":
                quote = char
                out.append(char)
            elif char == "0" and _padded(source, index):
                pass  # a zero before more digits of an integer: dropped
            else:
                if char in "([{":
                    stack.append(char)
                elif char in _CLOSERS:
                    alive = bool(stack) and stack.pop() == _CLOSERS[char]
                out.append(char)
            index += 1
        if alive and not quote and not stack:
            yield "".join(out)


def _padded(source: str, index: int) -> bool:
    """Whether the `0` at `index` pads an integer.

    It does where it starts a number, with no letter, digit or dot before it, and more digits
    follow, then no `.`, `e`, `x` or `j` of another literal.
    """
    before = source[index - 1] if index else ""
    if before.isalnum() or before in "._":
        return False
    end = index
    while end < len(source) and source[end].isdigit():
        end += 1
    if end - index < 2:
        return False
    return not (end < len(source) and (source[end] in ".eExXjJ_" or source[end].isalpha()))


_JSON_NAMES = {"true": True, "false": False, "null": None}


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        out = {}
        for key, value in zip(node.keys, node.values, strict=True):
            if not isinstance(key, ast.Constant) or not isinstance(key.value, str):
                raise Malformed("an object key that is not a string")
            out[key.value] = _literal(value)
        return out
    try:
        return _as_json(ast.literal_eval(node))
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        raise Malformed("an argument is not a literal") from None


def _as_json(value: Any) -> Any:
    """A Python literal as the JSON value it is; Malformed for what JSON cannot hold."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Malformed("an argument JSON cannot hold")
        return value
    raise Malformed("an argument JSON cannot hold")


def _dotted(node: ast.expr) -> str:
    """`name` or `a.b`, as in `grocery.orderIngredients`.

    Llama writes `brave_search.call`, whose tool llama3.py takes the `.call` off.
    """
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise Malformed("not a name")
