"""Go's encoding/json for templates: json.Marshal, byte for byte.

Compact, `<>&` (and U+2028/U+2029) escaped, maps in key order, floats as Go writes them (1e-7,
not 1e-07), bytes as base64; dataclasses encode as structs under their `json_tags`
(`name,omitempty`), and a value with a go_json() method encodes through it. NaN and the
infinities are refused (JSONUnsupported), as Go refuses them.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from typing import Any

from localrun.formats.gotemplate.fmt import format_float, sorted_keys


class JSONUnsupported(Exception):
    """A value json.Marshal refuses (NaN, infinities)."""


def go_json(value: Any) -> str:
    """json.Marshal: compact, `<>&` escaped, maps in key order, struct fields in their order.

    Struct fields go under their `json_tags` (`name,omitempty`). A value with go_json() encodes
    through it.
    """
    out: list[str] = []
    _encode(value, out)
    return "".join(out)


def _json_string(text: str) -> str:
    if any(0xD800 <= ord(ch) < 0xE000 for ch in text):
        text = "".join("\ufffd" if 0xD800 <= ord(ch) < 0xE000 else ch for ch in text)
    quoted = json.dumps(text, ensure_ascii=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):  # fmt: skip
        quoted = quoted.replace(raw, escaped)
    return quoted


def _json_float(f: float) -> str:
    if math.isnan(f) or math.isinf(f):
        raise JSONUnsupported
    big = f != 0 and (abs(f) < 1e-6 or abs(f) >= 1e21)
    text = format_float(f, "e" if big else "f", -1)
    if big and text[-4:-1] == "e-0":  # Go writes e-7, not e-07
        text = text[:-2] + text[-1]
    return text


def _omit(value: Any) -> bool:
    """Go's omitempty: false, 0, "", nil, and empty slices and maps (not pointers to them)."""
    if value is None or value is False or (isinstance(value, int | float) and value == 0):
        return True
    if isinstance(value, str | bytes | list | tuple | dict):
        return not value and not getattr(value, "go_pointer", False)
    return False


def _encode(value: Any, out: list[str]) -> None:
    custom = getattr(type(value), "go_json", None)
    if callable(custom):
        out.append(value.go_json())
    elif value is None:
        out.append("null")
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_json_float(value))
    elif isinstance(value, str):
        out.append(_json_string(value))
    elif isinstance(value, bytes):
        out.append('"' + base64.b64encode(value).decode() + '"')
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            out.append("," if i else "")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, dict):
        encode_map(value, sorted_keys(value), out)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        out.append("{")
        first = True
        tags = getattr(type(value), "json_tags", {})
        for f in dataclasses.fields(value):
            name, _, option = tags.get(f.name, f.name).partition(",")
            item = getattr(value, f.name)
            if option == "omitempty" and _omit(item):
                continue
            out.append("" if first else ",")
            first = False
            out.append(_json_string(name) + ":")
            _encode(item, out)
        out.append("}")
    else:
        raise JSONUnsupported


def encode_map(mapping: dict[str, Any], keys: list[Any], out: list[str]) -> None:
    out.append("{")
    for i, key in enumerate(keys):
        out.append(("," if i else "") + _json_string(str(key)) + ":")
        _encode(mapping[key], out)
    out.append("}")
