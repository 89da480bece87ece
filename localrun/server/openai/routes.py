"""OpenAI's API as a translation over the same generations as /api (`generation`).

    GET  /v1/models, /v1/models/{id}
    POST /v1/chat/completions   messages, stream (SSE, `data: [DONE]`), stream_options,
                                max_tokens / max_completion_tokens, temperature, top_p, seed,
                                stop, penalties, response_format (json_object, json_schema),
                                tools, tool_choice, n, reasoning_effort, vLLM's prompt_logprobs
    POST /v1/completions        the legacy completions (completions.py)
    POST /v1/embeddings         a string or a list; encoding_format float or base64

`n` choices (at most LOCALRUN_MAX_CHOICES) are answered together on as many slots; the runner
reads their prompt once. Thinking comes in `reasoning_content`. finish_reason is "tool_calls"
for tool calls, "length" when num_predict or the context ran out, else "stop". Errors are
{"error": {"message", "type", "code", "param"}}; one after the stream has started arrives as a
last `data: {"error": ...}` event, which OpenAI's client raises.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from localrun.errors import BadRequestError, LocalrunError, ModelNotFoundError
from localrun.formats import reasoning
from localrun.request.genrequest import GenRequest
from localrun.server import core, embedding, image_urls
from localrun.server.body import Body, read_json
from localrun.server.errors import body_of, unexpected
from localrun.server.generation import Generation, merged, start_choices
from localrun.server.logprobs import (
    logprob_items,
    prompt_logprobs_of,
    top_logprobs,
    vllm_entries,
)
from localrun.server.messages import chat_messages
from localrun.server.streaming import Lazy, event_stream, made_as_sent, sse, sse_made
from localrun.worker.protocol import Chunk

# OpenAI request fields -> localrun options (the extra ones are llama-server's extensions).
_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repeat_penalty",  # vLLM's and SGLang's name
    "repeat_penalty": "repeat_penalty",  # llama-server's (it wins when both are sent)
    "draft_num_predict": "draft_num_predict",
}


def options_of(body: Body, *, echo: bool = False) -> dict[str, Any]:
    """The request's sampling fields and budget as options.

    With `echo` (the legacy completions' prompt returned before its answer), a budget of 0 asks for
    the prompt alone.
    """
    options = body.sampling(_SAMPLING)
    speculate = body.get("speculate", str)  # localrun's own, like llama-server's extra fields
    if speculate is not None:
        options["speculate"] = speculate
    hint = None if echo else "0 is for a prompt echoed alone (echo: true)"
    keys = ("max_completion_tokens", "max_tokens")
    return options | body.bounds(*keys, least=0 if echo else 1, hint=hint)


def format_of(body: Body) -> str | dict[str, Any] | None:
    spec = body.get("response_format", dict)
    if spec is None or spec.get("type") in (None, "text"):
        return None
    if spec.get("type") == "json_object":
        return "json"
    if spec.get("type") == "json_schema":
        inner = spec.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, dict) else None
        if not isinstance(schema, dict):
            raise BadRequestError("response_format.json_schema.schema must be a JSON schema")
        return schema
    raise BadRequestError(f"response_format type {spec.get('type')!r} is not supported")


def lenient_of(body: Body) -> bool:
    """Whether a json_schema `response_format` is taken as Ollama's `format` is.

    Without `strict: true` the client asked for no guarantee. The keywords the engine cannot enforce
    are then checked on the finished answer (server.schema.answer) rather than refused. With it, the
    schema is enforced whole or refused, as in OpenAI's strict mode.
    """
    spec = body.get("response_format", dict) or {}
    inner = spec.get("json_schema")
    return not (isinstance(inner, dict) and inner.get("strict") is True)


def think_of(body: Body) -> bool | str | None:
    """`reasoning_effort`, or llama-server's `chat_template_kwargs.enable_thinking`."""
    effort = body.data.get("reasoning_effort")
    if effort is not None:
        return reasoning.from_effort(effort, "reasoning_effort")
    kwargs = body.get("chat_template_kwargs", dict) or {}
    enabled = kwargs.get("enable_thinking")
    if enabled is not None and not isinstance(enabled, bool):
        raise BadRequestError("chat_template_kwargs.enable_thinking must be a boolean")
    return enabled


def _chat_logprobs(body: Body) -> int | None:
    """Chat's `logprobs: true` with `top_logprobs` alternatives (None: not asked for)."""
    top = top_logprobs(body.data.get("top_logprobs"))
    if not body.flag("logprobs", False):
        if body.data.get("top_logprobs") is not None:
            raise BadRequestError("top_logprobs needs logprobs: true")
        return None
    return top


def finish_reason(generation: Generation) -> str:
    if generation.tool_calls:
        return "tool_calls"
    return "length" if generation.done_reason == "length" else "stop"


def usage_of(
    generations: list[Generation], prompts: list[Generation] | None = None
) -> dict[str, Any]:
    """The usage: each prompt counted once, as OpenAI counts it for `n` choices, and all tokens.

    `prompts` holds one generation of each prompt; without it, the first generation alone counts.
    Every choice's tokens count.
    """
    first = generations[0].stream.timings
    prompt = sum(g.prompt_count for g in prompts or generations[:1])
    completion = sum(g.stream.timings.eval_tokens for g in generations)
    drafted = sum(g.stream.timings.draft_tokens for g in generations)
    accepted = sum(g.stream.timings.draft_accepted for g in generations)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": first.cached_tokens},
        # OpenAI's fields for predicted outputs, which speculative decoding's drafts are.
        "completion_tokens_details": {
            "accepted_prediction_tokens": accepted,
            "rejected_prediction_tokens": drafted - accepted,
        },
    }


def _tool_calls(generation: Generation) -> list[dict[str, Any]] | None:
    if not generation.tool_calls:
        return None
    return [_tool_call(call) for call in generation.tool_calls]


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": call["id"],
        "type": "function",
        "function": {
            "name": call["name"],
            "arguments": json.dumps(call["arguments"], ensure_ascii=False),
        },
    }


def _call_deltas(index: int, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A choice's chunks for tool calls, as OpenAI streams them.

    Each call's id and name come with empty arguments, then the arguments as a delta of their own.
    """
    out = []
    for call in calls:
        whole = _tool_call(call)
        function = whole["function"]
        for delta in (
            {**whole, "function": {"name": function["name"], "arguments": ""}},
            {"function": {"arguments": function["arguments"]}},
        ):
            entry = {"tool_calls": [{"index": call["index"], **delta}]}
            out.append({"index": index, "delta": entry, "logprobs": None, "finish_reason": None})
    return out


def head_of(prefix: str, model: str) -> dict[str, Any]:
    """The fields that every object of one answer repeats."""
    return {
        "id": f"{prefix}-{secrets.token_hex(12)}",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "localrun",
    }


def stream_of(
    body: Body,
    generations: list[Generation],
    head: dict[str, Any],
    kind: str,
    piece_choice: Callable[[int, Chunk, bool], dict[str, Any]],
    last_choices: Callable[[int, int], list[dict[str, Any]]],
    opening: Callable[[int], dict[str, Any]] | None = None,
    *,
    held: Callable[[int], bool] | None = None,
    off_loop_first: bool = False,
) -> StreamingResponse:
    """The answer as server-sent chunks of object `kind`.

    With `stream_options.include_usage`, each chunk has `"usage": null` and a last chunk holds the
    usage. `opening(index)`, where given, is each choice's first chunk, before any of its pieces;
    else its first piece has `first` set. A choice's pieces wait while `held(index)`. With
    `off_loop_first`, each choice's first chunk (an echoed, scored prompt's: streaming.Lazy) is
    written on a worker thread.
    """
    include_usage = _include_usage(body)

    def chunk(fields: dict[str, Any]) -> dict[str, Any]:
        out = {**head, "object": kind, **fields}
        if include_usage and "usage" not in out:
            out["usage"] = None
        return out

    shape = _Shape(chunk, piece_choice, last_choices, opening, held, off_loop_first)
    return event_stream(_stream_events(generations, shape, include_usage))


@dataclass
class _Shape:
    """How a stream's chunks are made (stream_of's arguments)."""

    chunk: Callable[[dict[str, Any]], dict[str, Any]]
    piece_choice: Callable[[int, Chunk, bool], dict[str, Any]]
    last_choices: Callable[[int, int], list[dict[str, Any]]]
    opening: Callable[[int], dict[str, Any]] | None
    held: Callable[[int], bool] | None
    off_loop_first: bool

    async def first(self, index: int, piece: Chunk) -> bytes:
        obj = self.chunk({"choices": [self.piece_choice(index, piece, True)]})
        if self.off_loop_first:
            return await anyio.to_thread.run_sync(sse_made, obj)
        return sse(obj)


async def _stream_events(
    generations: list[Generation], shape: _Shape, include_usage: bool
) -> AsyncIterator[bytes]:
    """SSE events of the answers, one per choice, interleaved as they come.

    Each choice's opening chunk, pieces and finishing chunks come, then the usage and [DONE].
    """
    chunk = shape.chunk
    started: set[int] = set()
    streamed = [0] * len(generations)  # each choice's tool calls streamed
    waiting: dict[int, list[Chunk]] = {}  # pieces of choices held back

    async def events_of(index: int, piece: Chunk) -> list[bytes]:
        out = []
        if piece.text or piece.thinking or piece.logprobs or piece.calls:
            if index not in started:
                started.add(index)
                out.append(await shape.first(index, piece))
            elif piece.text or piece.thinking or piece.logprobs:
                out.append(sse(chunk({"choices": [shape.piece_choice(index, piece, False)]})))
        out += [sse(chunk({"choices": [c]})) for c in _call_deltas(index, piece.calls or [])]
        streamed[index] += len(piece.calls or [])
        return out

    async def released(everyone: bool = False) -> list[bytes]:
        out = []
        for index in [i for i in waiting if everyone or not (shape.held and shape.held(i))]:
            for piece in waiting.pop(index):
                out += await events_of(index, piece)
        return out

    try:
        if shape.opening is not None:
            for index in range(len(generations)):
                yield sse(chunk({"choices": [shape.opening(index)]}))
                started.add(index)
        async with contextlib.aclosing(merged(generations)) as chunks:
            async for index, piece in chunks:
                if shape.held is not None and (index in waiting or shape.held(index)):
                    waiting.setdefault(index, []).append(piece)
                else:
                    for data in await events_of(index, piece):
                        yield data
                for data in await released():
                    yield data
        for data in await released(everyone=True):
            yield data
        for index in range(len(generations)):
            if index not in started:
                yield await shape.first(index, Chunk())
            for choice in shape.last_choices(index, streamed[index]):
                yield sse(chunk({"choices": [choice]}))
        if include_usage:
            yield sse(chunk({"choices": [], "usage": usage_of(generations)}))
        yield b"data: [DONE]\n\n"
    except LocalrunError as exc:
        yield sse(body_of(exc, "openai"))
    except Exception as exc:
        yield sse(body_of(unexpected(exc, "a streamed answer"), "openai"))


def _include_usage(body: Body) -> bool:
    options = body.get("stream_options", dict) or {}
    return bool(options.get("include_usage"))


async def chat_completions(request: Request) -> Response:
    body = Body(await read_json(request))
    await image_urls.inline(body.data, "openai")
    req = _chat_request(body)
    generations = await start_choices(request, req, body.get("n", int, 1))
    base = head_of("chatcmpl", req.model)
    with_logprobs = req.logprobs is not None
    if not body.flag("stream", False):
        await collect(request, generations)
        choices = [_chat_choice(i, g, with_logprobs) for i, g in enumerate(generations)]
        answer = {**base, "object": "chat.completion", "choices": choices}
        answer["usage"] = usage_of(generations)
        if req.prompt_logprobs is not None:  # vLLM's, beside the choices: made as sent
            scored = generations[0].scored
            answer["prompt_logprobs"] = Lazy(lambda: vllm_entries(scored))
            return made_as_sent(answer)
        return JSONResponse(answer)
    return stream_of(
        body,
        generations,
        base,
        "chat.completion.chunk",
        lambda index, piece, first: _chat_delta(index, piece, with_logprobs),
        lambda index, streamed: _chat_last(index, generations[index], streamed),
        opening=_chat_opening,
    )


def _chat_request(body: Body) -> GenRequest:
    model = body.model()
    messages = chat_messages(body.data.get("messages"), openai=True)
    if not messages:
        raise BadRequestError("messages must not be empty")
    if body.data.get("echo"):
        raise BadRequestError(
            "echo is not supported on chat completions", hint="the messages are yours already"
        )
    return GenRequest(
        model,
        messages=messages,
        options=options_of(body),
        format=format_of(body),
        format_lenient=lenient_of(body),
        tools=body.get("tools", list),
        tool_choice=body.data.get("tool_choice"),
        think=think_of(body),
        logprobs=_chat_logprobs(body),
        prompt_logprobs=prompt_logprobs_of(body),
        logit_bias=body.logit_bias(),
        parallel_tool_calls=body.flag("parallel_tool_calls", True),
    )


def _choice_logprobs(entries: list[dict[str, Any]] | None, asked: bool) -> dict[str, Any] | None:
    """A choice's `logprobs` (None when the request did not ask for them)."""
    return {"content": logprob_items(entries), "refusal": None} if asked else None


def _chat_choice(index: int, generation: Generation, with_logprobs: bool) -> dict[str, Any]:
    """One choice of a non-streamed chat answer: its whole message."""
    calls = _tool_calls(generation)
    content = generation.text or (None if calls else "")
    # refusal and annotations as OpenAI writes them (the spec requires refusal, nullable)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "refusal": None,
        "annotations": [],
    }
    if generation.thinking:  # as llama-server and DeepSeek send reasoning
        message["reasoning_content"] = generation.thinking
    if calls:
        message["tool_calls"] = calls
    reason = finish_reason(generation)
    return {
        "index": index,
        "message": message,
        "logprobs": _choice_logprobs(generation.logprobs, with_logprobs),
        "finish_reason": reason,
    }


# Streamed, every choice opens with a role-only chunk, as OpenAI's does, with logprobs null:
# openai-node's stream helper would list a first chunk's log-probability twice. Then the
# choices' chunks interleave, each with its choice's index. A message carries OpenAI's
# `refusal` (null) and `annotations` ([]).
def _chat_opening(index: int) -> dict[str, Any]:
    """A streamed choice's first chunk, before its first token, as OpenAI opens one."""
    delta = {"role": "assistant", "content": "", "refusal": None}
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}


def _chat_delta(index: int, piece: Chunk, with_logprobs: bool) -> dict[str, Any]:
    """A streamed chunk's choice: a piece of reasoning or text."""
    delta: dict[str, Any] = {}
    if piece.thinking:
        delta["reasoning_content"] = piece.thinking
    if piece.text or not piece.thinking:
        delta["content"] = piece.text
    return {
        "index": index,
        "delta": delta,
        "logprobs": _choice_logprobs(piece.logprobs, with_logprobs),
        "finish_reason": None,
    }


def _chat_last(index: int, generation: Generation, streamed: int) -> list[dict[str, Any]]:
    """A streamed choice's last chunks: its calls not streamed yet, then its finish_reason."""
    out = _call_deltas(index, generation.late_calls(streamed))
    reason = finish_reason(generation)
    out.append({"index": index, "delta": {}, "logprobs": None, "finish_reason": reason})
    return out


async def collect(request: Request, generations: list[Generation]) -> None:
    """Run every answer to its end while the client is there.

    Sent whole, each may be drawn again where its check refuses it (Generation.whole).
    """
    for generation in generations:
        generation.whole = True

    async def every() -> None:
        async with contextlib.aclosing(merged(generations)) as chunks:
            async for _ in chunks:
                pass

    await core.until_disconnect(request, every)


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def embeddings(request: Request) -> Response:
    body = Body(await read_json(request))
    model = body.model()
    inputs = embedding.inputs_of(body.data.get("input"), tokens=True)
    if not inputs:
        raise BadRequestError("input must not be empty")
    encoding = body.get("encoding_format", str, "float")
    if encoding not in ("float", "base64"):
        raise BadRequestError('encoding_format must be "float" or "base64"')
    result = await embedding.embed(
        request, model, inputs, options={}, dimensions=body.get("dimensions", int)
    )
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _base64(vector) if encoding == "base64" else vector,
        }
        for i, vector in enumerate(result.vectors)
    ]
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    return JSONResponse({"object": "list", "data": data, "model": model, "usage": usage})


def _model_object(name: Any, modified: float) -> dict[str, Any]:
    return {
        "id": str(name),
        "object": "model",
        "created": int(modified),
        "owned_by": name.namespace,
    }


def _listed(store: Any) -> list[dict[str, Any]]:
    """The store's models, newest first, then the packaged ones not imported yet."""
    from localrun.store import catalog

    entries = sorted(store.entries(), key=lambda e: e.modified, reverse=True)
    return [_model_object(e.name, e.modified) for e in entries] + [
        _model_object(p.entry.name, p.modified) for p in catalog.not_imported(store)
    ]


def _remote_listed(request: Request, local: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The models only upstreams serve, owned by their upstreams."""
    names = {m["id"] for m in local}
    return [
        {"id": m.name, "object": "model", "created": 0, "owned_by": ",".join(m.upstreams)}
        for m in core.context(request).scheduler.remote.models()
        if m.name not in names
    ]


async def _local(request: Request) -> list[dict[str, Any]]:
    """The store's models, then the other runners' it does not hold (LOCALRUN_OTHER_RUNNERS).

    Each of those is owned by its runner.
    """
    ctx = core.context(request)
    local = await anyio.to_thread.run_sync(_listed, ctx.store)
    names = {m["id"] for m in local}
    others = await anyio.to_thread.run_sync(ctx.scheduler.others.beside, names)
    local += [
        {"id": o.name, "object": "model", "created": int(o.modified), "owned_by": o.source}
        for o in others
    ]
    return local


async def listed(request: Request) -> list[dict[str, Any]]:
    """What /v1/models lists: the store's models and other runners', then the upstreams'."""
    local = await _local(request)
    return local + _remote_listed(request, local)


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": await listed(request)})


async def found(request: Request, text: str) -> dict[str, Any]:
    """The model /v1/models/{model} shows for `text` (ModelNotFoundError: none)."""
    from localrun.store import reference

    local = await _local(request)
    for shown in _remote_listed(request, local):
        if shown["id"] == text:
            return shown
    wanted = str(reference.parse(text).name)
    for shown in local:
        if shown["id"] == wanted:
            return shown
    raise ModelNotFoundError(text)


async def model(request: Request) -> Response:
    return JSONResponse(await found(request, request.path_params["model"]))
