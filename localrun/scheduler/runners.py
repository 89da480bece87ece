"""One loaded model's runner subprocess as the scheduler tracks it, and how /api/ps shows it.

A `Runner` holds the state the scheduler keeps per runner (loading, ready, stopping, dead; its
reserved slots, keep-alive timer and measured size) around the `RunnerProcess` that talks to
the subprocess. `matches` decides whether a runner may answer a request with given load-time
options. A runner whose context is at least the request's answers it: the runner holds each
request to its own context, so the answer is the one a runner loaded with exactly that context
gives. The other load options must be the request's, or the model's own for those it does not
name, never those another request loaded it with.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

from localrun.errors import LocalrunError
from localrun.scheduler.targets import Target
from localrun.store.leases import Lease
from localrun.worker import protocol
from localrun.worker.process import RunnerProcess


@dataclass
class RunningModel:
    """A loaded model as /api/ps and `localrun ps` show it."""

    name: str
    digest: str
    size: int
    size_vram: int
    expires_at: float  # epoch seconds; math.inf = never
    context_length: int
    details: dict[str, Any]
    processor: str  # "100% CPU", "48%/52% CPU/GPU"
    pid: int
    busy: int  # requests being answered
    slots: int = 1  # requests it can answer at once
    load_s: float = 0.0  # how long its load took
    runtime: str = ""  # the GPU runtime its llama.cpp runs on ("built-in": the bindings' own)
    devices: list[str] = field(default_factory=list)  # its llama.cpp's GPU devices
    split: list[str] = field(default_factory=list)  # with RPC workers: each one's share


class Runner:
    """One runner subprocess and the requests admitted to it."""

    def __init__(
        self,
        target: Target,
        load_options: dict[str, Any],
        slots: int,
        keep_alive: float,
        least_ctx: int | None = None,
    ) -> None:
        """Track a runner of `target`, to be loaded with `load_options`.

        `least_ctx` is a smaller context the worker loads instead of `load_options`' num_ctx
        (rounded up by the pool) when that does not fit. None: that num_ctx, or the model's own.
        """
        self.name = target.name
        self.digest = target.digest
        self.model = target.model  # what it loads: the manifest its first request was admitted by
        self.lease: Lease | None = None  # its blobs, kept from garbage collection while it lives
        self.details = target.details
        self.load_options = dict(load_options)
        # The context it is loading with at most, and at least (known once it is ready).
        self.planned_ctx = target.context(load_options)
        self.least_ctx = self.planned_ctx if least_ctx is None else least_ctx
        self.slots = slots
        self.keep_alive = keep_alive
        self.weights = target.weights
        self.estimate = target.weights
        self.state = "loading"  # -> "ready" -> "stopping" -> "dead"
        self.stale = False  # takes no new requests; stopped once idle (reload, unload)
        self.busy = 0  # admitted requests, including those waiting for the load
        self.process = RunnerProcess(target.name)
        self.info: protocol.ReadyInfo | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Every waiter re-raises a copy; this keeps an unawaited failure from being logged.
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.exited = asyncio.Event()  # set once it is dead and its requests failed
        self.load_error: LocalrunError | None = None
        self.death: LocalrunError | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.expires_at = math.inf
        self.last_used = time.monotonic()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def size(self) -> int:
        return self.info.size if self.info is not None else self.estimate

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def matches(
        self, target: Target, load_options: dict[str, Any], *, exact: bool = False
    ) -> bool | None:
        """Whether this runner can answer a request for `target` with these load options.

        None while it loads with a context that may or may not hold the request's (its ready
        event tells). The request's context (Target.context) must be at most the runner's. The
        runner holds the request to it (engine SamplingOptions' `context`): it refuses a prompt
        past it and stops the answer at its end, as a runner loaded with that context would.
        `exact` (embeddings, whose truncation and batches follow the context made for them)
        wants the runner's context to be the request's.
        """
        if target.digest != self.digest:
            return False
        # A request gets the model's own load-time values for the options it does not name: a
        # runner loaded with another client's num_gpu or num_batch does not answer it, as one
        # client's options must never change another's answers. A named value is compared with
        # what the runner was loaded with.
        for key in {*load_options, *self.load_options} - {"num_ctx"}:
            value = load_options.get(key)
            if self.load_options.get(key) == value:
                continue
            if value is None or (key == "num_gpu" and value == -1):
                # The model's own value (num_gpu -1: decided automatically, as by default).
                if key == "num_gpu" and self.load_options.get(key) in (None, -1):
                    continue
                return False
            # num_gpu is also compared with what the worker resolved, so that asking for the
            # value in force never reloads.
            if self.info is not None and key == "num_gpu" and value == self.info.gpu_layers:
                continue
            return False
        return self._holds(target.context(load_options), exact)

    def _holds(self, context: int, exact: bool) -> bool | None:
        """Whether the runner's context holds a request's `context` (see `matches`)."""
        least, most = self.least_ctx, self.planned_ctx
        if self.info is not None:
            # A llama.cpp that gave less than it was asked for gives no more on a reload.
            loaded = max(self.info.n_ctx, least)
            return context == loaded if exact else context <= loaded
        if exact:
            settled, unsure = context == least == most, context in (least, most)
        else:
            settled, unsure = context <= least, context <= most
        return True if settled else None if unsure else False

    def describe(self) -> RunningModel:
        """This runner as /api/ps shows it; a busy or loading one expires keep_alive from now."""
        info = self.info
        if self.busy > 0 or self.state != "ready":
            expires = time.time() + self.keep_alive
        else:
            expires = self.expires_at
        return RunningModel(
            name=self.name,
            digest=self.digest,
            size=info.size if info else self.estimate,
            size_vram=info.size_vram if info else 0,
            expires_at=expires,
            context_length=info.n_ctx if info else 0,
            details=dict(self.details),
            processor=info.processor if info else "",
            pid=self.pid,
            busy=self.busy,
            slots=self.slots,
            load_s=info.load_s if info else 0.0,
            runtime=info.engine_runtime if info else "",
            devices=list(info.devices) if info else [],
            split=list(info.split) if info else [],
        )
