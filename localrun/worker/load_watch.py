"""A watchdog over llama.cpp while it loads a model: a time limit and a memory bound.

llama.cpp trusts what a model file says; a file that passes every header check can still make it
spin or allocate without end while loading. The runner loads inside `LoadWatch`. A thread polls
the process's resident memory and the clock. On a breach it reports one error naming the model
and ends the process at once, since a native call cannot be interrupted any other way. ctypes
drops the GIL while llama.cpp runs, so the thread keeps running during the load.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

from localrun.errors import LocalrunError, ModelLoadError

POLL_S = 0.05
GIB = 1 << 30


def load_limit(estimate: int, available: int) -> int:
    """The memory a load may reach: twice the planned size plus 1 GiB, within what is free."""
    return max(GIB // 2, min(2 * estimate + GIB, available))


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class LoadWatch:
    """Stop a load that runs past `timeout_s` or grows past `limit` bytes of resident memory.

    `breach` gets the error and must end the process (it does not return); it is called from
    the watchdog's thread.
    """

    def __init__(
        self,
        name: str,
        *,
        limit: int,
        timeout_s: float,
        breach: Callable[[LocalrunError], None],
        rss: Callable[[], int] = _rss,
    ) -> None:
        self.name = name
        self.limit = limit
        self.timeout_s = timeout_s
        self.breach = breach
        self.rss = rss
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="load-watch", daemon=True)

    def __enter__(self) -> LoadWatch:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self._done.wait(POLL_S):
            self.peak = max(self.peak, self.rss())
            if self.peak > self.limit:
                self.breach(
                    ModelLoadError(
                        f"{self.name} used over {self.limit / GIB:.1f} GiB of memory while "
                        "loading, far more than its size needs, and was stopped",
                        hint="the model file is probably damaged or hostile: remove it, or "
                        "pull or create it again from a trusted source",
                    )
                )
                return
            if time.monotonic() > deadline:
                self.breach(
                    ModelLoadError(
                        f"{self.name} did not finish loading in {self.timeout_s:g} s and was "
                        "stopped",
                        hint="a slow disk may need a longer LOCALRUN_LOAD_TIMEOUT; otherwise "
                        "the model file is probably damaged",
                    )
                )
                return
