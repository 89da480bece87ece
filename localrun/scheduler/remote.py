"""Remote runners: the upstream servers of upstreams.toml, a second kind of runner beside the
local runner processes. A request for a model an upstream serves becomes that upstream's OpenAI
or Ollama API call (remote_wire), and its streamed answer the same `Stream` of pieces a local
runner gives, so every dialect localrun serves works in front of every upstream dialect.

Routing. Among the healthy upstreams serving a model: the one a conversation went to before
(prefix affinity: it holds that prefix in its KV cache) while it stays healthy, else the one
with the fewest requests in flight. A request that fails before its first piece (no connection,
an HTTP error, no answer within the read timeout) is tried once more on another upstream; one
that fails after pieces were sent ends with UpstreamError, which each dialect turns into its
error event, never a silently truncated answer. Closing the stream (a client that went away)
cancels the upstream request.

Health. Every LOCALRUN_UPSTREAM_HEALTH_INTERVAL each upstream's model list is read (which also
discovers the models of an upstream that lists none); LOCALRUN_UPSTREAM_EJECT_AFTER failures in
a row, of checks or requests, eject it for LOCALRUN_UPSTREAM_COOLDOWN, after which it is checked
again. API keys are read from their variables when a request is sent and go nowhere else.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from localrun import config
from localrun.errors import LocalrunError, UpstreamError
from localrun.scheduler import remote_wire
from localrun.scheduler.runners import RunningModel
from localrun.upstreams import Upstream
from localrun.worker import protocol
from localrun.worker.process import Item, Stream

log = logging.getLogger("localrun.upstreams")

_AFFINITY_MAX = 4096  # conversations remembered for prefix affinity
_AFFINITY_CHARS = 2048  # of a conversation's start, what identifies it
_MAX_LINE = 4 * 1024 * 1024  # one streamed line from an upstream, at most


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

    def available(self, now: float) -> bool:
        return self.healthy or now >= self.ejected_until


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

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.states:
            return
        import httpx

        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self._client = httpx.AsyncClient(limits=limits, trust_env=False, follow_redirects=False)
        await self.check_all()
        self._health = asyncio.get_running_loop().create_task(self._health_loop())

    async def close(self) -> None:
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
        """The upstream model `name` refers to, or None: exact, or with or without
        ':latest' (an Ollama upstream lists "tiny:latest", a client asks for "tiny")."""
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

    async def generate(self, model: str, request: protocol.Message) -> Stream:
        """Send a runner request (chat or complete) for `model` upstream; the answer's stream
        once its first piece (or its end) arrived. UpstreamError when no upstream answered."""
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
        raise UpstreamError(
            f"no upstream serving {model} is available",
            hint="see `localrun upstream list` and the server log",
        )

    def _choose(self, model: str, key: str, tried: set[str]) -> UpstreamState | None:
        now = time.monotonic()
        candidates = [
            s
            for s in self.states
            if model in s.models() and s.name not in tried and s.available(now)
        ]
        if not candidates:
            return None
        preferred = self._affinity.get(key)
        for state in candidates:
            if state.name == preferred and state.healthy:
                return state
        return min(candidates, key=lambda s: (s.in_flight, s.requests))

    async def _start(
        self, state: UpstreamState, model: str, request: protocol.Message, key: str
    ) -> Stream:
        self._ids += 1
        rid = request.get("id", self._ids)
        queue: asyncio.Queue[Item] = asyncio.Queue()
        started = time.perf_counter()
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.in_flight += 1
        state.requests += 1
        task = asyncio.get_running_loop().create_task(
            self._pump(state, model, request, rid, queue, first, started, key)
        )
        try:
            await asyncio.shield(first)
        except UpstreamError:
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
        model: str,
        request: protocol.Message,
        rid: Any,
        queue: asyncio.Queue[Item],
        first: asyncio.Future[None],
        started: float,
        key: str,
    ) -> None:
        upstream = state.upstream
        reader = remote_wire.Reader(upstream.dialect, rid, started)
        url = upstream.url + remote_wire.path(upstream.dialect, request["op"])
        payload = remote_wire.body(upstream.dialect, model, request)
        sent = False  # pieces went to the client: a failure now ends the answer with an error

        def fail(message: str) -> None:
            nonlocal sent
            self._failed(state, message)
            error = UpstreamError(
                f"upstream {upstream.name}: {message}",
                hint="the server log has more; `localrun upstream list` shows its health",
            )
            if not first.done():
                first.set_exception(error)
            else:
                queue.put_nowait(error)

        try:
            async with self._client.stream(
                "POST", url, json=payload, headers=_headers(upstream), timeout=_timeout()
            ) as response:
                if response.status_code != 200:
                    text = (await response.aread())[:300].decode("utf-8", "replace")
                    fail(f"HTTP {response.status_code}: {_one_line(text)}")
                    return
                async for obj in _objects(response, upstream.dialect):
                    for event in reader.feed(obj):
                        queue.put_nowait(event)
                        sent = True
                        if not first.done():
                            state.latency_s += time.perf_counter() - started
                            first.set_result(None)
                if reader.reason is None:
                    fail("the answer ended before it was done")
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
        except ValueError as exc:
            fail(f"a malformed answer ({exc})")
        except Exception as exc:  # httpx's transport errors, timeouts, protocol errors
            fail(_describe(exc) + (" after part of the answer was sent" if sent else ""))
        finally:
            state.in_flight -= 1

    async def embed(
        self, model: str, inputs: list[Any], *, truncate: bool = True
    ) -> tuple[list[list[float]], int]:
        """Embeddings of `inputs` from an upstream serving `model`, L2-normalized as local
        ones are, and the prompt tokens it counted. Tried once more elsewhere on a failure
        (an embedding request has no partial answer to lose)."""
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
                route, payload = remote_wire.embed_body(upstream.dialect, model, inputs, truncate)
                response = await self._client.post(
                    upstream.url + route, json=payload, headers=_headers(upstream),
                    timeout=_timeout(),
                )  # fmt: skip
                if response.status_code != 200:
                    text = response.text[:300]
                    raise ValueError(f"HTTP {response.status_code}: {_one_line(text)}")
                vectors, tokens = remote_wire.embeddings(upstream.dialect, response.json())
                if len(vectors) != len(inputs):
                    raise ValueError(f"{len(vectors)} vectors for {len(inputs)} inputs")
            except Exception as exc:
                self._failed(state, _describe(exc))
                last = UpstreamError(
                    f"upstream {state.name}: {_describe(exc)}",
                    hint="the server log has more; `localrun ps` shows its health",
                )
                continue
            finally:
                state.in_flight -= 1
            state.latency_s += time.perf_counter() - started
            self._succeeded(state, "")
            return vectors, tokens
        raise last or UpstreamError(f"no upstream serving {model} is available")

    # -- health ---------------------------------------------------------------------------------

    def _failed(self, state: UpstreamState, why: str, *, check: bool = False) -> None:
        """A request (or a health check) failed: past LOCALRUN_UPSTREAM_EJECT_AFTER in a row of
        either kind, the upstream is ejected (a model list that answers does not make up for
        answers that fail)."""
        state.errors += 1
        if check:
            state.check_failures += 1
        else:
            state.failures += 1
        log.warning("upstream %s: %s", state.name, why)
        worst = max(state.failures, state.check_failures)
        if state.healthy and worst >= config.upstream_eject_after():
            state.healthy = False
            state.ejections += 1
            state.ejected_until = time.monotonic() + config.upstream_cooldown()
            log.warning("upstream %s ejected for %gs", state.name, config.upstream_cooldown())
        elif not state.healthy:
            state.ejected_until = time.monotonic() + config.upstream_cooldown()

    def _succeeded(self, state: UpstreamState, key: str) -> None:
        state.failures = 0
        if not state.healthy:
            log.info("upstream %s is back", state.name)
        state.healthy = True
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
            response = await self._client.get(
                upstream.url + route, headers=_headers(upstream), timeout=_timeout()
            )
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code} from {route}")
            models = _listed(response.json(), upstream.dialect)
        except Exception as exc:
            self._failed(state, f"health check failed: {_describe(exc)}", check=True)
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
            await asyncio.sleep(config.upstream_health_interval())
            await self.check_all()


def _listed(data: Any, dialect: str) -> list[str]:
    items = (
        data.get("models" if dialect == "ollama" else "data") if isinstance(data, dict) else None
    )
    if not isinstance(items, list):
        raise ValueError("not a model list")
    key = "name" if dialect == "ollama" else "id"
    names = [str(item[key]) for item in items if isinstance(item, dict) and item.get(key)]
    return [n for n in names if 0 < len(n) <= 256][:1000]


def _affinity_key(model: str, request: protocol.Message) -> str:
    """What identifies a conversation: the model and the start of its prompt (the system
    prompt and first messages), whatever came after."""
    if request.get("op") == protocol.CHAT:
        start = json.dumps(
            [request.get("system"), (request.get("messages") or [])[:2]], default=str
        )
    else:
        start = str(request.get("prompt") or "")
    digest = hashlib.sha256(f"{model}\0{start[:_AFFINITY_CHARS]}".encode()).hexdigest()
    return digest[:32]


def _headers(upstream: Upstream) -> dict[str, str]:
    headers = {"Accept": "text/event-stream, application/x-ndjson, application/json"}
    key = upstream.api_key()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def _timeout() -> Any:
    import httpx

    return httpx.Timeout(config.upstream_read_timeout(), connect=config.upstream_connect_timeout())


async def _objects(response: Any, dialect: str) -> AsyncIterator[Any]:
    """The JSON objects of a streamed answer: SSE `data:` lines, or JSON lines."""
    async for line in response.aiter_lines():
        if len(line) > _MAX_LINE:
            raise ValueError("a streamed line too long")
        line = line.strip()
        if not line:
            continue
        if line.startswith("data:"):
            data = line[5:].strip()
            if data == "[DONE]":
                return
            yield json.loads(data)
        elif line.startswith(("event:", "id:", "retry:", ":")):
            continue
        else:
            yield json.loads(line)


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    text = _one_line(str(exc))
    return f"{name}: {text}" if text else name


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
