"""A request to the batch engine (engine.batch.BatchEngine) and the sink that collects its
answer, for the tests that drive the engine directly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from localrun.engine.batch import BatchEngine
from localrun.engine.slots import Ticket
from localrun.engine.types import SamplingOptions, Timings
from localrun.errors import LocalrunError


class Collect:
    """A Sink that keeps everything; `on_piece(self)` runs on the engine thread per piece."""

    def __init__(self, on_piece: Callable[[Collect], None] | None = None) -> None:
        self.pieces: list[str] = []
        self.entries: list[dict[str, Any]] = []  # the prompt's, when it is scored
        self.logprobs: list[dict[str, Any]] = []  # the answer's tokens', when asked for
        self.reason: str | None = None
        self.timings = Timings()
        self.tokens: list[int] = []
        self.exc: LocalrunError | None = None
        self.calls = 0  # done() + error(): must end up 1
        self.ended_at = 0.0
        self.ticket: Ticket | None = None
        self.on_piece = on_piece
        self.first_piece = threading.Event()
        self.finished = threading.Event()

    def piece(self, text: str, logprobs: list[dict[str, Any]] | None = None) -> None:
        self.pieces.append(text)
        self.logprobs += logprobs or []
        self.first_piece.set()
        if self.on_piece is not None:
            self.on_piece(self)

    def scored(self, entries: list[dict[str, Any]]) -> None:
        assert not self.pieces, "a prompt's entries come before the answer"
        self.entries += entries

    def done(self, reason: str, timings: Timings, tokens: list[int]) -> None:
        self.calls += 1
        self.ended_at = time.perf_counter()
        self.reason, self.timings, self.tokens = reason, timings, list(tokens)
        self.finished.set()

    def error(self, exc: LocalrunError) -> None:
        self.calls += 1
        self.exc = exc
        self.finished.set()

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def wait(self, timeout: float = 60) -> Collect:
        assert self.finished.wait(timeout), "the request did not end"
        return self


def run(
    engine: BatchEngine,
    prompt: list[int],
    sampling: SamplingOptions,
    stop: frozenset[int] = frozenset(),
    on_piece: Callable[[Collect], None] | None = None,
) -> Collect:
    sink = Collect(on_piece)
    sink.ticket = engine.submit(prompt, sampling, stop_tokens=stop, sink=sink)
    return sink


def greedy(n: int) -> SamplingOptions:
    return SamplingOptions(temperature=0, num_predict=n)
