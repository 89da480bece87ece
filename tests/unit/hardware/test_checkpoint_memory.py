"""The checkpoints a slot keeps of a sliding window or a recurrent state, counted in what a
model is planned to take (issue 90: up to 256 MiB a slot were not counted, so
LOCALRUN_NUM_PARALLEL slots of such a model could pass the machine's memory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from localrun.gguf import memory, scan
from localrun.hardware import offload
from localrun.hardware.fit import Fit, checkpoint_bytes

MIB = 1 << 20


def test_a_slots_checkpoints_are_bounded_by_count_and_bytes() -> None:
    kv = 144 * MIB  # one slot's KV at 8192 positions
    assert memory.checkpoint_bytes("positions", 0, 8192, kv) == 0
    # A 512-token window: 9 MiB a checkpoint, 16 of them.
    assert memory.checkpoint_bytes("window", 512, 8192, kv, 16, 256 * MIB) == 144 * MIB
    assert memory.checkpoint_bytes("window", 512, 8192, kv, 16, 64 * MIB) == 64 * MIB
    assert memory.checkpoint_bytes("window", 512, 8192, kv, 0, 256 * MIB) == 0
    # The newest is kept whatever its size.
    assert memory.checkpoint_bytes("recurrent", 0, 8192, 300 * MIB, 16, 256 * MIB) == 300 * MIB
    assert memory.checkpoint_bytes("hybrid", 0, 8192, 10 * MIB, 4, 256 * MIB) == 40 * MIB


@pytest.mark.parametrize(("fixture", "counted"), [("tiny_model", False), ("tiny_swa", True),
                                                  ("tiny_mamba", True)])  # fmt: skip
def test_a_plan_counts_each_slots_checkpoints(
    fixture: str, counted: bool, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    path: Path = request.getfixturevalue(fixture)
    header = scan.scan(path)
    plan = offload.plan_offload(
        header, 4096, requested=None, gpus=[], gpu_offload_supported=False, num_parallel=4
    )
    fit = Fit(scan.inspect(path), 4096, plan, [])
    taken = checkpoint_bytes(fit, 4)
    assert (taken > 0) == counted
    assert taken <= 4 * max(256 * MIB, plan.kv_bytes // 4)
    monkeypatch.setenv("LOCALRUN_CHECKPOINTS", "0")
    assert checkpoint_bytes(fit, 4) == 0
