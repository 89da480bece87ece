"""Background responses (OpenAI's `background: true`): a generation that runs on in the server
once its request is answered, whoever reads it, and the log of its events.

    runs = Runs(store)                    app.state.background: this server's runs
    run = await runs.launch(ctx, req, stream, record)
    runs.get(id)                          the run of a response still running here, or None
    run.follow(after)                     its events after number `after`, then the live ones,
                                          to its end
    await run.cancel()                    its response, `cancelled` unless it had finished
    await runs.close()                    at shutdown: every run ends failed, and is saved
    settled(record)                       a stored record whose run is gone: failed

A run's response goes queued (response.created, response.queued, saved at once) ->
in_progress (once the scheduler gives it a slot: it waits in the same queue as every request,
and a full queue fails it) -> completed, incomplete or failed (its last event, then saved with
its log) or cancelled (its log just ends). A client that leaves a stream leaves the run.

Bounded as stored responses are: the record, its log included, takes at most
LOCALRUN_RESPONSES_MAX_RECORD_BYTES; a run whose events outgrow their share of it ends failed.
Runs live at most as long as their requests could wait and run (the scheduler's queue and
slots), and a run leaves memory once saved. The record names the server's process, so that one
whose process is gone reads as failed rather than queued forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any

import anyio

from localrun.errors import BadRequestError, LocalrunError, ServerError
from localrun.request import GenRequest
from localrun.server import core
from localrun.server.errors import unexpected
from localrun.server.generation import Generation, start_detached
from localrun.server.response_store import ResponseStore, encode
from localrun.server.responses_events import Event, EventStream
from localrun.settings import limits

log = logging.getLogger("localrun.server")

UNFINISHED = ("queued", "in_progress")
# The share of a record its log may take: the text of the answer is in it up to five times (its
# deltas, done events and last event), and the record keeps it twice more (response, messages).
_LOG_SHARE = 0.6


class Run:
    """One background response: its stream of events, their log, the task that runs it."""

    def __init__(self, stream: EventStream, record: Callable[[], dict[str, Any]]) -> None:
        self.stream = stream
        self.record = record  # the record to store, as the response stands
        self.events: list[Event] = []
        self.room = 0  # bytes the log may take
        self.size = 0
        self.started = False  # its task has begun (a task cancelled before never runs)
        self.finished = False  # its last state decided (it may still be saving)
        self.cancelled = False  # a client cancelled it
        self.stopping = False  # the server is stopping
        self.task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def id(self) -> str:
        return str(self.stream.obj["id"])

    def add(self, events: Iterable[Event], *, bounded: bool = True) -> None:
        """Log `events` (each numbered as its place in the log) and wake the followers;
        a BadRequestError where they do not fit (then none is logged)."""
        events = list(events)
        size = sum(len(data) for _, data in events)
        if bounded and self.size + size > self.room:
            self.stream.renumber(len(self.events))
            raise BadRequestError(
                f"this response's events outgrew the {self.room} bytes its record has room for",
                hint="ask for fewer max_output_tokens, or raise "
                "LOCALRUN_RESPONSES_MAX_RECORD_BYTES",
            )
        self.events += events
        self.size += size
        self._wake.set()
        self._wake = asyncio.Event()

    async def follow(self, after: int) -> AsyncGenerator[Event, None]:
        """The events numbered past `after`, those logged already and then each as it comes,
        until the run ends."""
        index = max(after + 1, 0)
        while True:
            wake = self._wake  # set by any event logged from now on
            while index < len(self.events):
                yield self.events[index]
                index += 1
            if self.finished:
                return
            await wake.wait()

    def snapshot(self) -> dict[str, Any]:
        return self.stream.snapshot()

    async def cancel(self) -> dict[str, Any]:
        """Cancel the run unless its end is decided; its response once it has stopped."""
        if not self.finished and self.task is not None:
            self.cancelled = True
            self.stop()
        await self.wait()
        return self.snapshot()

    def stop(self) -> None:
        """Cancel the task; one not yet begun sees `cancelled` or `stopping` as it begins."""
        if self.started and self.task is not None:
            self.task.cancel()

    async def wait(self) -> None:
        if self.task is not None:
            with anyio.CancelScope(shield=True):
                await asyncio.wait([self.task])

    def log_json(self) -> list[bytes]:
        return [data for _, data in self.events]


class Runs:
    """The background responses running in this server, by id."""

    def __init__(self, store: ResponseStore) -> None:
        self.store = store
        self.runs: dict[str, Run] = {}

    def get(self, response_id: str) -> Run | None:
        return self.runs.get(response_id)

    async def launch(
        self,
        ctx: core.Context,
        req: GenRequest,
        stream: EventStream,
        record: Callable[[], dict[str, Any]],
        body: Callable[[Generation], AsyncGenerator[Event, None]],
    ) -> Run:
        """Log the queued response's first events, store it, and start its run: `body`
        makes the events of its answer once the scheduler has started it."""
        run = Run(stream, record)
        obj = stream.obj
        obj["status"] = "queued"
        run.add(
            [
                stream.event("response.created", response=obj),
                stream.event("response.queued", response=obj),
            ],
            bounded=False,
        )
        # The log's room: a share of what the record may take beyond what it holds now.
        base = len(encode(record(), run.log_json()))
        run.room = int(max(0, limits.responses_max_record_bytes() - base) * _LOG_SHARE)
        await anyio.to_thread.run_sync(self.store.save, _owned(record()), run.log_json())
        self.runs[run.id] = run
        run.task = asyncio.create_task(self._run(run, ctx, req, body))
        return run

    async def _run(
        self,
        run: Run,
        ctx: core.Context,
        req: GenRequest,
        body: Callable[[Generation], AsyncGenerator[Event, None]],
    ) -> None:
        run.started = True
        try:
            if run.cancelled or run.stopping:
                raise asyncio.CancelledError
            try:
                generation = await start_detached(ctx, req)
            except LocalrunError as exc:
                run.add([run.stream.failed(exc)], bounded=False)
                return
            try:
                run.stream.obj["status"] = "in_progress"
                run.add([run.stream.event("response.in_progress", response=run.stream.obj)])
                await _logged(run, body(generation))
            finally:
                if not generation.finished:
                    await generation.close()
        except asyncio.CancelledError:
            _uncancel()
            _stopped(run)
        except LocalrunError as exc:
            run.add([run.stream.failed(exc)], bounded=False)
        except Exception as exc:
            run.add([run.stream.failed(unexpected(exc, "a background response"))], bounded=False)
        finally:
            run.finished = True
            run.add([], bounded=False)  # wakes the followers, who see it end
            with anyio.CancelScope(shield=True):
                await self._save(run)
            self.runs.pop(run.id, None)

    async def _save(self, run: Run) -> None:
        """Store the run's response with its log (without the log where the two do not fit
        together, so that the response at least is kept)."""
        record = _owned(run.record())
        for events in (run.log_json(), None):
            try:
                await anyio.to_thread.run_sync(self.store.save, record, events)
                return
            except LocalrunError as exc:
                log.warning("could not store background response %s: %s", run.id, exc)

    async def close(self) -> None:
        """Stop every run (each ends failed: the server stopped) and save it."""
        for run in list(self.runs.values()):
            if not run.finished:
                run.stopping = True
                run.stop()
        for run in list(self.runs.values()):
            await run.wait()


async def _logged(run: Run, events: AsyncGenerator[Event, None]) -> None:
    """Log the answer's events as they come; a log that outgrows its room ends the answer
    (the generation closes with the events) and the run fails."""
    async with contextlib.aclosing(events) as answer:
        async for event in answer:
            run.add([event])


def _stopped(run: Run) -> None:
    """The end of a run that was cancelled: by a client (`cancelled`, its log ends as it is)
    or by the server stopping (failed)."""
    run.stream.settle()
    if run.cancelled:
        run.stream.obj["status"] = "cancelled"
        return
    stopped = ServerError(
        "the server stopped before this response finished", hint="create it again"
    )
    run.add([run.stream.failed(stopped)], bounded=False)


def _uncancel() -> None:
    """Clear the task's cancel request once it is handled, so that the run can save itself."""
    uncancel = getattr(asyncio.current_task(), "uncancel", None)  # Python 3.11 and later
    if uncancel is not None:
        uncancel()


def _owned(record: dict[str, Any]) -> dict[str, Any]:
    """The record, naming the process that runs it."""
    return {**record, "owner": {"pid": os.getpid()}}


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process: alive
    return True


def settled(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record as it stands: an unfinished background response whose server process
    is gone is failed (its run went with it), with its last event."""
    obj = record["response"]
    if obj.get("status") not in UNFINISHED or _alive((record.get("owner") or {}).get("pid")):
        return record
    error = {"code": "server_error", "message": "the server stopped before this response finished"}
    obj = {**obj, "status": "failed", "error": error}
    events = list(record.get("events") or [])
    events.append({"type": "response.failed", "sequence_number": len(events), "response": obj})
    return {**record, "response": obj, "events": events}
