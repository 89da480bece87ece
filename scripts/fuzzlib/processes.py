"""The processes a fuzzer drives and what it watches in them: a real `localrun serve` on an
ephemeral port (`serving`), `localrun` commands (`cli`, `timed_cli`), the peak memory of a
process tree (`Peak`), the most of any measure polled on a thread (`Most`; `jobs` and
`threads` count a server's job processes and their threads), and the slowest /api/version
(`Prober`: the event loop must stay free).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuzzlib.checks import tree_rss

__all__ = ["Done", "Most", "Peak", "Prober", "cli", "jobs", "serving", "threads", "timed_cli"]

JOB_MODULE = "localrun.server.ollama.jobs"


class Most:
    """The largest value `measure` gave, polled on a thread."""

    def __init__(self, measure: Callable[[], float], every_s: float = 0.05) -> None:
        self.measure, self.every_s, self.value = measure, every_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.value = max(self.value, self.measure())
            self._stop.wait(self.every_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.value


class Peak(Most):
    """The peak RSS of a process and its children, polled on a thread."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        super().__init__(lambda: tree_rss(pid), every_s)

    def stop(self) -> int:
        return int(super().stop())


class Prober:
    """Times /api/version every 0.2 s on a thread: the event loop must stay free."""

    def __init__(self, client: Any) -> None:
        self.client, self.worst = client, 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)
        self._thread.start()

    def _probe(self) -> None:
        import httpx

        while not self._done.is_set():
            started = time.monotonic()
            try:
                self.client.get("/api/version", timeout=30)
                self.worst = max(self.worst, time.monotonic() - started)
            except httpx.HTTPError:
                self.worst = 30.0
            self._done.wait(0.2)

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.worst


def _children(pid: int) -> list[Any]:
    import psutil

    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def jobs(pid: int) -> float:
    """How many store job processes (localrun.server.ollama.jobs) server `pid` runs now."""
    import psutil

    count = 0
    for child in _children(pid):
        with contextlib.suppress(psutil.Error):
            count += JOB_MODULE in child.cmdline()
    return count


def threads(pid: int) -> float:
    """The threads of all the children of `pid` (its jobs and runners) together."""
    import psutil

    total = 0
    for child in _children(pid):
        with contextlib.suppress(psutil.Error):
            total += child.num_threads()
    return total


# -- the processes -----------------------------------------------------------------------------


def cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localrun", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Done:
    """How a `localrun` command ended: its exit code (None: killed past its time), output,
    seconds, and the peak RSS of its process tree."""

    code: int | None
    stdout: str
    stderr: str
    seconds: float
    peak: int


def timed_cli(
    env: dict[str, str], *args: str, timeout: float = 120, cwd: Path | None = None
) -> Done:
    """Run `localrun ARGS`, timing it and watching its tree's memory; killed past `timeout`."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "localrun", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = Peak(proc.pid)
    code: int | None
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        import psutil

        for child in _children(proc.pid):  # a conversion's helpers, if any
            with contextlib.suppress(psutil.Error):
                child.kill()
        proc.kill()
        stdout, stderr = proc.communicate()
        code = None
    return Done(code, stdout, stderr, time.monotonic() - started, peak.stop())


@contextlib.contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "localrun", "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    try:
        assert proc.stdout is not None
        found = re.search(r"http://\S+", proc.stdout.readline())
        if not found:
            raise SystemExit("localrun serve did not start")
        yield found.group(0), proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
