"""The server's side of one runner subprocess: start it, talk to it, stop it, reap it.

`RunnerProcess` starts `python -m localrun.worker`, writes requests to its stdin and dispatches
the events it sends back. Those of a request (by id) go to that request's queue, the others
(ready, a load error) to a callback. The runner's stderr goes to the "localrun.runner" logger,
its last lines kept for error messages. When its stdout ends the process is reaped and a
callback gets the exit status. Stopping escalates from stdin EOF to SIGTERM and SIGKILL. `kill`
is for a runner that can no longer be trusted: it ignored a cancel, or sent a line past the
protocol's LINE_LIMIT, which a runner never does. The reason goes into the error its requests
get. `Stream` reads one generation's events from its queue.

Which model to load, when to stop a runner and how its slots are counted is the scheduler's
business (localrun.scheduler). Like the whole package, this module is cheap to import.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from localrun.engine.types import Timings
from localrun.errors import LocalrunError, ModelLoadError, RunnerDiedError, ServerError
from localrun.host import processes, selfexec
from localrun.worker import protocol

# The names the server has always logged these under: the scheduler's view of its runners, and
# the runners' own output.
log = logging.getLogger("localrun.scheduler")
runner_log = logging.getLogger("localrun.runner")

STOP_GRACE_S = 10.0  # after stdin EOF, before SIGTERM
KILL_GRACE_S = 3.0  # after SIGTERM, before SIGKILL
STDERR_GRACE_S = 2.0  # after the exit, for the last stderr lines
STDERR_TAIL = 20
# What llama.cpp's RPC client says as it aborts its process over a worker (ggml-rpc.cpp).
RPC_FAILURES = ("Remote RPC server crashed", "Failed to connect to", "RPC handshake failed")
# A cancelled request's runner is wedged when it has sent nothing at all for CANCEL_WAIT_S (a
# native call that never returns); one that keeps answering others may take up to CANCEL_MAX_S
# to get to the cancel (its request thread busy, a long step on a loaded machine).
CANCEL_WAIT_S = 10.0
CANCEL_MAX_S = 120.0

Event = dict[str, Any]
Item = Event | LocalrunError  # what a request's queue receives


class RunnerProcess:
    """One runner subprocess: requests in on its stdin, events out by request id."""

    def __init__(self, name: str) -> None:
        """`name` (the model's) labels the log lines and errors about this runner."""
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self.pending: dict[int, asyncio.Queue[Item]] = {}  # open requests by id
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self.gone: LocalrunError | None = None  # set by fail(): what new requests get
        self.killed: str | None = None  # why kill() was called, for the error of its requests
        self.worker_failed = False  # llama.cpp said a worker failed it (RPC_FAILURES)
        self._loop = asyncio.get_running_loop()
        self._reaped = asyncio.Event()
        self.heard = time.monotonic()  # when the runner last sent a line
        self._tasks: list[asyncio.Task[None]] = []  # held: the loop keeps only weak refs

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    async def start(
        self,
        *,
        on_event: Callable[[Event], None],
        on_final: Callable[[], None],
        on_exit: Callable[[int], None],
    ) -> None:
        """Start the runner and the tasks that read its output.

        `on_event` gets the events that belong to no request (ready, a load error); `on_final`
        is called when a request's final event arrives, just before its queue gets it; `on_exit`
        gets the exit status once the process is reaped. Raises ModelLoadError when the process
        cannot be started.
        """
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *selfexec.command("localrun.worker"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=protocol.LINE_LIMIT,
                # Its own process group: Ctrl-C in the server's terminal reaches only the
                # server, which then stops the runners in order (stdin EOF also ends an orphan).
                start_new_session=processes.NEW_SESSION,
                creationflags=processes.GROUP_FLAGS,
            )
        except OSError as exc:
            raise ModelLoadError(
                f"could not start a runner for {self.name}: {exc}",
                hint="check that the Python environment of the server is complete",
            ) from None
        stderr = self._loop.create_task(self._pump_stderr(self.proc))
        reader = self._loop.create_task(self._read(self.proc, stderr, on_event, on_final, on_exit))
        self._tasks += [stderr, reader]

    # -- requests ------------------------------------------------------------------------------

    def write(self, message: Event) -> None:
        """Queue a line for the runner; raises what ended the runner when it is gone."""
        stdin = self.proc.stdin if self.proc is not None else None
        if self.gone is not None or stdin is None or stdin.is_closing():
            raise (self.gone or RunnerDiedError(f"the runner of {self.name} is gone")).copy()
        stdin.write(protocol.encode(message))

    def request(self, message: Event) -> asyncio.Queue[Item]:
        """Write a request (its "id" set) and return the queue its events come on.

        The events end with a final one, or else with what ended the runner. Raises at once,
        having sent nothing, when the runner is gone.
        """
        self.write(message)
        queue: asyncio.Queue[Item] = asyncio.Queue()
        self.pending[message["id"]] = queue
        return queue

    async def drain(self) -> None:
        """Wait until what was written has gone down the pipe."""
        assert self.proc is not None and self.proc.stdin is not None
        try:
            await self.proc.stdin.drain()
        except (ConnectionError, OSError):  # it died: the reader fails what was sent
            error = self.gone or RunnerDiedError(f"the runner of {self.name} stopped reading")
            raise error.copy() from None

    def cancel(self, rid: int) -> None:
        """Ask the runner to stop request `rid`; safe from any thread (Stream.__del__)."""
        if self._loop.is_closed():
            return

        def send() -> None:
            stdin = self.proc.stdin if self.proc is not None else None
            if rid in self.pending and stdin is not None and not stdin.is_closing():
                with contextlib.suppress(Exception):
                    stdin.write(protocol.encode(protocol.cancel_request(rid)))

        self._loop.call_soon_threadsafe(send)

    def interrupt(self, error: LocalrunError) -> None:
        """End every open request now with `error`, as the server is stopping.

        The runner is told to cancel them, and their streams get the error to send as their last
        line.
        """
        stdin = self.proc.stdin if self.proc is not None else None
        for rid, queue in list(self.pending.items()):
            if stdin is not None and not stdin.is_closing():
                with contextlib.suppress(Exception):
                    stdin.write(protocol.encode(protocol.cancel_request(rid)))
            queue.put_nowait(error.copy())
        self.pending.clear()

    def fail(self, error: LocalrunError) -> None:
        """The runner is gone: every open request gets `error` (a copy each), new ones too."""
        self.gone = error
        for queue in self.pending.values():
            queue.put_nowait(error.copy())
        self.pending.clear()

    # -- stopping ------------------------------------------------------------------------------

    def kill(self, reason: str) -> None:
        """SIGKILL the runner now; `reason` ("it ignored a cancel") explains the exit."""
        if self.proc is None or self._reaped.is_set():
            return
        if self.killed is None:
            self.killed = reason
            log.error("killing the runner of %s (pid %d): %s", self.name, self.proc.pid, reason)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def close_stdin(self) -> None:
        """EOF on the runner's input: it finishes what it has, closes the engine and exits."""
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()

    async def stop(self) -> None:
        """Stop the runner: stdin EOF, then SIGTERM and SIGKILL past their deadlines.

        Returns once it is reaped; at once if it was never started.
        """
        proc = self.proc
        if proc is None:
            return
        self.close_stdin()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._reaped.wait(), STOP_GRACE_S)
            return
        log.warning("runner of %s (pid %d) ignored EOF: terminating it", self.name, proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._reaped.wait(), KILL_GRACE_S)
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await self._reaped.wait()

    # -- output --------------------------------------------------------------------------------

    async def _read(
        self,
        proc: asyncio.subprocess.Process,
        stderr: asyncio.Task[None],
        on_event: Callable[[Event], None],
        on_final: Callable[[], None],
        on_exit: Callable[[int], None],
    ) -> None:
        """Dispatch the runner's events until its stdout ends, then reap it."""
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                self.heard = time.monotonic()
                try:
                    event = protocol.decode(line)
                except LocalrunError as exc:
                    log.warning("runner of %s sent a malformed line: %s", self.name, exc)
                    continue
                rid = event.get("id")
                if rid is None:
                    on_event(event)
                    continue
                queue = self.pending.get(rid)
                if queue is None:
                    continue  # a request failed already (the runner was stopping)
                if event.get("event") in protocol.FINAL_EVENTS:
                    del self.pending[rid]
                    on_final()
                queue.put_nowait(event)
        except ValueError:  # a line past the limit: the stream cannot be trusted any more
            self.kill(f"it sent an event line over the limit of {protocol.LINE_LIMIT} bytes")
        finally:
            code = await self._reap(proc, stderr)
            self._reaped.set()
            on_exit(code)

    async def _reap(self, proc: asyncio.subprocess.Process, stderr: asyncio.Task[None]) -> int:
        """Wait for the exit (killing a runner that closed its stdout but lives on)."""
        try:
            code = await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        except asyncio.TimeoutError:  # stdout closed but alive: it cannot answer any more
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            code = await proc.wait()
        # Its last words (why it died) are logged before the exit is reported; a grandchild
        # holding stderr open does not keep the task alive past the grace time.
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(stderr, STDERR_GRACE_S)
        return code

    async def _pump_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        with contextlib.suppress(ValueError, ConnectionError):
            while line := await proc.stderr.readline():
                text = line.decode("utf-8", "replace").rstrip()
                if text:
                    self.stderr_tail.append(text)
                    if any(failure in text for failure in RPC_FAILURES):
                        self.worker_failed = True
                    runner_log.info("%s[%d]: %s", self.name, proc.pid, text)


class Stream:
    """The chunks of one answer, then its `done_reason`, `timings`, `tool_calls` and `context`.

    `context` holds the prompt's and answer's tokens, when asked for. Iterating raises the
    runner's typed error (ContextOverflowError, TemplateError ...), or RunnerDiedError when the
    runner exits. Call `aclose()` when the client goes away: the generation is cancelled and its
    slot freed. A runner that does not confirm the cancel within CANCEL_WAIT_S is wedged, and
    `kill` (given the reason) ends it.
    """

    def __init__(
        self,
        queue: asyncio.Queue[Item],
        load_s: float,
        cancel: Callable[[], None],
        kill: Callable[[str], None] | None = None,
        *,
        model: str = "",
        heard: Callable[[], float] | None = None,
    ) -> None:
        self.model = model  # the store name of the model answering
        self.done_reason: str | None = None
        self.timings = Timings(load_s=load_s)
        self.tool_calls: list[dict[str, Any]] | None = None
        self.stop_sequence: str | None = None  # the stop string that ended the answer
        self.context: list[int] | None = None
        self.prompt_count: int | None = None  # the prompt's tokens, told with the first piece
        self.sampled = False  # drawn at random (not greedy): drawn again, it may differ
        self.load_s = load_s
        self._queue = queue
        self._cancel = cancel
        self._kill = kill
        self._heard = heard  # when the runner last sent anything (for any request)
        self._finished = False

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> protocol.Chunk:
        if self._finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        chunk = self._take(item)
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    def _take(self, item: Item) -> protocol.Chunk | None:
        """A piece's chunk, or None at the end (done); raises the request's error."""
        if isinstance(item, LocalrunError):
            self._finished = True
            raise item
        kind = item.get("event")
        if kind == protocol.PIECE:
            prompt = item.get("prompt")
            if isinstance(prompt, int) and not isinstance(prompt, bool):
                self.prompt_count = prompt
            return protocol.Chunk.from_event(item)
        self._finished = True
        if kind == protocol.DONE:
            self.done_reason = str(item.get("reason") or "stop")
            self.timings = protocol.timings_from_dict(item.get("timings"))
            self.timings.load_s = self.load_s
            self.tool_calls = item.get("tool_calls")
            stop = item.get("stop_sequence")
            self.stop_sequence = stop if isinstance(stop, str) else None
            context = item.get("context")
            self.context = context if isinstance(context, list) else None
            self.sampled = item.get("sampled") is True
            return None
        if kind == protocol.ERROR:
            raise protocol.error_from_dict(item.get("error"))
        raise ServerError(f"the runner sent an unexpected {kind!r} event")

    async def aclose(self) -> None:
        """Cancel the generation (the client went away) and wait until its slot is free."""
        if self._finished:
            return
        self._cancel()
        asked = time.monotonic()
        # The slot is freed when the runner's final event for this request arrives (or the
        # runner dies). A runner silent for CANCEL_WAIT_S is stuck (a native call that never
        # returns): left alone it would hold the slot, and the model, forever. One that goes on
        # answering others is not (seen: killed at 10 s on a loaded machine while another
        # client's request waited on it); it has CANCEL_MAX_S.
        silent = False
        with contextlib.suppress(LocalrunError):
            while not self._finished:
                now = time.monotonic()
                last = max(asked, self._heard() if self._heard else asked)
                remaining = min(last + CANCEL_WAIT_S, asked + CANCEL_MAX_S) - now
                if remaining <= 0:
                    silent = now - last >= CANCEL_WAIT_S
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    continue  # heard from meanwhile (for another request)? then wait on
                self._take(item)
        if not self._finished and self._kill is not None:
            why = (
                f"it sent nothing for {CANCEL_WAIT_S:g}s after a cancel"
                if silent
                else f"it did not end a cancelled request within {CANCEL_MAX_S:g}s"
            )
            self._kill(why)
        self._finished = True
        if self.done_reason is None:
            self.done_reason = "cancelled"

    def __del__(self) -> None:
        # A stream dropped without aclose() (a caller's bug) must not hold its slot forever.
        if not self._finished:
            with contextlib.suppress(Exception):
                self._cancel()
