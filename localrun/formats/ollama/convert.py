"""A chat request's OpenAI-shaped messages and tools -> the values Ollama's templates see.

This follows how a request reaches ollama/ollama's template: `openai/openai.go` reads the OpenAI
shape, and `server/prompt.go` and `template/template.go` collate it. A content list becomes one
message per part. Consecutive messages of one role are joined by a blank line, except tool results,
and every system message is also joined into .System. JSON numbers become float64, as Go decodes
them into `any`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from localrun.errors import TemplateError
from localrun.formats.ollama.values import (
    CallFunction,
    JSONMap,
    Message,
    NilList,
    OrderedMap,
    PropertyType,
    Tool,
    ToolCall,
    ToolFunction,
    ToolList,
    ToolParameters,
    ToolProperty,
)


@dataclass
class ApiMessage:
    """A message as Ollama's api.Message holds it, before collating."""

    role: str
    content: str = ""
    thinking: str = ""
    images: list[bytes] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_name: str = ""
    tool_call_id: str = ""


def _no_float64(number: Any) -> TemplateError:
    """Go's json.Unmarshal into `any` refuses a number a float64 cannot hold, so does this."""
    text = str(number) if isinstance(number, float) else f"an integer of {number.bit_length()} bits"
    return TemplateError(f"a JSON number does not fit a float64, as Ollama reads numbers: {text}")


def _go_any(value: Any) -> Any:
    """A JSON value as Go decodes it into `any`: numbers are float64."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _no_float64(value)
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            raise _no_float64(value) from None
    if isinstance(value, dict):
        return {str(k): _go_any(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_go_any(v) for v in value]
    return str(value)


def _not_json(name: str) -> Any:
    """NaN and Infinity, which Python's json reads and JSON (and Go) do not."""
    raise ValueError(name)


def _arguments(raw: Any) -> JSONMap:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw, parse_constant=_not_json) if raw.strip() else {}
        except ValueError:
            raise TemplateError("a tool call's arguments are not valid JSON") from None
    if raw is None:
        return JSONMap(None)
    if not isinstance(raw, dict):
        raise TemplateError("a tool call's arguments are not a JSON object")
    return JSONMap(_go_any(raw))


def _tool_calls(calls: Any) -> list[ToolCall]:
    out = []
    for call in calls or []:
        fn = call.get("function") or {}
        index = fn.get("index", 0)
        out.append(
            ToolCall(
                str(call.get("id") or ""),
                CallFunction(
                    index if isinstance(index, int) and not isinstance(index, bool) else 0,
                    str(fn.get("name") or ""),
                    _arguments(fn.get("arguments")),
                ),
            )
        )
    return out


def _image(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    try:
        return base64.b64decode(str(item), validate=True)
    except ValueError:
        return str(item).encode()


def ollama_messages(messages: list[dict[str, Any]]) -> list[ApiMessage]:
    """The messages as Ollama's OpenAI layer reads a chat request.

    A content list becomes one message per part. A tool result without a name takes its call's
    function name.
    """
    names = {
        str(call.get("id")): str((call.get("function") or {}).get("name") or "")
        for m in messages
        for call in (m.get("tool_calls") or [])
        if call.get("id")
    }
    out: list[ApiMessage] = []
    for m in messages:
        role = str(m.get("role") or "").lower()
        name = ""
        if role == "tool":
            name = str(m.get("name") or m.get("tool_name") or "")
            name = name or names.get(str(m.get("tool_call_id") or ""), "")
        thinking = str(m.get("reasoning_content") or m.get("reasoning") or m.get("thinking") or "")
        content = m.get("content")
        parts: list[ApiMessage] = []
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in ("text", "input_text"):
                    parts.append(ApiMessage(role, str(part.get("text") or "")))
                elif kind is not None:
                    parts.append(ApiMessage(role, images=[b""]))
        if not parts:
            text = "" if isinstance(content, list) else str(content or "")
            parts.append(ApiMessage(role, text))
        last = parts[-1]
        last.thinking, last.tool_name = thinking, name
        last.tool_call_id = str(m.get("tool_call_id") or "")
        last.tool_calls = _tool_calls(m.get("tool_calls"))
        last.images += [_image(i) for i in m.get("images") or []]
        out += parts
    return out


def collate(messages: list[ApiMessage]) -> tuple[str, list[ApiMessage]]:
    """Ollama's collate: system messages joined, consecutive same-role messages merged.

    Tool results are never merged.
    """
    system: list[str] = []
    collated: list[ApiMessage] = []
    for m in messages:
        if m.role == "system":
            system.append(m.content)
        if collated and collated[-1].role == m.role and m.role != "tool":
            collated[-1] = dataclasses.replace(
                collated[-1], content=collated[-1].content + "\n\n" + m.content
            )
        else:
            collated.append(m)
    return "\n\n".join(system), collated


def _types(raw: dict[str, Any]) -> PropertyType:
    """api.PropertyType as Go unmarshals it: "t" -> [t], [a, b] -> [a, b], null -> [""]."""
    if "type" not in raw:
        return PropertyType()
    kind = raw["type"]
    if isinstance(kind, str) or kind is None:
        return PropertyType([kind or ""])
    if isinstance(kind, list):
        return PropertyType(str(t) for t in kind)
    return PropertyType()


def _property(raw: Any) -> ToolProperty:
    raw = raw if isinstance(raw, dict) else {}
    nested, any_of = raw.get("properties"), raw.get("anyOf")
    enum, required = raw.get("enum"), raw.get("required")
    return ToolProperty(
        AnyOf=[_property(p) for p in any_of] if isinstance(any_of, list) else NilList(),
        Type=_types(raw),
        Items=_go_any(raw.get("items")),
        Description=str(raw.get("description") or ""),
        Enum=_go_any(enum) if isinstance(enum, list) else NilList(),
        Properties=(
            OrderedMap({str(k): _property(v) for k, v in nested.items()})
            if isinstance(nested, dict)
            else None
        ),
        Required=[str(r) for r in required] if isinstance(required, list) else NilList(),
    )


def template_tools(tools: list[dict[str, Any]] | None) -> ToolList:
    """The request's tools as .Tools (Ollama's templateTools; nil when there are none)."""
    if tools is None:
        return ToolList(None)
    out = []
    for tool in tools:
        fn = tool.get("function") or {}
        params = fn.get("parameters") or {}
        props = params.get("properties")
        required = params.get("required")
        out.append(
            Tool(
                Type=str(tool.get("type") or ""),
                Items=_go_any(tool.get("items")),
                Function=ToolFunction(
                    Name=str(fn.get("name") or ""),
                    Description=str(fn.get("description") or ""),
                    Parameters=ToolParameters(
                        Type=str(params.get("type") or ""),
                        Defs=_go_any(params.get("$defs")),
                        Items=_go_any(params.get("items")),
                        Required=[str(r) for r in required]
                        if isinstance(required, list)
                        else NilList(),
                        Properties=JSONMap(
                            {str(k): _property(v) for k, v in props.items()}
                            if isinstance(props, dict)
                            else None
                        ),
                    ),
                ),
            )
        )
    return ToolList(out)


def template_messages(messages: list[ApiMessage]) -> list[Message]:
    """Collated messages as .Messages (a nil slice when there are none)."""
    return [
        Message(
            m.role,
            m.content,
            m.thinking,
            m.images or NilList(),
            m.tool_calls or NilList(),
            m.tool_name,
            m.tool_call_id,
        )
        for m in messages
    ] or NilList()


def think_flags(think: bool | str | None) -> dict[str, Any]:
    """Ollama's ThinkValue: Bool() and String()."""
    if isinstance(think, str):
        on = think in ("high", "medium", "low", "max")
        return {"Think": on, "ThinkLevel": think, "IsThinkSet": True}
    return {
        "Think": bool(think),
        "ThinkLevel": "medium" if think else "",
        "IsThinkSet": think is not None,
    }
