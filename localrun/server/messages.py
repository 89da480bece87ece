"""Chat messages as a request sends them, checked into the shape the runner takes.

Ollama's and OpenAI's chat messages are read here (`chat_messages`); the Responses API and
Anthropic's Messages turn their own input into these messages first (see their modules).
Tool results come out paired with their calls by id, as OpenAI's are
(`request.pair_tool_results`).
"""

from __future__ import annotations

from typing import Any

from localrun.errors import BadRequestError
from localrun.request import media as media_mod
from localrun.request.genrequest import pair_tool_results


def chat_messages(
    value: Any, *, openai: bool = False, translated: bool = False
) -> list[dict[str, Any]]:
    """Validate chat messages into the shape the worker takes.

    OpenAI's content may be a list of parts (text, image_url, input_audio) and its `developer`
    role is a system message; Ollama's `images` go before the text; tool calls and tool
    results pass through for the worker to render. `translated`: messages another dialect
    made, whose media (and their markers) are the core's already.
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
        content = raw.get("content")
        media: list[media_mod.Media] = []
        if translated and isinstance(content, str):
            pass  # checked where it was translated
        elif isinstance(content, list):
            content, media = _parts(content, index)
        elif isinstance(content, str):
            media_mod.count_markers(content, f"messages[{index}].content")
        if content is not None and not isinstance(content, str):
            raise BadRequestError(f"messages[{index}].content must be a string")
        message: dict[str, Any] = {"role": role, "content": content or ""}
        if media:
            message["media"] = [m.to_wire() for m in media]
        elif translated and raw.get("media"):
            message["media"] = raw["media"]
        message = media_mod.with_images(message, media_mod.ollama_media(raw, f"messages[{index}]"))
        calls = raw.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise BadRequestError(f"messages[{index}].tool_calls must be a list")
            message["tool_calls"] = calls
        for key in ("tool_call_id", "tool_name", "name"):
            if isinstance(raw.get(key), str):
                message[key] = raw[key]
        # An earlier answer's reasoning (OpenAI-style servers' name, then Ollama's), for the
        # templates that show it in the history.
        thought = raw.get("reasoning_content", raw.get("thinking"))
        if role == "assistant" and isinstance(thought, str) and thought:
            message["reasoning_content"] = thought
        out.append(message)
    media_mod.check_count(sum(len(m.get("media", ())) for m in out))
    return pair_tool_results(out)


def _parts(parts: list[Any], index: int) -> tuple[str, list[media_mod.Media]]:
    """OpenAI's content parts: the text with a marker where each image or audio part goes."""
    texts: list[str] = []
    media: list[media_mod.Media] = []
    for n, part in enumerate(parts):
        where = f"messages[{index}].content[{n}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if isinstance(part, str):
            media_mod.count_markers(part, where)
            texts.append(part)
        elif kind == "text":
            text = str(part.get("text", ""))
            media_mod.count_markers(text, where)
            texts.append(text)
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            media.append(media_mod.from_url(url, f"{where}.image_url"))
            texts.append(media_mod.MARKER)
        elif kind == "input_audio":
            audio = part.get("input_audio")
            data = audio.get("data") if isinstance(audio, dict) else None
            media.append(media_mod.decode(data, f"{where}.input_audio.data", "audio"))
            texts.append(media_mod.MARKER)
        else:
            shown = kind if kind is not None else type(part).__name__
            raise BadRequestError(
                f"{where} has a {shown!r} part; localrun takes text, image_url and input_audio"
            )
        media_mod.check_count(len(media))
    return "".join(texts), media
