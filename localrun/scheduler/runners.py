"""One loaded model's runner subprocess as the scheduler tracks it, and how /api/ps shows it.

A `Runner` holds the state the scheduler keeps per runner (loading, ready, stopping, dead; its
reserved slots, keep-alive timer and measured size) around the `RunnerProcess` that talks to
the subprocess. `matches` decides whether a runner may answer a request with given load-time
options: a request naming none gets the model's own, never those another request loaded it with.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

from localrun.errors import LocalrunError
from localrun.scheduler.targets import Target
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


class Runner:
    """One runner subprocess and the requests admitted to it."""

    def __init__(
        self, target: Target, load_options: dict[str, Any], slots: int, keep_alive: float
    ) -> None:
        self.name = target.name
        self.digest = target.digest
        self.details = target.details
        self.load_options = load_options
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

    def matches(self, target: Target, load_options: dict[str, Any]) -> bool:
        """Whether this runner can answer a request for `target` with these load options.

        A request gets the model's own load-time values for the options it does not name:
        a runner loaded with another client's num_ctx does not answer it, as one client's
        options must never change another's answers. A named value is compared with what the
        runner was loaded with (num_ctx and num_gpu also with what the worker resolved, so
        asking for the value in force never reloads).
        """
        if target.digest != self.digest:
            return False
        for key in {*load_options, *self.load_options}:
            value = load_options.get(key)
            if self.load_options.get(key) == value:
                continue
            if value is None or (key == "num_gpu" and value == -1):
                # The model's own value (num_gpu -1: decided automatically, as by default).
                if key == "num_gpu" and self.load_options.get(key) in (None, -1):
                    continue
                return False
            if self.info is not None and key == "num_ctx" and value == self.info.n_ctx:
                continue
            if self.info is not None and key == "num_gpu" and value == self.info.gpu_layers:
                continue
            return False
        return True

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
        )
