"""A seeded sample of GGUF mutants through the real `create` and `run` (scripts/fuzz/gguf_files.py).

Each mutant ends as a one-line refusal by `create`, a one-line error from `run`, or an answer:
never a signal, a traceback, a hang past the timeout or memory past the bound. CI runs
LOCALRUN_FUZZ_COUNT mutants (default 200: every named trigger and a sample of structural ones);
`python scripts/fuzz/gguf_files.py --count 600 --seed N` runs more.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fuzz import gguf_files as fuzz_gguf

from support import PATIENCE_S

pytestmark = [pytest.mark.model, pytest.mark.slow]


def test_no_mutant_crashes_hangs_or_blows_up(tiny_model: Path, tmp_path: Path) -> None:
    count = int(os.environ.get("LOCALRUN_FUZZ_COUNT", "200"))
    outcomes = fuzz_gguf.fuzz(
        tiny_model,
        seed=11,
        count=count,
        jobs=2,
        timeout=PATIENCE_S,
        memory=2 * 2**30,
        home=tmp_path / "home",
    )
    defects = [f"{o.name}: {o.detail}" for o in outcomes if o.stage == "defect"]
    assert not defects, defects
    stages = {o.stage for o in outcomes}
    # The sample exercises both ends: refusals at create, and models that load and answer.
    assert {"create", "answered"} <= stages, stages
    assert len(outcomes) == count
