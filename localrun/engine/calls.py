"""Work handed to the engine's loop thread, so that one thread of a process computes.

llama.cpp's CPU backend, as llama-cpp-python builds it (with OpenMP), runs each graph in an
OpenMP team of the thread that calls llama_decode and synchronizes its nodes at OpenMP barriers.
A second thread that decodes (an embedding in its own context, say) gets a team of its own, and
once a process has more OpenMP threads than CPUs, libgomp stops spinning at a barrier almost at
once and sleeps instead, for every team and for the rest of the process's life. A barrier a node
then costs a wake-up: on two cores SmolLM2's generation in a server fell from ~115 to ~65 tok/s
after one /api/embed call to the same model, for good. So a runner's other compute (embeddings,
a benchmark's timings) runs on the loop's thread, between two steps, through a LoopCalls.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from localrun.errors import EngineError

T = TypeVar("T")
# Calls waiting for the loop: each callable and the Future its caller waits on.
Pending = list[tuple[Callable[[], Any], Future[Any]]]


class LoopCalls:
    """Callables waiting for the loop's thread, each answered through a Future.

    `add` and `take` are called under the engine's lock; `run` and `fail` outside it.
    """

    def __init__(self) -> None:
        self._pending: collections.deque[tuple[Callable[[], Any], Future[Any]]] = (
            collections.deque()
        )
        self.closed = False

    def add(self, fn: Callable[[], T]) -> Future[T]:
        if self.closed:
            raise EngineError("the model is being unloaded")
        future: Future[T] = Future()
        self._pending.append((fn, future))
        return future

    def take(self) -> Pending:
        taken = list(self._pending)
        self._pending.clear()
        return taken

    def close(self) -> Pending:
        """No more calls; those still waiting, for `fail`."""
        self.closed = True
        return self.take()


def run(calls: Pending) -> None:
    """Each call on this thread; its result or exception to its caller."""
    for fn, future in calls:
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(fn())
        except BaseException as exc:  # the caller's to handle, never the loop's
            future.set_exception(exc)


def fail(calls: Pending) -> None:
    for _, future in calls:
        if future.set_running_or_notify_cancel():
            future.set_exception(EngineError("the model is being unloaded"))
