"""MiniMax-M3: each tag behind the namespace token `]<]minimax[>[`, the arguments an XML tree.

With NS for that token, a block is
`NS<tool_call> NS<invoke name="NAME"> NS<KEY>VALUE NS</KEY> ... NS</invoke> NS</tool_call>`, holding
one invocation or several.

A value is text, or elements: `NS<item>` children are a list's items, others an object's keys, and a
key written twice is a list. Text is typed by the tool's JSON schema, walked alongside (`018956` for
an integer is 18956). It stays text where no schema says otherwise, as the template writes it (its
`to_xml`) and vLLM's MiniMax-M3 parser reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from localrun.formats.parsers.base import (
    Incomplete,
    Malformed,
    ToolCall,
    expect,
    skip_blanks,
    until,
)
from localrun.formats.parsers.xml import XmlBlocks

NS = "]<]minimax[>["
OPEN, CLOSE = f"{NS}<tool_call>", f"{NS}</tool_call>"
INVOKE, INVOKE_END = f'{NS}<invoke name="', f"{NS}</invoke>"
_DEPTH = 64


@dataclass
class Nested(XmlBlocks):
    name: str = "minimax-m3"
    starts: tuple[str, ...] = (OPEN,)
    ends: tuple[str, ...] = (CLOSE,)
    special: tuple[str, ...] = (NS,)
    open: str = OPEN
    close: str = CLOSE

    def one(self, text: str, index: int) -> tuple[ToolCall, int]:
        return self._invoke(text, index)

    def _invoke(self, text: str, index: int) -> tuple[ToolCall, int]:
        index = expect(text, index, INVOKE)
        name, index = until(text, index, '">')
        if not name or "\n" in name or len(name) > 200:
            raise Malformed("not a tool name")
        values, index = _children(text, index, INVOKE_END, 0)
        schema = self.parameters(name)
        arguments = {key: _typed(value, _property(schema, key)) for key, value in values.items()}
        return self.call(name, arguments), index

    def write(self, name: str, arguments: str) -> str:
        body = "".join(f"{NS}<{k}>{_xml(v)}{NS}</{k}>" for k, v in json.loads(arguments).items())
        return f'{OPEN}\n{INVOKE}{name}">{body}{INVOKE_END}\n{CLOSE}'


def _children(text: str, index: int, end: str, depth: int) -> tuple[dict[str, Any], int]:
    """The elements up to `end` as an object (a key written twice holds a list)."""
    if depth > _DEPTH:
        raise Malformed("nested too deep")
    out: dict[str, Any] = {}
    while True:
        index = skip_blanks(text, index)
        if text.startswith(end, index):
            return out, index + len(end)
        if index >= len(text) or end.startswith(text[index:]):
            raise Incomplete
        index = expect(text, index, f"{NS}<")
        key, index = until(text, index, ">")
        if not key or key.startswith("/") or len(key) > 200:
            raise Malformed("not an element")
        value, index = _element(text, index, key, depth + 1)
        if key in out:
            held = out[key]
            out[key] = [*held, value] if isinstance(held, _Repeated) else _Repeated([held, value])
        else:
            out[key] = value


class _Repeated(list[Any]):
    """The values of a key written more than once."""


def _element(text: str, index: int, key: str, depth: int) -> tuple[Any, int]:
    """An element's value after its opening tag: text, or elements (`item`s: a list)."""
    close = f"{NS}</{key}>"
    if text.startswith(f"{NS}<", index) and not text.startswith(f"{NS}</", index):
        values, index = _children(text, index, close, depth)
        if set(values) == {"item"}:
            item = values["item"]
            return (list(item) if isinstance(item, _Repeated) else [item]), index
        return values, index
    if len(text) - index < len(f"{NS}<") and f"{NS}<".startswith(text[index:]):
        raise Incomplete
    return until(text, index, close)


def _property(schema: dict[str, Any], key: str) -> dict[str, Any]:
    properties = schema.get("properties")
    if isinstance(properties, dict) and isinstance(properties.get(key), dict):
        return properties[key]  # type: ignore[no-any-return]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else {}


def _typed(value: Any, schema: dict[str, Any]) -> Any:
    """A value read from the tree, typed as the schema says (text where it says nothing)."""
    kind = schema.get("type")
    if isinstance(value, list):
        items = schema.get("items")
        return [_typed(v, items if isinstance(items, dict) else {}) for v in value]
    if isinstance(value, dict):
        return {k: _typed(v, _property(schema, k)) for k, v in value.items()}
    if kind == "integer":
        try:
            return int(value.strip())
        except ValueError:
            return value
    if kind in ("number", "boolean", "null", "object", "array"):
        try:
            return json.loads(value.strip())
        except ValueError:
            return value
    return value


def _xml(value: Any) -> str:
    if isinstance(value, dict):
        return "".join(f"{NS}<{k}>{_xml(v)}{NS}</{k}>" for k, v in value.items())
    if isinstance(value, list):
        return "".join(f"{NS}<item>{_xml(v)}{NS}</item>" for v in value)
    if isinstance(value, bool):
        return json.dumps(value)
    return str(value)
