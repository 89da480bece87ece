"""Background responses (OpenAI's `background: true`): runs that outlive their request.

A run is a generation that goes on in the server once its request is answered, whoever reads
it, with the log of its events. `Runs` (app.state.background) holds this server's runs:
`launch` starts one, `get` finds one still running here, and `close` ends every one at
shutdown, failed and saved. `Run.follow` gives a run's events after a number, then the live
ones; `Run.cancel` cancels it. `Runs.settled` reads a stored record whose run is gone as failed.

A run's response goes queued -> in_progress -> completed, incomplete, failed or cancelled (the
comment above `Run` says when). Its record is bounded by LOCALRUN_RESPONSES_MAX_RECORD_BYTES,
and a client has at most LOCALRUN_RESPONSES_BACKGROUND_MAX_PER_CLIENT runs queued or running
(the comment above `Runs` says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any

import anyio
import psutil

from localrun.errors import LocalrunError, ServerError, TooManyRequestsError
from localrun.request.genrequest import GenRequest
from localrun.server import core
from localrun.server.errors import unexpected
from localrun.server.generation import Generation, start_detached
from localrun.server.responses.events import Event, EventStream
from localrun.server.responses.store import ResponseStore, encode
from localrun.settings import limits

log = logging.getLogger("localrun.server")

UNFINISHED = ("queued", "in_progress")
# The events that end a response's stream: logged, the run's end is decided.
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# A record's mark that its log was not kept (the two did not fit): its events made again from the
# response would not be numbered as its stream was, so no client resumes from them.
EVENTS_LOST = "events_lost"
# The share of a record its log may take: the text of the answer is in it up to five times (its
# deltas, done events and last event), and the record keeps it twice more (response, messages).
_LOG_SHARE = 0.6


# A run's response goes queued (response.created, response.queued, saved at once) ->
# in_progress (once the scheduler gives it a slot: it waits in the same queue as every
# request, and a full queue fails it) -> completed, incomplete or failed (its last event, then
# saved with its log) or cancelled (its log just ends). Once its last event is logged nothing
# changes it: a cancel or a stop then leaves it as it is. A client that leaves a stream leaves
# the run.
class Run:
    """One background response: its stream of events, their log, the task that runs it."""

    def __init__(
        self, stream: EventStream, record: Callable[[], dict[str, Any]], client: str = ""
    ) -> None:
        self.stream = stream
        self.record = record  # the record to store, as the response stands
        self.client = client  # whose share of runs it takes
        self.events: list[Event] = []
        self.room = 0  # bytes the log may take
        self.size = 0
        self.started = False  # its task has begun (a task cancelled before never runs)
        # Its last state decided: its last event logged, or its task ended (it may still be
        # saving). Cancels and stops leave it alone from then on.
        self.finished = False
        self.cancelled = False  # a client cancelled it
        self.stopping = False  # the server is stopping
        self.task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def id(self) -> str:
        return str(self.stream.obj["id"])

    def add(self, events: Iterable[Event], *, bounded: bool = True) -> None:
        """Log `events`, each numbered as its place in the log, and wake the followers.

        A ServerError where they do not fit; then none is logged.
        """
        events = list(events)
        size = sum(len(data) for _, data in events)
        if bounded and self.size + size > self.room:
            self.stream.renumber(len(self.events))
            raise ServerError(
                f"this response's events outgrew the {self.room} bytes its stored record has "
                "room for, so it was stopped",
                hint="ask for fewer max_output_tokens, or raise "
                "LOCALRUN_RESPONSES_MAX_RECORD_BYTES",
            )
        self.events += events
        self.size += size
        if any(kind in TERMINAL for kind, _ in events):
            self.finished = True
        self._wake.set()
        self._wake = asyncio.Event()

    def fail(self, exc: LocalrunError) -> None:
        """End the run failed with `exc`, unless its end is decided already."""
        if not self.finished:
            self.add([self.stream.failed(exc)], bounded=False)

    async def follow(self, after: int) -> AsyncGenerator[Event, None]:
        """The events numbered past `after`, until the run ends.

        Those logged already come first, then each as it comes.
        """
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
        if not self.finished:
            self.cancelled = True  # a task not begun yet sees it as it begins
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


# Runs are bounded as stored responses are: the record, its log included, takes at most
# LOCALRUN_RESPONSES_MAX_RECORD_BYTES. A run whose events outgrow their share of it ends failed;
# a record that still does not fit is saved without its log, marked EVENTS_LOST. Runs live at
# most as long as their requests could wait and run (the scheduler's queue and slots). A client
# has at most LOCALRUN_RESPONSES_BACKGROUND_MAX_PER_CLIENT queued or running: a run generates
# whether or not anyone listens, so the per-client cap on connections does not bound them. A
# run leaves memory once saved.
#
# The record names its owner: the server's process (its pid and when it started: a pid alone
# is reused, and a container's server restarts as the same pid) and the `Runs` in it. An
# unfinished record whose owner is gone, or is this process under another `Runs`, or is this
# `Runs` with no such run left, reads as failed rather than queued forever (`settled`).
class Runs:
    """The background responses running in this server, by id."""

    def __init__(self, store: ResponseStore) -> None:
        self.store = store
        self.runs: dict[str, Run] = {}
        pid = os.getpid()
        # What names this server's records: its process (a pid and its start, one process) and
        # this Runs in it (an app made again in the same process has runs of its own).
        self.owner = {"pid": pid, "started": _start_time(pid), "instance": secrets.token_hex(8)}

    def get(self, response_id: str) -> Run | None:
        return self.runs.get(response_id)

    async def launch(
        self,
        ctx: core.Context,
        req: GenRequest,
        stream: EventStream,
        record: Callable[[], dict[str, Any]],
        body: Callable[[Generation], AsyncGenerator[Event, None]],
        client: str = "",
    ) -> Run:
        """Log the queued response's first events, store it, and start its run.

        `body` makes the events of its answer once the scheduler has started it. A `client` (the
        connection limits' key) with LOCALRUN_RESPONSES_BACKGROUND_MAX_PER_CLIENT runs queued or
        running is refused.
        """
        self._check_share(client)
        run = Run(stream, record, client)
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
        self.runs[run.id] = run  # counted from now on (the save below lets others in)
        try:
            await anyio.to_thread.run_sync(self.store.save, self._owned(record()), run.log_json())
        except BaseException:
            del self.runs[run.id]
            raise
        run.task = asyncio.create_task(self._run(run, ctx, req, body))
        return run

    def _check_share(self, client: str) -> None:
        most = limits.responses_background_max_per_client()
        live = sum(1 for run in self.runs.values() if run.client == client and not run.finished)
        if live >= most:
            raise TooManyRequestsError(
                f"this client already has {live} background responses queued or running, "
                f"the most LOCALRUN_RESPONSES_BACKGROUND_MAX_PER_CLIENT allows",
                hint="wait until one has finished, or cancel one",
                retry_after=5,
            )

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
                generation = await start_detached(ctx, req, (run.client, None))
            except LocalrunError as exc:
                run.fail(exc)
                return
            try:
                run.stream.obj["status"] = "in_progress"
                run.add([run.stream.event("response.in_progress", response=run.stream.obj)])
                await _logged(run, body(generation))
            finally:
                if not generation.finished:
                    await _unstoppable(generation.close())
        except asyncio.CancelledError:
            _uncancel()
            _stopped(run)
        except LocalrunError as exc:
            run.fail(exc)
        except Exception as exc:
            run.fail(unexpected(exc, "a background response"))
        finally:
            run.finished = True
            run.add([], bounded=False)  # wakes the followers, who see it end
            try:
                await _unstoppable(self._save(run))
            finally:
                self.runs.pop(run.id, None)

    async def _save(self, run: Run) -> None:
        """Store the run's response with its log, or without the log where the two do not fit.

        Without the log, the response at least is kept, marked EVENTS_LOST.
        """
        record = self._owned(run.record())
        try:
            await anyio.to_thread.run_sync(self.store.save, record, run.log_json())
            return
        except LocalrunError as exc:
            log.warning("could not store background response %s with its events: %s", run.id, exc)
        try:
            await anyio.to_thread.run_sync(self.store.save, {**record, EVENTS_LOST: True})
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

    def _owned(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record, naming this server as the one that runs it."""
        return {**record, "owner": self.owner}

    def settled(self, record: dict[str, Any]) -> dict[str, Any]:
        """A stored record as it stands: an unfinished one whose run is gone reads as failed.

        A failed one gets a last response.failed event. The comment above `Runs` says when a run is
        gone.
        """
        obj = record["response"]
        if obj.get("status") not in UNFINISHED:
            return record
        reason = self._gone(record.get("owner"), str(obj.get("id")))
        if reason is None:
            return record
        obj = {**obj, "status": "failed", "error": {"code": "server_error", "message": reason}}
        events = list(record.get("events") or [])
        events.append({"type": "response.failed", "sequence_number": len(events), "response": obj})
        return {**record, "response": obj, "events": events}

    def _gone(self, owner: Any, response_id: str) -> str | None:
        """Why the run of an unfinished record is gone; None while it runs.

        It may run here, or in another server's process sharing the folder.
        """
        if not isinstance(owner, dict):
            return _STOPPED
        if owner.get("instance") == self.owner["instance"]:
            if response_id in self.runs:
                return None
            return "this response's run ended, but its end could not be stored"
        pid = owner.get("pid")
        if pid == self.owner["pid"]:
            return _STOPPED  # an earlier process of this pid, or another app in this one
        started, recorded = _start_time(pid), owner.get("started")
        if started is None or not isinstance(recorded, (int, float)):
            return _STOPPED
        return None if abs(started - recorded) < _SAME_START_S else _STOPPED


_STOPPED = "the server stopped before this response finished"
# Two start times of one process as read at different moments (psutil's, in seconds).
_SAME_START_S = 0.01


def _start_time(pid: Any) -> float | None:
    """When process `pid` started (None: there is none, or it is not readable)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OverflowError, ValueError):
        return None


async def _unstoppable(work: Awaitable[None]) -> None:
    """Await `work` to its end, even through cancels, then pass the cancel on.

    anyio's shielded scopes do not hold off asyncio's own task.cancel(), which is how a run is
    stopped. asyncio.shield does, and the loop waits again after each cancel.
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    task.result()


async def _logged(run: Run, events: AsyncGenerator[Event, None]) -> None:
    """Log the answer's events as they come.

    A log that outgrows its room ends the answer (the generation closes with the events), and the
    run fails.
    """
    async with contextlib.aclosing(events) as answer:
        async for event in answer:
            run.add([event])


def _stopped(run: Run) -> None:
    """End a run that was cancelled, by a client or by the server stopping.

    A client's cancel leaves it `cancelled`, its log ending as it is; the server stopping fails it.
    Nothing changes where its last event was logged already.
    """
    if run.finished:
        return
    run.stream.settle()
    if run.cancelled:
        run.stream.obj["status"] = "cancelled"
        return
    run.fail(ServerError(_STOPPED, hint="create it again"))


def _uncancel() -> None:
    """Clear the task's cancel request once it is handled, so that the run can save itself."""
    uncancel = getattr(asyncio.current_task(), "uncancel", None)  # Python 3.11 and later
    if uncancel is not None:
        uncancel()
