"""How many layers of a model fit on a GPU, and what the load costs in VRAM and RAM.

`plan_offload` turns a GGUF header, a context size and the free VRAM into a number of layers for
llama.cpp's `n_gpu_layers`, following llama.cpp's placement: the input embedding always stays on
the CPU; n layers offload the last n blocks, each with its share of the f16 KV cache; n_layer + 1
adds the output layer (with a copy of token_embd when the output is tied to it). The GPU also
holds a compute buffer, estimated as Ollama does, and on CUDA the runtime's own memory
(RUNTIME_BYTES, measured). The GPUs come from localrun.hardware.system's detection; no llama_cpp
import here: the build's facts come in as arguments (see localrun.engine.library.buildinfo).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from localrun.gguf.header import Header
from localrun.hardware.system import GPU, MIB
from localrun.request.context import positive

DEFAULT_NUM_BATCH = 512


@dataclass(frozen=True)
class Split:
    """A model's layers shared across RPC workers and this machine (hardware.split)."""

    workers: tuple[str, ...]  # the endpoints, in llama.cpp's device order
    tensor_split: tuple[float, ...]  # layers per device: the workers' first, then local GPUs
    shares: tuple[str, ...]  # each party's layers and bytes, as said to people
    remote_layers: int  # the layers the workers hold
    remote_bytes: int  # what they hold, read from this machine's file as the load sends it


ALONE = Split((), (), (), 0, 0)  # no worker takes part


@dataclass
class OffloadPlan:
    """How a model would be split between one GPU and the CPU (bytes are estimates)."""

    n_gpu_layers: int  # for llama.cpp's n_gpu_layers; total_layers means everything
    total_layers: int  # block_count + 1: the output layer counts as the last one
    vram_bytes: int
    ram_bytes: int
    kv_bytes: int  # the whole KV cache at num_ctx (GPU and CPU parts together)
    gpu: GPU | None
    reason: str
    warnings: list[str] = field(default_factory=list)
    split: Split = ALONE  # with RPC workers (hardware.split)

    @property
    def runtime_bytes(self) -> int:
        """The part of vram_bytes that is the GPU runtime (RUNTIME_BYTES)."""
        return _runtime(self.n_gpu_layers, self.gpu)


# --- sizes from the header ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Sizes:
    layers: list[int]  # weights of blk.N, by N
    input: int  # token_embd and other tensors outside the blocks: always on the CPU
    output: int  # output and output_norm
    tied: int  # token_embd again when there is no output.weight: copied when the output offloads
    kv_layer: int  # KV cache of one layer at num_ctx * num_parallel
    graph_full: int  # compute buffer when everything is on the GPU (or on the CPU)
    graph_partial: int  # compute buffer on the GPU when layers are split
    graph_output: int  # what the CPU computes for the output layer when it stays there

    @property
    def total_layers(self) -> int:
        return len(self.layers) + 1

    @property
    def kv_bytes(self) -> int:
        return self.kv_layer * len(self.layers)


@dataclass(frozen=True)
class _Weights:
    """The header's tensor bytes, grouped as llama.cpp places them."""

    blocks: dict[int, int]  # blk.N -> bytes
    input: int
    output: int
    tied: int
    embd_vocab: int | None  # the vocabulary size token_embd's shape implies


@dataclass(frozen=True)
class _Attention:
    n_embd: int
    n_head: int
    n_head_kv: int
    k_len: int
    kv_row: int  # K and V values one token keeps in one layer


def _weights(header: Header) -> _Weights:
    blocks: dict[int, int] = {}
    input_bytes = output_bytes = embd_bytes = 0
    embd_vocab = None
    has_output = False
    for t in header.tensors:
        match = re.match(r"blk\.(\d+)\.", t.name)
        if match:
            n = int(match.group(1))
            blocks[n] = blocks.get(n, 0) + t.n_bytes
        elif t.name.startswith("output"):
            output_bytes += t.n_bytes
            has_output = has_output or t.name == "output.weight"
        else:
            input_bytes += t.n_bytes
            if t.name == "token_embd.weight":
                embd_bytes = t.n_bytes
                embd_vocab = t.dims[-1] if len(t.dims) > 1 else None
    tied = 0 if has_output else embd_bytes
    return _Weights(blocks, input_bytes, output_bytes, tied, embd_vocab)


def _attention(header: Header) -> _Attention:
    n_embd = positive(header.arch_value("embedding_length")) or 0
    n_head = positive(header.arch_value("attention.head_count"))
    # A per-layer array of head counts (read as ("array", ...)) falls back to full MHA: an
    # over-estimate rather than a failed load.
    n_head_kv = positive(header.arch_value("attention.head_count_kv")) or n_head
    head_dim = n_embd // n_head if n_head else 0
    k_len = positive(header.arch_value("attention.key_length")) or head_dim
    v_len = positive(header.arch_value("attention.value_length")) or head_dim
    if n_head and n_head_kv:
        kv_row = (k_len + v_len) * n_head_kv
    else:
        kv_row, n_head, n_head_kv = 2 * n_embd, 1, 1
    return _Attention(n_embd, n_head, n_head_kv, k_len, kv_row)


def _vocab(header: Header, embd_vocab: int | None) -> int:
    tokens = header.metadata.get("tokenizer.ggml.tokens")
    return (
        (tokens[2] if isinstance(tokens, tuple) and len(tokens) == 3 else None)
        or positive(header.arch_value("vocab_size"))
        or embd_vocab
        or 0
    )


def _graphs(a: _Attention, vocab: int, ctx: int, num_batch: int) -> tuple[int, int, int]:
    """Return the (full, partial, output) compute buffers of a llama-like graph.

    It is Ollama's estimate of llama.cpp's buffers (llm/ggml.go).
    """
    batch = min(num_batch, ctx)
    n_embd, n_head = a.n_embd, a.n_head
    graph_output = 4 * batch * (n_embd + vocab)
    graph_full = max(4 * batch * (1 + 4 * n_embd + ctx * (1 + n_head)), graph_output)
    graph_partial = 4 * batch * n_embd + max(
        4 * batch * (1 + n_embd + max(ctx, n_embd))
        + n_embd * n_embd * 9 // 16
        + 4 * ctx * (batch * n_head + a.k_len * a.n_head_kv),
        graph_output + n_embd * vocab * 105 // 128,
    )
    return graph_full, graph_partial, graph_output


def _sizes(header: Header, num_ctx: int, num_parallel: int, num_batch: int) -> _Sizes:
    weights = _weights(header)
    n_layer = max(
        positive(header.arch_value("block_count")) or 0, max(weights.blocks, default=-1) + 1
    )
    attention = _attention(header)
    ctx = num_ctx * num_parallel
    vocab = _vocab(header, weights.embd_vocab)
    graph_full, graph_partial, graph_output = _graphs(attention, vocab, ctx, num_batch)
    return _Sizes(
        layers=[weights.blocks.get(i, 0) for i in range(n_layer)],
        input=weights.input,
        output=weights.output,
        tied=weights.tied,
        kv_layer=2 * attention.kv_row * ctx,  # f16: 2 bytes a value
        graph_full=graph_full,
        graph_partial=graph_partial,
        graph_output=graph_output,
    )


# --- bytes for k offloaded layers ---------------------------------------------------------------


def _runtime(k: int, gpu: GPU | None) -> int:
    """What the GPU runtime holds once k layers run on `gpu` (RUNTIME_BYTES)."""
    return RUNTIME_BYTES.get(gpu.backend, 0) if gpu is not None and k > 0 else 0


def sizes(header: Header, num_ctx: int, num_parallel: int, num_batch: int) -> _Sizes:
    """The header's bytes as llama.cpp places them (hardware.split plans with them too)."""
    return _sizes(header, num_ctx, max(1, num_parallel), max(1, num_batch))


def ram(s: _Sizes, k: int) -> int:
    """RAM a load takes with its last `k` layers elsewhere."""
    return _ram(s, k)


def _vram(s: _Sizes, k: int) -> int:
    """VRAM for k offloaded layers: llama.cpp offloads the last k blocks, then the output."""
    if k <= 0:
        return 0
    n_layer = len(s.layers)
    blocks = min(k, n_layer)
    need = sum(s.layers[n_layer - blocks :]) + blocks * s.kv_layer
    if k > n_layer:
        return need + s.output + s.tied + s.graph_full
    return need + s.graph_partial


def _gpu_bytes(s: _Sizes, k: int, gpu: GPU | None) -> int:
    """VRAM for k offloaded layers with the runtime of `gpu`'s backend."""
    return _vram(s, k) + _runtime(k, gpu)


def _ram(s: _Sizes, k: int) -> int:
    n_layer = len(s.layers)
    cpu_blocks = n_layer - min(max(k, 0), n_layer)
    need = s.input + sum(s.layers[:cpu_blocks]) + cpu_blocks * s.kv_layer
    if k <= 0:
        return need + s.output + s.graph_full
    if k <= n_layer:
        return need + s.output + s.graph_output
    return need


# What a process holds on a GPU beside llama.cpp's own buffers (weights, KV cache, compute):
# the CUDA context, ggml-cuda's kernels and cuBLAS's workspace. Measured with
# scripts/bench/offload.py on an H100 (CUDA 13, a build for sm_90 alone): 587-590 MiB for
# llama-server, the same at every context size; 590 MiB for localrun's runner with SmolLM2 and
# 687 MiB with an f16 model. Backends not measured count nothing here and rely on the reserve
# (safety_margin) alone.
RUNTIME_BYTES = {"cuda": 600 * MIB}


def safety_margin(free_bytes: int, backend: str | None = None) -> int:
    """Return the VRAM left unplanned, for fragmentation, other programs and what estimates miss.

    On a backend whose runtime is not counted (RUNTIME_BYTES), it covers the runtime itself too,
    so the floor is lower where the runtime is counted.
    """
    floor = 256 * MIB if backend in RUNTIME_BYTES else 512 * MIB
    return max(floor, free_bytes // 10)


# --- the plan -----------------------------------------------------------------------------------


def plan_offload(
    header: Header,
    num_ctx: int,
    *,
    requested: int | None,
    gpus: Sequence[GPU],
    gpu_offload_supported: bool,
    num_parallel: int = 1,
    num_batch: int = DEFAULT_NUM_BATCH,
) -> OffloadPlan:
    """How many layers to put on the GPU with the most free memory.

    `requested` is the num_gpu parameter: None or -1 decides from the free VRAM, keeping
    `safety_margin` free; any other value is honoured (capped at the layer count), with a warning
    when it will not fit.
    """
    s = _sizes(header, num_ctx, max(1, num_parallel), max(1, num_batch))
    if not gpu_offload_supported:
        why = "llama.cpp has no GPU backend here (no GPU runtime loaded): running on the CPU"
        return _plan(s, 0, None, why)
    if requested == 0:
        return _plan(s, 0, None, "num_gpu is 0: running on the CPU")
    gpu = max(gpus, key=lambda g: g.free_bytes, default=None)
    if requested is not None and requested > 0:
        return _plan_requested(s, requested, gpu)
    if gpu is None:
        return _plan(
            s, 0, None, "no GPU found: running on the CPU (set num_gpu to offload layers anyway)"
        )
    return _plan_auto(s, gpu)


def _plan(
    s: _Sizes, k: int, gpu: GPU | None, reason: str, warnings: list[str] | None = None
) -> OffloadPlan:
    vram = _gpu_bytes(s, k, gpu)
    return OffloadPlan(k, s.total_layers, vram, _ram(s, k), s.kv_bytes, gpu, reason, warnings or [])


def _plan_requested(s: _Sizes, requested: int, gpu: GPU | None) -> OffloadPlan:
    """Plan `requested` layers on the GPU, capped at the layer count.

    It warns when they may not fit on `gpu`, or cannot be checked because no GPU was detected.
    """
    total = s.total_layers
    k = min(requested, total)
    if gpu is None:
        return _plan(
            s,
            k,
            None,
            f"num_gpu {requested}: {k} of {total} layers on the GPU",
            [f"no GPU was detected, so the {_size(_vram(s, k))} these layers need is unchecked"],
        )
    where = _where(gpu)
    margin = safety_margin(gpu.free_bytes, gpu.backend)
    available = gpu.free_bytes - margin
    warnings = []
    if _gpu_bytes(s, k, gpu) > available:
        warnings.append(
            f"{k} layers need about {_size(_gpu_bytes(s, k, gpu))} on {where}, but only "
            f"{_size(max(0, available))} is free after a {_size(margin)} reserve; loading "
            "may fail: lower num_gpu or num_ctx"
        )
    return _plan(s, k, gpu, f"num_gpu {requested}: {k} of {total} layers on {where}", warnings)


def _plan_auto(s: _Sizes, gpu: GPU) -> OffloadPlan:
    """The most layers that fit on `gpu` with `safety_margin` kept free."""
    total = s.total_layers
    where = _where(gpu)
    margin = safety_margin(gpu.free_bytes, gpu.backend)
    available = gpu.free_bytes - margin
    fits = [k for k in range(1, total + 1) if _gpu_bytes(s, k, gpu) <= available]
    k = max(fits, default=0)
    if k == total:
        reason = f"all {total} layers fit on {where}, {_size(gpu.free_bytes)} free"
    elif k:
        reason = (
            f"{k} of {total} layers fit on {where}, {_size(gpu.free_bytes)} free; "
            "the rest run on the CPU"
        )
    else:
        reason = (
            f"no layer fits on {where}: {_size(gpu.free_bytes)} free, {_size(margin)} kept in "
            "reserve; running on the CPU"
        )
    return _plan(s, k, gpu if k else None, reason)


def _where(gpu: GPU) -> str:
    return f"GPU {gpu.index} ({gpu.name})"


def _size(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n < 1e9 else f"{n / 1e9:.1f} GB"
