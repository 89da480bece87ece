"""A runner in this process: what `localrun run` answers with when no server is up.

The same Worker as the server's runner process serves its requests (prompt preparation, the
engine with one slot, the answer's filters); they are dispatched as messages instead of written
as lines, and its events come back through an Inbox, one queue per request, instead of stdout.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from localrun.engine.types import Timings
from localrun.model.stored import LoadSpec, Model
from localrun.request.genrequest import GenRequest
from localrun.store import leases
from localrun.store.leases import Lease
from localrun.store.local import Store
from localrun.worker import probe, protocol
from localrun.worker.load import Loaded, load_model
from localrun.worker.serve import Worker

Events = queue.SimpleQueue[protocol.Message]


class Inbox:
    """The worker's events, each put in the queue of its request until its final event."""

    broken = False  # a reader in this process never goes away

    def __init__(self) -> None:
        self._queues: dict[protocol.RequestId, Events] = {}
        self._lock = threading.Lock()

    def open(self, id: protocol.RequestId) -> Events:
        events: Events = queue.SimpleQueue()
        with self._lock:
            self._queues[id] = events
        return events

    def send(self, message: protocol.Message) -> None:
        id = message.get("id", -1)
        with self._lock:
            # A request's final event is its last: its queue is not needed here after it.
            final = message.get("event") in protocol.FINAL_EVENTS
            events = self._queues.pop(id, None) if final else self._queues.get(id)
        if events is not None:
            events.put(message)


class LocalRunner:
    """A model loaded in this process, answering one request at a time or several."""

    def __init__(self, model: Model, loaded: Loaded, lease: Lease | None = None) -> None:
        self.model = model
        self.loaded = loaded
        self._lease = lease
        self._inbox = Inbox()
        self._worker = Worker(loaded, self._inbox, inline=True)
        self._ids = itertools.count(1)

    @property
    def engine(self) -> Any:
        return self.loaded.engine

    @property
    def template(self) -> str | None:
        return self.loaded.prompter.template

    def generate(self, request: GenRequest) -> LocalAnswer:
        """Start `request`, raising here what is wrong with it before the engine starts.

        Such errors are a bad option, a template that fails, or a prompt that does not fit. The
        answer, and the errors of evaluating it, come as it is read.
        """
        id = next(self._ids)
        answer = LocalAnswer(self._inbox.open(id), lambda: self._end(id))
        with _interrupt_after():  # Ctrl-C here would leave a job nothing can cancel
            self._worker.dispatch(protocol.generate_request(id, request))
        try:
            answer.check()
        except BaseException:
            answer.cancel()
            raise
        return answer

    def _end(self, id: protocol.RequestId) -> None:
        self._worker.dispatch(protocol.cancel_request(id))

    def close(self) -> None:
        self._worker.close()
        if self._lease is not None:
            self._lease.release()


class LocalAnswer:
    """One streamed answer: iterate for text; then `text`, `done_reason` and `timings` are set."""

    def __init__(self, events: Events, stop: Callable[[], None]) -> None:
        self._events = events
        self._stop = stop
        self._first: protocol.Message | None = None
        self._final: protocol.Message | None = None
        self.text = ""
        self.thinking = ""  # a reasoning model's thinking, split off the answer
        self.on_thinking: Callable[[str], None] | None = None  # called with each piece of it
        self.done_reason: str | None = None
        self.timings = Timings()

    def check(self) -> None:
        """Raise the error the worker answered with already.

        The worker prepares and submits on the caller's thread, so an error found there is
        queued before dispatch returns.
        """
        with contextlib.suppress(queue.Empty):
            event = self._events.get_nowait()
            self._first = event
            self._take(event)

    def _next(self) -> protocol.Message:
        event = self._events.get()
        self._take(event)
        return event

    def _take(self, event: protocol.Message) -> None:
        if event.get("event") == protocol.ERROR:
            self._final = event
            raise protocol.error_from_dict(event.get("error"))
        if event.get("event") == protocol.DONE:
            self._final = event
            self.timings = protocol.timings_from_dict(event.get("timings"))
            if self.done_reason is None:
                self.done_reason = str(event.get("reason") or "stop")

    def __iter__(self) -> Iterator[str]:
        event, self._first = self._first, None
        while True:
            if event is None:
                if self._final is not None:
                    return
                event = self._next()
            if event.get("event") == protocol.PIECE:
                yield from self._piece(event)
            event = None

    def _piece(self, event: protocol.Message) -> Iterator[str]:
        thought = event.get("thinking")
        if thought:
            self.thinking += thought
            if self.on_thinking is not None:
                self.on_thinking(thought)
        text = event.get("text")
        if text:
            self.text += text
            yield text

    def cancel(self) -> None:
        """Stop now (e.g. on Ctrl-C): the answer so far stays, marked cancelled.

        Returns once the engine has let go of it, within a token.
        """
        self.done_reason = "cancelled"
        if self._final is not None:
            return
        self._stop()
        while self._final is None:
            try:
                self._next()
            except Exception:
                return  # it failed instead: nothing more comes
        self.done_reason = "cancelled"


@contextlib.contextmanager
def _interrupt_after() -> Iterator[None]:
    """Hold a Ctrl-C that comes during the block and raise it once the block is done.

    On the main thread only, where Python runs signal handlers; elsewhere nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def open_local(
    spec: LoadSpec,
    *,
    backend: str = "llama",
    extra: dict[str, Any] | None = None,
    warn: Callable[[str], None] | None = None,
) -> LocalRunner:
    """Load the spec's model in this process, with one slot.

    Its blobs are held in the store (store.leases) until the runner closes. llama.cpp may abort
    or hang on a model that passes every check. So one not yet seen to load cleanly is loaded in
    a child process first (localrun.worker.probe), handed the same spec.
    """
    model = spec.model
    lease = None
    if model.store_root is not None:  # not from a store (a test's model object): none to hold
        lease = leases.take(Store(model.store_root), model.manifest.digests(), str(model.name))

    def probed() -> None:
        if backend == "llama":
            probe.ensure_loads(spec)

    try:
        loaded = load_model(spec, backend=backend, extra=extra, warn=warn, before_build=probed)
    except BaseException:
        if lease is not None:
            lease.release()
        raise
    return LocalRunner(model, loaded, lease)
