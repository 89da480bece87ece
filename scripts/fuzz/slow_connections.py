"""Flood a running localrun server with slow connections; report what it holds and who it serves.

Each flood socket sends a request head one byte every --interval seconds and never finishes it
(the slowloris attack: heads are read before the API key is checked). Meanwhile a probe sends an
authenticated request (GET /api/tags with LOCALRUN_API_KEY) on a new connection every
--probe-every seconds and times the answer. Each second a line shows how many flood sockets are
open, how many the server closed, and the probe's latency; the summary answers "how many slow
connections does the server hold while still answering an authenticated request within 1 s".

    python scripts/fuzz/slow_connections.py http://127.0.0.1:11435 --connections 1100 --duration 30
    python scripts/fuzz/slow_connections.py URL --sources 8     # spread over 127.0.0.2-9
    (per-client caps) python scripts/fuzz/slow_connections.py URL --no-reconnect  # open once;
    watch the header timeout

Closed flood sockets are reopened at once unless --no-reconnect, as an attacker would. The
soft limit on open files is raised to the hard one for the flood's own sockets.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.client
import json
import os
import selectors
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

HEAD = b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\nX-Pad: "


@dataclass
class Slow:
    sock: socket.socket
    opened: float
    connected: bool = False
    sent: int = 0


@dataclass
class Tally:
    opened: int = 0
    closed_by_server: int = 0
    failed_to_connect: int = 0
    held_ages: list[float] = field(default_factory=list)  # age at close, for closed ones


def raise_nofile() -> int:
    try:
        import resource
    except ImportError:
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return int(soft)


class Flood:
    """Keeps `count` slow connections open (reopening closed ones when `reconnect`)."""

    def __init__(
        self, host: str, port: int, count: int, sources: list[str], reconnect: bool
    ) -> None:
        self.address = (host, port)
        self.count = count
        self.sources = sources
        self.reconnect = reconnect
        self.sel = selectors.DefaultSelector()
        self.socks: dict[socket.socket, Slow] = {}
        self.tally = Tally()
        self.next_source = 0

    def open_one(self) -> None:
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        if self.sources:
            sock.bind((self.sources[self.next_source % len(self.sources)], 0))
            self.next_source += 1
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            self.tally.failed_to_connect += 1
            return
        self.socks[sock] = Slow(sock, time.monotonic())
        self.sel.register(sock, selectors.EVENT_WRITE)
        self.tally.opened += 1

    def fill(self) -> None:
        while len(self.socks) < self.count:
            try:
                self.open_one()
            except OSError as exc:  # out of ports or files on this side
                print(f"cannot open more sockets: {exc}", file=sys.stderr)
                self.count = len(self.socks)
                return

    def drop(self, sock: socket.socket, by_server: bool) -> None:
        slow = self.socks.pop(sock)
        self.sel.unregister(sock)
        sock.close()
        if by_server and slow.connected:
            self.tally.closed_by_server += 1
            self.tally.held_ages.append(time.monotonic() - slow.opened)
        elif not slow.connected:
            self.tally.failed_to_connect += 1

    def poll(self, timeout: float) -> None:
        for key, events in self.sel.select(timeout):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            slow = self.socks.get(sock)
            if slow is None:
                continue
            if not slow.connected and events & selectors.EVENT_WRITE:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self.drop(sock, by_server=False)
                    continue
                slow.connected = True
                self.sel.modify(sock, selectors.EVENT_READ)
                self.send_byte(slow)
            elif events & selectors.EVENT_READ:
                # EOF, a reset, or an answer (408/503): the server is done with it either way.
                with contextlib.suppress(OSError):
                    sock.recv(65536)
                self.drop(sock, by_server=True)
        if self.reconnect:
            self.fill()

    def send_byte(self, slow: Slow) -> None:
        byte = HEAD[slow.sent : slow.sent + 1] or b"x"
        try:
            slow.sock.send(byte)
            slow.sent += 1
        except OSError:
            self.drop(slow.sock, by_server=True)

    def trickle(self) -> None:
        for slow in list(self.socks.values()):
            if slow.connected:
                self.send_byte(slow)

    def held(self) -> list[Slow]:
        return [s for s in self.socks.values() if s.connected]

    def close(self) -> None:
        for sock in list(self.socks):
            self.sel.unregister(sock)
            sock.close()
        self.socks.clear()


class Probe(threading.Thread):
    """An authenticated request on a new connection every `every` seconds, timed."""

    def __init__(self, host: str, port: int, key: str, every: float) -> None:
        super().__init__(daemon=True)
        self.host, self.port, self.key, self.every = host, port, key, every
        self.results: list[tuple[float, float | None, str]] = []  # (when, seconds, outcome)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
                conn.request("GET", "/api/tags", headers=headers)
                status = conn.getresponse().status
                conn.close()
                self.results.append((started, time.monotonic() - started, str(status)))
            except OSError as exc:
                self.results.append((started, None, type(exc).__name__))
            self.stop.wait(max(0.0, self.every - (time.monotonic() - started)))


def server_connections(pid: int, port: int) -> int | None:
    """Established connections the server process holds on its port (None without psutil)."""
    try:
        import psutil
    except ImportError:
        return None
    conns = psutil.Process(pid).net_connections(kind="tcp")
    return sum(1 for c in conns if c.status == "ESTABLISHED" and c.laddr and c.laddr[1] == port)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default="http://127.0.0.1:11435")
    parser.add_argument("--connections", type=int, default=1100)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between bytes")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to flood")
    parser.add_argument("--probe-every", type=float, default=0.5)
    parser.add_argument("--api-key", default=os.environ.get("LOCALRUN_API_KEY", ""))
    parser.add_argument(
        "--sources", type=int, default=0, help="bind flood sockets to 127.0.0.2..N+1"
    )
    parser.add_argument("--no-reconnect", dest="reconnect", action="store_false")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--pid", type=int, help="the server's process id: count its open connections (psutil)"
    )
    args = parser.parse_args()

    nofile = raise_nofile()
    if nofile and nofile < args.connections + 64:
        print(f"only {nofile} open files allowed here; raise `ulimit -Hn`", file=sys.stderr)
        return 2
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 11435
    sources = [f"127.0.0.{i}" for i in range(2, 2 + args.sources)]

    flood = Flood(host, port, args.connections, sources, args.reconnect)
    probe = Probe(host, port, args.api_key, args.probe_every)
    flood.fill()
    began = time.monotonic()
    probe.start()
    samples: list[int] = []
    server_samples: list[int] = []
    next_byte = next_report = began
    while (now := time.monotonic()) < began + args.duration:
        flood.poll(max(0.0, min(next_byte, next_report) - now))
        now = time.monotonic()
        if now >= next_byte:
            flood.trickle()
            next_byte += args.interval
        if now >= next_report:
            held = flood.held()
            samples.append(len(held))
            on_server = server_connections(args.pid, port) if args.pid else None
            if on_server is not None:
                server_samples.append(on_server)
            oldest = max((now - s.opened for s in held), default=0.0)
            recent = [r for r in probe.results if r[0] >= now - 1.0]
            lat = ", ".join(f"{r[1] * 1000:.0f}ms" if r[1] is not None else r[2] for r in recent)
            print(
                f"t={now - began:5.1f}s held={len(held):5d} oldest={oldest:5.1f}s "
                f"closed_by_server={flood.tally.closed_by_server:6d} "
                + (f"server_open={on_server} " if on_server is not None else "")
                + f"probe=[{lat}]",
                flush=True,
            )
            next_report += 1.0
    probe.stop.set()
    probe.join(15)
    flood.close()

    answered = [r for r in probe.results if r[1] is not None and r[2] == "200"]
    latencies = sorted(r[1] for r in answered if r[1] is not None)
    summary = {
        "connections": args.connections,
        "sources": args.sources or 1,
        "reconnect": args.reconnect,
        "opened": flood.tally.opened,
        "closed_by_server": flood.tally.closed_by_server,
        "failed_to_connect": flood.tally.failed_to_connect,
        "held_max": max(samples, default=0),
        "held_median": int(statistics.median(samples)) if samples else 0,
        "server_open_max": max(server_samples, default=None),
        "held_age_at_close_max_s": round(max(flood.tally.held_ages, default=0.0), 2),
        "probes": len(probe.results),
        "probes_ok": len(answered),
        "probes_within_1s": sum(1 for t in latencies if t < 1.0),
        "probe_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "probe_max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for name, value in summary.items():
            print(f"{name:26} {value}")
    return 0 if answered and len(answered) == len(probe.results) else 1


if __name__ == "__main__":
    sys.exit(main())
