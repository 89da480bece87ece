"""Anthropic's Messages API as a translation over the same generations (`generation`).

    POST /v1/messages               system, messages (text, image, tool_use, tool_result blocks),
                                    tools (custom; bash, text editor, memory), tool_choice
                                    (auto, any, tool, none), max_tokens (required),
                                    stop_sequences, temperature, top_p, top_k, metadata,
                                    thinking, output_config (format: a JSON schema; effort), stream
    POST /v1/messages/count_tokens  {"input_tokens": N} for the same request body
    POST /v1/complete               the legacy Text Completions (complete.py)

stream.py shapes the Message, its usage and the stream's events. stop_reason is "tool_use" for
tool calls, "max_tokens" when the token budget or the context ran out, "stop_sequence" when a
stop string ended it, else "end_turn". Server tools are left out (tools.py). Errors are
{"type": "error", "error": {"type", "message"}, "request_id"}; one after the stream has begun
arrives as an `error` event. The API key may come as `x-api-key` (see security.Guard).
"""

from __future__ import annotations

import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localrun.errors import BadRequestError
from localrun.formats import reasoning as thinking_mod
from localrun.request import media
from localrun.request.genrequest import GenRequest
from localrun.server import core, image_urls
from localrun.server.anthropic import stream as answer
from localrun.server.anthropic.tools import tool_choice_of, tools_of
from localrun.server.body import Body, read_json
from localrun.server.generation import count_prompt, start
from localrun.server.http import request_ids
from localrun.server.streaming import event_stream

# Anthropic's own bound on stop_sequences is far higher; this keeps the stop filter cheap.
MAX_STOP_SEQUENCES = 16


def _text_of(blocks: Any, where: str) -> str:
    """The text of a string or a list of text blocks (images are refused: text models)."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise BadRequestError(f"{where} must be a string or a list of content blocks")
    texts = []
    for index, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise BadRequestError(f"{where}[{index}] must be a content block object")
        kind = block.get("type")
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise BadRequestError(f"{where}[{index}].text must be a string")
            texts.append(block["text"])
        elif kind in ("image", "document"):
            raise BadRequestError(f"{where}[{index}] is an {kind}; localrun runs text models")
        else:
            raise BadRequestError(f"{where}[{index}] has type {kind!r}; a text block is expected")
    return "".join(texts)


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequestError(f"{where}.tool_use_id must be a non-empty string")
    content = block.get("content")
    text = "" if content is None else _text_of(content, f"{where}.content")
    if block.get("is_error") is True:
        text = f"Error: {text}"
    return {"role": "tool", "content": text, "tool_call_id": call_id}


def _tool_use(block: dict[str, Any], where: str) -> dict[str, Any]:
    name = block.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequestError(f"{where}.name must be a non-empty string")
    arguments = block.get("input", {})
    if not isinstance(arguments, dict):
        raise BadRequestError(f"{where}.input must be an object")
    call_id = block.get("id") if isinstance(block.get("id"), str) else new_id("toolu")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def messages_of(value: Any) -> list[dict[str, Any]]:
    """Anthropic messages -> the core's chat messages.

    A user turn's tool_result blocks become tool messages (before the turn's text, which
    follows the results it comments on); an assistant turn's tool_use blocks become its
    tool_calls. Earlier thinking blocks are dropped, as Anthropic's own models drop them. A
    `system` message (text only) stays a system message at its place: the template renders it
    there, or the prompt folds it into the turn beside it (formats.adapt).
    """
    if not isinstance(value, list) or not value:
        raise BadRequestError("messages must be a non-empty list")
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_use id -> tool name, for the results that answer it
    for index, raw in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(raw, dict):
            raise BadRequestError(f"{where} must be an object")
        role = raw.get("role")
        if role == "system":  # a mid-conversation system message (Claude Code's)
            out.append(_system(raw, where))
            continue
        if role not in ("user", "assistant"):
            raise BadRequestError(f"{where}.role must be user, assistant or system, not {role!r}")
        content = raw.get("content")
        if isinstance(content, str):
            media.count_markers(content, f"{where}.content")
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise BadRequestError(f"{where}.content must be a string or a list of blocks")
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        images: list[dict[str, str]] = []
        for number, block in enumerate(content):
            at = f"{where}.content[{number}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(_text_of([block], f"{where}.content"))
                media.count_markers(texts[-1], at)
            elif kind == "image" and role == "user":
                images.append(_image(block, at).to_wire())
                media.check_count(len(images))
                texts.append(media.MARKER)
            elif kind == "tool_result" and role == "user":
                result = _tool_result(block, at)
                if result["tool_call_id"] in names:
                    result["tool_name"] = names[result["tool_call_id"]]
                out.append(result)
            elif kind == "tool_use" and role == "assistant":
                call = _tool_use(block, at)
                names[call["id"]] = call["function"]["name"]
                calls.append(call)
            elif kind in ("thinking", "redacted_thinking") and role == "assistant":
                continue
            elif kind == "document":
                raise BadRequestError(
                    f"{at} is a document; localrun takes text and images",
                    hint="send the document's text as a text block",
                )
            else:
                raise BadRequestError(f"{at} has type {kind!r}, which a {role} turn cannot hold")
        if texts or calls or not content:
            message: dict[str, Any] = {"role": role, "content": "".join(texts)}
            if calls:
                message["tool_calls"] = calls
            if images:
                message["media"] = images
            out.append(message)
    media.check_count(sum(len(m.get("media", ())) for m in out))
    return out


def _system(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """A system message among the turns: its text, kept at its place."""
    text = _text_of(raw.get("content"), f"{where}.content")
    media.count_markers(text, f"{where}.content")
    return {"role": "system", "content": text}


def _image(block: dict[str, Any], where: str) -> media.Media:
    """An image block: base64 data (a URL source is refused: the server fetches nothing)."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise BadRequestError(f"{where}.source must be an object")
    if source.get("type") == "url":
        return media.from_url(source.get("url"), f"{where}.source.url")
    if source.get("type") != "base64":
        raise BadRequestError(f"{where}.source.type must be base64 or url")
    return media.decode(source.get("data"), f"{where}.source.data")


def _think(body: Body) -> bool | str | None:
    """The think option from `thinking` (enabled, adaptive, disabled) and output_config.effort.

    Adaptive leaves it to the model: one that cannot think answers without (see _adaptive).
    """
    thinking = body.get("thinking", dict)
    effort = (body.get("output_config", dict) or {}).get("effort")
    level = None if effort is None else thinking_mod.from_effort(effort, "output_config.effort")
    if thinking is None:
        return None
    kind = thinking.get("type")
    if kind == "disabled":
        return False
    if kind not in ("enabled", "adaptive", "between_tools"):
        raise BadRequestError(f"thinking type {kind!r} is not enabled, adaptive or disabled")
    if level is not None:
        return level
    return None if kind == "adaptive" else True


def _adaptive(body: Body) -> bool:
    """Whether the model decides whether to think: `adaptive`, or an effort alone.

    A model that cannot think then answers without, as Anthropic's do.
    """
    thinking = body.get("thinking", dict)
    return thinking is None or thinking.get("type") == "adaptive"


def _format(body: Body) -> dict[str, Any] | None:
    """Structured output: output_config.format {"type": "json_schema", "schema": {...}}."""
    spec = (body.get("output_config", dict) or {}).get("format")
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("type") != "json_schema":
        raise BadRequestError('output_config.format must be {"type": "json_schema", "schema": ...}')
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise BadRequestError("output_config.format.schema must be a JSON schema object")
    return schema


def options_of(body: Body, most: str = "max_tokens") -> dict[str, Any]:
    """The request's sampling fields, stop sequences and bound on the answer's tokens, as options.

    `most` names the bound: max_tokens, or /v1/complete's max_tokens_to_sample.
    """
    options = body.sampling(("temperature", "top_p"))
    top_k = body.get("top_k", int)
    if top_k is not None:
        options["top_k"] = top_k
    stops = body.stops("stop_sequences", MAX_STOP_SEQUENCES)
    if stops:
        options["stop"] = stops
    max_tokens = body.get(most, int)
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    return options


def _request(body: Body) -> tuple[GenRequest, list[str]]:
    """A Messages body's core request, and the server tools it offered that were left out.

    create and count_tokens share it.
    """
    model = body.model()
    system = body.data.get("system")
    messages = messages_of(body.data.get("messages"))
    if system is not None:
        messages.insert(0, {"role": "system", "content": _text_of(system, "system")})
    options = options_of(body)
    body.get("metadata", dict)  # accepted (user_id); a wrong type is still refused
    tools, left_out = tools_of(body)
    req = GenRequest(
        model,
        messages=messages,
        options=options,
        tools=tools,
        tool_choice=tool_choice_of(body),
        format=_format(body),
        # Anthropic's output_config.format has no strict flag: the keywords the engine cannot
        # enforce are checked on the finished answer (server.schema.answer), not refused.
        format_lenient=True,
        think=_think(body),
        think_adaptive=_adaptive(body),
        parallel_tool_calls=not (body.get("tool_choice", dict) or {}).get(
            "disable_parallel_tool_use", False
        ),
    )
    return req, left_out


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def check_most(body: Body, key: str = "max_tokens") -> None:
    """Anthropic's bound on the answer's tokens is required, and at least 1."""
    most = body.get(key, int)
    if most is None:
        raise BadRequestError(f"{key} is required", hint=f'send {{"{key}": 1024, ...}}')
    if most < 1:
        raise BadRequestError(f"{key} must be at least 1")


async def messages(request: Request) -> Response:
    body = Body(await read_json(request))
    check_most(body)
    await image_urls.inline(body.data, "anthropic")
    req, left_out = _request(body)
    generation = await start(request, req)
    head = answer.head(new_id("msg"), req.model)
    headers = core.tools_left_out(left_out)
    beta = request.query_params.get("beta") == "true"  # the SDK's client.beta.messages
    if body.flag("stream", False):
        named = request_ids.of(request)
        return event_stream(answer.events(generation, head, named, beta), headers)
    await core.until_disconnect(request, generation.collect)
    return JSONResponse(answer.message(generation, head, beta), headers=headers)


async def count_tokens(request: Request) -> Response:
    """The tokens the prompt of this Messages request takes, rendered by the model's template."""
    body = Body(await read_json(request))
    await image_urls.inline(body.data, "anthropic")
    req, _ = _request(body)
    counted: dict[str, Any] = {"input_tokens": await count_prompt(request, req)}
    if request.query_params.get("beta") == "true":  # the beta API's: no context was edited
        counted["context_management"] = None
    return JSONResponse(counted)
