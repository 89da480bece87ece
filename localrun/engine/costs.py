"""What a decode of n tokens costs here now, measured by the loop, for speculation to weigh.

A draft of k tokens is decoded in one batch of k + 1 rows; whether it pays depends on what that
batch costs against one token's decode. A fixed table cannot know it: on two quiet cores a
batch of 8 costs about 4.4 one-token decodes (SmolLM2), but when another process takes a core
the thread governor (engine.threads) decodes with one thread and the same batch costs nearly
8; on a GPU it costs about 1.5. So the loop times every llama_decode whose rows are all
generation rows (tokens and drafts, each with logits: what a verification is) and keeps, per
thread count, a running mean of the seconds by batch size. `cost(threads)` fits
`seconds = a + b * n` through those means and gives it in one-token decodes (base, extra),
so the expected-gain rule in engine.speculate follows what a batch costs now; until both a
one-token decode and a batch have been timed at this thread count, the device's prior stands.

A draft's length then depends on the machine's state, not on the request alone: a batch's
logits may differ from one token's in the last bits (llama.cpp on a CPU), so a near tie may
fall the other way on a busy machine, as it already may when the governor changes the thread
count. The answers stay the model's own (every kept token is one the sampler chose).
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

# Batch sizes the means are kept for (a batch of n falls in the first bucket >= n).
_BUCKETS = (1, 2, 3, 4, 6, 9, 17, 33, 65, 129)
_WEIGHT = 0.15  # of a new timing in its bucket's running mean
_MIN_EXTRA = 0.02  # a batch row never costs nothing


@dataclass(frozen=True)
class DecodeCost:
    """What decodes cost, in decodes of one token: a batch of n > 1 tokens costs about
    `base + extra * n`.

    The prior, before anything is timed: measured with llama.cpp on SmolLM2 135M (Q4_1) on two
    CPU cores, every row with logits as a verification has them (scripts/spec_bound.py prints
    the table): 2, 3, 5, 9, 17, 33 and 65 tokens cost 1.9, 2.4, 3.4, 5.2, 8.8, 15.8 and 28.6
    one-token decodes, about 1 + 0.43 n (a small model is compute bound there). On an H100
    (CUDA) they cost 1.15, 1.35, 1.43, 2.83, 3.4 to 4.1, 4.0 to 4.2 and 5.7 to 5.8: the GPU's
    0.9 + 0.08 n is close for up to 5 tokens and for 33 and more, low between, where ggml-cuda
    leaves its matrix-vector kernels (above 8 tokens).
    """

    base: float
    extra: float

    @classmethod
    def for_device(cls, gpu_layers: int) -> DecodeCost:
        return cls(base=0.9, extra=0.08) if gpu_layers > 0 else cls(base=1.0, extra=0.43)


class CostMeter:
    """Running means of a decode's seconds by batch size and thread count; the cost they make.

    Written by the loop's thread (`record`), read by the same thread when a speculator picks a
    draft's length (`cost`); a lock keeps a reader on another thread (a test, `ps`) consistent.
    """

    def __init__(self, prior: DecodeCost) -> None:
        self.prior = prior
        self._lock = threading.Lock()
        # (threads, bucket) -> (mean rows, mean seconds)
        self._means: dict[tuple[int, int], tuple[float, float]] = {}
        self._cache: dict[int, DecodeCost] = {}

    def record(self, rows: int, seconds: float, threads: int) -> None:
        """A decode of `rows` generation rows (all with logits) took `seconds`."""
        if rows <= 0 or seconds <= 0:
            return
        bucket = _BUCKETS[min(bisect.bisect_left(_BUCKETS, rows), len(_BUCKETS) - 1)]
        key = (threads, bucket)
        with self._lock:
            held = self._means.get(key)
            if held is None:
                self._means[key] = (float(rows), seconds)
            else:
                n, s = held
                self._means[key] = (n + _WEIGHT * (rows - n), s + _WEIGHT * (seconds - s))
            self._cache.pop(threads, None)

    def cost(self, threads: int) -> DecodeCost:
        """The cost of a batch now, at `threads` threads (the prior until one is known)."""
        with self._lock:
            known = self._cache.get(threads)
            if known is not None:
                return known
            single = self._means.get((threads, 1))
            batches = [v for (t, b), v in self._means.items() if t == threads and b > 1]
            if single is None or not batches:
                return self.prior
            found = _fit(single, batches)
            self._cache[threads] = found
            return found

    def table(self, threads: int) -> dict[int, float]:
        """Mean seconds by batch size at `threads` threads (for reports)."""
        with self._lock:
            return {int(n): s for (t, _), (n, s) in sorted(self._means.items()) if t == threads}


def _fit(single: tuple[float, float], batches: list[tuple[float, float]]) -> DecodeCost:
    """The least-squares line through the batches' means (and the single decode's), as a
    cost in single decodes."""
    one = single[1]
    points = [single, *batches]
    mean_n = sum(n for n, _ in points) / len(points)
    mean_s = sum(s for _, s in points) / len(points)
    spread = sum((n - mean_n) ** 2 for n, _ in points)
    slope = sum((n - mean_n) * (s - mean_s) for n, s in points) / spread if spread else 0.0
    slope = max(slope, _MIN_EXTRA * one)
    intercept = max(0.0, mean_s - slope * mean_n)
    return DecodeCost(base=intercept / one, extra=slope / one)
