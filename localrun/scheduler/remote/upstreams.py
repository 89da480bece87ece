"""Remote runners: upstreams.toml's servers, a second kind of runner beside the local processes.

A request for a model an upstream serves becomes that upstream's OpenAI or Ollama API call
(remote_wire). Its streamed answer becomes the same `Stream` of pieces a local runner gives, so
every dialect localrun serves works in front of every upstream dialect.

Routing. A request goes to a healthy upstream serving its model: by prefix affinity, else the
one with the fewest in flight (`_choose`). One that fails before its first piece is tried once
more on another upstream. One that fails after pieces were sent ends with UpstreamError, never a
silently truncated answer. Closing the stream cancels the upstream request. An answer is
forwarded up to the client's limit or the server's ceiling, and no further (remote_limit).

Health. Every LOCALRUN_UPSTREAM_HEALTH_INTERVAL each upstream's model list is read, which also
discovers the models of one that lists none. LOCALRUN_UPSTREAM_EJECT_AFTER failures in a row
eject it for LOCALRUN_UPSTREAM_COOLDOWN. API keys are read at each request and go nowhere else.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from localrun.errors import (
    BadRequestError,
    LocalrunError,
    ServerError,
    UpstreamError,
)
from localrun.request.genrequest import GenRequest
from localrun.scheduler.remote import read as remote_read
from localrun.scheduler.remote import wire as remote_wire
from localrun.scheduler.remote.limit import AnswerLimit
from localrun.scheduler.runners import RunningModel
from localrun.settings import config, tls
from localrun.settings.upstreams import Settings, Upstream
from localrun.worker import protocol
from localrun.worker.process import Item, Stream

log = logging.getLogger("localrun.upstreams")

# Prefix affinity: a conversation goes back to the upstream it went to before, which holds its
# prefix in its KV cache, while that one stays healthy.
_AFFINITY_MAX = 4096  # conversations remembered for prefix affinity
# A conversation stays with its upstream while that one has at most this many requests in
# flight more than the least busy: affinity saves a prompt's evaluation, not a queue's wait.
_AFFINITY_SLACK = 2
_MAX_MODEL_LIST = 4 * 1024 * 1024  # a model list's bytes (1000 names are far less)
_HINT = "the server log has more; `localrun ps` shows the upstreams' health"


class _Refused(Exception):
    """The upstream refused the request itself (a 4xx, an error about the request).

    That is the client's to fix, so it is neither retried elsewhere nor counted against the
    upstream.
    """


@dataclass
class UpstreamState:
    """One upstream: its settings, health and counters."""

    upstream: Upstream
    discovered: tuple[str, ...] = ()
    healthy: bool = True
    failures: int = 0  # requests failed in a row
    check_failures: int = 0  # health checks failed in a row
    ejected_until: float = 0.0
    in_flight: int = 0
    requests: int = 0
    errors: int = 0
    ejections: int = 0
    latency_s: float = 0.0  # summed time to the first piece
    checked: bool = False  # a health check has answered at least once
    models_seen: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.upstream.name

    def models(self) -> tuple[str, ...]:
        return self.upstream.models or self.discovered


@dataclass
class _Delivery:
    """Where an upstream's answer goes: `first` settles at the first piece or a failure.

    The request waits on `first`; the rest goes into `queue`.
    """

    queue: asyncio.Queue[Item]
    first: asyncio.Future[None]
    sent: bool = False  # pieces went to the client: a failure now ends the answer with an error

    def error(self, error: LocalrunError) -> None:
        if not self.first.done():
            self.first.set_exception(error)
        else:
            self.queue.put_nowait(error)


@dataclass(frozen=True)
class RemoteModel:
    """A model an upstream serves, as the listings show it."""

    name: str
    upstreams: tuple[str, ...]


class RemotePool:
    """The upstreams of upstreams.toml and the requests routed to them."""

    def __init__(self, upstreams: list[Upstream]) -> None:
        self.states = [UpstreamState(u) for u in upstreams]
        self._affinity: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._client: Any = None
        self._health: asyncio.Task[None] | None = None
        self._ids = 0
        self._pumps: dict[asyncio.Task[None], asyncio.Queue[Item]] = {}
        self._closing = False
        self.settings: Settings | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.states:
            return
        self.settings = Settings.read()
        import httpx

        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        # An https:// upstream with a private CA: LOCALRUN_CA_FILE, as the CLI trusts it.
        verify: Any = tls.client_context() if config.ca_file() else True
        self._client = httpx.AsyncClient(
            limits=limits, trust_env=False, follow_redirects=False, verify=verify
        )
        await self.check_all()
        self._health = asyncio.get_running_loop().create_task(self._health_loop())

    def interrupt(self) -> None:
        """End every answer in flight with ServerError and cancel its upstream request.

        The server is stopping; each stream sends its dialect's error line.
        """
        self._closing = True
        error = ServerError("the server is shutting down", hint="retry once it is back")
        for task, queue in list(self._pumps.items()):
            queue.put_nowait(error)
            task.cancel()

    async def close(self) -> None:
        self._closing = True
        pumps = list(self._pumps)
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        if self._client is not None:
            await self._client.aclose()

    # -- models ---------------------------------------------------------------------------------

    def models(self) -> list[RemoteModel]:
        """Every model some upstream serves, with the upstreams serving it, by name."""
        served: dict[str, list[str]] = {}
        for state in self.states:
            for model in state.models():
                served.setdefault(model, []).append(state.name)
        return [RemoteModel(name, tuple(ups)) for name, ups in sorted(served.items())]

    def serves(self, name: str) -> str | None:
        """Return the upstream model `name` refers to, or None.

        The match is exact, or with or without ':latest' (an Ollama upstream lists
        "tiny:latest", a client asks for "tiny"). Failing that, case is ignored.
        """
        candidates = {name, name.removesuffix(":latest")}
        if ":" not in name.rsplit("/", 1)[-1]:
            candidates.add(name + ":latest")
        folded = {c.lower() for c in candidates}  # clients may lower-case a name
        found = None
        for state in self.states:
            for model in state.models():
                if model in candidates:
                    return model
                if found is None and model.lower() in folded:
                    found = model
        return found

    def describe(self, model: str) -> RunningModel:
        """`model` as /api/ps shows a model: served by these upstreams, for as long as they do."""
        states = [s for s in self.states if model in s.models()]
        hosts = ", ".join(s.name + ("" if s.healthy else " (ejected)") for s in states)
        return RunningModel(
            name=model,
            digest="",
            size=0,
            size_vram=0,
            expires_at=math.inf,
            context_length=0,
            details={},
            processor=f"remote: {hosts}",
            pid=0,
            busy=sum(s.in_flight for s in states),
        )

    # -- requests -------------------------------------------------------------------------------

    async def generate(self, model: str, request: GenRequest) -> Stream:
        """Send a chat or completion request for `model` upstream; return its stream once it starts.

        The stream comes once its first piece, or its end, arrived. A request that fails before
        then (no connection, an HTTP error, no answer within the read timeout) is tried once
        more on another upstream. UpstreamError when no upstream answered; BadRequestError when
        one refused the request itself, which is not tried elsewhere.
        """
        if self._closing:
            raise ServerError("the server is shutting down", hint="retry once it is back")
        key = _affinity_key(model, request)
        tried: set[str] = set()
        last: LocalrunError | None = None
        for _ in range(2):  # the first choice, then one other
            state = self._choose(model, key, tried)
            if state is None:
                break
            tried.add(state.name)
            try:
                return await self._start(state, model, request, key)
            except UpstreamError as exc:
                last = exc
        if last is not None:
            raise last
        raise UpstreamError(f"no healthy upstream serves {model} now", hint=_HINT)

    def _choose(self, model: str, key: str, tried: set[str]) -> UpstreamState | None:
        """Return a healthy upstream serving `model`: the conversation's own, else the least busy.

        The conversation's own (affinity) is passed over when it is busier than the least busy
        by more than _AFFINITY_SLACK. An ejected upstream comes back through its health check,
        not through a request.
        """
        candidates = [
            s for s in self.states if s.healthy and s.name not in tried and model in s.models()
        ]
        if not candidates:
            return None
        least = min(candidates, key=lambda s: (s.in_flight, s.requests))
        preferred = self._affinity.get(key) if key else None
        for state in candidates:
            if state.name == preferred and state.in_flight <= least.in_flight + _AFFINITY_SLACK:
                return state
        return least

    async def _start(
        self, state: UpstreamState, model: str, request: GenRequest, key: str
    ) -> Stream:
        upstream = state.upstream
        try:
            url = upstream.url + remote_wire.path(upstream.dialect, request.chat)
            payload = remote_wire.body(upstream.dialect, model, request)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            why = remote_read.one_line(str(exc))
            raise BadRequestError(
                f"this request cannot be sent to upstream {upstream.name}: {why}"
            ) from None
        self._ids += 1
        rid = self._ids
        queue: asyncio.Queue[Item] = asyncio.Queue()
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        first: asyncio.Future[None] = loop.create_future()
        state.in_flight += 1
        state.requests += 1
        ceiling = (self.settings or Settings.read()).max_tokens
        reader = remote_wire.Reader(
            upstream.dialect, rid, started, AnswerLimit.of(request.options, ceiling)
        )
        task = loop.create_task(self._pump(state, url, payload, reader, queue, first, key))
        self._pumps[task] = queue
        task.add_done_callback(lambda done: self._pumps.pop(done, None))
        try:
            await asyncio.shield(first)
        except LocalrunError:
            await asyncio.gather(task, return_exceptions=True)
            raise
        except asyncio.CancelledError:
            task.cancel()
            raise

        def cancel() -> None:
            task.cancel()

        return Stream(queue, 0.0, cancel, model=model)

    async def _pump(
        self,
        state: UpstreamState,
        url: str,
        payload: protocol.Message,
        reader: remote_wire.Reader,
        queue: asyncio.Queue[Item],
        first: asyncio.Future[None],
        key: str,
    ) -> None:
        """Read the upstream's answer through `reader` into `queue`, settling `first` always.

        `first` is settled at the first piece, the end or the failure: nothing a request sends
        can leave it open.
        """
        upstream = state.upstream
        rid, started = reader.id, reader.started
        out = _Delivery(queue, first)

        def fail(message: str) -> None:
            message = _redact(upstream, message)
            self._failed(state, message)
            out.error(UpstreamError(f"upstream {upstream.name}: {message}", hint=_HINT))

        try:
            if not await self._stream(state, url, payload, reader, out, fail, started):
                return
            queue.put_nowait(reader.done())
            if not first.done():
                first.set_result(None)
            self._succeeded(state, key)
        except asyncio.CancelledError:
            if not first.done():
                first.cancel()
            else:  # the client went away: the stream's aclose waits for this final event
                queue.put_nowait(protocol.done_event(rid, "cancelled", reader.timings()))
            raise
        except (_Refused, remote_wire.RequestRefused) as exc:
            out.error(
                BadRequestError(
                    f"upstream {upstream.name} refused the request: " + _redact(upstream, str(exc))
                )
            )
        except ValueError as exc:  # remote_wire.Reader, json: not an answer we can read
            fail(f"a malformed answer ({remote_read.one_line(str(exc))})")
        except Exception as exc:  # transport errors, timeouts, protocol errors, a bad key
            fail(
                remote_read.describe(exc)
                + (" after part of the answer was sent" if out.sent else "")
            )
        finally:
            state.in_flight -= 1
            if not first.done():  # a path above that settled nothing: never leave a waiter
                first.set_exception(UpstreamError(f"upstream {upstream.name} failed", hint=_HINT))

    async def _stream(
        self,
        state: UpstreamState,
        url: str,
        payload: protocol.Message,
        reader: remote_wire.Reader,
        out: _Delivery,
        fail: Callable[[str], None],
        started: float,
    ) -> bool:
        """Send the request and feed its answer through `reader` into `out`; True if it ended whole.

        False after `fail` was told why not. A client error (4xx) raises _Refused: the request,
        not the upstream, is at fault.
        """
        async with self._client.stream(
            "POST",
            url,
            json=payload,
            headers=remote_wire.headers(state.upstream),
            timeout=self._timeout(),
        ) as response:
            if response.status_code != 200:
                text, refused = await remote_read.failure(response)
                if refused:
                    raise _Refused(text)
                fail(text)
                return False
            async with contextlib.aclosing(
                remote_read.objects(response, self._max_bytes())
            ) as objects:
                async for obj in objects:
                    for event in reader.feed(obj):
                        out.queue.put_nowait(event)
                        out.sent = True
                        if not out.first.done():
                            state.latency_s += time.perf_counter() - started
                            out.first.set_result(None)
                    if reader.cut:  # past the client's limit: closing the answer stops it
                        log.warning("upstream %s: %s", state.name, reader.limit.describe())
                        break
            if reader.reason is None:
                fail("the answer ended before it was done")
                return False
        return True

    async def embed(
        self, model: str, inputs: list[Any], *, truncate: bool = True, query: str | None = None
    ) -> tuple[list[list[float]], int]:
        """Return embeddings of `inputs` from an upstream serving `model`, and its prompt tokens.

        They are L2-normalized as local ones are. With `query`, they are its rerank scores of
        the inputs, as one-value vectors. A failure is tried once more elsewhere: an embedding
        request has no partial answer to lose.
        """
        tried: set[str] = set()
        last: UpstreamError | None = None
        for _ in range(2):
            state = self._choose(model, "", tried)
            if state is None:
                break
            tried.add(state.name)
            state.in_flight += 1
            state.requests += 1
            started = time.perf_counter()
            try:
                upstream = state.upstream
                if query is None:
                    route, payload = remote_wire.embed_body(
                        upstream.dialect, model, inputs, truncate
                    )
                    answer = await self._post_json(upstream.url + route, payload, upstream)
                    vectors, tokens = remote_wire.embeddings(upstream.dialect, answer)
                else:
                    route, payload = remote_wire.rerank_body(upstream, model, query, inputs)
                    answer = await self._post_json(upstream.url + route, payload, upstream)
                    vectors, tokens = remote_wire.rerank_scores(answer, len(inputs))
                if len(vectors) != len(inputs):
                    raise ValueError(f"{len(vectors)} vectors for {len(inputs)} inputs")
            except BadRequestError:
                raise
            except Exception as exc:
                message = _redact(state.upstream, remote_read.describe(exc))
                self._failed(state, message)
                last = UpstreamError(f"upstream {state.name}: {message}", hint=_HINT)
                continue
            finally:
                state.in_flight -= 1
            state.latency_s += time.perf_counter() - started
            self._succeeded(state, "")
            return vectors, tokens
        raise last or UpstreamError(f"no healthy upstream serves {model} now", hint=_HINT)

    # -- health ---------------------------------------------------------------------------------

    def _failed(self, state: UpstreamState, why: str, *, check: bool = False) -> None:
        """Count a failed request or health check; too many in a row eject the upstream.

        After LOCALRUN_UPSTREAM_EJECT_AFTER failures in a row of either kind, the upstream is
        ejected for LOCALRUN_UPSTREAM_COOLDOWN. A model list that answers does not make up for
        answers that fail.
        """
        state.errors += 1
        if check:
            state.check_failures += 1
        else:
            state.failures += 1
        log.warning("upstream %s: %s", state.name, why)
        if self._closing:
            return  # a request cut by the server's own shutdown says nothing of the upstream
        settings = self.settings or Settings.read()
        worst = max(state.failures, state.check_failures)
        if state.healthy and worst >= settings.eject_after:
            state.healthy = False
            state.ejections += 1
            state.ejected_until = time.monotonic() + settings.cooldown_s
            log.warning("upstream %s ejected for %gs", state.name, settings.cooldown_s)
        elif not state.healthy:
            state.ejected_until = time.monotonic() + settings.cooldown_s

    def _succeeded(self, state: UpstreamState, key: str) -> None:
        state.failures = 0
        if not state.healthy:
            log.info("upstream %s is back", state.name)
        state.healthy = True
        if not key:
            return
        self._affinity[key] = state.name
        self._affinity.move_to_end(key)
        while len(self._affinity) > _AFFINITY_MAX:
            self._affinity.popitem(last=False)

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(state) for state in self.states))

    async def check(self, state: UpstreamState) -> None:
        """Read the upstream's model list: its health, and its models when none are declared."""
        if not state.healthy and time.monotonic() < state.ejected_until:
            return
        upstream = state.upstream
        route = "/api/tags" if upstream.dialect == "ollama" else "/v1/models"
        try:
            async with self._client.stream(
                "GET",
                upstream.url + route,
                headers=remote_wire.headers(upstream),
                timeout=self._check_timeout(),
            ) as response:
                if response.status_code != 200:
                    raise ValueError(f"HTTP {response.status_code} from {route}")
                listed = await remote_read.read_json(response, _MAX_MODEL_LIST)
            models = remote_wire.model_names(listed, upstream.dialect)
        except Exception as exc:
            message = _redact(upstream, f"health check failed: {remote_read.describe(exc)}")
            self._failed(state, message, check=True)
            return
        state.checked = True
        state.discovered = tuple(models)
        state.check_failures = 0
        if not state.healthy:  # its cool-down is over and it answers: route to it again
            log.info("upstream %s is back", state.name)
            state.healthy = True
            state.failures = 0

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_s if self.settings else 10.0)
            await self.check_all()

    async def _post_json(self, url: str, payload: Any, upstream: Upstream) -> Any:
        """Return an upstream's JSON answer to a request that is not streamed, read within bounds.

        A client error (4xx) is the request's: BadRequestError.
        """
        async with self._client.stream(
            "POST", url, json=payload, headers=remote_wire.headers(upstream),
            timeout=self._timeout(),
        ) as response:  # fmt: skip
            if response.status_code != 200:
                text, refused = await remote_read.failure(response)
                if refused:
                    raise BadRequestError(
                        f"upstream {upstream.name} refused the request: " + _redact(upstream, text)
                    )
                raise ValueError(text)
            return await remote_read.read_json(response, self._max_bytes())

    def _max_bytes(self) -> int:
        return (self.settings or Settings.read()).max_bytes

    def _timeout(self) -> Any:
        return (self.settings or Settings.read()).timeout()

    def _check_timeout(self) -> Any:
        return (self.settings or Settings.read()).check_timeout()


def _affinity_key(model: str, request: GenRequest) -> str:
    """Return what identifies a conversation: the model, its system prompt, its first two messages.

    Those are taken whole, whatever came after: a long system prompt shared by many conversations
    must not make them one. A raw prompt is its own.
    """
    if request.messages is not None:
        start = json.dumps([request.system, request.messages[:2]], default=str)
    else:
        start = str(request.prompt or "")
    return hashlib.sha256(f"{model}\0{start}".encode()).hexdigest()[:32]


def _redact(upstream: Upstream, text: str) -> str:
    """`text` without the upstream's API key (an HTTP library may quote a header it refused)."""
    try:
        key = upstream.api_key()
    except LocalrunError:
        key = os.environ.get(upstream.api_key_env or "", "").strip() or None
    return text.replace(key, "[API key]") if key else text
