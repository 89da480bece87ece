"""What both dialects share: reading requests, starting answers, watching the client.

The /api and /v1 handlers translate their request into a `localrun.request.GenRequest`, call
`start()` and format what the `Generation` yields; neither talks to the scheduler in its own way.

A generation is started before any response byte is sent, and its first piece is awaited too,
so an unknown model, a full queue or a prompt that does not fit still gets its own HTTP status.
While a handler waits (for a slot, a load, the first token, or a whole non-streamed answer) the
client is watched: when it disconnects the generation is cancelled and its slot freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse

from localrun import config, jsonlimits, params
from localrun.engine.types import EmbedInput
from localrun.errors import BadRequestError, LocalrunError
from localrun.request import GenRequest
from localrun.store import Store
from localrun.worker.protocol import Chunk

if TYPE_CHECKING:
    from localrun.scheduler import Scheduler, Stream
    from localrun.server.metrics import Metrics

T = TypeVar("T")

log = logging.getLogger("localrun.server")

# Options Ollama's clients may send that localrun has no use for (they change nothing here, and
# are dropped without a warning; other unknown keys are dropped with one, as Ollama does).
IGNORED_OPTIONS = frozenset(
    {
        "numa",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "embedding_only",
        "tfs_z",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "penalize_newline",
        "num_gqa",
        "rope_frequency_base",
        "rope_frequency_scale",
    }
)


class ClientGone(Exception):
    """The client disconnected while its request was being answered."""


@dataclass
class Context:
    """What the handlers share: the store, the scheduler and the version they report."""

    store: Store
    scheduler: Scheduler
    version: str
    metrics: Metrics | None = None  # counts every generation and embedding where it ends


def context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


# -- reading requests -------------------------------------------------------------------------


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is an empty object)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = jsonlimits.loads(raw, "the request body")
    except ValueError:
        raise BadRequestError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequestError("the request body must be a JSON object")
    try:
        # JSON may spell lone UTF-16 surrogates ("\ud800"), which no UTF-8 text can hold: refuse
        # them here rather than fail later when the request is passed on.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequestError(
            "the request body holds text that is not valid Unicode (a lone surrogate)"
        ) from None
    return data


class Body:
    """Typed access to a request's JSON fields; a wrong type is a 400 naming the field."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def get(self, key: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.data.get(key)
        if value is None:
            return default
        allowed = kinds if isinstance(kinds, tuple) else (kinds,)
        if isinstance(value, bool) and bool not in allowed:
            raise BadRequestError(f"{key} must be {_kind_text(kinds)}, not a boolean")
        if not isinstance(value, kinds):
            raise BadRequestError(f"{key} must be {_kind_text(kinds)}, not {_json_type(value)}")
        return value

    def model(self) -> str:
        """The model name (Ollama's older clients send `name`)."""
        value = self.data.get("model") or self.data.get("name")
        if not isinstance(value, str) or not value.strip():
            raise BadRequestError("model is required", hint='send {"model": "NAME", ...}')
        return value.strip()

    def flag(self, key: str, default: bool) -> bool:
        return bool(self.get(key, bool, default))

    def keep_alive(self) -> float | None:
        value = self.data.get("keep_alive")
        if value is None:
            return None
        try:
            return config.parse_duration(value)
        except ValueError as exc:
            raise BadRequestError(f"keep_alive: {exc}") from None

    def options(self, key: str = "options") -> dict[str, Any]:
        """The request's model options; unknown keys are dropped with a warning in the log
        (as Ollama does), the values of known ones are validated later (a bad one is a 400)."""
        value = self.get(key, dict, {})
        out = {}
        for name, option in value.items():
            if name in IGNORED_OPTIONS or option is None:
                continue
            if name.strip().lower() not in params.SPECS:
                log.warning("ignoring unknown option %r", name[:100])
                continue
            out[name] = option
        return out

    def sampling(self, names: dict[str, str] | tuple[str, ...]) -> dict[str, Any]:
        """The numeric sampling fields present, as options: {request field: option name}
        (or fields named as the options are)."""
        pairs = names.items() if isinstance(names, dict) else ((n, n) for n in names)
        out: dict[str, Any] = {}
        for key, name in pairs:
            value = self.get(key, (int, float))
            if value is not None:
                out[name] = value
        return out

    def limit(self, *keys: str) -> int | None:
        """The first of `keys` given: a token budget, at least 1."""
        for key in keys:
            value = self.get(key, int)
            if value is not None:
                if value < 1:
                    raise BadRequestError(f"{key} must be at least 1")
                return int(value)
        return None

    def stops(self, key: str = "stop", most: int | None = None) -> list[str] | None:
        """Stop strings: a string or a list of strings (None when none are given)."""
        value = self.data.get(key)
        if isinstance(value, str):
            value = [value]
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise BadRequestError(f"{key} must be a string or a list of strings")
        if most is not None and len(value) > most:
            raise BadRequestError(f"at most {most} {key} are accepted")
        return value or None

    def format(self) -> str | dict[str, Any] | None:
        value = self.data.get("format")
        if value in (None, ""):
            return None
        if value == "json" or isinstance(value, dict):
            return value  # type: ignore[no-any-return]
        raise BadRequestError('format must be "json" or a JSON schema object')


def _kind_text(kinds: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
             dict: "an object", list: "a list"}  # fmt: skip
    seq = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in seq))


def _json_type(value: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", dict: "an object",
            list: "a list"}.get(type(value), type(value).__name__)  # fmt: skip


def default_model(request: Request, body: Body) -> str:
    """The model a request names, or the one loaded now when it names none (for llama-server's
    routes, whose clients know of one model); a 400 when none or several are loaded."""
    if body.data.get("model") is not None or body.data.get("name") is not None:
        return body.model()
    loaded = {m.name for m in context(request).scheduler.running()}
    if len(loaded) == 1:
        return loaded.pop()
    raise BadRequestError(
        "name the model: "
        + (f"{len(loaded)} models are loaded" if loaded else "no model is loaded"),
        hint='send {"model": "NAME", ...}',
    )


def now_iso() -> str:
    """RFC 3339 in UTC with a Z, as Ollama writes created_at."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def iso_from_epoch(seconds: float) -> str:
    if seconds == float("inf") or seconds > 253402300799:
        seconds = 253402300799  # "never": the last second of year 9999
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


# -- server-sent events ----------------------------------------------------------------------


def sse(obj: dict[str, Any], event: str | None = None) -> bytes:
    """One server-sent event (`event:` named for Anthropic's and the Responses API's streams)."""
    data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + data + b"\n\n"


def event_stream(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# -- watching the client ----------------------------------------------------------------------


async def until_disconnect(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` unless the client disconnects first (then it is cancelled: ClientGone).

    Only for after the body has been read: the next message on the request channel is then
    the disconnect.
    """
    result: list[T] = []
    failure: list[Exception] = []
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(watch)
        try:
            result.append(await work())
        except Exception as exc:  # re-raised below: a task group would wrap it in a group
            failure.append(exc)
        finally:
            group.cancel_scope.cancel()
    if failure:
        raise failure[0]
    if not result:
        raise ClientGone()
    return result[0]


# -- generations ------------------------------------------------------------------------------


class Generation:
    """A started answer; iterate `chunks()` (or `pieces()`, its text alone) once.

    `text` and `thinking` accumulate what was streamed; timings are final after the last chunk.
    """

    def __init__(
        self,
        stream: Stream,
        started: float,
        metrics: Metrics | None = None,
        *,
        parallel_tool_calls: bool = True,
    ) -> None:
        self.stream = stream
        self.parallel_tool_calls = parallel_tool_calls  # False: the first tool call alone
        self.started = started
        self.text = ""
        self.thinking = ""
        self.logprobs: list[dict[str, Any]] = []  # every token's entry, when asked for
        self.finished = False
        self._first: Chunk | None = None
        self._metrics = metrics

    def _ended(self) -> None:
        """Count the answer's tokens, once, however it ended."""
        self.finished = True
        if self._metrics is not None:
            self._metrics.generated(self.stream.model, self.stream.timings)
            self._metrics = None

    async def _next(self) -> Chunk | None:
        try:
            return await self.stream.__anext__()
        except StopAsyncIteration:
            self._ended()
            return None
        except LocalrunError:
            self._ended()  # the request's own error ends it
            raise

    async def prefetch(self) -> None:
        self._first = await self._next()

    async def chunks(self) -> AsyncGenerator[Chunk, None]:
        """The answer's chunks (text, reasoning, log-probabilities), empty ones skipped."""
        try:
            chunk, self._first = self._first, None
            while chunk is not None:
                self.text += chunk.text
                self.thinking += chunk.thinking
                if chunk.logprobs:
                    self.logprobs += chunk.logprobs
                if chunk:
                    yield chunk
                chunk = None if self.finished else await self._next()
        finally:
            if not self.finished:
                await self.close()

    async def pieces(self) -> AsyncGenerator[str, None]:
        """The answer's text alone, for dialects that show nothing else."""
        async with contextlib.aclosing(self.chunks()) as chunks:
            async for chunk in chunks:
                if chunk.text:
                    yield chunk.text

    async def collect(self) -> str:
        async with contextlib.aclosing(self.chunks()) as chunks:
            async for _ in chunks:
                pass
        return self.text

    async def close(self) -> None:
        """Cancel an unfinished generation; shielded, so it also runs while being cancelled."""
        self.finished = True
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()
        self._ended()

    @property
    def done_reason(self) -> str:
        return self.stream.done_reason or "stop"

    @property
    def tool_calls(self) -> list[dict[str, Any]] | None:
        calls = self.stream.tool_calls or None
        if calls and not self.parallel_tool_calls:
            return calls[:1]  # the client takes one call per turn
        return calls

    @property
    def stop_sequence(self) -> str | None:
        """The stop string that ended the answer, if one did."""
        return self.stream.stop_sequence

    @property
    def context(self) -> list[int] | None:
        return self.stream.context

    @property
    def prompt_count(self) -> int:
        t = self.stream.timings
        return t.prompt_tokens + t.cached_tokens

    def ollama_timings(self) -> dict[str, int]:
        t = self.stream.timings
        return {
            "total_duration": ns(time.perf_counter() - self.started),
            "load_duration": ns(self.stream.load_s),
            "prompt_eval_count": self.prompt_count,
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
        }


async def start(request: Request, req: GenRequest) -> Generation:
    """Start `req` on the scheduler and wait for its first piece (or its error)."""
    return await until_disconnect(request, lambda: _begin(context(request), req))


async def _begin(ctx: Context, req: GenRequest) -> Generation:
    started = time.perf_counter()
    stream = await ctx.scheduler.generate(req)
    generation = Generation(
        stream, started, ctx.metrics, parallel_tool_calls=req.parallel_tool_calls
    )
    try:
        await generation.prefetch()
    except BaseException:
        if not generation.finished:
            await generation.close()
        raise
    return generation


async def start_choices(request: Request, req: GenRequest, n: int) -> list[Generation]:
    """`n` answers to one request (OpenAI's `n`), started together so that the runner reads
    the prompt once and copies its KV to the other slots. With a seed, choice i uses seed + i,
    so the choices differ as they would with random seeds, and repeat with the same seed."""
    most = config.max_choices()
    if not 1 <= n <= most:
        raise BadRequestError(
            f"n must be from 1 to {most}, not {n}", hint="raise LOCALRUN_MAX_CHOICES for more"
        )
    if n == 1:
        return [await start(request, req)]
    seed = req.options.get("seed")
    requests = [
        dataclasses.replace(
            req,
            options={**req.options, "seed": seed + i}
            if isinstance(seed, int) and seed != -1
            else req.options,
        )
        for i in range(n)
    ]
    ctx = context(request)

    async def begin_all() -> list[Generation]:
        started = await asyncio.gather(*(_begin(ctx, r) for r in requests), return_exceptions=True)
        failed = [r for r in started if isinstance(r, BaseException)]
        if failed:
            for item in started:
                if isinstance(item, Generation):
                    await item.close()
            raise failed[0]
        return [r for r in started if isinstance(r, Generation)]

    return await until_disconnect(request, begin_all)


async def merged(generations: list[Generation]) -> AsyncGenerator[tuple[int, Chunk], None]:
    """The chunks of several answers as they come, each with its answer's index; ends when all
    have ended (the first error ends it, and closing it early closes every answer)."""
    queue: asyncio.Queue[tuple[int, Chunk | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, generation: Generation) -> None:
        try:
            async with contextlib.aclosing(generation.chunks()) as chunks:
                async for chunk in chunks:
                    await queue.put((index, chunk))
            await queue.put((index, None))
        except Exception as exc:  # handed to the reader, which raises it
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(generations)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for generation in generations:
            if not generation.finished:
                await generation.close()


# The most alternatives per token a request may ask for (OpenAI's bound, and the engine's).
MAX_TOP_LOGPROBS = 20


def top_logprobs(value: Any, key: str = "top_logprobs", most: int = MAX_TOP_LOGPROBS) -> int:
    """A count of alternatives per token, checked (a 400 in the request's dialect if bad)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise BadRequestError(f"{key} must be a whole number from 0 to {most}")
    return value


def logprob_items(entries: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Entries as OpenAI's chat `logprobs.content` and Ollama's `logprobs` write them."""
    return [
        {
            "token": e["token"],
            "logprob": e["logprob"],
            "bytes": e["bytes"],
            "top_logprobs": [
                {"token": t["token"], "logprob": t["logprob"], "bytes": t["bytes"]}
                for t in e.get("top") or []
            ],
        }
        for e in entries or []
    ]


def messages_of(value: Any, *, openai: bool = False) -> list[dict[str, Any]]:
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


# -- embeddings and models --------------------------------------------------------------------


@dataclass
class EmbedResult:
    vectors: list[list[float]]
    prompt_tokens: int
    load_s: float
    total_s: float


# OpenAI's own limit; it also bounds one answer's size and how long a request holds its slot.
MAX_EMBED_INPUTS = 2048


async def embed(
    request: Request,
    model: str,
    inputs: Sequence[EmbedInput],
    *,
    options: dict[str, Any],
    truncate: bool = True,
    keep_alive: float | None = None,
    dimensions: int | None = None,
) -> EmbedResult:
    scheduler = context(request).scheduler
    started = time.perf_counter()
    if dimensions is not None and dimensions < 1:
        raise BadRequestError("dimensions must be at least 1")
    if len(inputs) > MAX_EMBED_INPUTS:
        raise BadRequestError(
            f"{len(inputs)} inputs in one request; the most is {MAX_EMBED_INPUTS}",
            hint="send the inputs in several requests",
        )
    if not inputs:  # Ollama: no input loads the model
        await scheduler.load(model, options=options, keep_alive=keep_alive)
        return EmbedResult([], 0, 0.0, time.perf_counter() - started)
    found = await until_disconnect(
        request,
        lambda: scheduler.embed(
            model, inputs, options=options, truncate=truncate, keep_alive=keep_alive
        ),
    )
    metrics = context(request).metrics
    if metrics is not None:
        metrics.embedded(found.model, found.prompt_tokens)
    vectors = found.vectors
    if dimensions is not None:
        vectors = [_shorten(v, dimensions) for v in vectors]
    return EmbedResult(vectors, found.prompt_tokens, found.load_s, time.perf_counter() - started)


def _shorten(vector: list[float], size: int) -> list[float]:
    """Matryoshka-style: the first `size` values, normalized again."""
    head = vector[:size]
    norm = sum(x * x for x in head) ** 0.5
    return [x / norm for x in head] if norm > 0 else head


def inputs_of(value: Any, key: str = "input", *, tokens: bool = False) -> list[EmbedInput]:
    """What to embed: a string or a list of them; with `tokens` (OpenAI's dialect) also token
    ids, a list of ints or a list of such lists, which langchain's OpenAIEmbeddings sends."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return list(value)
    if tokens and isinstance(value, list) and value:
        if all(_is_id(x) for x in value):
            return [list(value)]
        if all(isinstance(x, list) and x and all(_is_id(t) for t in x) for x in value):
            return [list(x) for x in value]
    if tokens:
        raise BadRequestError(
            f"{key} must be a string, a list of strings, a list of token ids or a list of such "
            "lists (none of them empty)"
        )
    raise BadRequestError(f"{key} must be a string or a list of strings")


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def details_of(details: dict[str, Any], parent: str | None = None) -> dict[str, Any]:
    """Ollama's `details` of a model from the GGUF summary in its manifest (no file is read)."""
    from localrun.gguf import format_count

    arch = details.get("architecture") or ""
    count = details.get("parameter_count")
    return {
        "parent_model": parent or "",
        "format": details.get("format") or "gguf",
        "family": arch,
        "families": [arch] if arch else None,
        "parameter_size": format_count(count) if isinstance(count, int) and count else "",
        "quantization_level": details.get("quantization") or "",
    }
