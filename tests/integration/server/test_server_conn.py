"""Connection limits of `localrun serve`: slow heads and bodies are cut off, connections capped.

The audit that found them: 200 sockets sending a header byte every 2 s stayed open forever, and
1,100 of them locked every client out (file descriptors ran out), before any API key was checked.
Each test starts the real server in a subprocess with short limits and speaks raw sockets to it.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from localrun.server.http.connections import Limits, client_key

from support.serve import Serve

pytestmark = pytest.mark.server

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
HEAD = b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "


def serve(home: Path, **env: str) -> Serve:
    return Serve(home, env={"LOCALRUN_API_KEY": KEY, **env})


@pytest.fixture
def server_factory(home: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(**env: str) -> Serve:
        started.append(serve(home, **env))
        return started[-1]

    yield start
    for s in started:
        s.kill()


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def connect(url: str, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(address(url), timeout=5, source_address=(source, 0))
    sock.setblocking(False)
    return sock


def is_closed(sock: socket.socket) -> bool:
    """Whether the server closed (or answered and closed) this socket; discards what it sent."""
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def trickle(socks: list[socket.socket], sent: dict[socket.socket, int]) -> None:
    """One more byte of a head that never ends, on each socket still open."""
    for sock in socks:
        n = sent.get(sock, 0)
        try:
            sock.send(HEAD[n : n + 1] or b"x")
        except OSError:
            continue
        sent[sock] = n + 1


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def sources(n: int) -> list[str]:
    """Loopback addresses other than 127.0.0.1 (Linux routes all of 127/8 to lo)."""
    found = [f"127.0.0.{i}" for i in range(2, 2 + n)]
    try:
        socket.create_server((found[-1], 0)).close()
    except OSError:
        pytest.skip("this system has no loopback addresses besides 127.0.0.1")
    return found


def authed(url: str) -> float:
    """Seconds an authenticated request took; it must succeed."""
    started = time.monotonic()
    r = httpx.get(url + "/api/tags", headers=AUTH, timeout=5)
    assert r.status_code == 200, r.text
    return time.monotonic() - started


def test_client_key_and_the_file_limit() -> None:
    assert client_key(("203.0.113.9", 5)) == "203.0.113.9"
    assert client_key(("::ffff:203.0.113.9", 5)) == "203.0.113.9"
    assert client_key(("2001:db8:1:2:aaaa::1", 5)) == client_key(("2001:db8:1:2:bbbb::9", 7))
    assert client_key(("2001:db8:1:2::1", 5)) != client_key(("2001:db8:1:3::1", 5))
    assert client_key(None) == ""
    fitted = Limits(max_connections=1000).within(1024)
    assert fitted.max_connections + fitted.backlog + 256 <= 1024
    assert Limits(max_connections=1000).within(1 << 20) == Limits(max_connections=1000)


@pytest.mark.slow
def test_a_slowloris_flood_neither_locks_out_a_keyed_client_nor_stays(
    server_factory: Callable[..., Serve],
) -> None:
    header_timeout, cap, flood = 4.0, 200, 400
    server = server_factory(
        LOCALRUN_HEADER_TIMEOUT=f"{header_timeout:g}s",
        LOCALRUN_MAX_CONNECTIONS=str(cap),
        LOCALRUN_MAX_CONNECTIONS_PER_CLIENT="150",
    )
    addrs = sources(4)
    opened = time.monotonic()
    socks = [connect(server.url, addrs[i % len(addrs)]) for i in range(flood)]
    sent: dict[socket.socket, int] = {}
    trickle(socks, sent)
    # While the flood holds (a byte a second each), the key's holder is answered within 1 s.
    latencies = []
    next_byte = time.monotonic() + 1
    while time.monotonic() < opened + header_timeout - 1:
        latencies.append(authed(server.url))
        if time.monotonic() >= next_byte:
            trickle(socks, sent)
            next_byte += 1
        time.sleep(0.2)
    assert latencies and max(latencies) < 1.0, latencies
    held = [s for s in socks if not is_closed(s)]
    # The cap holds: the flood's newest evicted its oldest (and the probes evicted some more).
    assert 0 < len(held) <= cap, len(held)
    # A head that is still coming a byte a second is cut off at the header timeout, not later.
    wait_until(
        lambda: all(is_closed(s) for s in socks), header_timeout + 3, "the slow sockets to close"
    )
    assert time.monotonic() - opened >= header_timeout - 0.5
    assert server.proc.poll() is None
    assert authed(server.url) < 1.0
    for s in socks:
        s.close()


def test_one_address_holds_at_most_its_share(server_factory: Callable[..., Serve]) -> None:
    server = server_factory(LOCALRUN_MAX_CONNECTIONS_PER_CLIENT="8")
    # Eight idle connections from 127.0.0.1: a ninth (the key's holder) evicts the oldest.
    idle = [connect(server.url) for _ in range(8)]
    time.sleep(0.2)  # all accepted (no deadline to wait for: nothing should close)
    assert not any(is_closed(s) for s in idle)
    assert authed(server.url) < 1.0
    wait_until(lambda: is_closed(idle[0]), 3, "the oldest idle connection to be evicted")
    assert not any(is_closed(s) for s in idle[1:])

    # Eight requests mid-body from another address are never evicted: a ninth gets a 503.
    other = sources(1)[0]
    body = b"x" * 100
    digest = hashlib.sha256(body).hexdigest()
    busy = []
    for _ in range(8):
        sock = connect(server.url, other)
        sock.send(
            f"POST /api/blobs/sha256:{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        busy.append(sock)
    time.sleep(0.3)
    refused = connect(server.url, other)
    refused.setblocking(True)
    refused.settimeout(5)
    answer = refused.recv(65536)
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b'"code": "busy"' in answer and b"retry-after: 1" in answer.lower()
    assert not any(is_closed(s) for s in busy)
    assert authed(server.url) < 1.0  # other addresses are served meanwhile
    for s in [*idle, *busy, refused]:
        s.close()


@pytest.mark.slow
def test_a_stalled_body_is_dropped_and_a_slow_one_is_not(
    server_factory: Callable[..., Serve],
) -> None:
    server = server_factory(LOCALRUN_BODY_TIMEOUT="1s", LOCALRUN_HEADER_TIMEOUT="2s")
    body = b"y" * 10
    digest = hashlib.sha256(body).hexdigest()
    head = (
        f"POST /api/blobs/sha256:{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()

    stalled = connect(server.url)
    stalled.send(head + body[:5])
    started = time.monotonic()
    stalled.setblocking(True)
    stalled.settimeout(10)
    answer = b""
    while chunk := stalled.recv(65536):
        answer += chunk
    assert 0.8 < time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b'"code": "request_timeout"' in answer

    # A byte every 0.4 s: 4 s in all, past the body timeout, but never idle for as long.
    steady = connect(server.url)
    steady.setblocking(True)
    steady.settimeout(10)
    steady.send(head)
    for i in range(len(body)):
        time.sleep(0.4)
        steady.send(body[i : i + 1])
    answer = steady.recv(65536)
    assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.1 201")), answer
    assert server.proc.poll() is None
    stalled.close()
    steady.close()


def test_silent_and_idle_connections_are_closed(server_factory: Callable[..., Serve]) -> None:
    server = server_factory(LOCALRUN_HEADER_TIMEOUT="1s", LOCALRUN_IDLE_TIMEOUT="1s")
    silent = connect(server.url)  # never sends a byte
    kept = connect(server.url)
    kept.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    kept.settimeout(5)
    assert kept.recv(65536).startswith(b"HTTP/1.1 200")  # read, so only the close is left
    kept.setblocking(False)
    opened = time.monotonic()
    wait_until(lambda: is_closed(silent), 5, "a silent connection to be closed")
    wait_until(lambda: is_closed(kept), 5, "an idle kept-alive connection to be closed")
    assert time.monotonic() - opened < 5
    silent.close()
    kept.close()
