"""What a decode of n tokens costs here now, measured by the loop, for speculation to weigh.

A draft of k tokens is decoded in one batch of k + 1 rows. Whether it pays depends on what that
batch costs against one token's decode, and a fixed table cannot know it. On two quiet cores a batch
of 8 costs about 4.4 one-token decodes (SmolLM2). When another process takes a core, the thread
governor (engine.threads) decodes with one thread and the same batch costs about 6. On a GPU it
costs about 1.5. So the loop times every llama_decode whose rows are all generation rows (a
verification's), and CostMeter keeps running means per thread count. Its `cost(threads)` is what the
expected-gain rule in engine.speculation.speculator weighs. Until both a one-token decode and a
batch have been timed at a thread count, the device's prior stands.

A draft's length then depends on the machine's state, not on the request alone. A batch's logits may
differ from one token's in the last bits (llama.cpp on a CPU), so a near tie may fall the other way
on a busy machine, as it already may when the governor changes the thread count. The answers stay
the model's own: every kept token is one the sampler chose.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, replace

# Batch sizes the means are kept for (a batch of n falls in the first bucket >= n).
_BUCKETS = (1, 2, 3, 4, 6, 9, 17, 33, 65, 129)
_WEIGHT = 0.15  # of a new timing in its bucket's running mean
_MIN_EXTRA = 0.02  # a batch row never costs nothing


@dataclass(frozen=True)
class DecodeCost:
    """What decodes cost in one-token decodes: a batch of n > 1 costs about `base + extra * n`.

    Before anything is timed, the prior of `for_device` stands; measured batches add `points`.
    """

    base: float
    extra: float
    # Slots generating in the batch a draft would join: with others there a step is taken
    # anyway, so a guess costs its rows alone and a token it saves is worth the share of a step
    # a token takes (engine.speculation.speculator's length).
    streams: int = 1
    # Measured batches, (rows, cost) by rows, rising: between them a batch's cost is read off
    # the lines that join them (and the one-token decode, (1, 1)); past the last, each further
    # row costs `extra`. Without them (the prior) a batch of n costs base + extra * n.
    points: tuple[tuple[float, float], ...] = ()

    @classmethod
    def for_device(cls, gpu_layers: int) -> DecodeCost:
        # The prior was measured with llama.cpp on SmolLM2 135M (Q4_1) on two CPU cores, every
        # row with logits as a verification has them (scripts/measure/lookup_bound.py prints the
        # table). 2, 3, 5, 9, 17, 33 and 65 tokens cost 1.9, 2.4, 3.4, 5.2, 8.8, 15.8 and 28.6
        # one-token decodes: about 1 + 0.43 n (a small model is compute bound there). On an H100
        # (CUDA) they cost 1.15, 1.35, 1.43, 2.83, 3.4 to 4.1, 4.0 to 4.2 and 5.7 to 5.8. The
        # GPU's 0.9 + 0.08 n is close up to 5 tokens and from 33 on, low between, where
        # ggml-cuda leaves its matrix-vector kernels (above 8 tokens).
        return cls(base=0.9, extra=0.08) if gpu_layers > 0 else cls(base=1.0, extra=0.43)

    def batch(self, rows: float) -> float:
        """What a decode of `rows` rows costs, in one-token decodes."""
        if rows <= 1:
            return 1.0
        # Read off the measured means joined by straight lines, not one line through them all:
        # a one-token decode has kernels of its own (the exact runtime's lone-row matrix
        # products and direct attention). So a batch of 2 to 5 rows costs more than the line
        # through batches of 2 to 65 says. On SmolLM2 with the exact runtime, in a server that
        # had drafted long copies, 2, 3, 4 and 5 rows cost 1.79, 2.29, 2.79 and 3.54 one-token
        # decodes, where that line read 1.73, 2.14, 2.54 and 2.95. Prose then drafted one- and
        # two-token guesses that cost more than they saved (scripts/bench/speculative.py: prose
        # at 0.94-0.96x the speed without speculation; 0.98x since, with half the drafts, beside
        # engine.speculation.speculator's margin for a hunch). Past the longest batch timed,
        # each further row costs the fitted line's slope.
        points = self.points
        if not points:
            return self.base + self.extra * rows
        if rows >= points[-1][0]:
            last_n, last_c = points[-1]
            return last_c + self.extra * (rows - last_n)
        i = bisect.bisect_left(points, (rows, 0.0))
        (n0, c0), (n1, c1) = points[i - 1] if i else (1.0, 1.0), points[i]
        return c0 + (c1 - c0) * (rows - n0) / (n1 - n0)


class CostMeter:
    """Running means, by thread count, of a one-token decode's seconds and of batches' costs.

    `cost` turns them into a DecodeCost. The loop's thread writes them (`record`) and reads them
    when a speculator picks a draft's length (`cost`). A lock keeps a reader on another thread (a
    test, a report) consistent.
    """

    def __init__(self, prior: DecodeCost) -> None:
        self.prior = prior
        self._lock = threading.Lock()
        self._single: dict[int, float] = {}  # threads -> mean seconds of a one-token decode
        # (threads, bucket) -> (mean rows, mean cost in one-token decodes)
        self._means: dict[tuple[int, int], tuple[float, float]] = {}
        self._cache: dict[int, DecodeCost] = {}

    def record(self, rows: int, seconds: float, threads: int) -> None:
        """Record that a decode of `rows` generation rows, all with logits, took `seconds`.

        A batch timed before any one-token decode at this thread count has nothing to be weighed
        against, and is left out.
        """
        # A batch is weighed against the one-token decodes of its time, not their mean over the
        # meter's life. Both grow with the context a decode attends to, and they move apart:
        # one-token decodes come every token and follow the answer under way, while a batch of
        # a given size is timed only when a draft that long is made. Kept as seconds, the long
        # batches of a long answer (an edited file) were set against the one-token decodes of
        # the shorter answers after it. On one thread of a busy CPU, 35 rows read 31 one-token
        # decodes, where weighed against the decodes of their time, batches of 21 and 58 rows
        # cost 16 and 35. No draft paid any more, and none was made that could have corrected
        # it (scripts/bench/speculative.py with a core kept busy: quote 0.96x the speed without
        # speculation, 1.11x since).
        if rows <= 0 or seconds <= 0:
            return
        with self._lock:
            single = self._single.get(threads)
            if rows == 1:
                self._single[threads] = _mean(single, seconds)
                return
            if single is None:
                return
            bucket = _BUCKETS[min(bisect.bisect_left(_BUCKETS, rows), len(_BUCKETS) - 1)]
            n, c = self._means.get((threads, bucket), (None, None))
            self._means[threads, bucket] = (_mean(n, rows), _mean(c, seconds / single))
            self._cache.pop(threads, None)

    def cost(self, threads: int) -> DecodeCost:
        """The cost of a batch now, at `threads` threads (the prior until one is known)."""
        with self._lock:
            known = self._cache.get(threads)
            if known is not None:
                return known
            batches = sorted(v for (t, _), v in self._means.items() if t == threads)
            if not batches:
                return self.prior
            found = replace(_fit(batches), points=_rising(batches))
            self._cache[threads] = found
            return found

    def table(self, threads: int) -> dict[int, float]:
        """What batches cost at `threads` threads, in one-token decodes, by size, for reports.

        Entry 1 is a one-token decode's mean seconds.
        """
        with self._lock:
            table = {int(n): c for (t, _), (n, c) in sorted(self._means.items()) if t == threads}
            if threads in self._single:
                table[1] = self._single[threads]
            return dict(sorted(table.items()))


def _mean(held: float | None, value: float) -> float:
    return float(value) if held is None else held + _WEIGHT * (value - held)


def _rising(batches: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """The means by rows, each row costing at least _MIN_EXTRA more than the one before.

    It starts from a one-token decode's 1. Two means timed at different depths may cross, and a flat
    stretch would make its rows look free.
    """
    out: list[tuple[float, float]] = []
    last_n, last_c = 1.0, 1.0
    for n, c in batches:
        if n > last_n:
            last_n, last_c = n, max(c, last_c + _MIN_EXTRA * (n - last_n))
            out.append((last_n, last_c))
    return tuple(out)


def _fit(batches: list[tuple[float, float]]) -> DecodeCost:
    """The least-squares line through the batches' means and the one-token decode (1, 1)."""
    points = [(1.0, 1.0), *batches]
    mean_n = sum(n for n, _ in points) / len(points)
    mean_c = sum(c for _, c in points) / len(points)
    spread = sum((n - mean_n) ** 2 for n, _ in points)
    slope = sum((n - mean_n) * (c - mean_c) for n, c in points) / spread if spread else 0.0
    slope = max(slope, _MIN_EXTRA)
    intercept = max(0.0, mean_c - slope * mean_n)
    return DecodeCost(base=intercept, extra=slope)
