"""Connection limits under uvicorn: request-head and body timeouts, caps on open connections.

A request head arrives before the API key can be checked, so anyone who reaches the port can
open sockets and trickle a byte now and then (slowloris). uvicorn's h11 protocol waits for a
head as long as bytes keep coming, and keeps every socket it accepts; out of file descriptors,
the process answers nobody. The protocol built here bounds all of that:

- a request head must arrive whole within LOCALRUN_HEADER_TIMEOUT of the connection opening
  (on a kept-alive connection, of the request's first byte): a total, not a per-byte, timeout;
- a request body that brings no byte for LOCALRUN_BODY_TIMEOUT while the server is ready to read
  it is answered 408 and dropped (idle, not total time: blob uploads are large);
- a kept-alive connection idle for LOCALRUN_IDLE_TIMEOUT between requests is closed;
- at most LOCALRUN_MAX_CONNECTIONS connections are open (kept below the file-descriptor limit),
  at most LOCALRUN_MAX_CONNECTIONS_PER_CLIENT from one address (for IPv6, one /64). Past a cap,
  a new connection evicts the oldest one still waiting for a request head (Registry.admit).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from localrun.errors import BusyError, LocalrunError, RequestTimeoutError
from localrun.server.errors import body_of, dialect_of, headers_of, refused, status_of
from localrun.server.http import request_ids
from localrun.settings import limits

log = logging.getLogger("localrun.server")

# Descriptors kept back from connections: model files, runner pipes, the store, logs.
FD_RESERVE = 256
# Connections the kernel queues until they are accepted. A flood fills a short queue at once, and
# a real client whose SYN is dropped waits a second to retry. uvicorn also accepts this many in
# one go before it can count or evict any, so that many may be open past the cap for a moment.
BACKLOG = 2048

# What a connection is doing, as far as its limits go.
HEAD = "head"  # reading a request head: evictable, under the header deadline
IDLE = "idle"  # kept alive between requests: evictable, under uvicorn's keep-alive timer
BODY = "body"  # reading a request body: under the body idle timeout
BUSY = "busy"  # the request is read; the app answers it
DRAIN = "drain"  # answered before its body was read (a 401): the rest is discarded, evictable

_EVICTABLE = frozenset({HEAD, IDLE, DRAIN})


@dataclass(frozen=True)
class Limits:
    """The bounds on connections (see the module docstring); defaults are config's."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    idle_timeout: float = 5.0
    max_connections: int = 1000
    max_per_client: int = 256
    backlog: int = BACKLOG

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            header_timeout=limits.header_timeout(),
            body_timeout=limits.body_timeout(),
            idle_timeout=limits.idle_timeout(),
            max_connections=limits.max_connections(),
            max_per_client=limits.max_connections_per_client(),
        )

    def within(self, fd_limit: int) -> Limits:
        """These limits with the connection cap and the backlog below `fd_limit` open files."""
        backlog = min(self.backlog, max(64, (fd_limit - FD_RESERVE) // 2))
        room = max(16, fd_limit - FD_RESERVE - backlog)
        if self.max_connections <= room:
            return replace(self, backlog=backlog)
        log.warning(
            "LOCALRUN_MAX_CONNECTIONS lowered from %d to %d: the process may open %d files "
            "(raise `ulimit -n` to allow more)",
            self.max_connections,
            room,
            fd_limit,
        )
        return replace(self, max_connections=room, backlog=backlog)


def client_key(client: tuple[str, int] | None) -> str:
    """The address a per-client cap counts: IPv4 as is, IPv6 by its /64 (one host's share)."""
    if client is None:
        return ""  # a Unix socket: one local client
    host = client[0]
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Registry:
    """The open connections of one server, and which of them may be evicted, oldest first."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.open: set[GuardedH11Protocol] = set()
        self.per_client: dict[str, int] = {}
        # Insertion-ordered sets: the first is the one waiting longest.
        self.waiting: dict[GuardedH11Protocol, None] = {}
        self.waiting_by_client: dict[str, dict[GuardedH11Protocol, None]] = {}

    def admit(self, conn: GuardedH11Protocol) -> bool:
        """Count a new connection in, evicting to make room; False when there is no room."""
        # Past a cap, the oldest connection still waiting for a request head goes (from the same
        # address, for the per-client cap), never one mid-request; with none, the caller answers
        # 503. Evicting rather than refusing keeps a flood from locking clients out: a real client
        # sends its head at once and leaves the evictable set within a round trip, while the
        # flood's own new sockets push out its oldest ones. The limit of that: a client sharing
        # its address with a flood that reopens sockets faster than the server reads heads
        # (thousands a second) can lose its connection before its head is read. It is then reset
        # and must retry.
        key = conn.key
        if self.per_client.get(key, 0) >= self.limits.max_per_client:
            own = self.waiting_by_client.get(key)
            if not own:
                return False
            next(iter(own)).evict()
        if len(self.open) >= self.limits.max_connections:
            if not self.waiting:
                return False
            next(iter(self.waiting)).evict()
        self.open.add(conn)
        self.per_client[key] = self.per_client.get(key, 0) + 1
        return True

    def evictable(self, conn: GuardedH11Protocol, yes: bool) -> None:
        """Mark a connection as one a newcomer may push out (it goes to the back of the line)."""
        own = self.waiting_by_client.setdefault(conn.key, {})
        self.waiting.pop(conn, None)
        own.pop(conn, None)
        if yes and conn in self.open:
            self.waiting[conn] = None
            own[conn] = None
        elif not own:
            del self.waiting_by_client[conn.key]

    def release(self, conn: GuardedH11Protocol) -> None:
        """Count a connection out (again is harmless)."""
        if conn not in self.open:
            return
        self.open.discard(conn)
        self.evictable(conn, False)
        left = self.per_client[conn.key] - 1
        if left:
            self.per_client[conn.key] = left
        else:
            del self.per_client[conn.key]


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol under the limits of a Registry (see `protocol()`)."""

    registry: ClassVar[Registry]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = self.registry.limits
        self.timeout_keep_alive = limits.idle_timeout  # type: ignore[assignment]
        self.key = ""
        self.phase = ""
        self.timer: asyncio.TimerHandle | None = None
        self.body_seen = 0.0  # loop time of the body's last bytes, or of the server's last wait

    # uvicorn's protocol interface, wrapped

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self.key = client_key(self.client)
        if not self.registry.admit(self):
            log.warning("connection from %s refused: every connection is mid-request", self.key)
            self._answer_and_close(
                BusyError("the server has too many open connections", retry_after=1), "/"
            )
            return
        self._enter(HEAD)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.registry.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.phase == IDLE:  # the first byte of the next request on a kept-alive connection
            self._enter(HEAD)
        super().data_received(data)
        if self.phase == BODY:
            self.body_seen = self.loop.time()
        self._settle()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start the next, pipelined request
        if self.conn.their_state is h11.IDLE:
            self._enter(IDLE)
        else:
            self._settle()

    # the phases

    def _settle(self) -> None:
        """Follow the request's progress as h11 read it."""
        if self.transport.is_closing():
            return
        theirs = self.conn.their_state
        if theirs is h11.SEND_BODY:
            self._enter(DRAIN if self.conn.our_state is h11.DONE else BODY)
        elif theirs is h11.DONE or theirs is h11.MUST_CLOSE:
            self._enter(BUSY)

    def _enter(self, phase: str) -> None:
        if phase == self.phase:
            return
        self.phase = phase
        self._cancel_timer()
        limits = self.registry.limits
        if phase in (HEAD, DRAIN):
            self.timer = self.loop.call_later(limits.header_timeout, self._head_too_slow)
        elif phase == BODY:
            self.body_seen = self.loop.time()
            self.timer = self.loop.call_later(limits.body_timeout, self._body_check)
        self.registry.evictable(self, phase in _EVICTABLE)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _head_too_slow(self) -> None:
        self.timer = None
        if self.phase in (HEAD, DRAIN):
            self.close()

    def _body_check(self) -> None:
        self.timer = None
        if self.phase != BODY or self.transport.is_closing():
            return
        now = self.loop.time()
        cycle = self.cycle
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            self.body_seen = now  # the server is not reading yet: the client is not stalling
        limit = self.registry.limits.body_timeout
        idle = now - self.body_seen
        if idle < limit:
            self.timer = self.loop.call_later(limit - idle, self._body_check)
            return
        path = cycle.scope["path"] if cycle is not None else "/"
        error = RequestTimeoutError(
            f"the request body sent nothing for {limit:g} seconds",
            hint="send the body without pauses, or raise LOCALRUN_BODY_TIMEOUT on the server",
        )
        if cycle is not None and not cycle.response_started:
            cycle.disconnected = True  # the app's own answer, if it comes, goes nowhere
            cycle.message_event.set()
            self._answer_and_close(error, path)
        else:
            self.close()

    # closing

    def evict(self) -> None:
        """Make room for a newcomer: close this connection, which waits for a request."""
        self.registry.release(self)
        self.close()

    def close(self) -> None:
        self._cancel_timer()
        if not self.transport.is_closing():
            self.transport.close()

    def _answer_and_close(self, error: LocalrunError, path: str) -> None:
        """Answer `error` in the path's dialect outside h11's state machine, and close."""
        refused("", path, error)
        request_id = request_ids.new_id()  # named as the app's answers are
        body = json.dumps(body_of(error, dialect_of(path), request_id)).encode()
        status = status_of(error)
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}"]
        head += [f"{name}: {value}" for name, value in headers_of(error).items()]
        head += [f"request-id: {request_id}", f"x-request-id: {request_id}"]
        head += [
            "content-type: application/json",
            f"content-length: {len(body)}",
            "connection: close",
        ]
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        self.close()


_REASONS = {408: "Request Timeout", 503: "Service Unavailable"}


def protocol(limits: Limits) -> type[GuardedH11Protocol]:
    """The protocol class to give uvicorn.Config(http=...), with its own registry."""

    class Guarded(GuardedH11Protocol):
        registry = Registry(limits)

    return Guarded
