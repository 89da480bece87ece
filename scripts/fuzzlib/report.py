"""The end of a fuzzer's report (scripts/fuzz/model_building.py and the replays of
fuzzlib.replay): the cases that failed the run (defects) and those that missed a target (misses,
recorded), and its exit status.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["verdict"]


def verdict(rows: Sequence[Any], seconds: float, alive: bool) -> int:
    """Print the defects and the misses of `rows` (each with `item`, `case`, `defect` and
    `misses()`), then the count; 1 when a case had a defect or the server died, else 0."""
    defects = [r for r in rows if r.defect]
    misses = [r for r in rows if r.misses() and not r.defect]
    for label, listed in (("DEFECTS (exit 1)", defects), ("MISSES (recorded, not failed)", misses)):
        print(f"\n{label}: {len(listed)}")
        for r in listed:
            print(f"  [{r.item}] {r.case}: {r.defect or ', '.join(r.misses())}")
    print(f"\n{len(rows)} cases in {seconds:.0f} s; server up afterwards: {alive}")
    return 1 if defects or not alive else 0
