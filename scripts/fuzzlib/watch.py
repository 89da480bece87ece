"""What a fuzzer watches in a running server while a case runs: the peak memory of each part of
its process tree (the server itself, its runners, its store jobs), the slowest GET
/api/version, and the longest pause of another client's stream (`Watch`).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from fuzzlib.processes import JOB_MODULE

__all__ = ["Parts", "Seen", "Watch"]

RUNNER_MODULE = "localrun.worker"
MB = 1 << 20


@dataclass
class Seen:
    """What one case did to the server: peaks above idle (MB), the slowest /api/version and
    the longest pause of the other stream (s); None where nothing was measured."""

    server_mb: float = 0.0
    runner_mb: float = 0.0
    job_mb: float = 0.0
    version_s: float = 0.0
    pause_s: float | None = None
    cuts: int = 0  # the other client's streams that ended without their last line, or in error


class Parts:
    """The RSS of a server's parts: itself, its runners (and their children), its jobs."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)

    def now(self) -> tuple[int, int, int]:
        import psutil

        server = runner = job = 0
        with contextlib.suppress(psutil.Error):
            server = self.root.memory_info().rss
            for child in self.root.children():
                with contextlib.suppress(psutil.Error):
                    family = [child, *child.children(recursive=True)]
                    rss = sum(p.memory_info().rss for p in family)
                    line = " ".join(child.cmdline())
                    if JOB_MODULE in line:
                        job = max(job, rss)  # one job's own peak: each has the cap
                    elif RUNNER_MODULE in line:
                        runner += rss
                    else:
                        server += rss  # the server's checkers
        return server, runner, job


class Watch:
    """Watches a server while a case runs; `stop()` gives what was seen. With `stream`, a
    request body streamed again and again on /api/generate meanwhile (another client's)."""

    def __init__(self, client: Any, pid: int, stream: dict[str, Any] | None = None) -> None:
        self.client, self.parts = client, Parts(pid)
        self.idle = self.parts.now()
        self.peak = list(self.idle)
        self.version_s, self.pause_s = 0.0, None if stream is None else 0.0
        self.cuts = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll, daemon=True),
                         threading.Thread(target=self._probe, daemon=True)]  # fmt: skip
        if stream is not None:
            self._threads.append(threading.Thread(target=self._stream, args=(stream,), daemon=True))
        for thread in self._threads:
            thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            now = self.parts.now()
            self.peak = [max(a, b) for a, b in zip(self.peak, now, strict=True)]
            self._stop.wait(0.05)

    def _probe(self) -> None:
        import httpx

        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.client.get("/api/version", timeout=30)
                took = time.monotonic() - started
            except httpx.HTTPError:
                took = 30.0
            self.version_s = max(self.version_s, took)
            self._stop.wait(0.1)

    def _stream(self, body: dict[str, Any]) -> None:
        import httpx

        while not self._stop.is_set():
            ended = False
            try:
                with self.client.stream("POST", "/api/generate", json=body, timeout=60) as answer:
                    last = None
                    for line in answer.iter_lines():
                        now = time.monotonic()
                        if last is not None and self.pause_s is not None:
                            self.pause_s = max(self.pause_s, now - last)
                        last = now
                        event = json.loads(line) if line else {}
                        ended = bool(event.get("done")) and "error" not in event
                        if self._stop.is_set() or ended or "error" in event:
                            break
            except httpx.HTTPError:
                self.pause_s = 60.0
            if not ended and not self._stop.is_set():
                self.cuts += 1

    def stop(self) -> Seen:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        above = [max(0, p - i) / MB for p, i in zip(self.peak, self.idle, strict=True)]
        return Seen(above[0], above[1], above[2], self.version_s, self.pause_s, self.cuts)
