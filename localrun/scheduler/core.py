"""The Scheduler: routes requests, admits them to runners, and queues the rest.

A name the store (or the catalog) resolves goes to a local runner; one only an upstream serves
goes to the remote pool (`remote`). For the local models the scheduler, on the server's loop:

- loads a model on its first request; concurrent first requests share that load;
- admits a request when its model has a free slot, loading it within `max_loaded` models and the
  memory budget; otherwise the request waits, and past `max_queue` it gets BusyError at once;
- hands what comes free to the waiting requests, oldest first (`_wake`);
- gives a model each request's `keep_alive`, and reloads it once idle for other load options;
- answers a request from a runner whose context is at least the request's (`_admit`);
- refuses a context size whose KV cache cannot fit, without touching the loaded runner;
- unloads a model on request, cancelling its requests.

`targets` resolves names; `local`'s LocalPool runs the runner processes and reports each change.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from localrun.engine.types import EmbedInput
from localrun.errors import (
    BusyError,
    InvalidNameError,
    InvalidParameterError,
    LocalrunError,
    ModelNotFoundError,
    ServerError,
)
from localrun.recipes import params as params_mod
from localrun.request.genrequest import GenRequest
from localrun.scheduler.local import LocalPool
from localrun.scheduler.remote.upstreams import RemotePool
from localrun.scheduler.runners import Runner, RunningModel
from localrun.scheduler.targets import Finder, Target, canonical
from localrun.settings import config
from localrun.settings.upstreams import Upstream
from localrun.store.local import Store
from localrun.worker import protocol
from localrun.worker.process import Event, Item, Stream

__all__ = ["Embeddings", "Scheduler"]

T = TypeVar("T")


@dataclass
class Embeddings:
    """The answer to an embedding request."""

    vectors: list[list[float]]
    prompt_tokens: int
    load_s: float
    total_s: float
    model: str = ""  # the store name of the model that made them


@dataclass(eq=False)
class _Waiter:
    """A request waiting for a slot; `granted` gets the runner that reserved it one."""

    target: Target
    load_options: dict[str, Any] | None  # None: any runner of the model
    keep_alive: float
    granted: asyncio.Future[Runner]
    exact: bool = False  # a runner of exactly the request's context (runners.Runner.matches)


class Scheduler:
    """Routes requests to upstreams or to local runners, admitting them or making them wait.

    Local runners are loaded on demand by a `LocalPool`; upstream models are `remote`'s."""

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
        upstreams: list[Upstream] | None = None,
    ) -> None:
        """Build the scheduler; settings left None are read from LOCALRUN_* now.

        `memory_budget` None follows the available memory at each load. `backend_options` go
        into the load message (the fake backend's replies and per-token delay, for tests).
        """
        parallel = num_parallel or config.num_parallel()
        loaded = max_loaded or config.max_loaded_models()
        self.max_queue = config.max_queue() if max_queue is None else max_queue
        self.store = store
        self._local = LocalPool(
            store,
            num_parallel=parallel,
            max_loaded=loaded,
            memory_budget=memory_budget,
            backend=backend,
            backend_options=dict(backend_options or {}),
            spawn=self._spawn,
            on_change=self._wake,
            on_final=self._release,
        )
        self._waiting: list[_Waiter] = []  # oldest first
        self._handing_out = False
        self._hand_out_again = False
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._names = Finder(store, self._spawn)
        # Other runners' models (LOCALRUN_OTHER_RUNNERS), for /api/tags and /v1/models too.
        self.others = self._names.others
        self.remote = RemotePool(upstreams or [])

    @property
    def memory_budget(self) -> int | None:
        """The bytes loaded models may take; None: the available memory at each load."""
        return self._local.memory.limit

    @property
    def num_parallel(self) -> int:
        """The requests a loaded model answers at once (the worker may settle on fewer)."""
        return self._local.num_parallel

    @property
    def max_loaded(self) -> int:
        """The models loaded at once, at most."""
        return self._local.max_loaded

    @property
    def backend(self) -> str:
        """The engine the runners load models with ("llama"; "fake" in tests)."""
        return self._local.backend

    @property
    def backend_options(self) -> dict[str, Any]:
        """What goes into every load message besides the model (the fake backend's replies)."""
        return self._local.backend_options

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the upstreams; local runners start with the first request for their model."""
        await self.remote.start()

    def interrupt(self) -> None:
        """End every request in flight or waiting with ServerError, as the server stops (SIGTERM).

        Each stream then sends its dialect's error line before its connection closes. New
        requests are refused, and `close` then stops the runners. Answers coming from upstreams
        end the same way, their upstream requests cancelled.
        """
        self._local.interrupt()
        self.remote.interrupt()

    async def close(self) -> None:
        """Stop every runner: stdin EOF, then SIGTERM and SIGKILL past their deadlines."""
        await self._local.close()  # the waiting requests fail: the server is shutting down
        await self.remote.close()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- requests -----------------------------------------------------------------------------

    async def generate(self, request: GenRequest) -> Stream:
        """Answer `request`, a chat with the model's template or a completion, as a chunk stream.

        Its options are checked here, before it is routed; its load-time ones choose the runner.
        """
        request = dataclasses.replace(request, options=params_mod.validate(request.options))
        remote = await self.remote_name(request.model)
        if remote is not None:
            if self._local.closed:
                raise ServerError("the server is shutting down", hint="retry once it is back")
            return await self.remote.generate(remote, request)
        runner, load_s, context = await self._admit(
            request.model, request.options, request.keep_alive
        )
        # The runner holds the request to its own context, whatever the runner's.
        request = dataclasses.replace(request, options={**request.options, "num_ctx": context})
        rid, queue = await self._submit(runner, lambda rid: protocol.generate_request(rid, request))
        return Stream(
            queue,
            load_s,
            lambda: runner.process.cancel(rid),
            functools.partial(self._local.kill, runner),
            model=runner.name,
            heard=lambda: runner.process.heard,
        )

    async def embed(
        self,
        name: str,
        inputs: Sequence[EmbedInput],
        *,
        options: dict[str, Any] | None = None,
        truncate: bool = True,
        keep_alive: float | None = None,
        query: str | None = None,
    ) -> Embeddings:
        """Return the L2-normalized embeddings of `inputs`, in order, or a reranker's scores.

        With `query`, each input is scored against it: its vector is the classifier's outputs,
        the score first.
        """
        started = time.monotonic()
        opts = params_mod.validate(options or {})
        remote = await self.remote_name(name)
        if remote is not None:
            found, tokens = await self.remote.embed(
                remote, list(inputs), truncate=truncate, query=query
            )
            return Embeddings(found, tokens, 0.0, time.monotonic() - started, model=remote)
        runner, load_s, _ = await self._admit(name, opts, keep_alive, exact=True)
        rid, queue = await self._submit(
            runner,
            lambda rid: protocol.embed_request(rid, inputs, truncate=truncate, query=query),
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
        request: GenRequest | None = None,
        add_special: bool = True,
        parse_special: bool = False,
    ) -> list[int]:
        """Return the model's tokens for `text`, or for the prompt the chat `request` renders to.

        That prompt is what the model would evaluate: its template, SYSTEM and MESSAGEs. Runs on
        a loaded runner of the model whatever its load options (loading it if none).
        """
        event = await self._ask(
            name,
            lambda rid: protocol.tokenize_request(
                rid,
                text=text,
                request=request,
                add_special=add_special,
                parse_special=parse_special,
            ),
        )
        return [int(t) for t in event.get("tokens") or []]

    async def detokenize(self, name: str, tokens: list[int]) -> str:
        """Return the text of `tokens`, special tokens spelled out.

        An id outside the vocabulary is a BadRequestError.
        """
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
        runner, _, _ = await self._admit(name, None, None)
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
        """Load a model if it is not loaded, and keep it for `keep_alive` seconds.

        A model an upstream serves is its to load: nothing happens here.
        """
        opts = params_mod.validate(options or {})
        remote = await self.remote_name(name)
        if remote is not None:
            return self.remote.describe(remote)
        runner, _, _ = await self._admit(name, opts, keep_alive)
        self._release(runner)
        shown = runner.describe()
        if runner.state != "ready":  # keep_alive 0: unloaded as soon as it was loaded
            shown.expires_at = time.time()
        return shown

    async def unload(self, name: str) -> bool:
        """Unload a model, cancelling its requests; False if it was not loaded.

        A runner still busy CANCEL_WAIT_S after its requests were cancelled is wedged: it is
        killed. Returns once the model's runners have exited.
        """
        return await self._local.unload(canonical(name))

    def running(self) -> list[RunningModel]:
        return [r.describe() for r in self._local.runners if r.state == "ready"]

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot (BusyError once this reaches max_queue)."""
        return len(self._waiting)

    # -- admission and the waiting line -------------------------------------------------------

    async def remote_name(self, name: str) -> str | None:
        """The upstream model `name` routes to, or None: the store's models come first."""
        model = self.remote.serves(name)
        if model is None:
            return None
        try:
            await self._names.find(name)
        except (ModelNotFoundError, InvalidNameError):
            return model
        return None

    async def _admit(
        self,
        name: str,
        options: dict[str, Any] | None,
        keep_alive: float | None,
        *,
        exact: bool = False,
    ) -> tuple[Runner, float, int]:
        """Return a ready runner with a slot reserved, the seconds taken, and the request's context.

        The seconds cover resolving the name, waiting in line and loading. They are Ollama's
        load_duration: small, but never 0, when the model was loaded already (Ollama's clients
        and tests take 0 for a missing field). The context is Target.context, or 0 for `options`
        None, which takes any runner. `exact` asks for a runner of exactly that context, else one
        of at least that context.
        """
        if self._local.closed:
            raise ServerError("the server is shutting down", hint="retry once it is back")
        started = time.perf_counter()
        keep = self._keep_alive(keep_alive)
        target = await self._names.find(name)
        # None: any runner of the model will do (tokenizing does not depend on load options).
        # A request naming no load option gets the model's own, never those another request
        # loaded it with.
        load_options = target.trained(
            None
            if options is None
            else {k: v for k, v in options.items() if k in params_mod.LOAD_PARAMS}
        )
        # The request is answered with this context, written into its options (`generate`). The
        # runner holds the request to it, so the answer is the one a runner loaded with exactly
        # that context gives. Any runner of at least that context serves it: a client sending a
        # num_ctx of its own (Zed's 16384, or Aider's that grows on every request) reloads the
        # model neither for one that sends none nor for itself. A load rounds num_ctx up to a
        # power of two (runners.Runner, local.LocalPool.start_runner); embeddings keep a runner
        # of exactly their context.
        context = 0 if load_options is None else target.context(load_options)
        # Whatever came free since a request began waiting was handed to it then (_wake): what
        # is left for a newcomer is what no waiting request can use.
        runner = self._try_admit(target, load_options, keep, exact)
        if runner is None:
            granted: asyncio.Future[Runner] = asyncio.get_running_loop().create_future()
            runner = await self._wait_turn(_Waiter(target, load_options, keep, granted, exact))
        if runner.ready.done() and not runner.ready.exception():
            return runner, time.perf_counter() - started, context
        try:
            # shield: cancelling one waiter (a client gone) must not cancel the shared load.
            await asyncio.shield(runner.ready)
        except LocalrunError as exc:
            self._release(runner)
            raise exc.copy() from None
        except BaseException:
            self._release(runner)
            raise
        return runner, time.perf_counter() - started, context

    async def _wait_turn(self, waiter: _Waiter) -> Runner:
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
        self,
        target: Target,
        load_options: dict[str, Any] | None,
        keep_alive: float,
        exact: bool = False,
    ) -> Runner | None:
        """Reserve a slot now (loading the model if needed), or None: the request waits.

        `load_options` None takes any runner of the model as it is (one loaded with the
        model's own options if it must be loaded). A runner still loading with a context that
        may or may not hold the request's is waited for (runners.Runner.matches)."""
        if self._local.closed:
            raise ServerError("the server is shutting down", hint="retry once it is back")
        same = [r for r in self._local.runners if r.name == target.name]
        for runner in same:
            if runner.stale:
                continue
            match: bool | None = True
            if load_options is not None or runner.digest != target.digest:
                match = runner.matches(target, load_options or {}, exact=exact)
            if match is None:
                return None  # its ready event says whether it holds this request's context
            if not match:
                self._local.check_fits(runner, target, load_options or {})
                # Other load options or a changed model: reload once its requests end.
                runner.stale = True
                if runner.busy == 0:
                    self._local.stop(runner)
                continue
            if runner.busy < runner.slots:
                runner.busy += 1
                runner.keep_alive = keep_alive
                runner.cancel_timer()
                return runner
            return None
        if any(r.name == target.name for r in self._local.runners):
            return None  # a stale runner of this model is finishing its requests
        return self._local.start_runner(target, load_options or {}, keep_alive, grow=not exact)

    def _busy(self) -> BusyError:
        slots = sum(r.slots for r in self._local.runners) or self.num_parallel
        retry = max(1, min(60, math.ceil((self.waiting + 1) / slots)))
        return BusyError(
            f"the server is busy: {self.waiting} requests are already waiting",
            hint=f"retry in {retry}s, or raise LOCALRUN_MAX_QUEUE",
            retry_after=retry,
        )

    def _release(self, runner: Runner) -> None:
        """A request's slot is free again (its final event came, or it never started)."""
        runner.busy -= 1
        runner.last_used = time.monotonic()
        self._local.on_idle(runner)
        self._wake()

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
                            waiter.target, waiter.load_options, waiter.keep_alive, waiter.exact
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

    async def _submit(
        self, runner: Runner, build: Callable[[int], Event]
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
            return config.keep_alive()
        if math.isnan(value):
            raise InvalidParameterError("keep_alive cannot be NaN")
        return math.inf if value < 0 else float(value)
