"""The tiny random-weight models whose memory is (partly) a recurrent state, not a KV cache of
every position: an RWKV-7 (wholly recurrent) and an LFM2 (hybrid: short-convolution layers and
an attention layer).

The same arguments always give a byte-identical file; the vocabulary is :mod:`testmodels.vocab`'s
and the weights are f32.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType, TokenType

from testmodels.files import write_all
from testmodels.vocab import CHATML_TEMPLATE, add_vocab, build_vocab

__all__ = ["write_tiny_lfm2", "write_tiny_rwkv"]

MODEL_NAME = "tiny-llama"

# The order of the token-shift mixes in RWKV-7's fused lerp tensor (llama.cpp's graph reads
# receptance, decay, key, value, in-context learning rate, gate).
_RWKV7_LERPS = 6

#: Puts one tensor, as f32, into the GGUF being written.
_Put = Callable[[str, np.ndarray], None]


def _start(
    path: Path, arch: str, n_embd: int, n_layer: int, n_ff: int
) -> tuple[GGUFWriter, np.ndarray]:
    """A writer for ``arch`` with the keys every tiny model has and the tiny vocabulary, and
    which of the vocabulary's tokens are normal pieces (a bool per token)."""
    writer = GGUFWriter(path, arch)
    writer.add_name(f"{MODEL_NAME}-{arch}")
    writer.add_file_type(LlamaFileType.ALL_F32)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    tokens, scores, types = build_vocab()
    add_vocab(writer, tokens, scores, types, CHATML_TEMPLATE)
    return writer, np.asarray([t == TokenType.NORMAL for t in types])


def _helpers(
    writer: GGUFWriter, rng: np.random.Generator
) -> tuple[_Put, Callable[[int, int], np.ndarray]]:
    """``put(name, array)`` adds a tensor as f32; ``dense(rows, cols)`` draws a matrix whose
    products keep unit scale (standard normal / sqrt(cols))."""

    def put(name: str, array: np.ndarray) -> None:
        writer.add_tensor(name, np.asarray(array, dtype=np.float32))

    def dense(rows: int, cols: int) -> np.ndarray:
        return np.asarray(rng.standard_normal((rows, cols)) / np.sqrt(cols))

    return put, dense


def _output(dense: Callable[[int, int], np.ndarray], normal: np.ndarray, n_embd: int) -> np.ndarray:
    """The output projection, its rows of byte and special tokens damped (as the tiny llama
    model's are) so that greedy decoding emits printable normal pieces and does not stop early
    on </s> or <|im_end|>."""
    weight = dense(len(normal), n_embd)
    weight[~normal] *= 0.05
    return weight


def _rwkv7_time_mix(
    put: _Put,
    dense: Callable[[int, int], np.ndarray],
    rng: np.random.Generator,
    i: int,
    n_embd: int,
    ranks: dict[str, int],
) -> None:
    """Layer ``i``'s RWKV-7 time mix: the token-shift lerps, the LoRAs of decay (w), in-context
    learning rate (a), value residual (v) and gate (g), and the key/value/receptance/output
    projections. Numpy shapes are ggml ``ne`` reversed."""
    blk = f"blk.{i}.time_mix"
    put(f"{blk}_lerp_fused.weight", rng.uniform(0.0, 1.0, (_RWKV7_LERPS, 1, 1, n_embd)))
    # decay = exp(-0.607 * sigmoid(w0 + w2 tanh(w1 x))): every channel keeps 55-100% of its
    # state per token, so the state neither vanishes at once nor grows.
    put(f"{blk}_w0.weight", 0.5 * rng.standard_normal(n_embd))
    put(f"{blk}_w1.weight", dense(ranks["decay"], n_embd))
    put(f"{blk}_w2.weight", 0.1 * dense(n_embd, ranks["decay"]))
    put(f"{blk}_a0.weight", 0.5 * rng.standard_normal(n_embd))
    put(f"{blk}_a1.weight", dense(ranks["iclr"], n_embd))
    put(f"{blk}_a2.weight", 0.1 * dense(n_embd, ranks["iclr"]))
    # Layer 0's value LoRA is never used (it is the value residual's source) and has the ICLR
    # rank, as llama.cpp expects it.
    v_rank = ranks["iclr"] if i == 0 else ranks["value_residual_mix"]
    put(f"{blk}_v0.weight", 0.5 * rng.standard_normal(n_embd))
    put(f"{blk}_v1.weight", dense(v_rank, n_embd))
    put(f"{blk}_v2.weight", 0.1 * dense(n_embd, v_rank))
    put(f"{blk}_g1.weight", dense(ranks["gate"], n_embd))
    put(f"{blk}_g2.weight", dense(n_embd, ranks["gate"]))
    put(f"{blk}_k_k.weight", np.full(n_embd, 0.85))
    put(f"{blk}_k_a.weight", np.ones(n_embd))
    put(f"{blk}_r_k.weight", 0.1 * rng.standard_normal(n_embd))
    for proj in ("key", "value", "receptance", "output"):
        put(f"{blk}_{proj}.weight", dense(n_embd, n_embd))
    put(f"{blk}_ln.weight", np.ones(n_embd))
    put(f"{blk}_ln.bias", np.zeros(n_embd))


def write_tiny_rwkv(path: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write a tiny random-weight RWKV-7 GGUF (a recurrent model: two layers of time mix and
    channel mix, no attention, no KV cache) that llama.cpp loads and runs; return its path. Its
    memory is one state per sequence (a 64x64 WKV matrix and two token shifts per layer), not a
    KV entry per position, so a prefix's state cannot be restored for a longer prompt. One head
    of 64 channels: the head size llama.cpp's GPU kernels for RWKV-7 are written for. The
    vocabulary is the tiny llama model's."""
    path = Path(path)
    n_layer, n_embd, n_ff, head_size = 2, 64, 128, 64
    ranks = {"decay": 8, "iclr": 8, "value_residual_mix": 4, "gate": 16}
    writer, normal = _start(path, "rwkv7", n_embd, n_layer, n_ff)
    writer.add_context_length(1 << 20)
    writer.add_head_count(0)
    writer.add_layer_norm_eps(1e-5)
    writer.add_wkv_head_size(head_size)
    writer.add_token_shift_count(2)
    writer.add_decay_lora_rank(ranks["decay"])
    writer.add_iclr_lora_rank(ranks["iclr"])
    writer.add_value_residual_mix_lora_rank(ranks["value_residual_mix"])
    writer.add_gate_lora_rank(ranks["gate"])
    rng = np.random.default_rng(seed)
    put, dense = _helpers(writer, rng)

    def layer_norm(name: str) -> None:
        put(f"{name}.weight", np.ones(n_embd))
        put(f"{name}.bias", np.zeros(n_embd))

    put("token_embd.weight", rng.standard_normal((len(normal), n_embd)))
    layer_norm("token_embd_norm")
    for i in range(n_layer):
        layer_norm(f"blk.{i}.attn_norm")
        layer_norm(f"blk.{i}.attn_norm_2")
        _rwkv7_time_mix(put, dense, rng, i, n_embd, ranks)
        put(f"blk.{i}.channel_mix_lerp_k.weight", rng.uniform(0.0, 1.0, (1, 1, n_embd)))
        put(f"blk.{i}.channel_mix_key.weight", dense(n_ff, n_embd))
        put(f"blk.{i}.channel_mix_value.weight", dense(n_embd, n_ff))
    layer_norm("output_norm")
    put("output.weight", _output(dense, normal, n_embd))
    write_all(writer)
    return path


def write_tiny_lfm2(path: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write a tiny random-weight LFM2 GGUF (a hybrid model: short-convolution layers 0 and 2,
    whose memory is a recurrent state, around attention layer 1, whose memory is a KV cache)
    that llama.cpp loads and runs; return its path. llama.cpp reports it as hybrid: a prefix's
    KV entries can be kept, but its convolution state cannot be restored for a longer prompt.
    The vocabulary is the tiny llama model's."""
    path = Path(path)
    n_layer, n_embd, n_ff, n_head, n_head_kv, l_cache = 3, 64, 128, 4, 2, 3
    attention = [i % 3 == 1 for i in range(n_layer)]
    head_dim = n_embd // n_head
    writer, normal = _start(path, "lfm2", n_embd, n_layer, n_ff)
    writer.add_context_length(4096)
    writer.add_head_count(n_head)
    # A layer with no KV heads is a short-convolution layer.
    writer.add_head_count_kv([n_head_kv if attn else 0 for attn in attention])
    writer.add_rope_freq_base(1000000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_shortconv_l_cache(l_cache)
    rng = np.random.default_rng(seed)
    put, dense = _helpers(writer, rng)

    put("token_embd.weight", rng.standard_normal((len(normal), n_embd)))
    for i, attn in enumerate(attention):
        put(f"blk.{i}.attn_norm.weight", np.ones(n_embd))
        if attn:
            put(f"blk.{i}.attn_q_norm.weight", np.ones(head_dim))
            put(f"blk.{i}.attn_k_norm.weight", np.ones(head_dim))
            put(f"blk.{i}.attn_q.weight", dense(n_embd, n_embd))
            put(f"blk.{i}.attn_k.weight", dense(n_head_kv * head_dim, n_embd))
            put(f"blk.{i}.attn_v.weight", dense(n_head_kv * head_dim, n_embd))
            put(f"blk.{i}.attn_output.weight", dense(n_embd, n_embd))
        else:
            # in_proj makes the gates b and c and the input x: y = c * conv(b * x).
            put(f"blk.{i}.shortconv.in_proj.weight", dense(3 * n_embd, n_embd))
            put(f"blk.{i}.shortconv.conv.weight", dense(n_embd, l_cache))
            put(f"blk.{i}.shortconv.out_proj.weight", dense(n_embd, n_embd))
        put(f"blk.{i}.ffn_norm.weight", np.ones(n_embd))
        put(f"blk.{i}.ffn_gate.weight", dense(n_ff, n_embd))
        put(f"blk.{i}.ffn_up.weight", dense(n_ff, n_embd))
        put(f"blk.{i}.ffn_down.weight", dense(n_embd, n_ff))
    # LFM2's final norm is stored under the name token_embd_norm (llama.cpp's LFM2 tables).
    put("token_embd_norm.weight", np.ones(n_embd))
    put("output.weight", _output(dense, normal, n_embd))
    write_all(writer)
    return path
