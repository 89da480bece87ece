"""The local runner pool: the runner processes of loaded models, started, loaded and stopped.

Each loaded model lives in its own `python -m localrun.worker` process, so a crash, an OOM kill
or a native abort costs only the requests on that model. It answers up to `num_parallel`
requests at once, decoded in one batch. The pool, on the server's event loop:

- starts a runner within `max_loaded` models and the memory budget, evicting idle models (LRU);
- hands it the model its first request was admitted with, its blobs held until it ends;
- unloads a model `keep_alive` seconds after its last request (0: at once; inf: never), and a
  stale one, to be reloaded with other options or unloaded, as soon as it is idle;
- fails the requests of a runner that dies with RunnerDiedError, and kills one that ignores a
  cancel (a stream's or an unload's) past CANCEL_WAIT_S.

Which request gets a slot, and when, is the Scheduler's (`core`). The memory budget is
`budget`'s, a runner's state a `runners.Runner`, its process localrun.worker.process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

from localrun.errors import (
    LocalrunError,
    ModelLoadError,
    RunnerDiedError,
    ServerError,
    WorkerError,
)
from localrun.host.processes import exit_text
from localrun.scheduler.budget import Budget
from localrun.scheduler.runners import Runner
from localrun.scheduler.targets import Target
from localrun.store import leases
from localrun.store.local import Store
from localrun.worker import process as runner_process
from localrun.worker import protocol
from localrun.worker.process import Event

__all__ = ["LocalPool"]

log = logging.getLogger("localrun.scheduler")

MAX_TIMER_S = 10 * 365 * 86400.0  # asyncio timers want finite delays: "never" beyond this


class LocalPool:
    """The runner subprocesses of loaded models: starting, loading, keep-alive and stopping."""

    def __init__(
        self,
        store: Store,
        *,
        num_parallel: int,
        max_loaded: int,
        memory_budget: int | None,
        backend: str,
        backend_options: dict[str, Any],
        spawn: Callable[[Coroutine[Any, Any, Any]], object],
        on_change: Callable[[], None],
        on_final: Callable[[Runner], None],
    ) -> None:
        """Set up the pool; `spawn` runs a coroutine as a task its owner cancels on close.

        `on_change` is called on every change that may free a slot or room for a load: a runner
        ready, idle, stopping or gone. `on_final` is called when a request's final event frees
        its slot. Both hand what came free to the waiting requests.
        """
        self.store = store
        self.num_parallel = num_parallel
        self.max_loaded = max_loaded
        self.memory = Budget(memory_budget)
        self.backend = backend
        self.backend_options = backend_options
        self.runners: list[Runner] = []  # loading or ready, including stale ones
        self.stopping: set[Runner] = set()
        self.closed = False  # the server is shutting down
        self._spawn = spawn
        self._on_change = on_change
        self._on_final = on_final

    def interrupt(self) -> None:
        """The server is stopping: every request on a runner ends now with ServerError."""
        self.closed = True
        self._on_change()
        error = ServerError("the server is shutting down", hint="retry once it is back")
        for runner in [*self.runners, *self.stopping]:
            runner.process.interrupt(error)

    async def close(self) -> None:
        """Stop every runner: stdin EOF, then SIGTERM and SIGKILL past their deadlines."""
        self.closed = True
        self._on_change()  # the waiting requests fail: the server is shutting down
        for runner in list(self.runners):
            self.stop(runner)
        stopping = list(self.stopping)
        if stopping:
            await asyncio.gather(*(r.exited.wait() for r in stopping))

    def start_runner(
        self, target: Target, load_options: dict[str, Any], keep_alive: float, *, grow: bool
    ) -> Runner | None:
        """Make room, evicting idle models LRU, and start loading; None if there is no room yet.

        A load that cannot fit even with every other model unloaded is refused. With `grow`, a
        num_ctx asked for loads rounded up to a power of two where that fits as well (`_grown`).
        A model that takes more once loaded than its estimate evicts more idle models (`_trim`).
        """
        estimate = self.memory.estimate(target, load_options, self.num_parallel, self.runners)
        self.memory.check_alone(target, estimate, load_options, self.num_parallel, self.runners)
        evict = self.memory.make_room(estimate, self.runners, self.max_loaded)
        if evict is None:
            return None  # every loaded model is busy: wait for one to become idle
        least: int | None = None
        grown = self._grown(target, load_options, evict) if grow else None
        if grown is not None:
            least = load_options["num_ctx"]
            load_options, estimate, evict = grown
        for victim in evict:
            log.info("unloading %s to make room for %s", victim.name, target.name)
            self.stop(victim)
        runner = Runner(target, load_options, self.num_parallel, keep_alive, least)
        runner.estimate = estimate
        runner.busy = 1
        self.runners.append(runner)
        self._spawn(self._load(runner))
        return runner

    def _grown(
        self, target: Target, load_options: dict[str, Any], evict: list[Runner]
    ) -> tuple[dict[str, Any], int, list[Runner]] | None:
        """Return the options with num_ctx rounded up (Target.rounded), their estimate, evictions.

        None when the request names no num_ctx, or when the rounded one would not fit with every
        other model unloaded or would evict more than `evict`.
        """
        num_ctx = load_options.get("num_ctx")
        rounded = target.rounded(num_ctx) if isinstance(num_ctx, int) else num_ctx
        if rounded == num_ctx:
            return None
        grown = {**load_options, "num_ctx": rounded}
        estimate = self.memory.estimate(target, grown, self.num_parallel, self.runners)
        if estimate > self.memory.room_alone(self.runners):
            return None
        room = self.memory.make_room(estimate, self.runners, self.max_loaded)
        if room is None or len(room) > len(evict):
            return None
        return grown, estimate, room

    def check_fits(self, runner: Runner, target: Target, load_options: dict[str, Any]) -> None:
        """Refuse a num_ctx whose KV cache cannot fit, before `runner` is given up for it."""
        self.memory.check_fits(runner, target, load_options, self.runners)

    def on_idle(self, runner: Runner) -> None:
        """A runner may have no request left: stop it or start its keep-alive timer."""
        if runner.busy > 0 or runner.state != "ready":
            return
        if runner.stale or self.closed or runner.keep_alive <= 0:
            self.stop(runner)
            return
        runner.cancel_timer()
        if math.isinf(runner.keep_alive):
            runner.expires_at = math.inf
            return
        runner.expires_at = time.time() + runner.keep_alive
        delay = min(runner.keep_alive, MAX_TIMER_S)
        runner.timer = asyncio.get_running_loop().call_later(delay, self._expire, runner)

    def _expire(self, runner: Runner) -> None:
        runner.timer = None
        if runner.busy == 0 and runner.state == "ready":
            log.info("unloading %s: keep_alive expired", runner.name)
            self.stop(runner)

    async def unload(self, key: str) -> bool:
        """Unload the model `key` (a canonical name), cancelling its requests; False if not loaded.

        Returns once its runners have exited (see Scheduler.unload).
        """
        found = [r for r in self.runners if r.name == key]
        for runner in found:
            runner.stale = True
            runner.keep_alive = 0.0
            if runner.busy == 0:
                self.stop(runner)
            else:
                for rid in list(runner.process.pending):
                    runner.process.cancel(rid)
        if found:
            await asyncio.gather(*(self._gone_or_killed(r) for r in found))
        return bool(found)

    async def _gone_or_killed(self, runner: Runner) -> None:
        wait = runner_process.CANCEL_WAIT_S
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(runner.exited.wait(), wait)
        if runner.busy > 0 and not runner.exited.is_set():
            self.kill(runner, f"it was still busy {wait:g}s after an unload cancelled its work")
        await runner.exited.wait()

    async def _load(self, runner: Runner) -> None:
        model = runner.model  # as the request it loads for was admitted: its name is not read again
        # Its blobs stay in the store until it ends (store.leases), whatever uses the name: a
        # `create` reusing the name, and a prune after it, change nothing it loads.
        try:
            digests = model.manifest.digests()
            runner.lease = await asyncio.to_thread(leases.take, self.store, digests, runner.name)
        except LocalrunError as exc:
            runner.load_error = exc
            self._finish(runner, None)
            return
        # The memory of models being unloaded must be back before another one loads.
        while self.stopping - {runner}:
            await asyncio.gather(*(r.exited.wait() for r in self.stopping - {runner}))
        if runner.state != "loading":
            self._finish(runner, None)
            return
        process = runner.process
        try:
            await process.start(
                on_event=functools.partial(self._on_event, runner),
                on_final=functools.partial(self._on_final, runner),
                on_exit=functools.partial(self._finish, runner),
            )
        except LocalrunError as exc:
            runner.load_error = exc
            self._finish(runner, None)
            return
        log.info("loading %s (runner pid %d)", runner.name, process.pid)
        if runner.state != "loading":  # stopped while it started: EOF before the load
            await process.stop()
            return
        # The worker loads the num_ctx asked for instead of the rounded one where that does not
        # fit in the memory it finds, or puts fewer layers on the GPU (worker.load.fitted).
        fallback = runner.least_ctx if runner.least_ctx < runner.planned_ctx else None
        # The model with its load options and the context decided here (Runner.planned_ctx).
        spec = model.load_spec(runner.load_options, runner.planned_ctx)
        request = protocol.load_request(
            spec.to_wire(),
            slots=runner.slots,
            backend=self.backend,
            fallback_ctx=fallback,
            **self.backend_options,
        )
        with contextlib.suppress(LocalrunError):  # a death is reported by the reader
            process.write(request)
            await process.drain()

    def _on_event(self, runner: Runner, event: Event) -> None:
        """An event about the runner itself: its model is loaded, or it failed."""
        kind = event.get("event")
        if kind == protocol.READY:
            self._on_ready(runner, event)
        elif kind == protocol.ERROR:
            error = protocol.error_from_dict(event.get("error"))
            if runner.state == "loading":
                runner.load_error = error
            else:
                log.error("runner of %s: %s", runner.name, error)

    def _on_ready(self, runner: Runner, event: Event) -> None:
        try:
            runner.info = protocol.ReadyInfo.from_dict(event.get("info") or {})
        except TypeError as exc:  # fields missing: an incompatible worker
            runner.load_error = ModelLoadError(
                f"the runner of {runner.name} is incompatible: {exc}"
            )
            runner.process.close_stdin()
            return
        if "num_ctx" in runner.load_options and runner.info.n_ctx != runner.planned_ctx:
            # The worker loaded the num_ctx asked for, the rounded one not fitting: the size
            # measured is that one's, and so is the context /api/ps shows.
            runner.load_options["num_ctx"] = runner.info.n_ctx
        self.memory.measured(runner, runner.info.size)
        if runner.state != "loading":
            return
        runner.state = "ready"
        runner.slots = runner.info.slots or runner.slots  # the worker has the last word
        log.info(
            "loaded %s in %.2fs (%s, context %d x %d slots)",
            runner.name,
            runner.info.load_s,
            runner.info.processor,
            runner.info.n_ctx,
            runner.slots,
        )
        if not runner.ready.done():
            runner.ready.set_result(None)
        self._trim(runner)
        self.on_idle(runner)  # every request that waited for the load may have gone
        self._on_change()

    def _trim(self, loaded: Runner) -> None:
        """Evict idle models (LRU) while the measured sizes exceed the budget.

        A model may take more once loaded than its estimate.
        """
        for victim in self.memory.excess(loaded, self.runners):
            log.info("unloading %s: %s needs its memory", victim.name, loaded.name)
            self.stop(victim)

    def _finish(self, runner: Runner, code: int | None) -> None:
        """Drop a runner that exited (or never started) and fail what was waiting on it."""
        stopping = runner.state == "stopping"
        runner.state = "dead"
        runner.cancel_timer()
        if runner in self.runners:
            self.runners.remove(runner)
        self.stopping.discard(runner)
        status = exit_text(code)
        killed = runner.process.killed
        if self.closed:
            runner.death = ServerError("the server is shutting down", hint="retry once it is back")
        elif killed is not None:
            runner.death = RunnerDiedError(
                f"the runner of {runner.name} (pid {runner.pid}) was killed: {killed}",
                hint="retry the request: the next one loads the model afresh",
            )
        elif stopping:
            runner.death = ServerError(f"{runner.name} was unloaded", hint="retry the request")
        else:
            log.error("runner of %s (pid %d) exited: %s", runner.name, runner.pid, status)
            runner.death = _worker_failed(runner) or RunnerDiedError(
                f"the runner of {runner.name} (pid {runner.pid}) exited unexpectedly ({status})",
                hint="see the server log for its last lines, then retry: "
                "the next request loads the model afresh",
            )
        if not runner.ready.done():
            runner.ready.set_exception(self._load_failure(runner, status))
        if runner.lease is not None:
            runner.lease.release()
        runner.process.fail(runner.death)
        runner.exited.set()
        self._on_change()

    def _load_failure(self, runner: Runner, status: str) -> LocalrunError:
        if runner.load_error is not None:
            return runner.load_error
        if isinstance(runner.death, WorkerError):
            return runner.death
        if runner.death is not None and (
            not isinstance(runner.death, RunnerDiedError) or runner.process.killed
        ):
            return runner.death  # shutting down, unloaded or killed while loading
        # Its last lines (native backtraces, paths) are in the server log, not in the answer.
        return ModelLoadError(
            f"llama.cpp failed while loading {runner.name} ({status}): the model file is "
            "damaged or not supported by this llama.cpp",
            hint="see the server log for the runner's output",
        )

    def stop(self, runner: Runner) -> None:
        """Begin stopping a runner (stdin EOF); it leaves the table at once."""
        if runner.state in ("stopping", "dead"):
            return
        runner.state = "stopping"
        runner.cancel_timer()
        if runner in self.runners:
            self.runners.remove(runner)
        self.stopping.add(runner)
        self._spawn(runner.process.stop())
        self._on_change()

    def kill(self, runner: Runner, reason: str) -> None:
        """SIGKILL a wedged runner: its requests fail, and the next one starts a fresh runner."""
        if runner.state == "dead":
            return
        runner.process.kill(reason)
        if runner.state != "stopping":
            runner.state = "stopping"
            runner.cancel_timer()
            if runner in self.runners:
                self.runners.remove(runner)
            self.stopping.add(runner)
            self._on_change()


def _worker_failed(runner: Runner) -> WorkerError | None:
    """The error of a runner that llama.cpp ended because a worker failed it, or None."""
    if not runner.process.worker_failed:
        return None
    return WorkerError(
        f"a worker holding part of {runner.name} stopped answering or answered wrongly",
        hint="retry: the next request loads the model again with the workers that answer",
    )
