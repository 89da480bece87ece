"""Loaded models of `localrun serve`: one runner subprocess each, keep-alive, memory and a queue.

Each loaded model lives in its own `python -m localrun.worker` process (a crash, an OOM kill or
a native abort then costs only the requests on that model) and answers up to `num_parallel`
requests at once, decoded in one batch. The scheduler, on the server's event loop:

- resolves names (the packaged SmolLM2 is imported into the store on first use, in a child
  process, so the server itself never imports gguf or numpy);
- loads a model on its first request; concurrent first requests share that load;
- admits a request when its model has a free slot, loading (and first evicting idle models,
  least recently used first) when the model is not loaded, within `max_loaded` models and the
  memory budget; otherwise the request waits, and past `max_queue` waiting requests it is
  refused at once with BusyError. What comes free (a slot, room for a load) goes to the waiting
  requests oldest first, at once, so a request arriving later gets only what none of them can
  use;
- unloads a model `keep_alive` seconds after its last request ends (0: at once; inf: never) and
  reloads it, once idle, when a request asks for other load-time options or the model changed
  (a request naming none gets the model's own, never those another request loaded it with;
  tokenizing takes any runner of the model as it is);
- refuses, without touching the loaded runner, a context size whose KV cache cannot fit in the
  memory budget (scaled from what the loaded runner measured);
- fails every request on a runner that dies with RunnerDiedError, and starts a fresh runner
  for the next request; a runner that ignores a cancel (or an unload) past CANCEL_WAIT_S is
  wedged, and is killed so.

The runner processes themselves (pipes, events, stderr, stopping and reaping) are handled by
localrun.worker.process. A runner also exits when the server dies: its stdin reaches EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import logging
import math
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from localrun import config
from localrun import params as params_mod
from localrun.engine.types import EmbedInput
from localrun.errors import (
    BusyError,
    ConfigError,
    InvalidParameterError,
    LocalrunError,
    ModelLoadError,
    ModelNotFoundError,
    RunnerDiedError,
    ServerError,
)
from localrun.runner import LOAD_PARAMS
from localrun.store import Store
from localrun.worker import process as runner_process
from localrun.worker import protocol
from localrun.worker.process import Event, Item, RunnerProcess, Stream, exit_text

__all__ = ["Embeddings", "RunningModel", "Scheduler", "Stream"]

log = logging.getLogger("localrun.scheduler")
runner_log = logging.getLogger("localrun.runner")

MAX_TIMER_S = 10 * 365 * 86400.0  # asyncio timers want finite delays: "never" beyond this

T = TypeVar("T")


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


@dataclass
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int
    load_s: float
    total_s: float
    model: str = ""  # the store name of the model that made them


@dataclass(frozen=True)
class _Target:
    """A resolved model: its store name, manifest digest and what is known before loading."""

    name: str
    digest: str
    weights: int  # bytes of model and adapter layers: the memory estimate before a first load
    details: dict[str, Any]


class _Runner:
    """One runner subprocess and the requests admitted to it."""

    def __init__(
        self, target: _Target, load_options: dict[str, Any], slots: int, keep_alive: float
    ) -> None:
        self.name = target.name
        self.digest = target.digest
        self.details = target.details
        self.load_options = load_options
        self.slots = slots
        self.keep_alive = keep_alive
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

    def matches(self, target: _Target, load_options: dict[str, Any]) -> bool:
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


@dataclass(eq=False)
class _Waiter:
    """A request waiting for a slot; `granted` gets the runner that reserved it one."""

    target: _Target
    load_options: dict[str, Any] | None  # None: any runner of the model
    keep_alive: float
    granted: asyncio.Future[_Runner]


class Scheduler:
    """Loads models into runner subprocesses on demand and routes requests to them."""

    def __init__(
        self,
        store: Store,
        *,
        num_parallel: int | None = None,
        max_loaded: int | None = None,
        max_queue: int | None = None,
        memory_budget: int | None = None,
        backend: str = "llama",
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        """Settings left None are read from LOCALRUN_* now; `memory_budget` None follows the
        available memory at each load. `backend_options` go into the load message (the fake
        backend's replies and per-token delay, for tests)."""
        try:
            self.num_parallel = num_parallel or config.num_parallel()
            self.max_loaded = max_loaded or config.max_loaded_models()
            self.max_queue = config.max_queue() if max_queue is None else max_queue
        except ValueError as exc:
            raise ConfigError(str(exc), hint="fix the variable or unset it") from None
        self.store = store
        self.memory_budget = memory_budget
        self.backend = backend
        self.backend_options = dict(backend_options or {})
        self._runners: list[_Runner] = []  # loading or ready, including stale ones
        self._stopping: set[_Runner] = set()
        self._waiting: list[_Waiter] = []  # oldest first
        self._handing_out = False
        self._hand_out_again = False
        self._ids = itertools.count(1)
        self._sizes: dict[tuple[str, str, str], int] = {}  # measured sizes, for estimates
        self._resolving: dict[str, asyncio.Future[_Target]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing to do yet: runners start with the first request for their model."""

    def interrupt(self) -> None:
        """The server is stopping (SIGTERM): every request in flight or waiting ends now with
        ServerError, so each stream sends its dialect's error line before its connection
        closes; new requests are refused. `close` then stops the runners."""
        self._closed = True
        self._wake()
        error = ServerError("the server is shutting down", hint="retry once it is back")
        for runner in [*self._runners, *self._stopping]:
            runner.process.interrupt(error)

    async def close(self) -> None:
        """Stop every runner: stdin EOF, then SIGTERM and SIGKILL past their deadlines."""
        self._closed = True
        self._wake()  # the waiting requests fail: the server is shutting down
        for runner in list(self._runners):
            self._stop(runner)
        stopping = list(self._stopping)
        if stopping:
            await asyncio.gather(*(r.exited.wait() for r in stopping))
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- requests -----------------------------------------------------------------------------

    async def chat(
        self,
        name: str,
        *,
        messages: list[dict[str, Any]],
        system: str | None = None,
        options: dict[str, Any] | None = None,
        format: str | dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        keep_alive: float | None = None,
        context: list[int] | None = None,
        return_context: bool = False,
        think: bool | str | None = None,
        logprobs: int | None = None,
    ) -> Stream:
        """Answer a conversation with the model's template; the stream yields its chunks.

        `context` (token ids) comes before the prompt; with `return_context` the stream's
        `context` holds the prompt's and the answer's tokens at the end. `think` turns a
        reasoning model's thinking on or off (None: the model's default).
        """
        opts = params_mod.validate(options or {})

        def build(rid: int) -> Event:
            return protocol.chat_request(
                rid,
                messages,
                system=system,
                options=opts,
                format=format,
                tools=tools,
                tool_choice=tool_choice,
                context=context,
                return_context=return_context,
                think=think,
                logprobs=logprobs,
            )

        return await self._generate(name, opts, keep_alive, build)

    async def complete(
        self,
        name: str,
        *,
        prompt: str,
        options: dict[str, Any] | None = None,
        format: str | dict[str, Any] | None = None,
        keep_alive: float | None = None,
        context: list[int] | None = None,
        return_context: bool = False,
        suffix: str | None = None,
        extra: list[dict[str, str]] | None = None,
        logprobs: int | None = None,
    ) -> Stream:
        """Continue a raw prompt (no template); `context` as for chat. With `suffix`, fill in
        the middle between the prompt and it (`extra`: other files, for repo-level FIM)."""
        opts = params_mod.validate(options or {})

        def build(rid: int) -> Event:
            return protocol.complete_request(
                rid,
                prompt,
                options=opts,
                format=format,
                context=context,
                return_context=return_context,
                suffix=suffix,
                extra=extra,
                logprobs=logprobs,
            )

        return await self._generate(name, opts, keep_alive, build)

    async def embed(
        self,
        name: str,
        inputs: Sequence[EmbedInput],
        *,
        options: dict[str, Any] | None = None,
        truncate: bool = True,
        keep_alive: float | None = None,
    ) -> Embeddings:
        """L2-normalized embeddings of `inputs`, in order."""
        started = time.monotonic()
        opts = params_mod.validate(options or {})
        runner, load_s = await self._admit(name, opts, keep_alive)
        rid, queue = await self._submit(
            runner, lambda rid: protocol.embed_request(rid, inputs, truncate=truncate)
        )
        vectors: list[list[float]] = []
        try:
            # The vectors come a group at a time, the rest with the final event.
            while True:
                item = await queue.get()
                if isinstance(item, LocalrunError) or item.get("event") != protocol.VECTORS:
                    break
                vectors += item.get("embeddings") or []
        except asyncio.CancelledError:
            # The client went away: the runner stops between groups; its final event, read
            # by nobody, frees the slot.
            runner.process.cancel(rid)
            raise
        if isinstance(item, LocalrunError):
            raise item
        if item.get("event") == protocol.ERROR:
            raise protocol.error_from_dict(item.get("error"))
        if item.get("event") != protocol.EMBEDDINGS:
            raise ServerError(
                f"the runner answered an embedding request with {item.get('event')!r}"
            )
        vectors += item.get("embeddings") or []
        return Embeddings(
            vectors=vectors,
            prompt_tokens=int(item.get("prompt_tokens") or 0),
            load_s=load_s,
            total_s=time.monotonic() - started,
            model=runner.name,
        )

    async def tokenize(
        self,
        name: str,
        *,
        text: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        system: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        add_special: bool = True,
        parse_special: bool = False,
    ) -> list[int]:
        """The model's tokens for `text`, or for the chat prompt `messages` render to (what a
        chat request with them would evaluate: the model's template, SYSTEM and MESSAGEs).

        Runs on a loaded runner of the model whatever its load options (loading it if none).
        """
        event = await self._ask(
            name,
            lambda rid: protocol.tokenize_request(
                rid,
                text=text,
                messages=messages,
                system=system,
                tools=tools,
                add_special=add_special,
                parse_special=parse_special,
            ),
        )
        return [int(t) for t in event.get("tokens") or []]

    async def detokenize(self, name: str, tokens: list[int]) -> str:
        """The text of `tokens`, special tokens spelled out; an id outside the vocabulary is a
        BadRequestError."""
        event = await self._ask(name, lambda rid: protocol.detokenize_request(rid, tokens))
        return str(event.get("text") or "")

    async def token_pieces(self, name: str, tokens: list[int]) -> list[bytes]:
        """Each token's bytes (a piece may hold part of a character)."""
        event = await self._ask(
            name, lambda rid: protocol.detokenize_request(rid, tokens, pieces=True)
        )
        return [bytes.fromhex(p) for p in event.get("pieces") or []]

    async def _ask(self, name: str, build: Callable[[int], Event]) -> Event:
        """A quick request answered by one event, on a slot of any runner of the model."""
        runner, _ = await self._admit(name, None, None)
        _, queue = await self._submit(runner, build)
        # A client gone meanwhile leaves the answer unread: its arrival frees the slot.
        item = await queue.get()
        if isinstance(item, LocalrunError):
            raise item
        if item.get("event") == protocol.ERROR:
            raise protocol.error_from_dict(item.get("error"))
        return item

    async def load(
        self,
        name: str,
        *,
        options: dict[str, Any] | None = None,
        keep_alive: float | None = None,
    ) -> RunningModel:
        """Load a model (if it is not loaded) and keep it for `keep_alive` seconds."""
        opts = params_mod.validate(options or {})
        runner, _ = await self._admit(name, opts, keep_alive)
        self._release(runner)
        shown = self._describe(runner)
        if runner.state != "ready":  # keep_alive 0: unloaded as soon as it was loaded
            shown.expires_at = time.time()
        return shown

    async def unload(self, name: str) -> bool:
        """Unload a model, cancelling its requests; False if it was not loaded.

        A runner still busy CANCEL_WAIT_S after its requests were cancelled is wedged: it is
        killed. Returns once the model's runners have exited.
        """
        key = self._canonical(name)
        found = [r for r in self._runners if r.name == key]
        for runner in found:
            runner.stale = True
            runner.keep_alive = 0.0
            if runner.busy == 0:
                self._stop(runner)
            else:
                for rid in list(runner.process.pending):
                    runner.process.cancel(rid)
        if found:
            await asyncio.gather(*(self._gone_or_killed(r) for r in found))
        return bool(found)

    async def _gone_or_killed(self, runner: _Runner) -> None:
        wait = runner_process.CANCEL_WAIT_S
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(runner.exited.wait(), wait)
        if runner.busy > 0 and not runner.exited.is_set():
            self._kill(runner, f"it was still busy {wait:g}s after an unload cancelled its work")
        await runner.exited.wait()

    def running(self) -> list[RunningModel]:
        return [self._describe(r) for r in self._runners if r.state == "ready"]

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot (BusyError once this reaches max_queue)."""
        return len(self._waiting)

    # -- admission ----------------------------------------------------------------------------

    async def _generate(
        self,
        name: str,
        options: dict[str, Any],
        keep_alive: float | None,
        build: Callable[[int], Event],
    ) -> Stream:
        runner, load_s = await self._admit(name, options, keep_alive)
        rid, queue = await self._submit(runner, build)
        return Stream(
            queue,
            load_s,
            lambda: runner.process.cancel(rid),
            functools.partial(self._kill, runner),
            model=runner.name,
        )

    async def _admit(
        self, name: str, options: dict[str, Any] | None, keep_alive: float | None
    ) -> tuple[_Runner, float]:
        """A runner with a slot reserved for this request, ready; and the seconds it took to
        get it (resolving the name, waiting in line, loading).

        Those seconds are Ollama's load_duration: small, but never 0, when the model was loaded
        already (Ollama's clients and tests take 0 for a missing field).
        """
        if self._closed:
            raise ServerError("the server is shutting down", hint="retry once it is back")
        started = time.perf_counter()
        keep = self._keep_alive(keep_alive)
        target = await self._resolve(name)
        # None: any runner of the model will do (tokenizing does not depend on load options).
        load_options = (
            None if options is None else {k: v for k, v in options.items() if k in LOAD_PARAMS}
        )
        # Whatever came free since a request began waiting was handed to it then (_wake): what
        # is left for a newcomer is what no waiting request can use.
        runner = self._try_admit(target, load_options, keep)
        if runner is None:
            granted: asyncio.Future[_Runner] = asyncio.get_running_loop().create_future()
            runner = await self._wait_turn(_Waiter(target, load_options, keep, granted))
        if runner.ready.done() and not runner.ready.exception():
            return runner, time.perf_counter() - started
        try:
            # shield: cancelling one waiter (a client gone) must not cancel the shared load.
            await asyncio.shield(runner.ready)
        except LocalrunError as exc:
            self._release(runner)
            raise exc.copy() from None
        except BaseException:
            self._release(runner)
            raise
        return runner, time.perf_counter() - started

    async def _wait_turn(self, waiter: _Waiter) -> _Runner:
        """Wait in line until `_wake` hands this request a runner with a slot reserved."""
        if len(self._waiting) >= self.max_queue:
            raise self._busy()
        self._waiting.append(waiter)
        try:
            return await waiter.granted
        except asyncio.CancelledError:
            granted = waiter.granted
            if granted.done() and not granted.cancelled() and granted.exception() is None:
                self._release(granted.result())  # handed a slot as its client went away
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiting.remove(waiter)

    def _try_admit(
        self, target: _Target, load_options: dict[str, Any] | None, keep_alive: float
    ) -> _Runner | None:
        """Reserve a slot now (loading the model if needed), or None: the request waits.

        `load_options` None takes any runner of the model as it is (one loaded with the
        model's own options if it must be loaded)."""
        if self._closed:
            raise ServerError("the server is shutting down", hint="retry once it is back")
        same = [r for r in self._runners if r.name == target.name]
        for runner in same:
            if runner.stale:
                continue
            if load_options is None and runner.digest == target.digest:
                pass
            elif not runner.matches(target, load_options or {}):
                self._check_fits(runner, target, load_options or {})
                # Other load options or a changed model: reload once its requests end.
                runner.stale = True
                if runner.busy == 0:
                    self._stop(runner)
                continue
            if runner.busy < runner.slots:
                runner.busy += 1
                runner.keep_alive = keep_alive
                runner.cancel_timer()
                return runner
            return None
        if any(r.name == target.name for r in self._runners):
            return None  # a stale runner of this model is finishing its requests
        return self._start_runner(target, load_options or {}, keep_alive)

    def _start_runner(
        self, target: _Target, load_options: dict[str, Any], keep_alive: float
    ) -> _Runner | None:
        """Make room (evicting idle models LRU) and start loading; None if there is no room."""
        estimate = self._sizes.get(_size_key(target, load_options), target.weights)
        keep = list(self._runners)
        idle = sorted(
            (r for r in keep if r.busy == 0 and r.state == "ready"), key=lambda r: r.last_used
        )
        budget = self._budget()
        evict: list[_Runner] = []

        def fits() -> bool:
            if len(keep) >= self.max_loaded:
                return False
            # With nothing else loaded a model gets its chance even past the estimate.
            return not keep or sum(r.size for r in keep) + estimate <= budget

        while not fits() and idle:
            victim = idle.pop(0)
            keep.remove(victim)
            evict.append(victim)
        if not fits():
            return None  # every loaded model is busy: wait for one to become idle
        for victim in evict:
            log.info("unloading %s to make room for %s", victim.name, target.name)
            self._stop(victim)
        runner = _Runner(target, load_options, self.num_parallel, keep_alive)
        runner.estimate = estimate
        runner.busy = 1
        self._runners.append(runner)
        self._spawn(self._load(runner))
        return runner

    def _check_fits(self, runner: _Runner, target: _Target, load_options: dict[str, Any]) -> None:
        """Refuse a num_ctx whose KV cache cannot fit, before the runner is given up for it.

        The size per token of context is scaled from what the runner measured (weights + KV
        cache for n_ctx x slots); it includes the compute buffers too, so it errs on the large
        side, and only a context beyond the whole budget is refused.
        """
        num_ctx = load_options.get("num_ctx")
        info = runner.info
        if not isinstance(num_ctx, int) or info is None or num_ctx <= info.n_ctx:
            return
        if target.digest != runner.digest:
            return
        per_token = max(0, info.size - target.weights) / max(1, info.n_ctx * info.slots)
        needed = target.weights + per_token * num_ctx * info.slots
        budget = self._budget()
        if needed > budget:
            raise InvalidParameterError(
                f"num_ctx {num_ctx} needs about {_gb(needed)} of memory for {target.name} "
                f"({info.slots} slots); about {_gb(budget)} is available",
                hint=f"use a smaller num_ctx (it is {info.n_ctx} now), or set "
                "LOCALRUN_NUM_PARALLEL lower",
            )

    def _budget(self) -> int:
        if self.memory_budget is not None:
            return self.memory_budget
        import psutil

        used = sum(r.size for r in self._runners if r.state == "ready")
        return int(psutil.virtual_memory().available) + used

    def _busy(self) -> BusyError:
        slots = sum(r.slots for r in self._runners) or self.num_parallel
        retry = max(1, min(60, math.ceil((self.waiting + 1) / slots)))
        return BusyError(
            f"the server is busy: {self.waiting} requests are already waiting",
            hint=f"retry in {retry}s, or raise LOCALRUN_MAX_QUEUE",
            retry_after=retry,
        )

    def _release(self, runner: _Runner) -> None:
        """A request's slot is free again (its final event came, or it never started)."""
        runner.busy -= 1
        runner.last_used = time.monotonic()
        self._on_idle(runner)
        self._wake()

    def _on_idle(self, runner: _Runner) -> None:
        if runner.busy > 0 or runner.state != "ready":
            return
        if runner.stale or self._closed or runner.keep_alive <= 0:
            self._stop(runner)
            return
        runner.cancel_timer()
        if math.isinf(runner.keep_alive):
            runner.expires_at = math.inf
            return
        runner.expires_at = time.time() + runner.keep_alive
        delay = min(runner.keep_alive, MAX_TIMER_S)
        runner.timer = asyncio.get_running_loop().call_later(delay, self._expire, runner)

    def _expire(self, runner: _Runner) -> None:
        runner.timer = None
        if runner.busy == 0 and runner.state == "ready":
            log.info("unloading %s: keep_alive expired", runner.name)
            self._stop(runner)

    def _wake(self) -> None:
        """Hand what is free to the waiting requests, oldest first (called on every change).

        A request that cannot be served yet (its model's slots are busy, or there is no room to
        load it) keeps its place while later ones for other models go ahead. A change made by
        handing out (a stale runner stopped, an idle one evicted) triggers another round.
        """
        if self._handing_out:
            self._hand_out_again = True
            return
        self._handing_out = True
        try:
            self._hand_out_again = True
            while self._hand_out_again:
                self._hand_out_again = False
                for waiter in list(self._waiting):
                    if waiter.granted.done():  # cancelled: it leaves the line itself
                        continue
                    try:
                        runner = self._try_admit(
                            waiter.target, waiter.load_options, waiter.keep_alive
                        )
                    except LocalrunError as exc:  # shutting down, or a num_ctx that cannot fit
                        self._waiting.remove(waiter)
                        waiter.granted.set_exception(exc)
                        continue
                    if runner is not None:
                        self._waiting.remove(waiter)
                        waiter.granted.set_result(runner)
        finally:
            self._handing_out = False

    # -- names --------------------------------------------------------------------------------

    async def _resolve(self, text: str) -> _Target:
        """The model a request names; concurrent requests for one name share the lookup."""
        pending = self._resolving.get(text)
        if pending is None:
            pending = self._spawn(self._lookup(text))
            self._resolving[text] = pending
            pending.add_done_callback(lambda _: self._resolving.pop(text, None))
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            return await asyncio.shield(pending)
        except LocalrunError as exc:
            raise exc.copy() from None

    async def _lookup(self, text: str) -> _Target:
        found = await asyncio.to_thread(_read_target, self.store, text)
        if found is not None:
            return found
        # A catalog model not yet in the store: import it from its package in a child
        # process (that reads the GGUF with the gguf package, which the server must not load).
        await self._import(text)
        found = await asyncio.to_thread(_read_target, self.store, text)
        if found is None:
            raise ModelNotFoundError(text)
        return found

    async def _import(self, text: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _IMPORT_CODE,
            str(self.store.root),
            text,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await proc.communicate()
        except asyncio.CancelledError:  # the server is closing: leave no child behind
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode == 0:
            return
        lines = out.decode("utf-8", "replace").strip().splitlines()
        reported: LocalrunError | None = None
        with contextlib.suppress(LocalrunError):
            reported = protocol.error_from_dict(protocol.decode(lines[-1] if lines else ""))
        if reported is not None:
            raise reported
        for line in err.decode("utf-8", "replace").splitlines():
            runner_log.warning("import of %s: %s", text, line)
        raise ModelLoadError(
            f"could not import {text} into the model store ({exit_text(proc.returncode)})",
            hint="see the server log",
        )

    def _canonical(self, text: str) -> str:
        from localrun import catalog, pull

        name, _ = pull.resolve_name(text)
        return str(catalog.canonical(name))

    # -- runner processes ---------------------------------------------------------------------

    async def _load(self, runner: _Runner) -> None:
        # The memory of models being unloaded must be back before another one loads.
        while self._stopping - {runner}:
            await asyncio.gather(*(r.exited.wait() for r in self._stopping - {runner}))
        if runner.state != "loading":
            self._finish(runner, None)
            return
        process = runner.process
        try:
            await process.start(
                on_event=functools.partial(self._on_event, runner),
                on_final=functools.partial(self._release, runner),
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
        request = protocol.load_request(
            str(self.store.root),
            runner.name,
            options=runner.load_options,
            slots=runner.slots,
            backend=self.backend,
            **self.backend_options,
        )
        with contextlib.suppress(LocalrunError):  # a death is reported by the reader
            process.write(request)
            await process.drain()

    def _on_event(self, runner: _Runner, event: Event) -> None:
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

    def _on_ready(self, runner: _Runner, event: Event) -> None:
        try:
            runner.info = protocol.ReadyInfo.from_dict(event.get("info") or {})
        except TypeError as exc:  # fields missing: an incompatible worker
            runner.load_error = ModelLoadError(
                f"the runner of {runner.name} is incompatible: {exc}"
            )
            runner.process.close_stdin()
            return
        self._sizes[_size_key_of(runner)] = runner.info.size
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
        self._on_idle(runner)  # every request that waited for the load may have gone
        self._wake()

    def _trim(self, loaded: _Runner) -> None:
        """Evict idle models (LRU) while the measured sizes exceed the budget.

        Before its first load a model's size is estimated from its weights alone; the runner
        then reports weights + KV cache, which may not fit beside the models kept for it.
        """
        budget = self._budget()
        idle = sorted(
            (r for r in self._runners if r is not loaded and r.busy == 0 and r.state == "ready"),
            key=lambda r: r.last_used,
        )
        while idle and sum(r.size for r in self._runners) > budget:
            victim = idle.pop(0)
            log.info("unloading %s: %s needs its memory", victim.name, loaded.name)
            self._stop(victim)

    def _finish(self, runner: _Runner, code: int | None) -> None:
        """Drop a runner that exited (or never started) and fail what was waiting on it."""
        stopping = runner.state == "stopping"
        runner.state = "dead"
        runner.cancel_timer()
        if runner in self._runners:
            self._runners.remove(runner)
        self._stopping.discard(runner)
        status = exit_text(code)
        killed = runner.process.killed
        if self._closed:
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
            runner.death = RunnerDiedError(
                f"the runner of {runner.name} (pid {runner.pid}) exited unexpectedly ({status})",
                hint="see the server log for its last lines, then retry: "
                "the next request loads the model afresh",
            )
        if not runner.ready.done():
            runner.ready.set_exception(self._load_failure(runner, status))
        runner.process.fail(runner.death)
        runner.exited.set()
        self._wake()

    def _load_failure(self, runner: _Runner, status: str) -> LocalrunError:
        if runner.load_error is not None:
            return runner.load_error
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

    def _stop(self, runner: _Runner) -> None:
        """Begin stopping a runner (stdin EOF); it leaves the table at once."""
        if runner.state in ("stopping", "dead"):
            return
        runner.state = "stopping"
        runner.cancel_timer()
        if runner in self._runners:
            self._runners.remove(runner)
        self._stopping.add(runner)
        self._spawn(runner.process.stop())
        self._wake()

    def _kill(self, runner: _Runner, reason: str) -> None:
        """SIGKILL a wedged runner: its requests fail, and the next one starts a fresh runner."""
        if runner.state == "dead":
            return
        runner.process.kill(reason)
        if runner.state != "stopping":
            runner.state = "stopping"
            runner.cancel_timer()
            if runner in self._runners:
                self._runners.remove(runner)
            self._stopping.add(runner)
            self._wake()

    async def _submit(
        self, runner: _Runner, build: Callable[[int], Event]
    ) -> tuple[int, asyncio.Queue[Item]]:
        """Send a request on its reserved slot; the slot is freed by its final event."""
        rid = next(self._ids)
        try:
            queue = runner.process.request(build(rid))
        except BaseException:
            self._release(runner)  # nothing was sent: no final event will come for it
            raise
        try:
            await runner.process.drain()
        except asyncio.CancelledError:
            # The runner has the request now: cancel it there; its final event frees the slot.
            runner.process.cancel(rid)
            raise
        return rid, queue

    # -- helpers ------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _keep_alive(self, value: float | None) -> float:
        if value is None:
            try:
                return config.keep_alive()
            except ValueError as exc:
                raise ConfigError(str(exc), hint="fix LOCALRUN_KEEP_ALIVE or unset it") from None
        if math.isnan(value):
            raise InvalidParameterError("keep_alive cannot be NaN")
        return math.inf if value < 0 else float(value)

    def _describe(self, runner: _Runner) -> RunningModel:
        info = runner.info
        if runner.busy > 0 or runner.state != "ready":
            expires = time.time() + runner.keep_alive
        else:
            expires = runner.expires_at
        return RunningModel(
            name=runner.name,
            digest=runner.digest,
            size=info.size if info else runner.estimate,
            size_vram=info.size_vram if info else 0,
            expires_at=expires,
            context_length=info.n_ctx if info else 0,
            details=dict(runner.details),
            processor=info.processor if info else "",
            pid=runner.pid,
            busy=runner.busy,
            slots=runner.slots,
            load_s=info.load_s if info else 0.0,
        )


_IMPORT_CODE = """\
import json, sys
from localrun import catalog
from localrun.errors import LocalrunError
from localrun.store import Store
try:
    catalog.find(Store(sys.argv[1]), sys.argv[2], pull_missing=False)
except LocalrunError as exc:
    print(json.dumps(exc.to_dict()))
    sys.exit(1)
"""


def _read_target(store: Store, text: str) -> _Target | None:
    """The stored model `text` names; None for a catalog model still to be imported."""
    from localrun import catalog, pull
    from localrun import model as model_mod

    name, ref = pull.resolve_name(text)
    name = catalog.canonical(name)
    try:
        manifest = store.read_manifest(name)
    except ModelNotFoundError:
        if ref is None and catalog.lookup(name) is not None:
            return None
        raise ModelNotFoundError(text.strip()) from None
    model = model_mod.load(store, name, manifest)
    weights = sum(layer.size for layer in manifest.layers if layer.kind in ("model", "adapter"))
    return _Target(
        name=str(name),
        digest="sha256:" + hashlib.sha256(manifest.to_bytes()).hexdigest(),
        weights=weights,
        details=model.details,
    )


def _size_key(target: _Target, load_options: dict[str, Any]) -> tuple[str, str, str]:
    return (target.name, target.digest, repr(sorted(load_options.items())))


def _size_key_of(runner: _Runner) -> tuple[str, str, str]:
    return (runner.name, runner.digest, repr(sorted(runner.load_options.items())))


def _gb(size: float) -> str:
    return f"{size / 1e9:.1f} GB"
