"""How busy the machine was while a benchmark measured: the cores other processes took and the
hypervisor stole (a busy machine makes the ratios unreliable), and waiting for a quiet one.
"""

from __future__ import annotations

import contextlib
import os
import time

import psutil

from benchlib.common import say

__all__ = ["BUSY_CORES", "CpuMeter", "Meter", "physical_cores", "wait_for_quiet"]

# Above this many cores used by other processes, the machine is too busy for the ratios to mean
# much: OpenMP threads spin at barriers, so a stolen core slows every stack by a different factor.
BUSY_CORES = 0.25


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


class CpuMeter:
    """Cores that others took while the bench ran: other processes, and the hypervisor (steal)."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float, float]:
        cpu = psutil.cpu_times()
        # Linux counts guest time inside user time already, so it is left out here.
        busy = sum(getattr(cpu, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))
        # os.times() counts this process and every child it waited for (all of them are).
        own = os.times()
        mine = own.user + own.system + own.children_user + own.children_system
        return time.monotonic(), busy, mine, getattr(cpu, "steal", 0.0)

    def others(self) -> tuple[float, float]:
        """Average cores used by other processes, and stolen by the hypervisor, so far."""
        t0, busy0, mine0, steal0 = self.start
        t1, busy1, mine1, steal1 = self._sample()
        wall = max(t1 - t0, 1e-9)
        return max(0.0, (busy1 - busy0) - (mine1 - mine0)) / wall, (steal1 - steal0) / wall


class Meter:
    """Cores that other processes took during the measured stretches (quiet waits excluded):
    everything busy minus this process and the servers it started (whole process trees of
    `pids`)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.wall = self.others = self.steal = 0.0
        self._start: tuple[float, float, float, float] | None = None

    def _ours(self) -> float:
        own = os.times()
        total = own.user + own.system
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        t = proc.cpu_times()
                        total += t.user + t.system + t.children_user + t.children_system
        return total

    def _sample(self) -> tuple[float, float, float, float]:
        cpu = psutil.cpu_times()
        busy = sum(getattr(cpu, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))
        return time.monotonic(), busy, self._ours(), getattr(cpu, "steal", 0.0)

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> None:
        assert self._start is not None
        t0, busy0, ours0, steal0 = self._start
        t1, busy1, ours1, steal1 = self._sample()
        self.wall += t1 - t0
        self.others += max(0.0, (busy1 - busy0) - (ours1 - ours0))
        self.steal += steal1 - steal0

    def cores(self) -> tuple[float, float]:
        wall = max(self.wall, 1e-9)
        return self.others / wall, self.steal / wall


def wait_for_quiet(limit_s: float, busy_percent: float = 10.0) -> None:
    """Wait (up to `limit_s`) until the machine's CPUs are mostly idle for a few seconds."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        used = psutil.cpu_percent(interval=3.0)
        if used < busy_percent:
            return
        say(f"the machine is busy ({used:.0f}% CPU); waiting for it to quiet down")
    say(f"still busy after {limit_s:.0f} s; measuring anyway")
