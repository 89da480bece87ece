"""A model's layers split across RPC workers and this machine, in proportion to their memory.

llama.cpp keeps the first layers that are not offloaded on the CPU, and splits the offloaded ones
over its devices in order by `tensor_split`: the RPC workers' devices first, then this machine's
GPUs. Each share here is the layers' part of the memory every party reports (a worker's devices,
this machine's GPUs less their safety margin, or, with no GPU here, this machine's RAM: a CPU
worker reports its whole RAM, and so this machine's is counted whole),
whole layers by largest remainder. The plan says each share and what it holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from localrun.gguf.header import Header
from localrun.hardware import offload
from localrun.hardware.offload import OffloadPlan, Split
from localrun.hardware.system import GPU
from localrun.hardware.workers import Worker

HERE = "this machine"
# llama_max_devices(): llama.cpp reads a load's tensor_split for this many devices at most.
MAX_DEVICES = 16


def plan_split(
    header: Header,
    num_ctx: int,
    *,
    workers: Sequence[Worker],
    gpus: Sequence[GPU],
    local_bytes: int,
    num_parallel: int = 1,
    num_batch: int = offload.DEFAULT_NUM_BATCH,
) -> OffloadPlan:
    """Split the model over `workers`, this machine's `gpus`, and its CPU where it has no GPU."""
    s = offload.sizes(header, num_ctx, num_parallel, num_batch)
    names: list[str] = []
    memory: list[int] = []
    workers, left_out = _within_devices(workers, len(gpus))
    for worker in workers:
        for index, device in enumerate(worker.devices):
            several = len(worker.devices) > 1
            names.append(f"{worker.endpoint}#{index}" if several else worker.endpoint)
            memory.append(device.free_bytes)
    for gpu in gpus:
        names.append(f"GPU {gpu.index} ({gpu.name})")
        margin = offload.safety_margin(gpu.free_bytes, gpu.backend)
        memory.append(max(0, gpu.free_bytes - margin))
    local_cpu = not gpus
    if local_cpu:  # a CPU worker reports its whole RAM: this machine's is counted alike
        memory.append(max(0, local_bytes))
    counts = _proportional(s.total_layers, memory)
    cpu_layers = counts.pop() if local_cpu else 0
    per_layer = [size + s.kv_layer for size in s.layers] + [s.output + s.tied]
    shares, warnings, start, remote = [], list(left_out), cpu_layers, 0
    for index, (name, count, free) in enumerate(zip(names, counts, memory, strict=False)):
        held = sum(per_layer[start : start + count])
        start += count
        remote += held if index < len(names) - len(gpus) else 0
        shares.append(f"{name}: {count} layers, {_size(held)}")
        if held > free:
            warnings.append(f"{name} holds {_size(held)} of the model, more than its {_size(free)}")
    offloaded = s.total_layers - cpu_layers
    ram = offload.ram(s, offloaded)
    shares.append(f"{HERE}: {cpu_layers} layers, {_size(ram)}")
    on_gpus = sum(per_layer[s.total_layers - sum(counts[len(names) - len(gpus) :]) :])
    endpoints = tuple(w.endpoint for w in workers)
    reason = f"split across {len(endpoints)} worker{'s' if len(endpoints) != 1 else ''} and "
    reason += f"{HERE}, by memory: " + "; ".join(shares)
    return OffloadPlan(
        n_gpu_layers=offloaded,
        total_layers=s.total_layers,
        vram_bytes=on_gpus if gpus else 0,
        ram_bytes=ram,
        kv_bytes=s.kv_bytes,
        gpu=max(gpus, key=lambda g: g.free_bytes) if gpus else None,
        reason=reason,
        warnings=warnings,
        split=Split(
            workers=endpoints,
            tensor_split=tuple(float(c) for c in counts),
            shares=tuple(shares),
            remote_layers=sum(counts[: len(names) - len(gpus)]),
            remote_bytes=remote,
        ),
    )


def _within_devices(workers: Sequence[Worker], gpus: int) -> tuple[list[Worker], list[str]]:
    """The workers whose devices llama.cpp can take beside `gpus` GPUs; a line for each other."""
    kept: list[Worker] = []
    left: list[str] = []
    room = MAX_DEVICES - gpus
    for worker in workers:
        if len(worker.devices) <= room:
            kept.append(worker)
            room -= len(worker.devices)
        else:
            left.append(
                f"worker {worker.endpoint} is left out: llama.cpp takes at most {MAX_DEVICES} "
                "devices in one load"
            )
    return kept, left


def _proportional(total: int, weights: Sequence[int]) -> list[int]:
    """`total` whole layers shared out by `weights`, largest remainder first."""
    whole = sum(weights)
    if whole <= 0:  # nobody reports memory: everything stays with the last party, this machine
        return [0] * (len(weights) - 1) + [total]
    exact = [total * w / whole for w in weights]
    counts = [int(e) for e in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"
