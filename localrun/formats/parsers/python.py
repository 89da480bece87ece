"""Calls written as Python: `[get_weather(city="Paris"), ...]` or one bare call, read with
`ast` (LFM2, the pythonic family, Llama's built-in tools).

Values are Python or JSON literals (true/false/null read as JSON writes them); a set is the
list of its items in the order written (JSON has no sets). What JSON cannot hold (bytes, a
complex number, 1e999, NaN) is not a call: such a call hung the answer's encoding.

Models write Python that Python refuses, and vLLM reads it anyway; so does this, by repairing
the text before giving up (REPAIRS passes over the text at most, each a candidate or a
dead end):

- a raw newline, tab or NUL inside a string (a multi-line shell command) is escaped;
- a zero-padded integer (`month=07`) is the integer;
- a quote inside a string that cannot close it (`command='sed -n '1,5p' f'`) is part of it.
  A quote can close a string where blanks and then `,` `)` `]` `}` `:` or the end follow;
  the candidates take the earliest such quote first and try later ones when the rest does not
  read (brackets unbalanced, a string never closed, `ast` refusing it).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from localrun.formats.parsers.base import Malformed, ToolCall

if TYPE_CHECKING:
    from localrun.formats.parsers.base import Syntax

REPAIRS = 32  # passes over the text at most: repaired candidates (each parsed once) or dead ends
_PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError)


def calls(text: str, syntax: Syntax) -> list[ToolCall]:
    """The calls `text` writes as Python, checked against the syntax's tools."""
    body = _parse(text.strip()).body
    items = body.elts if isinstance(body, (ast.List, ast.Tuple)) else [body]
    found = []
    for item in items:
        if not isinstance(item, ast.Call) or item.args:
            raise Malformed("not a call with keyword arguments")
        name = _dotted(item.func)
        arguments = {}
        for keyword in item.keywords:
            if keyword.arg is None:
                raise Malformed("** arguments")
            arguments[keyword.arg] = _literal(keyword.value)
        found.append(syntax.call(name, arguments))
    return found


def _parse(source: str) -> ast.Expression:
    if "\\" not in source:  # (a backslash may be an escape Python warns about: repaired)
        try:
            return ast.parse(source, mode="eval")
        except _PARSE_ERRORS:
            pass
    for candidate in _repaired(source):
        try:
            return ast.parse(candidate, mode="eval")
        except _PARSE_ERRORS:
            continue
    raise Malformed("not a Python call")


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
    """Repaired versions of `source` (see the module's docstring), most likely first: a scan
    that closes each string at its first possible quote, then, depth first, at later ones."""
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
    """Whether the `0` at `index` pads an integer: it starts a number (no letter, digit or
    dot before it) and more digits follow, then no `.`, `e`, `x` or `j` of another literal."""
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
    """`name` or `a.b` (Llama's `brave_search.call`, whose tool llama3.py takes the `.call`
    off; `grocery.orderIngredients`)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise Malformed("not a name")
