"""The tiny random-weight text models that llama.cpp loads: llama (and its sliding-window
variant, granite_swa), a LoRA adapter for it, and a Mamba.

The same arguments always give a byte-identical file; the vocabulary is :mod:`testmodels.vocab`'s.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
from gguf import GGUFType, GGUFWriter, Keys, LlamaFileType, TokenType

from testmodels.files import write_all
from testmodels.vocab import CHATML_TEMPLATE, FIM_ID_PIECES, add_vocab, build_vocab

__all__ = ["DEFAULT_PARAMS", "write_tiny_lora", "write_tiny_mamba", "write_tiny_model"]

ARCH = "llama"
MODEL_NAME = "tiny-llama"

#: Hyperparameters of the default tiny model; pass (a copy of) this to :func:`write_tiny_lora`.
DEFAULT_PARAMS: Mapping[str, int] = {
    "n_layer": 2,
    "n_embd": 64,
    "n_ff": 128,
    "n_head": 4,
    "n_head_kv": 2,
    "n_ctx": 256,
}

# The ``extra_bytes`` padding columns are added to the FFN in multiples of this many.
_FFN_PAD_MULTIPLE = 32


def _tensor_plan(
    n_vocab: int,
    n_layer: int,
    n_embd: int,
    n_ff: int,
    n_head: int,
    n_head_kv: int,
    sinks: bool = False,
) -> list[tuple[str, tuple[int, ...]]]:
    """List ``(name, numpy shape)`` of the llama tensors; numpy shape is ggml ``ne`` reversed.
    ``sinks`` adds the per-layer attention sinks of granite_swa's iSWA layers."""
    head_dim = n_embd // n_head
    plan: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (n_vocab, n_embd))]
    for i in range(n_layer):
        if sinks:
            plan.append((f"blk.{i}.attn_sinks.weight", (n_head,)))
        plan += [
            (f"blk.{i}.attn_norm.weight", (n_embd,)),
            (f"blk.{i}.attn_q.weight", (n_head * head_dim, n_embd)),
            (f"blk.{i}.attn_k.weight", (n_head_kv * head_dim, n_embd)),
            (f"blk.{i}.attn_v.weight", (n_head_kv * head_dim, n_embd)),
            (f"blk.{i}.attn_output.weight", (n_embd, n_head * head_dim)),
            (f"blk.{i}.ffn_norm.weight", (n_embd,)),
            (f"blk.{i}.ffn_gate.weight", (n_ff, n_embd)),
            (f"blk.{i}.ffn_up.weight", (n_ff, n_embd)),
            (f"blk.{i}.ffn_down.weight", (n_embd, n_ff)),
        ]
    plan += [("output_norm.weight", (n_embd,)), ("output.weight", (n_vocab, n_embd))]
    return plan


def _zero_padded(core: np.ndarray, shape: tuple[int, ...], wtype: type) -> np.ndarray:
    """Return ``core`` as ``wtype``, placed top-left in a zero array of ``shape`` if larger."""
    if core.shape == shape:
        return core.astype(wtype)
    out: np.ndarray = np.zeros(shape, dtype=wtype)  # calloc'd: untouched zero pages cost no memory
    out[tuple(slice(0, n) for n in core.shape)] = core
    return out


def _tensor_data(
    plan: list[tuple[str, tuple[int, ...]]],
    rng: np.random.Generator,
    n_ff: int,
    wtype: type,
    normal_mask: list[bool],
) -> Iterator[np.ndarray]:
    """Yield the random tensors of ``plan`` in order, one at a time.

    FFN tensors may be wider than ``n_ff`` (``extra_bytes`` padding): only the first ``n_ff``
    rows/columns are random, the rest is zero, so the padded model computes exactly what the
    unpadded one with the same seed does, and the random stream does not depend on the padding.
    ``normal_mask[i]`` says whether token ``i`` is a normal piece.
    """
    for name, shape in plan:
        if len(shape) == 1:  # norm weights: stay f32 like llama.cpp's converters keep them
            yield (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            continue
        fan_in = shape[1]
        if name.endswith(("ffn_gate.weight", "ffn_up.weight")):
            yield _zero_padded(rng.standard_normal((n_ff, fan_in)) / np.sqrt(fan_in), shape, wtype)
        elif name.endswith("ffn_down.weight"):
            yield _zero_padded(rng.standard_normal((shape[0], n_ff)) / np.sqrt(n_ff), shape, wtype)
        elif name == "output.weight":
            # Damp the rows of byte and special tokens so that greedy decoding emits printable
            # normal pieces and does not stop early on </s> or <|im_end|>.
            weight = rng.standard_normal(shape) / np.sqrt(fan_in)
            weight[np.asarray(normal_mask) == 0] *= 0.05
            yield weight.astype(wtype)
        else:
            scale = 1.0 if name == "token_embd.weight" else 1.0 / np.sqrt(fan_in)
            yield (scale * rng.standard_normal(shape)).astype(wtype)


def write_tiny_model(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 64,
    n_ff: int = 128,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ctx: int = 256,
    extra_bytes: int = 0,
    dtype: Literal["f32", "f16"] = "f32",
    alignment: int | None = None,
    fim: bool | Literal["ids"] = False,
    chat_template: str = CHATML_TEMPLATE,
    control: tuple[str, ...] | None = None,
    swa: int = 0,
) -> Path:
    """Write a tiny random-weight llama GGUF that llama.cpp loads; return its path.

    The same arguments always give a byte-identical file. ``dtype`` picks the 2-D weight type
    (norms stay f32) and sets ``general.file_type``. ``extra_bytes > 0`` grows the file by at
    least that many bytes (for store/copy/crash tests) by widening the FFN with zero columns:
    ``llama.feed_forward_length`` becomes larger, the file still loads and computes the same
    logits as the unpadded model. Tensors are streamed to disk one at a time. ``alignment``
    writes an explicit ``general.alignment`` key. ``fim`` adds fill-in-the-middle tokens
    (found by their texts, as in many code models' GGUFs; ``"ids"``: named by the GGUF's
    ``tokenizer.ggml.fim_*_token_id`` keys); ``chat_template`` replaces ChatML
    (e.g. THINKING_TEMPLATE; "" writes none) and ``control`` the ChatML tokens.
    ``swa > 0`` writes a granite_swa model instead (the same
    tensors plus attention sinks) whose every other layer attends to the last ``swa`` tokens
    only: a sliding-window model, whose KV state llama.cpp cannot restore for a prefix.
    """
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("n_embd must be divisible by n_head, and n_head by n_head_kv")
    if extra_bytes < 0:
        raise ValueError("extra_bytes must be >= 0")
    path = Path(path)
    wtype: type = np.float16 if dtype == "f16" else np.float32
    itemsize = np.dtype(wtype).itemsize
    n_ff_file = n_ff
    if extra_bytes:
        per_column = 3 * n_layer * n_embd * itemsize  # gate + up + down, every layer
        cols = -(-extra_bytes // per_column)
        n_ff_file += -(-cols // _FFN_PAD_MULTIPLE) * _FFN_PAD_MULTIPLE

    tokens, scores, types = build_vocab(fim=fim, control=control)
    writer = GGUFWriter(path, "granite_swa" if swa else ARCH)
    writer.add_name(MODEL_NAME)
    writer.add_file_type(LlamaFileType.MOSTLY_F16 if dtype == "f16" else LlamaFileType.ALL_F32)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff_file)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    if swa:
        writer.add_logit_scale(1.0)
        writer.add_sliding_window(swa)
        writer.add_sliding_window_pattern([i % 2 == 0 for i in range(n_layer)])
    add_vocab(writer, tokens, scores, types, chat_template)
    if fim == "ids":
        keys = (Keys.Tokenizer.FIM_PRE_ID, Keys.Tokenizer.FIM_SUF_ID, Keys.Tokenizer.FIM_MID_ID)
        for key, piece in zip(keys, FIM_ID_PIECES, strict=True):
            writer.add_uint32(key, tokens.index(piece))

    plan = _tensor_plan(len(tokens), n_layer, n_embd, n_ff_file, n_head, n_head_kv, bool(swa))
    for name, shape in plan:
        ttype = np.float32 if len(shape) == 1 else wtype
        nbytes = int(np.prod(shape)) * np.dtype(ttype).itemsize
        writer.add_tensor_info(name, shape, np.dtype(ttype), nbytes)
    rng = np.random.default_rng(seed)
    normal_mask = [t == TokenType.NORMAL for t in types]
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for array in _tensor_data(plan, rng, n_ff, wtype, normal_mask):
            writer.write_tensor_data(array)
    finally:
        writer.close()
    return path


def write_tiny_mamba(path: str | os.PathLike[str], *, seed: int = 0, n_embd: int = 32) -> Path:
    """Write a tiny random-weight Mamba GGUF (a recurrent model: two layers of selective state
    space, no attention, no KV cache) that llama.cpp loads and runs; return its path. Its memory
    is one state per sequence, not a KV entry per position, so a prefix's state cannot be
    restored for a longer prompt. The vocabulary is the tiny llama model's."""
    path = Path(path)
    n_layer, d_inner, d_state, d_conv, dt_rank = 2, 2 * n_embd, 8, 4, 4
    tokens, scores, types = build_vocab()
    writer = GGUFWriter(path, "mamba")
    writer.add_name(MODEL_NAME + "-mamba")
    writer.add_file_type(LlamaFileType.ALL_F32)
    writer.add_context_length(1 << 20)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(0)
    writer.add_head_count(0)
    writer.add_ssm_conv_kernel(d_conv)
    writer.add_ssm_inner_size(d_inner)
    writer.add_ssm_state_size(d_state)
    writer.add_ssm_time_step_rank(dt_rank)
    writer.add_layer_norm_rms_eps(1e-5)
    add_vocab(writer, tokens, scores, types, CHATML_TEMPLATE)
    rng = np.random.default_rng(seed)
    n_vocab = len(tokens)

    def dense(rows: int, cols: int) -> np.ndarray:
        return np.asarray(rng.standard_normal((rows, cols)) / np.sqrt(cols))

    def put(name: str, array: np.ndarray) -> None:
        writer.add_tensor(name, array.astype(np.float32))

    put("token_embd.weight", rng.standard_normal((n_vocab, n_embd)))
    for i in range(n_layer):
        put(f"blk.{i}.attn_norm.weight", np.ones(n_embd))
        put(f"blk.{i}.ssm_in.weight", dense(2 * d_inner, n_embd))
        put(f"blk.{i}.ssm_conv1d.weight", dense(d_inner, d_conv))
        put(f"blk.{i}.ssm_conv1d.bias", np.zeros(d_inner))
        put(f"blk.{i}.ssm_x.weight", dense(dt_rank + 2 * d_state, d_inner))
        put(f"blk.{i}.ssm_dt.weight", dense(d_inner, dt_rank))
        put(f"blk.{i}.ssm_dt.bias", np.zeros(d_inner))
        # A = -exp(A_log) as converters store it: decaying states keep the model stable.
        put(f"blk.{i}.ssm_a", -np.exp(0.1 * rng.standard_normal((d_inner, d_state))))
        put(f"blk.{i}.ssm_d", np.ones(d_inner))
        put(f"blk.{i}.ssm_out.weight", dense(n_embd, d_inner))
    put("output_norm.weight", np.ones(n_embd))
    put("output.weight", dense(n_vocab, n_embd))
    write_all(writer)
    return path


def write_tiny_lora(
    path: str | os.PathLike[str],
    *,
    base: Mapping[str, int] | None = None,
    rank: int = 4,
    alpha: float = 8.0,
    seed: int = 1,
) -> Path:
    """Write a LoRA adapter GGUF for the tiny model described by ``base``; return its path.

    Laid out as llama.cpp's ``convert_lora_to_gguf.py`` writes it: ``general.type = "adapter"``,
    ``adapter.type = "lora"``, ``adapter.lora.alpha``, and f32 tensors
    ``blk.N.attn_{q,v}.weight.lora_a`` (ggml ne ``[n_in, rank]``) and ``.lora_b`` (ne
    ``[rank, n_out]``). ``base`` holds the :data:`DEFAULT_PARAMS` keys (missing ones default).
    Both factors are random and non-zero, so applying the adapter changes the logits.
    """
    params = {**DEFAULT_PARAMS, **(base or {})}
    n_layer, n_embd = params["n_layer"], params["n_embd"]
    head_dim = n_embd // params["n_head"]
    n_out = {"attn_q": params["n_head"] * head_dim, "attn_v": params["n_head_kv"] * head_dim}
    path = Path(path)
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(path, ARCH)
    writer.add_type(GGUFType.ADAPTER)
    writer.add_string(Keys.Adapter.TYPE, "lora")
    writer.add_float32(Keys.Adapter.LORA_ALPHA, float(alpha))
    writer.add_name(f"{MODEL_NAME}-lora")
    for i in range(n_layer):
        for target, out_dim in n_out.items():
            lora_a = rng.standard_normal((rank, n_embd)) / np.sqrt(n_embd)
            lora_b = rng.standard_normal((out_dim, rank))
            writer.add_tensor(f"blk.{i}.{target}.weight.lora_a", lora_a.astype(np.float32))
            writer.add_tensor(f"blk.{i}.{target}.weight.lora_b", lora_b.astype(np.float32))
    write_all(writer)
    return path
