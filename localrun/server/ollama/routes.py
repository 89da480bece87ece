"""Ollama's native API: generate, chat, embeddings, the running models, version.

Field names and streaming follow Ollama's docs/api.md, so the official `ollama` client and the
tools built on it work unchanged. Answers stream as NDJSON, one object per piece, then a final
object with `done: true`, `done_reason` and the timings in nanoseconds; `"stream": false` gives
one object. An error after the first line comes as a last line `{"error": "..."}`, which
Ollama's clients look for. /api/generate's final object carries `context`, the token ids of
prompt and answer, which a later request sends back to continue from them. A chat's tool calls
carry their `id` and `function.index` (see `_answer` for where they stream).

/api/generate with a `suffix` fills in the middle between `prompt` and it, from the model's FIM
tokens; a model without them is a 400. `think` (true, false or low/medium/high) turns thinking
on or off; the reasoning comes in `thinking` or `message.thinking`. `logprobs` (with
`top_logprobs`) adds each token's log-probability to the object holding it. The store's routes
are in store.py, /api/show in show.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from localrun.errors import BadRequestError, LocalrunError
from localrun.formats import reasoning
from localrun.gguf import memory
from localrun.request import media
from localrun.request.genrequest import GenRequest
from localrun.server import core, embedding
from localrun.server.body import Body, read_json
from localrun.server.errors import body_of, unexpected
from localrun.server.generation import Generation, start
from localrun.server.logprobs import logprob_items, top_logprobs
from localrun.server.messages import chat_messages
from localrun.server.ollama.show import details_of
from localrun.server.streaming import NDJSON, line, ndjson

# The Ollama release whose API localrun serves, reported by /api/version: clients (editor
# plugins, Open WebUI) turn features on by it. Raise it with the API features it implies.
OLLAMA_API_VERSION = "0.12.0"
Frame = Callable[[str], dict[str, Any]]
Placer = Callable[[dict[str, Any], str], None]  # puts reasoning text into an object


def now_iso() -> str:
    """RFC 3339 in UTC with a Z, as Ollama writes created_at."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def iso_from_epoch(seconds: float) -> str:
    if seconds == float("inf") or seconds > 253402300799:
        seconds = 253402300799  # "never": the last second of year 9999
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def _timings(generation: Generation) -> dict[str, int]:
    """The final object's durations (nanoseconds) and token counts."""
    t = generation.stream.timings
    return {
        "total_duration": ns(time.perf_counter() - generation.started),
        "load_duration": ns(generation.stream.load_s),
        "prompt_eval_count": generation.prompt_count,
        # Not in Ollama's API: how much of the prompt came from the KV cache (clients that
        # do not know the field ignore it; `localrun run --verbose` shows it).
        "prompt_cache_count": t.cached_tokens,
        "prompt_disk_cache_count": t.disk_tokens,  # of those, restored from disk
        "prompt_eval_duration": ns(t.prompt_s),
        "eval_count": t.eval_tokens,
        "eval_duration": ns(t.eval_s),
        # Not in Ollama's API either: tokens speculative decoding drafted, and kept.
        "draft_count": t.draft_tokens,
        "draft_accepted_count": t.draft_accepted,
        # And the memory its slot's checkpoints take (a window or recurrent model's).
        "checkpoint_bytes": t.checkpoint_bytes,
    }


async def stream_lines(
    generation: Generation,
    frame: Frame,
    final: Callable[[], dict[str, Any]],
    before_final: Callable[[], dict[str, Any] | None] = lambda: None,
    place_thinking: Placer | None = None,
    streamed: list[int] | None = None,
) -> AsyncIterator[bytes]:
    """The NDJSON lines of an answer; an error mid-way becomes the last line.

    `before_final` gives a line to send after the pieces, before the final one, or None.
    `place_thinking` puts a chunk's reasoning into its line. A chat's tool calls go in the line of
    the chunk that carries them, and `streamed` counts them for `before_final`.
    """
    streamed = streamed if streamed is not None else []
    try:
        async with contextlib.aclosing(generation.chunks()) as chunks:
            async for chunk in chunks:
                obj = frame(chunk.text)
                if chunk.thinking and place_thinking is not None:
                    place_thinking(obj, chunk.thinking)
                if chunk.logprobs:
                    obj["logprobs"] = logprob_items(chunk.logprobs)
                if chunk.calls and "message" in obj:  # a chat's calls, as soon as read
                    obj["message"]["tool_calls"] = tool_calls_ollama(chunk.calls)
                    streamed.append(len(chunk.calls))
                yield line(obj)
        extra = before_final()
        if extra is not None:
            yield line(extra)
        yield line(final())
    except LocalrunError as exc:
        yield line(body_of(exc, "ollama"))
    except Exception as exc:
        yield line(body_of(unexpected(exc, "a streamed answer"), "ollama"))


# -- simple routes ----------------------------------------------------------------------------


async def root(request: Request) -> Response:
    return PlainTextResponse("localrun is running")


async def version(request: Request) -> Response:
    """The Ollama API version served, and localrun's own beside it.

    A loopback-only server also names the store it answers from.
    """
    ctx = core.context(request)
    body = {"version": OLLAMA_API_VERSION, "localrun_version": ctx.version}
    if ctx.shown_store is not None:
        body["localrun_store"] = ctx.shown_store
    return JSONResponse(body)


async def ps(request: Request) -> Response:
    models = []
    for m in core.context(request).scheduler.running():
        models.append(
            {
                "name": m.name,
                "model": m.name,
                "size": m.size,
                "digest": m.digest.removeprefix("sha256:"),
                "details": details_of(m.details),
                "expires_at": iso_from_epoch(m.expires_at),
                "size_vram": m.size_vram,
                "context_length": m.context_length,
                "processor": m.processor,
                # localrun's: what the prompt cache does for the model (gguf.memory)
                "prompt_cache": memory.short(
                    memory.kind(m.details.get("architecture"), m.details.get("sliding_window"))
                ),
                **({"runtime": m.runtime, "devices": m.devices} if m.runtime else {}),
                **({"split": m.split} if m.split else {}),
            }
        )
    remote = core.context(request).scheduler.remote
    for served in remote.models():  # one entry a model, with every upstream serving it
        m = remote.describe(served.name)
        models.append(
            {
                "name": m.name,
                "model": m.name,
                "size": 0,
                "digest": "",
                "details": details_of({}),
                "expires_at": iso_from_epoch(0),
                "size_vram": 0,
                "context_length": 0,
                "processor": m.processor,
                "remote_host": ", ".join(served.upstreams),
                "in_flight": m.busy,
            }
        )
    return JSONResponse({"models": models})


# -- generate and chat ------------------------------------------------------------------------


def _unsupported(body: Body) -> None:
    if body.get("template", str, ""):
        raise BadRequestError(
            "a per-request template is not supported",
            hint="create a model with the TEMPLATE instead (`localrun create`)",
        )


async def _load_or_unload(
    request: Request, body: Body, model: str, shape: Callable[[str], dict[str, Any]]
) -> Response:
    """An empty prompt loads the model; with keep_alive 0 it unloads it (Ollama's idiom)."""
    scheduler = core.context(request).scheduler
    keep_alive = body.keep_alive()
    if keep_alive == 0:
        await scheduler.unload(model)
        reason = "unload"
    else:
        await scheduler.load(model, options=body.options(), keep_alive=keep_alive)
        reason = "load"
    out = {**shape(""), "done": True, "done_reason": reason}
    if body.flag("stream", True):
        return Response(line(out), media_type=NDJSON)
    return JSONResponse(out)


async def _answer(
    request: Request,
    body: Body,
    generation: Generation,
    shape: Frame,
    last: Frame | None = None,
    calls: Callable[[str, int], dict[str, Any] | None] | None = None,
    place_thinking: Placer | None = None,
) -> Response:
    """NDJSON lines, `shape(piece)` each, then the final object, shaped by `last`.

    With "stream": false only the final object comes, holding the whole text. `calls(text,
    streamed)` shapes the answer's tool calls after the first `streamed` (None without any).
    Streamed, each call comes in the line of the piece that completed it, as Ollama sends them. Any
    that the final event alone told come in a line before the final one. Unstreamed, all are in the
    final object.
    """

    def final(text: str = "", *, with_calls: bool = False) -> dict[str, Any]:
        shaped = calls(text, 0) if calls is not None and with_calls else None
        return {
            **(shaped or (last or shape)(text)),
            "done": True,
            "done_reason": generation.done_reason,
            **_timings(generation),
        }

    if body.flag("stream", True):
        frame = lambda piece: {**shape(piece), "done": False}  # noqa: E731
        streamed: list[int] = []  # the calls each streamed line carried

        def before_final() -> dict[str, Any] | None:
            shaped = calls("", sum(streamed)) if calls is not None else None
            return None if shaped is None else {**shaped, "done": False}

        lines = stream_lines(generation, frame, final, before_final, place_thinking, streamed)
        return ndjson(lines)
    text = await core.until_disconnect(request, generation.collect)
    whole = final(text, with_calls=True)
    if generation.thinking and place_thinking is not None:
        place_thinking(whole, generation.thinking)
    if generation.logprobs:
        whole["logprobs"] = logprob_items(generation.logprobs)
    return JSONResponse(whole)


def _logprobs(body: Body) -> int | None:
    """Ollama's `logprobs: true` with `top_logprobs` alternatives (None: not asked for)."""
    top = top_logprobs(body.data.get("top_logprobs"))
    return top if body.flag("logprobs", False) else None


def _think(body: Body) -> reasoning.Think:
    """Ollama's `think`: true/false or a level (the model's default when absent)."""
    return reasoning.check(body.data.get("think"))


def _thinking_field(obj: dict[str, Any], text: str) -> None:
    obj["thinking"] = text


def _message_thinking(obj: dict[str, Any], text: str) -> None:
    obj["message"]["thinking"] = text


async def generate(request: Request) -> Response:
    body = Body(await read_json(request))
    model = body.model()
    _unsupported(body)
    prompt = body.get("prompt", str, "")

    def shape(text: str) -> dict[str, Any]:
        return {"model": model, "created_at": now_iso(), "response": text}

    suffix = body.get("suffix", str, "")
    if suffix:
        # Autocomplete for editors: the text between `prompt` and `suffix`, from the model's
        # fill-in-the-middle tokens (no chat template, as Ollama's FIM templates do).
        req = GenRequest(
            model,
            prompt=prompt,
            suffix=suffix,
            options=body.options(),
            format=body.format(),
            format_lenient=True,
            keep_alive=body.keep_alive(),
            logprobs=_logprobs(body),
        )
        generation = await start(request, req)
        return await _answer(request, body, generation, shape)
    images = media.ollama_media(body.data, "request")
    if not prompt and not images:
        return await _load_or_unload(request, body, model, shape)
    media.count_markers(prompt, "prompt")
    message = media.with_images({"role": "user", "content": prompt}, images)
    raw = body.flag("raw", False)
    req = GenRequest(
        model,
        messages=None if raw else [message],
        prompt=message["content"] if raw else None,
        media=message.get("media") if raw else None,
        system=body.get("system", str),
        options=body.options(),
        format=body.format(),
        format_lenient=True,
        keep_alive=body.keep_alive(),
        context=_context(body),
        return_context=True,
        think=None if raw else _think(body),
        logprobs=_logprobs(body),
    )
    generation = await start(request, req)

    def last(text: str) -> dict[str, Any]:
        # The tokens to send as `context` to continue this answer.
        return {**shape(text), "context": generation.context or []}

    return await _answer(
        request, body, generation, shape, last=last, place_thinking=_thinking_field
    )


def _context(body: Body) -> list[int] | None:
    """A previous answer's `context`: token ids the new prompt continues."""
    value = body.get("context", list)
    if value is not None and not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise BadRequestError("context must be a list of token ids (integers)")
    return value or None


def tool_calls_ollama(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Calls as Ollama's api.ToolCall writes them, with `id` and `function.index`.

    The id is "call_..." as Ollama makes them. `function.index` is the call's place in the answer
    from 0; types.go has no omitempty on it, so it is always sent, 0 included.
    """
    if not calls:
        return None
    return [
        {
            "id": c["id"],
            "function": {
                "index": c["index"],
                "name": c.get("name", ""),
                "arguments": c.get("arguments") or {},
            },
        }
        for c in calls
    ]


async def chat(request: Request) -> Response:
    body = Body(await read_json(request))
    model = body.model()
    _unsupported(body)
    messages = chat_messages(body.data.get("messages"))

    def shape(text: str) -> dict[str, Any]:
        return {
            "model": model,
            "created_at": now_iso(),
            "message": {"role": "assistant", "content": text},
        }

    if not messages:
        return await _load_or_unload(request, body, model, shape)
    req = GenRequest(
        model,
        messages=messages,
        options=body.options(),
        format=body.format(),
        format_lenient=True,
        tools=body.get("tools", list),
        tool_choice=body.data.get("tool_choice"),
        keep_alive=body.keep_alive(),
        think=_think(body),
        logprobs=_logprobs(body),
    )
    generation = await start(request, req)

    def with_calls(text: str, streamed: int) -> dict[str, Any] | None:
        calls = tool_calls_ollama(generation.late_calls(streamed))
        if not calls:
            return None
        out = shape(text)
        out["message"]["tool_calls"] = calls
        return out

    return await _answer(
        request, body, generation, shape, calls=with_calls, place_thinking=_message_thinking
    )


# -- embeddings -------------------------------------------------------------------------------


async def embed(request: Request) -> Response:
    body = Body(await read_json(request))
    model = body.model()
    raw_input = body.data.get("input")
    inputs = [] if raw_input is None else embedding.inputs_of(raw_input)
    result = await embedding.embed(
        request,
        model,
        inputs,
        options=body.options(),
        truncate=body.flag("truncate", True),
        keep_alive=body.keep_alive(),
        dimensions=body.get("dimensions", int),
    )
    return JSONResponse(
        {
            "model": model,
            "embeddings": result.vectors,
            "total_duration": ns(result.total_s),
            "load_duration": ns(result.load_s),
            "prompt_eval_count": result.prompt_tokens,
        }
    )


async def embeddings(request: Request) -> Response:
    """The legacy single-prompt route: {"prompt": ...} -> {"embedding": [...]}."""
    body = Body(await read_json(request))
    model = body.model()
    prompt = body.get("prompt", str, "")
    result = await embedding.embed(
        request,
        model,
        [prompt] if prompt else [],
        options=body.options(),
        keep_alive=body.keep_alive(),
    )
    return JSONResponse({"embedding": result.vectors[0] if result.vectors else []})
