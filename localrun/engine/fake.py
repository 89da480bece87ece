"""A scripted stand-in for the llama.cpp engine, for tests of the layers above it.

It "tokenizes" text into characters and answers with the scripted replies in order, one
character per token, honouring num_predict, cancellation and prefix caching the way the real
engine (engine.batch) does, so the runner, the CLI and the scheduler can be tested without a
model, optionally slowed down per token.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from localrun.engine.types import (
    EmbedInput,
    FimTokens,
    LoadOptions,
    SamplingOptions,
    Timings,
    rank_mismatch,
)
from localrun.errors import BadRequestError, ContextOverflowError, EngineError
from localrun.request import overflow

END = 0  # the end-of-turn token


class FakeTicket:
    """A request submitted to FakeBatchEngine; `cancel` ends it within a step."""

    def __init__(self, engine: FakeBatchEngine, job: _Job) -> None:
        self._engine = engine
        self._job = job

    def cancel(self) -> None:
        self._engine._cancel(self._job)


@dataclass
class _Job:
    prompt: list[int]
    reply: str
    sampling: SamplingOptions
    sink: Any
    timings: Timings = field(default_factory=Timings)
    tokens: list[int] = field(default_factory=list)
    slot: int = -1
    position: int = 0
    cancelled: bool = False
    cancel_at: float = 0.0  # when the cancel was asked for
    started: float = 0.0
    limit: int = 0  # the request's context within the slot's: where its answer ends


class FakeBatchEngine:
    """A scripted stand-in for engine.batch.BatchEngine: `slots` sequences served by one thread.

    Replies come from `replies` in order (repeating the last), one character per token. Each loop
    step emits one character per active slot, then sleeps `delay` seconds, so a test can hold slots
    busy; an embedding sleeps `delay` per text. Requests past the slots wait FIFO. Prefix reuse per
    slot, the done/error contract and a request's own `context` are the real engine's. `hang` wedges
    the engine after the first step that emits a piece, like a stuck native call: no more pieces, no
    cancels honoured, no final event until close(). Embeddings have `dims` dimensions; `trained` is
    the context the model was trained on (0: the loaded one).
    """

    bos_text = ""
    eos_text = "<|im_end|>"
    chat_template: str | None = None
    fim: FimTokens | None = None  # no fill-in-the-middle tokens
    n_vocab = 0x110000
    prompt_cache_note: str | None = None

    def __init__(
        self,
        path: str,
        options: LoadOptions,
        slots: int,
        *,
        replies: Sequence[str] = ("Hello!",),
        delay: float = 0.0,
        hang: bool = False,
        deaf: float = 0.0,
        dims: int = 8,
        trained: int = 0,
    ) -> None:
        self.path = path
        self.options = options
        self.n_ctx = options.num_ctx
        self.n_ctx_train = trained or options.num_ctx
        self.n_slots = max(1, slots)
        self.replies = list(replies) or ["Hello!"]
        self.delay = delay
        self.hang = hang
        # Seconds before a cancel is honoured, the other slots streaming meanwhile: a runner
        # whose request thread is busy, or whose step is long, on a loaded machine.
        self.deaf = deaf
        self.dims = max(1, dims)
        self.load_s = 0.0
        self.prompts: list[list[int]] = []
        self._turn = 0
        self._caches: list[list[int]] = [[] for _ in range(self.n_slots)]
        self._waiting: collections.deque[_Job] = collections.deque()
        self._active: list[_Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self._closing = threading.Event()  # ends a hang
        self._thread = threading.Thread(target=self._loop, name="fake-batch", daemon=True)
        self._thread.start()

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return [ord(ch) for ch in text]

    def token_ids(self, text: str) -> list[int]:
        return [END] if text == self.eos_text else []

    def media_prompt(self, text: str, media: Sequence[Any], *, add_special: bool) -> Any:
        raise BadRequestError(
            "this model cannot take images: it has no projector", hint="use a vision model"
        )

    def token_bytes(self, token: int) -> bytes:
        return (self.eos_text if token == END else chr(token)).encode("utf-8", "surrogatepass")

    def submit(
        self,
        prompt: Sequence[int],
        sampling: SamplingOptions,
        *,
        stop_tokens: frozenset[int] = frozenset(),
        sink: Any,
        cache_prefix: int = 0,
        media: Any = None,
    ) -> FakeTicket:
        if not prompt:
            raise EngineError("the prompt is empty")
        limit = sampling.within(self.n_ctx)
        if len(prompt) >= limit:
            raise overflow.error(len(prompt), limit, self.n_ctx_train)
        with self._cond:
            if self._closed:
                raise EngineError("the engine is closed")
            reply = self.replies[min(self._turn, len(self.replies) - 1)]
            self._turn += 1
            self.prompts.append(list(prompt))
            job = _Job(
                list(prompt), reply, sampling, sink, started=time.perf_counter(), limit=limit
            )
            self._waiting.append(job)
            self._cond.notify()
        return FakeTicket(self, job)

    def _cancel(self, job: _Job) -> None:
        with self._cond:
            if not job.cancelled:
                job.cancel_at = time.monotonic()
            job.cancelled = True
            self._cond.notify()

    def embed(
        self, texts: Sequence[EmbedInput], *, truncate: bool = True, query: str | None = None
    ) -> tuple[list[list[float]], int]:
        """Deterministic unit vectors (`dims` dimensions) derived from each text.

        The fake is no reranker, so it refuses a `query` as the real engine does.
        """
        if query is not None:
            raise rank_mismatch(False)
        vectors = []
        count = 0
        dims = self.dims
        for item in texts:
            text = item if isinstance(item, str) else "".join(map(chr, item))  # ids are ords
            if self.delay:
                time.sleep(self.delay)
            if len(text) >= self.n_ctx and not truncate:
                raise ContextOverflowError(
                    f"the input is {len(text)} tokens but the context holds {self.n_ctx}"
                )
            text = text[: self.n_ctx - 1]
            count += len(text)
            raw = [float(sum(ord(ch) for ch in text[i::dims]) + i + 1) for i in range(dims)]
            norm = math.sqrt(sum(x * x for x in raw))
            vectors.append([x / norm for x in raw])
        return vectors, count

    def _start(self, job: _Job) -> None:
        # The free slot sharing the longest prefix with the prompt, like the real engine.
        busy = {j.slot for j in self._active}

        def shared(slot: int) -> int:
            cache, n = self._caches[slot], 0
            while n < min(len(cache), len(job.prompt) - 1) and cache[n] == job.prompt[n]:
                n += 1
            return n

        slot = max((s for s in range(self.n_slots) if s not in busy), key=shared)
        job.slot = slot
        job.timings.cached_tokens = shared(slot)
        job.timings.prompt_tokens = len(job.prompt) - job.timings.cached_tokens
        self._caches[slot] = list(job.prompt)
        self._active.append(job)

    def _step(self, job: _Job) -> tuple[str | None, str | None]:
        """(piece, done reason) of one step of `job`."""
        s = job.sampling
        if job.cancelled and time.monotonic() - job.cancel_at >= self.deaf:
            return None, "cancelled"
        if job.position >= len(job.reply):
            return None, "stop"
        budget = s.num_predict if s.num_predict >= 0 else len(job.reply) + 1
        if job.timings.eval_tokens >= budget or len(self._caches[job.slot]) >= job.limit:
            return None, "length"
        ch = job.reply[job.position]
        job.position += 1
        job.timings.eval_tokens += 1
        job.tokens.append(ord(ch))
        self._caches[job.slot].append(ord(ch))
        return ch, None

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._waiting or self._active):
                    self._cond.wait()
                if self._closed:
                    jobs = [*self._active, *self._waiting]
                    self._active.clear()
                    self._waiting.clear()
                    break
                finished: list[tuple[_Job, str]] = []
                for job in [j for j in self._waiting if j.cancelled]:
                    self._waiting.remove(job)
                    finished.append((job, "cancelled"))
                while self._waiting and len(self._active) < self.n_slots:
                    self._start(self._waiting.popleft())
                steps = []
                for job in list(self._active):
                    piece, reason = self._step(job)
                    if reason is not None:
                        self._active.remove(job)
                        finished.append((job, reason))
                    elif piece is not None:
                        steps.append((job, piece))
            # Sinks are called outside the lock: they may call back (cancel) or submit.
            for job, piece in steps:
                job.sink.piece(piece, self._entries(job, piece))
            for job, reason in finished:
                self._finish(job, reason)
            if self.delay and steps:
                time.sleep(self.delay)
            if self.hang and steps:
                self._closing.wait()
        for job in jobs:
            self._finish(job, "cancelled")

    def _entries(self, job: _Job, piece: str) -> list[dict[str, Any]] | None:
        """A scripted token's log-probability entry, where the request asked for them.

        The token is certain (log 0), and the candidates it was to be read over are even
        (SamplingOptions.candidates; a real engine reads them from the logits).
        """
        s = job.sampling
        if s.logprobs <= 0 and not s.candidates:
            return None
        raw = list(piece.encode("utf-8", "surrogatepass"))
        entry: dict[str, Any] = {"token": piece, "logprob": 0.0, "bytes": raw, "top": []}
        if s.logprobs > 0:
            entry["top"] = [{"token": piece, "logprob": 0.0, "bytes": raw}]
        if s.candidates:
            even = -math.log(len(s.candidates))
            entry["candidates"] = [
                {"id": t, "token": self.token_bytes(t).decode("utf-8", "replace"), "logprob": even}
                for t in s.candidates
            ]
        return [entry]

    def _finish(self, job: _Job, reason: str) -> None:
        now = time.perf_counter()
        job.timings.total_s = now - job.started
        job.timings.eval_s = job.timings.total_s
        job.sink.done(reason, job.timings, job.tokens)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._closing.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
