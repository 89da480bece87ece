"""Anthropic's Messages API as a translation over the same generations (`generation`).

    POST /v1/messages                 system (a string or text blocks), messages with text,
                                      tool_use and tool_result blocks (and system messages
                                      among them), tools (custom; bash and text editor; server
                                      tools left out), tool_choice (auto,
                                      any, tool, none), max_tokens (required), stop_sequences,
                                      temperature, top_p, top_k, metadata, thinking,
                                      output_config (format: a JSON schema; effort), stream
    POST /v1/messages/count_tokens    {"input_tokens": N} for the same request body

A streamed answer is Anthropic's event sequence: message_start, then per content block
content_block_start, content_block_delta (text_delta, thinking_delta, input_json_delta) and
content_block_stop, then message_delta (stop_reason, usage) and message_stop. stop_reason is
"tool_use" when the answer is tool calls, "max_tokens" when the token budget or the context ran
out, "stop_sequence" (with `stop_sequence`) when a stop string ended it, else "end_turn". Errors
are {"type": "error", "error": {"type", "message"}}; one after the stream has begun arrives as
an `error` event. The API key may come as `x-api-key` (see security.Guard).
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localrun import media
from localrun.errors import BadRequestError, LocalrunError
from localrun.formats import reasoning as thinking_mod
from localrun.request import GenRequest
from localrun.server import core, image_urls
from localrun.server.body import Body, read_json
from localrun.server.errors import body_of, refused, unexpected
from localrun.server.generation import Generation, count_prompt, runs, start
from localrun.server.streaming import event_stream, sse

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
    call_id = block.get("id") if isinstance(block.get("id"), str) else _id("toolu")
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


# Anthropic-defined tools that the client runs: the model is given their schema.
_EDITOR_INPUT = {
    "type": "object",
    "properties": {
        "command": {
            "type": "string",
            "enum": ["view", "create", "str_replace", "insert", "undo_edit"],
        },
        "path": {"type": "string", "description": "Absolute path to a file or directory."},
        "file_text": {"type": "string", "description": "With create: the file's content."},
        "old_str": {"type": "string", "description": "With str_replace: the text to replace."},
        "new_str": {"type": "string", "description": "With str_replace and insert: new text."},
        "insert_line": {"type": "integer", "description": "With insert: the line after which."},
        "view_range": {"type": "array", "items": {"type": "integer"}},
    },
    "required": ["command", "path"],
}
_CLIENT_TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "bash_": (
        "Run a command in a bash shell; `restart` restarts the shell.",
        {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The command to run."},
                "restart": {"type": "boolean"},
            },
        },
    ),
    "text_editor_": (
        "View, create and edit files: view, create, str_replace, insert, undo_edit.",
        _EDITOR_INPUT,
    ),
}


def _tools(body: Body) -> tuple[list[dict[str, Any]] | None, list[str]]:
    """The tools the model is offered, and the server tools left out: custom tools, and
    Anthropic's client-run bash and text editor tools with their schema; the server tools
    (web search, web fetch, code execution ...) run on Anthropic's side, which localrun has not,
    so they are left out (core.tools_left_out names them)."""
    tools = body.get("tools", list)
    if tools is None:
        return None, []
    out = []
    left_out = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise BadRequestError(f"tools[{index}] must be an object")
        kind = tool.get("type", "custom")
        client = next(
            (v for k, v in _CLIENT_TOOLS.items() if isinstance(kind, str) and kind.startswith(k)),
            None,
        )
        if client is not None:
            description, schema = client
            function = {"name": tool.get("name"), "description": description, "parameters": schema}
        elif kind in ("custom", None):
            # as vLLM's Messages route and every chat template's clients order a function
            function = {"name": tool.get("name")}
            if isinstance(tool.get("description"), str):
                function["description"] = tool["description"]
            function["parameters"] = tool.get("input_schema")
            if tool.get("strict") is True:  # its calls follow input_schema (worker/forced.lazy)
                function["strict"] = True
        elif isinstance(kind, str):
            left_out.append(kind)
            continue
        else:
            raise BadRequestError(f"tools[{index}].type must be a string")
        out.append({"type": "function", "function": function})
    return out, left_out


def _tool_choice(body: Body) -> Any:
    choice = body.get("tool_choice", dict)
    if choice is None:
        return None
    kind = choice.get("type")
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequestError('tool_choice {"type": "tool"} needs the tool\'s name')
        return {"type": "function", "function": {"name": name}}
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))
    if mapped is None:
        raise BadRequestError(f"tool_choice type {kind!r} is not one of auto, any, tool, none")
    return mapped


def _think(body: Body) -> bool | str | None:
    """`thinking` (enabled, adaptive: the model's default, disabled) and output_config.effort
    (with adaptive thinking, a model that cannot think answers without: see _adaptive)."""
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
    """Whether the model decides whether to think (`adaptive`, or an effort alone): one that
    cannot think then answers without, as Anthropic's do."""
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


def options_of(body: Body) -> dict[str, Any]:
    """The request's sampling fields, stop sequences and max_tokens as options."""
    options = body.sampling(("temperature", "top_p"))
    top_k = body.get("top_k", int)
    if top_k is not None:
        options["top_k"] = top_k
    stops = body.stops("stop_sequences", MAX_STOP_SEQUENCES)
    if stops:
        options["stop"] = stops
    max_tokens = body.get("max_tokens", int)
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    return options


def _request(body: Body) -> tuple[GenRequest, list[str]]:
    """The core request of a Messages body (shared by create and count_tokens), and the
    server tools it offered that were left out."""
    model = body.model()
    system = body.data.get("system")
    messages = messages_of(body.data.get("messages"))
    if system is not None:
        messages.insert(0, {"role": "system", "content": _text_of(system, "system")})
    options = options_of(body)
    body.get("metadata", dict)  # accepted (user_id); a wrong type is still refused
    tools, left_out = _tools(body)
    req = GenRequest(
        model,
        messages=messages,
        options=options,
        tools=tools,
        tool_choice=_tool_choice(body),
        format=_format(body),
        # Anthropic's output_config.format has no strict flag: the keywords the engine cannot
        # enforce are checked on the finished answer (server.answer_schema), not refused.
        format_lenient=True,
        think=_think(body),
        think_adaptive=_adaptive(body),
        parallel_tool_calls=not (body.get("tool_choice", dict) or {}).get(
            "disable_parallel_tool_use", False
        ),
    )
    return req, left_out


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _stop_reason(generation: Generation) -> tuple[str, str | None]:
    if generation.tool_calls:
        return "tool_use", None
    if generation.done_reason == "length":
        return "max_tokens", None
    if generation.stop_sequence is not None:
        return "stop_sequence", generation.stop_sequence
    return "end_turn", None


def _usage(generation: Generation) -> dict[str, Any]:
    t = generation.stream.timings
    return {
        "input_tokens": generation.prompt_count,
        "output_tokens": t.eval_tokens,
        # The KV cache reuse that Anthropic bills as cache reads.
        "cache_read_input_tokens": t.cached_tokens,
        "cache_creation_input_tokens": 0,
    }


def _tool_blocks(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [
        {
            "type": "tool_use",
            "id": "toolu_" + call["id"].removeprefix("call_"),
            "name": call["name"],
            "input": call["arguments"],
        }
        for call in calls or []
    ]


async def messages(request: Request) -> Response:
    body = Body(await read_json(request))
    max_tokens = body.get("max_tokens", int)
    if max_tokens is None:
        raise BadRequestError("max_tokens is required", hint='send {"max_tokens": 1024, ...}')
    if max_tokens < 1:
        raise BadRequestError("max_tokens must be at least 1")
    await image_urls.inline(body.data, "anthropic")
    req, left_out = _request(body)
    generation = await start(request, req)
    head = {"id": _id("msg"), "type": "message", "role": "assistant", "model": req.model}
    headers = core.tools_left_out(left_out)
    if body.flag("stream", False):
        return event_stream(_events(generation, head), headers)
    await core.until_disconnect(request, generation.collect)
    content: list[dict[str, Any]] = []
    if generation.thinking:
        content.append({"type": "thinking", "thinking": generation.thinking, "signature": ""})
    tools = _tool_blocks(generation.tool_calls)
    if generation.text or not tools:
        content.append({"type": "text", "text": generation.text})
    reason, sequence = _stop_reason(generation)
    return JSONResponse(
        {
            **head,
            "content": content + tools,
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": _usage(generation),
        },
        headers=headers,
    )


async def _events(generation: Generation, head: dict[str, Any]) -> AsyncIterator[bytes]:
    """Anthropic's stream: a content block per run of thinking or text, then the tool calls."""
    message = {**head, "content": [], "stop_reason": None, "stop_sequence": None}
    # The prompt's count is known once its first piece came (start() awaits it), as
    # Anthropic's API and llama-server tell it here; the answer's count comes at the end.
    usage = {**_usage(generation), "output_tokens": 0}
    yield _event("message_start", message={**message, "usage": usage})
    blocks = _Blocks()
    try:
        async with contextlib.aclosing(runs(generation)) as pieces:
            async for run in pieces:
                if run.kind == "calls":
                    events = blocks.tools(_tool_blocks(run.calls))
                elif run.kind == "late":
                    events = blocks.end(_tool_blocks(run.calls))
                else:
                    events = blocks.delta(run.kind, run.text)
                for event in events:
                    yield event
        reason, sequence = _stop_reason(generation)
        yield _event(
            "message_delta",
            delta={"stop_reason": reason, "stop_sequence": sequence},
            usage=_usage(generation),
        )
        yield _event("message_stop")
    except LocalrunError as exc:
        refused("POST", "/v1/messages (streamed)", exc)
        yield sse(body_of(exc, "anthropic"), event="error")
    except Exception as exc:
        yield sse(body_of(unexpected(exc, "a streamed answer"), "anthropic"), event="error")


def _event(kind: str, **fields: Any) -> bytes:
    return sse({"type": kind, **fields}, event=kind)


class _Blocks:
    """The content blocks of one stream, numbered as they open; one is open at a time (a text
    or a thinking block), and another kind of piece closes it. Methods return the events."""

    def __init__(self) -> None:
        self.index = -1
        self.open_kind: str | None = None  # "text" or "thinking": the block being streamed

    def delta(self, kind: str, text: str) -> list[bytes]:
        """A piece of `kind`, opening a block of that kind if need be."""
        out = self.switch(kind) if self.open_kind != kind else []
        delta = (
            {"type": "text_delta", "text": text}
            if kind == "text"
            else {"type": "thinking_delta", "thinking": text}
        )
        out.append(_event("content_block_delta", index=self.index, delta=delta))
        return out

    def switch(self, kind: str | None) -> list[bytes]:
        """Close the open block, if any, and open one of `kind` (None: none)."""
        out = []
        if self.open_kind is not None:
            out.append(_event("content_block_stop", index=self.index))
        self.open_kind = kind
        if kind is not None:
            self.index += 1
            block = (
                {"type": "text", "text": ""}
                if kind == "text"
                else {"type": "thinking", "thinking": "", "signature": ""}
            )
            out.append(_event("content_block_start", index=self.index, content_block=block))
        return out

    def end(self, tools: list[dict[str, Any]]) -> list[bytes]:
        """Close the last block (an empty answer is still one, empty, text block), then add
        the tool_use blocks not streamed yet."""
        empty = self.index < 0 and not tools
        out = self.switch("text") if self.open_kind is None and empty else []
        return out + self.tools(tools) + self.switch(None)

    def tools(self, tools: list[dict[str, Any]]) -> list[bytes]:
        """A tool_use block per call, as soon as it is read: the open block closes first,
        then the call's input comes as an input_json_delta."""
        if not tools:
            return []
        out = self.switch(None)
        for tool in tools:
            self.index += 1
            out.append(
                _event("content_block_start", index=self.index, content_block={**tool, "input": {}})
            )
            arguments = json.dumps(tool["input"], ensure_ascii=False)
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(_event("content_block_delta", index=self.index, delta=delta))
            out.append(_event("content_block_stop", index=self.index))
        return out


async def count_tokens(request: Request) -> Response:
    """The tokens the prompt of this Messages request takes, rendered by the model's template."""
    body = Body(await read_json(request))
    await image_urls.inline(body.data, "anthropic")
    req, _ = _request(body)
    return JSONResponse({"input_tokens": await count_prompt(request, req)})
