"""The figures in the benchmarks' reports: medians of samples that may be missing, ratios that
may have no reference, and a dash for a number nobody measured.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["fmt", "median", "ratio"]


def median(values: Sequence[float | None]) -> float | None:
    """The median of the values measured (None left out); None when there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(value: float | None, ref: float | None) -> float | None:
    """value / ref; None when either is missing (or the reference is 0)."""
    return None if value is None or not ref else value / ref


def fmt(value: float | None, digits: int = 1) -> str:
    """`value` with `digits` decimals, or "-" when it is missing."""
    return "-" if value is None else f"{value:.{digits}f}"
