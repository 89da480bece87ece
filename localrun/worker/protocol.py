"""The JSON-lines protocol between the scheduler and a runner subprocess.

One UTF-8 JSON object per line. Requests go to the worker's stdin; events come back on the
worker's private copy of stdout. Native libraries print to fd 1, which the worker points at
stderr so they cannot corrupt the stream. The comment above LOAD lists every message.

Every chat, complete, embed, tokenize and detokenize request ends with exactly one done,
embeddings, tokens, text or error event. An error event without an "id" is about the worker
itself: a load failure, or a line that is not a request at all. No event line is longer than
the load request's "line_limit" (LINE_LIMIT), past which the scheduler cannot trust the stream
and kills the runner. The runner sends an event that would be longer as an error event of its
request instead (`oversized`), so an answer too large for the channel costs that answer, never
the runner.

Pure: only json, localrun.errors, localrun.request.genrequest and engine.types are imported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from localrun.engine.types import EmbedInput, Timings
from localrun.errors import BadRequestError, LocalrunError
from localrun.request.genrequest import GenRequest

# The messages (-> to the worker's stdin, <- from it):
#
#   -> {"op": "load", "model": {MODEL}, "parameters": {...}, "num_ctx": N, "slots": N,
#       "line_limit": BYTES?, "fallback_ctx": N?, "backend": "llama" | "fake",
#       "replies": [...]?, "delay": s?, "hang": bool?, "dims": N?}
#      The first line, once: the model as the scheduler resolved and admitted it
#      (model.LoadSpec's to_wire: its manifest and digest, the paths of its blobs, its
#      PARAMETERs, template, system and messages), and the parameters and context the load goes
#      ahead with, decided there. The runner reads no manifest and looks up no name.
#      fallback_ctx: the smaller num_ctx to load when num_ctx does not fit (worker.load).
#      fake: for tests.
#   <- {"event": "ready", "info": {n_ctx, n_ctx_train, slots, size, size_vram, gpu_layers,
#                                  layers, processor, load_s, notes}}
#      or {"event": "error", "error": {...}} and exit 1
#   -> {"op": "chat", "id": 7, "messages": [...], ...}    (a GenRequest's fields, to_wire's)
#   -> {"op": "complete", "id": 8, "prompt": "raw text", ...}      (the same, without messages)
#      Every field of localrun.request.genrequest.GenRequest travels by its name: "system",
#      "options", "format", "tools", "tool_choice", "think", "suffix" and "extra" (fill in the
#      middle), "logprobs" (N alternatives per token; piece events carry them), "context"
#      (token ids before the prompt), "return_context", ...; those left at their defaults are
#      left out.
#   <- {"event": "piece", "id": 7, "text": "...", "thinking": "..."?, "logprobs": [...]?,
#       "prompt": N?, "calls": [{"name", "arguments"}]?, "scored": [...]?}
#      Zero or more; the first tells the prompt's length in tokens. A call goes out as soon as
#      it is read. With prompt_logprobs, the prompt's entries come first, a chunk at a time.
#   <- {"event": "done", "id": 7, "reason": "stop" | "length" | "cancelled",
#       "timings": {Timings fields}, "tool_calls": [{"name", "arguments"}] | null,
#       "context": [ids]?,           (with return_context: the prompt's and answer's tokens)
#       "stop_sequence": "the stop string that ended it"?}
#   <- {"event": "error", "id": 7, "error": {"code", "type", "message", "hint"?}}
#   -> {"op": "embed", "id": 9, "input": ["a", "b", [15, 7]], "truncate": true}
#      The inputs are texts or token ids. With "query": "...", a reranker scores each input
#      against it: its vectors are the classifier's outputs, the score first.
#   <- {"event": "vectors", "id": 9, "embeddings": [[...], ...]}    (zero or more, in order)
#   <- {"event": "embeddings", "id": 9, "embeddings": [[...]], "prompt_tokens": N,
#       "cancelled": false}
#      or an error event
#   -> {"op": "tokenize", "id": 10, "text": "...", "add_special": true, "parse_special": false}
#      or {"op": "tokenize", "id": 10, "messages": [...], ...}        (a chat request's fields)
#   <- {"event": "tokens", "id": 10, "tokens": [ids]}       (messages: the chat prompt's tokens)
#   -> {"op": "detokenize", "id": 11, "tokens": [ids], "pieces": false}
#   <- {"event": "text", "id": 11, "text": "...", "pieces": ["hex", ...]?}  (or an error event)
#   -> {"op": "cancel", "id": 7}            (no reply of its own: the request ends "cancelled")
#   EOF on stdin -> the worker closes the engine and exits 0.

# -- operations (requests) -------------------------------------------------------------------
LOAD = "load"
CHAT = "chat"
COMPLETE = "complete"
EMBED = "embed"
TOKENIZE = "tokenize"
DETOKENIZE = "detokenize"
CANCEL = "cancel"
OPS = frozenset({LOAD, CHAT, COMPLETE, EMBED, TOKENIZE, DETOKENIZE, CANCEL})

# -- events ----------------------------------------------------------------------------------
READY = "ready"
PIECE = "piece"
DONE = "done"
ERROR = "error"
EMBEDDINGS = "embeddings"
VECTORS = "vectors"
TOKENS = "tokens"
TEXT = "text"
EVENTS = frozenset({READY, PIECE, DONE, ERROR, EMBEDDINGS, VECTORS, TOKENS, TEXT})
# Each request gets exactly one of these.
FINAL_EVENTS = frozenset({DONE, ERROR, EMBEDDINGS, TOKENS, TEXT})

DONE_REASONS = ("stop", "length", "cancelled")

# The longest event line (newline included) the scheduler reads from a runner: embeddings of a
# long input list are large. Read when a runner starts, so that tests can lower it.
LINE_LIMIT = 64 * 1024 * 1024

# Inputs embedded (and their vectors sent) per "vectors" event: 16 vectors of 8192 floats make
# a line of about 3 MB, far below the scheduler's line limit. Any vectors left come in the final
# event. One line holding every vector of a long input list could outgrow what the scheduler
# reads in one line, and the worker checks for a cancel between groups.
EMBED_GROUP = 16

Message = dict[str, Any]
RequestId = int | str  # the scheduler uses numbers; strings are accepted too


def encode(message: Message) -> bytes:
    """One message as a line of compact UTF-8 JSON (newline included)."""
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8") + b"\n"


def decode(line: bytes | str) -> Message:
    """Parse one line; raises BadRequestError when it is not a JSON object."""
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"a protocol line is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequestError(f"a protocol line must be a JSON object, not {type(value).__name__}")
    return value


# -- timings and errors ----------------------------------------------------------------------


def timings_to_dict(timings: Timings) -> dict[str, Any]:
    return asdict(timings)


def timings_from_dict(data: dict[str, Any] | None) -> Timings:
    """Rebuild Timings, ignoring unknown fields (a newer worker may send more)."""
    names = {f.name for f in fields(Timings)}
    return Timings(**{k: v for k, v in (data or {}).items() if k in names})


def error_to_dict(exc: LocalrunError) -> dict[str, Any]:
    return exc.to_dict()


def error_from_dict(data: Any) -> LocalrunError:
    if not isinstance(data, dict):
        return LocalrunError(f"the runner reported an unreadable error: {data!r}")
    return LocalrunError.from_dict(data)


# -- requests --------------------------------------------------------------------------------


def load_request(
    resolved: Message,
    *,
    slots: int = 1,
    backend: str = "llama",
    fallback_ctx: int | None = None,
    **extra: Any,
) -> Message:
    """Return the first line a worker reads: what it loads (`resolved`, a LoadSpec's to_wire).

    `fallback_ctx` is the num_ctx to load instead of its own (rounded up by the scheduler) where
    that does not fit (worker.load). `extra` passes fake-backend settings (replies, delay).
    """
    message: Message = {
        "op": LOAD,
        **resolved,
        "slots": slots,
        "line_limit": LINE_LIMIT,
        "backend": backend,
        **extra,
    }
    if fallback_ctx is not None:
        message["fallback_ctx"] = fallback_ctx
    return message


def line_limit(request: Message) -> int:
    """The longest event line the load request allows (LINE_LIMIT when it names none)."""
    value = request.get("line_limit")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
        return LINE_LIMIT
    return value


def generate_request(id: RequestId, request: GenRequest) -> Message:
    """A generation: the request's fields, whole, under the op that says its kind."""
    if request.chat:
        return {"op": CHAT, "id": id, **request.to_wire()}
    return {"op": COMPLETE, "id": id, **request.to_wire(), "prompt": request.prompt or ""}


def request_of(message: Message) -> GenRequest:
    """Return the GenRequest a chat or complete message carries.

    BadRequestError for a field that is not of its type.
    """
    request = GenRequest.from_wire(message)
    if message.get("op") == CHAT:
        if request.messages is None:
            raise BadRequestError("messages must be a list")
    else:
        if not isinstance(message.get("prompt"), str):
            raise BadRequestError("prompt must be a string")
        request.messages = None
    return request


def tokenize_request(
    id: RequestId,
    *,
    text: str | None = None,
    request: GenRequest | None = None,
    add_special: bool = True,
    parse_special: bool = False,
) -> Message:
    """The tokens of `text`, or of the prompt the chat `request` renders to."""
    message: Message = {"op": TOKENIZE, "id": id}
    if request is not None:
        message.update(request.to_wire())
    else:
        message.update(text=text, add_special=add_special, parse_special=parse_special)
    return message


def detokenize_request(id: RequestId, tokens: list[int], *, pieces: bool = False) -> Message:
    return {"op": DETOKENIZE, "id": id, "tokens": tokens, "pieces": pieces}


def embed_request(
    id: RequestId,
    inputs: Sequence[EmbedInput],
    *,
    truncate: bool = True,
    query: str | None = None,
) -> Message:
    """Embed `inputs`; with `query` (a reranker), score each input as a document against it."""
    message: Message = {"op": EMBED, "id": id, "input": inputs, "truncate": truncate}
    if query is not None:
        message["query"] = query
    return message


def cancel_request(id: RequestId) -> Message:
    return {"op": CANCEL, "id": id}


# -- events ----------------------------------------------------------------------------------


@dataclass
class ReadyInfo:
    """What a worker reports once its model is loaded (for /api/ps and memory accounting)."""

    n_ctx: int  # per slot
    n_ctx_train: int
    slots: int
    size: int  # estimated bytes in memory: weights, KV cache, compute buffers, GPU runtime
    size_vram: int  # the part of `size` on the GPU
    gpu_layers: int
    layers: int
    processor: str  # "100% CPU", "100% GPU", "48%/52% CPU/GPU"
    load_s: float
    notes: list[str] = field(default_factory=list)  # where it runs and why; load warnings
    runtime: int = 0  # the part of `size_vram` that is the GPU runtime: fixed, whatever num_ctx
    engine_runtime: str = ""  # the GPU runtime llama.cpp runs on (`localrun runtime`), or ""
    devices: list[str] = field(default_factory=list)  # the GPU devices it has: "Vulkan0 (...)"
    split: list[str] = field(default_factory=list)  # with RPC workers: each one's share

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReadyInfo:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def ready_event(info: ReadyInfo) -> Message:
    return {"event": READY, "info": info.to_dict()}


@dataclass
class Chunk:
    """A piece of an answer: its text, its reasoning text, and per-token log-probabilities.

    `logprobs` holds one entry per generated token when they were asked for:
    {"token": str, "logprob": float, "bytes": [int], "top": [{"token", "logprob", "bytes"}]}.
    """

    text: str = ""
    thinking: str = ""
    logprobs: list[dict[str, Any]] | None = None
    # Tool calls read so far ({"name", "arguments"}), sent as soon as each is complete.
    calls: list[dict[str, Any]] | None = None
    # Entries of the prompt's own tokens (GenRequest.prompt_logprobs), before any text:
    # {"id", "token", "bytes", "logprob" (None for the first), "rank", "top": [{"id", "token",
    # "bytes", "logprob"}], "added"?: true for a BOS the tokenizer put before the text}.
    scored: list[dict[str, Any]] | None = None

    @classmethod
    def from_event(cls, event: Message) -> Chunk:
        logprobs = event.get("logprobs")
        calls = event.get("calls")
        scored = event.get("scored")
        return cls(
            text=str(event.get("text") or ""),
            thinking=str(event.get("thinking") or ""),
            logprobs=logprobs if isinstance(logprobs, list) else None,
            calls=calls if isinstance(calls, list) and calls else None,
            scored=scored if isinstance(scored, list) and scored else None,
        )

    def __bool__(self) -> bool:
        return bool(self.text or self.thinking or self.logprobs or self.calls or self.scored)


def piece_event(
    id: RequestId,
    text: str,
    *,
    thinking: str = "",
    logprobs: list[dict[str, Any]] | None = None,
    prompt: int | None = None,
    calls: list[dict[str, Any]] | None = None,
    scored: list[dict[str, Any]] | None = None,
) -> Message:
    event: Message = {"event": PIECE, "id": id, "text": text}
    if scored:
        event["scored"] = scored
    if thinking:
        event["thinking"] = thinking
    if calls:
        event["calls"] = calls
    if logprobs:
        event["logprobs"] = logprobs
    if prompt is not None:
        event["prompt"] = prompt
    return event


def done_event(
    id: RequestId,
    reason: str,
    timings: Timings,
    tool_calls: list[dict[str, Any]] | None = None,
    context: list[int] | None = None,
    *,
    stop_sequence: str | None = None,
    sampled: bool = False,
) -> Message:
    event: Message = {
        "event": DONE,
        "id": id,
        "reason": reason,
        "timings": timings_to_dict(timings),
        "tool_calls": tool_calls,
    }
    if context is not None:
        event["context"] = context
    if stop_sequence is not None:
        event["stop_sequence"] = stop_sequence
    if sampled:  # drawn at random: drawn again, the answer may differ (greedy's would not)
        event["sampled"] = True
    return event


def tokens_event(id: RequestId, tokens: list[int]) -> Message:
    return {"event": TOKENS, "id": id, "tokens": tokens}


def text_event(id: RequestId, text: str, pieces: list[bytes] | None = None) -> Message:
    event: Message = {"event": TEXT, "id": id, "text": text}
    if pieces is not None:
        event["pieces"] = [piece.hex() for piece in pieces]  # a piece may be part of a character
    return event


def error_event(exc: LocalrunError, id: RequestId | None = None) -> Message:
    message: Message = {"event": ERROR, "error": error_to_dict(exc)}
    if id is not None:
        message["id"] = id
    return message


def oversized(message: Message, size: int, limit: int) -> Message:
    """Return the error event sent in place of `message`, a line too long for the channel.

    Its line of `size` bytes is longer than the channel's `limit`. Its request fails and the
    runner goes on.
    """
    error = BadRequestError(
        f"the answer is {size:,} bytes, more than a runner sends in one event ({limit:,})",
        hint="ask for less in one request",
    )
    return error_event(error, message.get("id"))


def vectors_event(id: RequestId, embeddings: list[list[float]]) -> Message:
    return {"event": VECTORS, "id": id, "embeddings": embeddings}


def embeddings_event(
    id: RequestId,
    embeddings: list[list[float]],
    prompt_tokens: int,
    *,
    cancelled: bool = False,
) -> Message:
    """The final event of an embedding: the vectors not sent yet and the tokens read."""
    return {
        "event": EMBEDDINGS,
        "id": id,
        "embeddings": embeddings,
        "prompt_tokens": prompt_tokens,
        "cancelled": cancelled,
    }


def processor_text(size: int, size_vram: int) -> str:
    """Where a model runs, the way `ollama ps` says it: by share of its memory."""
    if size <= 0 or size_vram <= 0:
        return "100% CPU"
    if size_vram >= size:
        return "100% GPU"
    gpu = round(100 * size_vram / size)
    gpu = min(99, max(1, gpu))
    return f"{100 - gpu}%/{gpu}% CPU/GPU"
