"""How many threads llama.cpp decodes with: the cores that other processes leave idle.

llama.cpp's CPU threads meet at a barrier after every operation of the graph (hundreds per token)
and wait there spinning. When another process keeps a core busy, a thread that lost its core holds
the others up for a scheduler slice at each barrier, and the spinners burn the time the late one
needs. On 2 cores with one kept busy, 2 threads decoded SmolLM2 at 1 to 24 tok/s where 1 thread did
57, and llama-server and llama-bench fell as far (scripts/bench/busy.py). So, unless num_thread is
set, the engine looks every INTERVAL_S at how much CPU the other processes used since its last look
(the system's busy time less this process's). It decodes with the cores they left: at least one, at
most the cores it was given. It drops a thread at once and takes one back only when two looks in a
row allow it, so a load that comes and goes does not make it flap. Looks are made as the engine
decodes; `Governor.pause` says why a look after idle time starts afresh.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from localrun.engine.library.native import lc

INTERVAL_S = 0.25
# A core counts as taken by others once they use more than this much of it (in cores).
SLACK = 0.35


def _busy_seconds() -> tuple[float, float]:
    """CPU seconds spent so far by the whole system and by this process.

    The system's are busy time, not idle or waiting on I/O; this process's are all its threads'.
    """
    import psutil

    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    # guest time is counted in user already (Linux); steal is time the CPU was not ours.
    total = sum(
        getattr(times, name) for name in times._fields if name not in ("guest", "guest_nice")
    )
    mine = _this_process().cpu_times()
    return total - idle, mine.user + mine.system


@functools.cache
def _this_process() -> Any:
    import psutil

    return psutil.Process()


class Governor:
    """The thread count to decode with now; `most` when it may not adapt (num_thread set)."""

    def __init__(
        self,
        most: int,
        *,
        adaptive: bool,
        logical: int | None = None,
        sample: Callable[[], tuple[float, float]] = _busy_seconds,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import psutil

        self.most = max(1, most)
        self.adaptive = adaptive and self.most > 1
        self.logical = logical or psutil.cpu_count(logical=True) or self.most
        self._sample = sample
        self._clock = clock
        self._last: tuple[float, float, float] | None = None  # (when, system busy, ours)
        self._allowed_up = False
        self.threads = self.most  # what the contexts were made with, and run with now
        self.others = 0.0  # logical CPUs the other processes kept busy in the last window

    def current(self) -> int:
        """Threads for the next decode, looked at again at most every INTERVAL_S.

        After a pause the first look comes at once.
        """
        if not self.adaptive:
            return self.most
        now = self._clock()
        if self._last is not None and now - self._last[0] < INTERVAL_S:
            return self.threads
        busy, mine = self._sample()
        if self._last is not None:
            when, busy_before, mine_before = self._last
            others = max(0.0, (busy - busy_before) - (mine - mine_before)) / (now - when)
            self.others = others
            # Others' busy time is in logical CPUs; decode threads go one per physical core.
            free = self.most - others * self.most / self.logical
            fits = max(1, min(self.most, int(free + SLACK)))
            if fits < self.threads:
                self.threads, self._allowed_up = fits, False
            elif fits > self.threads:
                if self._allowed_up:
                    self.threads, self._allowed_up = self.threads + 1, False
                else:
                    self._allowed_up = True
            else:
                self._allowed_up = False
        self._last = (now, busy, mine)
        return self.threads

    def idle(self) -> bool:
        """Whether a logical CPU is left idle while the batch decodes: work beside it is free.

        It counts the decode's threads and the other processes, as last looked at.
        """
        return self.logical - self.threads - self.others >= 1 - SLACK

    def pause(self) -> None:
        """The engine stops decoding for now: the next look starts a new window, keeping the count.

        A window spanning the time this runner was idle shows what others did then, which says
        little about now: another runner answering the client's previous request, or the client's
        own work between two calls. Judged on such windows, a server beside another began each
        answer on one thread for its first half second, over a tenth of a 256-token answer. (Traced
        through scripts/bench/speculative.py: the first look of a request read 1.6 to 1.9 cores used
        by others, the next ones 0 to 0.1.) A load still there is seen INTERVAL_S into the answer.
        """
        self._last, self._allowed_up = None, False

    def apply(self, *contexts: Any) -> None:
        """Set the current count on llama.cpp contexts (generation and batch threads alike)."""
        before = self.threads
        threads = self.current()
        if threads == before:
            return
        for ctx in contexts:
            if ctx:
                lc.llama_set_n_threads(ctx, threads, threads)
