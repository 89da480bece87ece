"""Tiny random-weight Hugging Face checkpoints (config.json, safetensors, tokenizer files) for
each architecture localrun converts, PEFT LoRA adapters for them, and the logits the
architecture's own (Hugging Face) forward pass gives, computed here in numpy: what a converted
GGUF run by llama.cpp must reproduce.

The reference is written from transformers' modeling code (rotate-half rotary embeddings,
Gemma's (1 + w) norms and softcaps, Phi-3's fused projections), not from llama.cpp's, so a
conversion that gets a layout wrong disagrees with it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from testmodels.hf_tokenizers import write_tokenizer

# family -> (architectures[0], tokenizer kind, config overrides)
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaForCausalLM", "llama3", {
        "rope_theta": 500000.0, "head_dim": 16,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    }),
    "mistral": ("MistralForCausalLM", "spm", {"rope_theta": 1000000.0, "sliding_window": None}),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", {"rope_theta": 1000000.0}),
    "qwen3": ("Qwen3ForCausalLM", "qwen2", {"rope_theta": 1000000.0, "head_dim": 32}),
    "gemma2": ("Gemma2ForCausalLM", "gemma", {
        "head_dim": 32, "query_pre_attn_scalar": 32, "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0, "sliding_window": 4096, "rope_theta": 10000.0,
        "hidden_activation": "gelu_pytorch_tanh",
    }),
    "gemma3": ("Gemma3ForCausalLM", "gemma", {
        "head_dim": 32, "query_pre_attn_scalar": 32, "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0, "sliding_window": 512,
        "layer_types": ["sliding_attention", "full_attention"],
        "hidden_activation": "gelu_pytorch_tanh",
    }),
    "phi3": ("Phi3ForCausalLM", "spm", {
        "rope_theta": 10000.0, "original_max_position_embeddings": 4096, "sliding_window": 2047,
    }),
}  # fmt: skip

# transformers' model_type where it is not the family's name (it picks the config class).
MODEL_TYPES = {"gemma3": "gemma3_text"}

Weights = dict[str, np.ndarray[Any, Any]]


@dataclass
class Checkpoint:
    folder: Path
    family: str
    config: dict[str, Any]
    weights: Weights  # as the reference reads them: float32, bf16-rounded where stored bf16


def write_checkpoint(folder: Path, family: str, *, dtype: str = "BF16", seed: int = 0,
                     shards: int = 1, tokenizer: str | None = None) -> Checkpoint:  # fmt: skip
    """A tiny `family` checkpoint in `folder` (2 layers, width 64, 4 heads, 2 KV heads), with
    the family's kind of tokenizer unless `tokenizer` names another."""
    arch, tokenizer_kind, extra = FAMILIES[family]
    written = write_tokenizer(folder, tokenizer or tokenizer_kind)
    config: dict[str, Any] = {
        "architectures": [arch], "model_type": MODEL_TYPES.get(family, family), "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
        "vocab_size": written.vocab_size + 8,  # padded, as Qwen's and Phi-3's configs are
        "tie_word_embeddings": family in ("gemma2", "gemma3"),
        "bos_token_id": written.bos_token_id, "eos_token_id": written.eos_token_id,
        "torch_dtype": {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[dtype],
        **extra,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    rng = np.random.default_rng(seed)
    weights = _random_weights(family, config, rng)
    weights = {k: _round(v, dtype) for k, v in weights.items()}
    names = sorted(weights)
    parts = [names[i::shards] for i in range(shards)]
    files = ["model.safetensors"] if shards == 1 else [
        f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)
    ]  # fmt: skip
    for file, part in zip(files, parts, strict=True):
        write_safetensors(folder / file, {k: weights[k] for k in part}, dtype)
    if shards > 1:
        weight_map = {k: f for f, p in zip(files, parts, strict=True) for k in p}
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return Checkpoint(folder, family, config, weights)


def _random_weights(family: str, c: dict[str, Any], rng: np.random.Generator) -> Weights:
    hidden, ffn, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    heads, kv = c["num_attention_heads"], c["num_key_value_heads"]
    dim = c.get("head_dim") or hidden // heads

    def mat(rows: int, cols: int) -> np.ndarray[Any, Any]:
        return rng.normal(0, 1 / math.sqrt(cols), (rows, cols)).astype(np.float32)

    def norm(n: int) -> np.ndarray[Any, Any]:
        # Gemma stores w of (1 + w): near zero; the others near one.
        centre = 0.0 if family.startswith("gemma") else 1.0
        return (centre + rng.normal(0, 0.1, n)).astype(np.float32)

    w: Weights = {"model.embed_tokens.weight": rng.normal(0, 1, (vocab, hidden)).astype(np.float32),
                  "model.norm.weight": norm(hidden)}  # fmt: skip
    if not c["tie_word_embeddings"]:
        w["lm_head.weight"] = mat(vocab, hidden)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(hidden)
        w[p + "post_attention_layernorm.weight"] = norm(hidden)
        w[p + "self_attn.o_proj.weight"] = mat(hidden, heads * dim)
        w[p + "mlp.down_proj.weight"] = mat(hidden, ffn)
        if family == "phi3":
            w[p + "self_attn.qkv_proj.weight"] = mat((heads + 2 * kv) * dim, hidden)
            w[p + "mlp.gate_up_proj.weight"] = mat(2 * ffn, hidden)
            continue
        w[p + "self_attn.q_proj.weight"] = mat(heads * dim, hidden)
        w[p + "self_attn.k_proj.weight"] = mat(kv * dim, hidden)
        w[p + "self_attn.v_proj.weight"] = mat(kv * dim, hidden)
        w[p + "mlp.gate_proj.weight"] = mat(ffn, hidden)
        w[p + "mlp.up_proj.weight"] = mat(ffn, hidden)
        if family == "qwen2":
            for x, n in (("q", heads), ("k", kv), ("v", kv)):
                w[p + f"self_attn.{x}_proj.bias"] = rng.normal(0, 0.5, n * dim).astype(np.float32)
        if family in ("qwen3", "gemma3"):
            w[p + "self_attn.q_norm.weight"] = norm(dim)
            w[p + "self_attn.k_norm.weight"] = norm(dim)
        if family.startswith("gemma"):
            w[p + "pre_feedforward_layernorm.weight"] = norm(hidden)
            w[p + "post_feedforward_layernorm.weight"] = norm(hidden)
    return w


def _round(data: np.ndarray[Any, Any], dtype: str) -> np.ndarray[Any, Any]:
    """The values a file of `dtype` holds, back in float32."""
    if dtype == "BF16":
        bits = data.astype(np.float32).view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16  # to nearest even
        return rounded.astype(np.uint32).view(np.float32)
    return data.astype(np.float16 if dtype == "F16" else np.float32).astype(np.float32)


def write_safetensors(path: Path, tensors: Weights, dtype: str) -> None:
    """A safetensors file as the format says (bf16 as the top half of float32's bits)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        data = tensors[name].astype(np.float32)
        if dtype == "BF16":
            raw = (data.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        else:
            raw = data.astype(np.float16 if dtype == "F16" else np.float32).tobytes()
        header[name] = {"dtype": dtype, "shape": list(data.shape),
                        "data_offsets": [offset, offset + len(raw)]}  # fmt: skip
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with path.open("wb") as out:
        out.write(len(text).to_bytes(8, "little") + text)
        for raw in blobs:
            out.write(raw)


def write_adapter(folder: Path, base: Checkpoint, *, rank: int = 4, alpha: float = 8.0,
                  seed: int = 1, rslora: bool = False) -> Weights:  # fmt: skip
    """A PEFT LoRA for `base` on every projection; returns the base's weights with it merged
    (W + scale * B @ A), which the reference runs."""
    rng = np.random.default_rng(seed)
    targets = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"] if base.family == "phi3" else [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # fmt: skip
    scale = alpha / math.sqrt(rank) if rslora else alpha / rank
    merged = dict(base.weights)
    tensors: Weights = {}
    for name, weight in base.weights.items():
        module = name.removesuffix(".weight")
        if not name.endswith(".weight") or module.rsplit(".", 1)[-1] not in targets:
            continue
        a = _round(rng.normal(0, 0.3, (rank, weight.shape[1])).astype(np.float32), "F32")
        b = _round(rng.normal(0, 0.3, (weight.shape[0], rank)).astype(np.float32), "F32")
        tensors[f"base_model.model.{module}.lora_A.weight"] = a
        tensors[f"base_model.model.{module}.lora_B.weight"] = b
        merged[name] = weight + scale * (b @ a)
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "adapter_model.safetensors", tensors, "F32")
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "use_rslora": rslora,
              "target_modules": targets, "base_model_name_or_path": str(base.folder),
              "task_type": "CAUSAL_LM", "bias": "none", "use_dora": False}  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return merged


# -- the reference forward pass ------------------------------------------------------------------


def reference_logits(
    ck: Checkpoint, ids: list[int], weights: Weights | None = None
) -> np.ndarray[Any, Any]:
    """The logits (one row a position) the Hugging Face model gives for `ids`, in float64."""
    c, f = ck.config, ck.family
    w = {k: v.astype(np.float64) for k, v in (weights or ck.weights).items()}
    hidden, heads, kv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    dim = c.get("head_dim") or hidden // heads
    gemma = f.startswith("gemma")
    eps = c["rms_norm_eps"]

    def rms(x: Any, g: Any) -> Any:
        y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
        return y * (1.0 + g) if gemma else y * g

    x = w["model.embed_tokens.weight"][ids]
    if gemma:
        x = x * np.float64(math.sqrt(hidden))
    n = len(ids)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        if f == "phi3":
            qkv = h @ w[p + "self_attn.qkv_proj.weight"].T
            q, k, v = np.split(qkv, [heads * dim, (heads + kv) * dim], axis=-1)
        else:
            q, k, v = (h @ w[p + f"self_attn.{x_}_proj.weight"].T for x_ in "qkv")
            if f == "qwen2":
                bias = [w[p + f"self_attn.{x_}_proj.bias"] for x_ in "qkv"]
                q, k, v = q + bias[0], k + bias[1], v + bias[2]
        q = q.reshape(n, heads, dim)
        k, v = k.reshape(n, kv, dim), v.reshape(n, kv, dim)
        if f in ("qwen3", "gemma3"):
            q, k = (
                rms(q, w[p + "self_attn.q_norm.weight"]),
                rms(k, w[p + "self_attn.k_norm.weight"]),
            )
        theta = c["rope_theta"]
        if f == "gemma3" and c["layer_types"][i] == "sliding_attention":
            theta = c["rope_local_base_freq"]
        cos, sin = _rope(c, f, theta, dim, n)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        k, v = np.repeat(k, heads // kv, axis=1), np.repeat(v, heads // kv, axis=1)
        scale = c["query_pre_attn_scalar"] ** -0.5 if gemma else dim**-0.5
        scores = np.einsum("qhd,khd->hqk", q, k) * scale
        if f == "gemma2":
            cap = c["attn_logit_softcapping"]
            scores = np.tanh(scores / cap) * cap
        scores = scores + np.triu(np.full((n, n), -np.inf), 1)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores = scores / scores.sum(-1, keepdims=True)
        out = np.einsum("hqk,khd->qhd", scores, v).reshape(n, heads * dim)
        out = out @ w[p + "self_attn.o_proj.weight"].T
        if gemma:
            out = rms(out, w[p + "post_attention_layernorm.weight"])
            x = x + out
            h = rms(x, w[p + "pre_feedforward_layernorm.weight"])
        else:
            x = x + out
            h = rms(x, w[p + "post_attention_layernorm.weight"])
        if f == "phi3":
            gate, up = np.split(h @ w[p + "mlp.gate_up_proj.weight"].T, 2, axis=-1)
        else:
            gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        act = _gelu_tanh(gate) if gemma else gate / (1 + np.exp(-gate))
        out = (act * up) @ w[p + "mlp.down_proj.weight"].T
        if gemma:
            out = rms(out, w[p + "post_feedforward_layernorm.weight"])
        x = x + out
    x = rms(x, w["model.norm.weight"])
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    logits = x @ head.T
    if c.get("final_logit_softcapping"):
        cap = c["final_logit_softcapping"]
        logits = np.tanh(logits / cap) * cap
    result: np.ndarray[Any, Any] = logits
    return result


def _rope(c: dict[str, Any], family: str, theta: float, dim: int, n: int) -> tuple[Any, Any]:
    inv = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    scaling = c.get("rope_scaling") or {}
    if scaling.get("rope_type") == "llama3":  # transformers' _compute_llama3_parameters
        factor, low, high = (
            scaling["factor"],
            scaling["low_freq_factor"],
            scaling["high_freq_factor"],
        )
        old = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        inv = np.where(medium, smoothed, scaled)
    angles = np.outer(np.arange(n, dtype=np.float64), inv)
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]


def _rotate(x: Any, cos: Any, sin: Any) -> Any:
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _gelu_tanh(x: Any) -> Any:
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
