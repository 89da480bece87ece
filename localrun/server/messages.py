"""Chat messages as a request sends them, checked into the shape the runner takes.

Ollama's and OpenAI's chat messages are read here (`chat_messages`); the Responses API and
Anthropic's Messages turn their own input into these messages first (see their modules).
"""

from __future__ import annotations

from typing import Any

from localrun.errors import BadRequestError


def chat_messages(value: Any, *, openai: bool = False) -> list[dict[str, Any]]:
    """Validate chat messages into the shape the worker takes.

    OpenAI's content may be a list of parts (text only here) and its `developer` role is a
    system message; tool calls and tool results pass through for the worker to render.
    """
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequestError("messages must be a list")
    out: list[dict[str, Any]] = []
    for index, raw in enumerate(value):
        if not isinstance(raw, dict):
            raise BadRequestError(f"messages[{index}] must be an object")
        role = raw.get("role")
        if openai and role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise BadRequestError(
                f"messages[{index}].role must be system, user, assistant or tool, not {role!r}"
            )
        if raw.get("images"):
            raise BadRequestError("images are not supported: localrun runs text models")
        content = raw.get("content")
        if isinstance(content, list):
            content = _text_parts(content, index)
        if content is not None and not isinstance(content, str):
            raise BadRequestError(f"messages[{index}].content must be a string")
        message: dict[str, Any] = {"role": role, "content": content or ""}
        calls = raw.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise BadRequestError(f"messages[{index}].tool_calls must be a list")
            message["tool_calls"] = calls
        for key in ("tool_call_id", "tool_name", "name"):
            if isinstance(raw.get(key), str):
                message[key] = raw[key]
        out.append(message)
    return out


def _text_parts(parts: list[Any], index: int) -> str:
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise BadRequestError(
                f"messages[{index}] has a {kind!r} part; localrun runs text models"
            )
    return "".join(texts)
