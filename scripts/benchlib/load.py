"""A busy machine, made on purpose: bounded busy loops beside a measurement, one process per
core kept busy, each ending by itself after `max_s` (so a benchmark that dies leaves none)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

BUSY_LOOP = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end:\n    pass\n"


@contextmanager
def busy(cores: int, max_s: float) -> Iterator[None]:
    """`cores` processes that each keep one core busy until the block ends (or max_s)."""
    loops = [
        subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(s=max_s)]) for _ in range(cores)
    ]
    try:
        time.sleep(0.5 if loops else 0)  # let the scheduler see them
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
