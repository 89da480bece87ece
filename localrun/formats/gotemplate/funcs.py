"""Go text/template's builtin functions, as Go's text/template/funcs.go defines them.

They are truth, the comparisons, len, index, slice, the print family and the escapers (html, js,
urlquery). Strings are measured, indexed and sliced in UTF-8 bytes, as Go's `len`, `index` and
`slice` do. `and` and `or` are not here: they evaluate their arguments lazily, so the executor runs
them (exec.py). `call` is refused: templates here have no function values to call. A failure is a
Fail, which the executor turns into a TemplateError naming the line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import lru_cache
from typing import Any
from urllib.parse import quote_plus

from localrun.formats.gotemplate.fmt import Fail, go_type, sprint, sprintf


def truth(value: Any) -> bool:
    """Go's truth: false, 0, nil and empty strings, slices and maps are false."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str | bytes | list | tuple | dict):
        return len(value) > 0
    return True


def _kind(value: Any) -> str:
    if value is None:
        return "invalid"
    for kind, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "string")):
        if isinstance(value, kind):
            return name
    return "other"


def _eq(a: Any, *others: Any) -> bool:
    if not others:
        raise Fail("missing argument for comparison")
    k1 = _kind(a)
    for b in others:
        k2 = _kind(b)
        if k1 != k2:
            if a is not None and b is not None:
                raise Fail("incompatible types for comparison")
        elif k1 == "invalid" or (k1 != "other" and a == b):
            return True
        elif k1 == "other":
            raise Fail(f"non-comparable type {go_type(b)}")
    return False


def _lt(a: Any, b: Any) -> bool:
    k1, k2 = _kind(a), _kind(b)
    if k1 in ("invalid", "other", "bool") or k2 in ("invalid", "other", "bool"):
        raise Fail("invalid type for comparison")
    if k1 != k2:
        raise Fail("incompatible types for comparison")
    return bool(a < b)


def _len(value: Any) -> int:
    if value is None:
        raise Fail("len of nil pointer")
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bytes | list | tuple | dict):
        return len(value)
    raise Fail(f"len of type {go_type(value)}")


def _index_arg(value: Any, cap: int) -> int:
    if value is None:
        raise Fail("cannot index slice/array with nil")
    if isinstance(value, bool) or not isinstance(value, int):
        raise Fail(f"cannot index slice/array with type {go_type(value)}")
    if value < 0 or value > cap:
        raise Fail(f"index out of range: {value}")
    return value


def _index(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise Fail("index of untyped nil")
    for index in indexes:
        if isinstance(item, str):
            data = item.encode("utf-8", "surrogatepass")
            position = _index_arg(index, len(data))
            if position >= len(data):
                raise Fail(f"index out of range: {position}")
            item = data[position]
        elif isinstance(item, bytes | list | tuple):
            position = _index_arg(index, len(item))
            if position >= len(item):
                raise Fail(f"index out of range: {position}")
            item = item[position]
        elif isinstance(item, dict):
            if index is not None and not isinstance(index, str):
                raise Fail(f"value has type {go_type(index)}; should be string")
            item = item.get(index)
        elif item is None:
            raise Fail("index of nil pointer")
        else:
            raise Fail(f"can't index item of type {go_type(item)}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise Fail("slice of untyped nil")
    if len(indexes) > 3:
        raise Fail(f"too many slice indexes: {len(indexes)}")
    data: Any = item
    if isinstance(item, str):
        if len(indexes) == 3:
            raise Fail("cannot 3-index slice a string")
        data = item if item.isascii() else item.encode("utf-8", "surrogatepass")
    elif not isinstance(item, bytes | list | tuple):
        raise Fail(f"can't slice item of type {go_type(item)}")
    bounds = [0, len(data), len(data)]
    for n, index in enumerate(indexes):
        bounds[n] = _index_arg(index, len(data))
    if bounds[0] > bounds[1] or (len(indexes) == 3 and bounds[1] > bounds[2]):
        low, high = (bounds[0], bounds[1]) if bounds[0] > bounds[1] else (bounds[1], bounds[2])
        raise Fail(f"invalid slice index: {low} > {high}")
    part = data[bounds[0] : bounds[1]]
    if isinstance(item, str) and isinstance(part, bytes):
        return part.decode("utf-8", "replace")
    return part


def _eval_args(args: list[Any], limit: int) -> str:
    """The text the escaping functions work on (Go's evalArgs)."""
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return sprint(["<no value>" if a is None else a for a in args], limit)


_HTML = {'"': "&#34;", "'": "&#39;", "&": "&amp;", "<": "&lt;", ">": "&gt;", "\0": "\ufffd"}
_JS = {"\\": "\\\\", "'": "\\'", '"': '\\"', "<": "\\u003C", ">": "\\u003E", "&": "\\u0026",
       "=": "\\u003D"}  # fmt: skip


def _js(text: str) -> str:
    out = []
    for ch in text:
        if ch in _JS:
            out.append(_JS[ch])
        elif ch < " ":
            out.append(f"\\u00{ord(ch):02X}")
        elif ord(ch) >= 0x80 and not ch.isprintable():
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


# name -> (fewest arguments, most or None)
ARITY: dict[str, tuple[int, int | None]] = {
    "not": (1, 1), "len": (1, 1), "index": (1, None), "slice": (1, None), "print": (0, None),
    "printf": (1, None), "println": (0, None), "html": (0, None), "js": (0, None),
    "urlquery": (0, None), "call": (1, None), "eq": (1, None), "ne": (2, 2), "lt": (2, 2),
    "le": (2, 2), "gt": (2, 2), "ge": (2, 2),
}  # fmt: skip


def builtin(name: str, args: list[Any], limit: int) -> Any:
    """Run builtin `name` on evaluated `args` (their count already checked)."""
    if name == "not":
        return not truth(args[0])
    if name == "len":
        return _len(args[0])
    if name == "index":
        return _index(*args)
    if name == "slice":
        return _slice(*args)
    if name in ("print", "println"):
        return sprint(args, limit, line=name == "println")
    if name == "printf":
        if not isinstance(args[0], str):
            raise Fail(f"wrong type for value; expected string; got {go_type(args[0])}")
        return sprintf(args[0], args[1:], limit)
    if name in ("html", "js", "urlquery"):
        text = _eval_args(args, limit)
        if name == "html":
            return "".join(_HTML.get(ch, ch) for ch in text)
        return _js(text) if name == "js" else quote_plus(text, safe="")
    if name == "eq":
        return _eq(*args)
    if name == "ne":
        return not _eq(*args)
    if name in ("lt", "ge"):
        return _lt(*args) == (name == "lt")
    if name in ("le", "gt"):
        return (_lt(*args) or _eq(*args)) == (name == "le")
    raise Fail("call is not available in these templates")


@lru_cache(maxsize=64)
def func_arity(fn: Callable[..., Any]) -> tuple[int, int | None]:
    """(fewest, most or None) positional arguments a Python function takes."""
    params = list(inspect.signature(fn).parameters.values())
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p for p in params if p.kind in kinds]
    required = sum(p.default is inspect.Parameter.empty for p in positional)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return required, None
    return required, len(positional)
