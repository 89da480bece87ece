"""The split a model gets from its RPC workers' memory (hardware.split), and how workers are
named (LOCALRUN_WORKERS). Workers asked over sockets are in tests/integration/hardware/; real
ones in tests/system/test_workers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from localrun.gguf.scan import scan
from localrun.hardware import fit, split
from localrun.hardware.system import GPU
from localrun.hardware.workers import Device, Worker
from localrun.settings import parse

GiB = 2**30


def test_workers_are_parsed_as_host_port_once_each() -> None:
    assert parse.parse_endpoints(" 10.0.0.2:50052, box:1,10.0.0.2:50052,") == (
        "10.0.0.2:50052",
        "box:1",
    )
    bad_names = ("a..b:1", ".lan:1", f"{'x' * 64}.lan:1", f"{'a.' * 130}b:1", "a%b:1")
    for bad in ("10.0.0.2", ":50052", "[::1]:50052", "box:0", "box:port", "a b:1", *bad_names):
        with pytest.raises(ValueError):
            parse.parse_endpoints(bad)


def _worker(endpoint: str, *free: int) -> Worker:
    return Worker(endpoint, "7.0.0", tuple(Device(f, f) for f in free))


def test_the_layers_are_split_by_each_party_s_memory(smollm2_path: str) -> None:
    header = scan(smollm2_path)
    plan = split.plan_split(
        header,
        2048,
        workers=[_worker("a:1", 8 * GiB), _worker("b:2", 4 * GiB)],
        gpus=[],
        local_bytes=4 * GiB,
    )
    shared = plan.split
    assert shared is not None
    # 30 blocks and the output layer: 15.5, 7.75 and 7.75 by memory, rounded by largest
    # remainder; the CPU's are the first
    assert plan.total_layers == 31 and shared.tensor_split == (15.0, 8.0)
    assert (
        plan.n_gpu_layers == 23 and shared.remote_layers == 23 and shared.workers == ("a:1", "b:2")
    )
    assert [s.split(":")[0] for s in shared.shares] == ["a", "b", "this machine"]
    assert shared.shares[0].startswith("a:1: 15 layers,") and "8 layers" in shared.shares[2]
    assert plan.gpu is None and plan.vram_bytes == 0 and not plan.warnings
    assert 0 < shared.remote_bytes < plan.ram_bytes + shared.remote_bytes
    alone = split.plan_split(header, 2048, workers=[], gpus=[], local_bytes=GiB)
    assert alone.n_gpu_layers == 0 and plan.ram_bytes < alone.ram_bytes


def test_with_a_gpu_here_the_cpu_keeps_no_layer_and_a_small_worker_is_warned_of(
    smollm2_path: str, tmp_path: Path
) -> None:
    header = scan(smollm2_path)
    gpu = GPU(0, "Test GPU", "cuda", 24 * GiB, 24 * GiB)
    plan = split.plan_split(
        header, 2048, workers=[_worker("a:1", 24 * GiB)], gpus=[gpu], local_bytes=64 * GiB
    )
    assert plan.n_gpu_layers == plan.total_layers == 31 and plan.gpu == gpu
    shared = plan.split
    assert shared is not None
    assert sum(shared.tensor_split) == 31 and shared.remote_layers == shared.tensor_split[0] > 10
    assert plan.vram_bytes > 0 and "this machine: 0 layers" in shared.shares[-1]
    # A projector runs on the CPU beside a split (engine.batch): counted in RAM, not on the GPU.
    projector = tmp_path / "mmproj.gguf"
    projector.write_bytes(bytes(4096))
    vram, ram = plan.vram_bytes, plan.ram_bytes
    fit._plan_projector(projector, plan)
    assert plan.vram_bytes == vram and plan.ram_bytes == ram + 5120
    tiny = split.plan_split(header, 2048, workers=[_worker("a:1", 1024)], gpus=[], local_bytes=1024)
    assert any("a:1 holds" in w for w in tiny.warnings)


def test_with_no_memory_reported_every_layer_stays_here(smollm2_path: str) -> None:
    plan = split.plan_split(
        scan(smollm2_path), 2048, workers=[_worker("a:1", 0)], gpus=[], local_bytes=0
    )
    shared = plan.split
    assert shared is not None
    assert plan.n_gpu_layers == 0 and shared.tensor_split == (0.0,) and shared.remote_bytes == 0


def test_no_more_devices_than_llama_cpp_takes(smollm2_path: str) -> None:
    """llama.cpp reads tensor_split for 16 devices: a worker past them is left out, said."""
    many = [_worker(f"w{n}:1", GiB) for n in range(15)] + [_worker("two:1", GiB, GiB)]
    plan = split.plan_split(
        scan(smollm2_path), 2048, workers=[*many, _worker("one:1", GiB)], gpus=[], local_bytes=GiB
    )
    shared = plan.split
    assert shared is not None and len(shared.tensor_split) == split.MAX_DEVICES
    assert shared.workers == (*(f"w{n}:1" for n in range(15)), "one:1")
    assert plan.warnings == [
        "worker two:1 is left out: llama.cpp takes at most 16 devices in one load"
    ]
