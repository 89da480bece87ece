"""The architectures a safetensors checkpoint converts from, one row each.

A row gives llama.cpp's name for the architecture, the header keys its loader reads (from
config.json), and what each tensor needs on the way. The rules are those of llama.cpp's
convert_hf_to_gguf.py (conversion/{llama,qwen,gemma,phi}.py).

A tensor's GGUF name comes from gguf's own HF-name table. The numpy shape [out, in] is written
as it is, since GGUF stores dimensions reversed, which is ggml's order. Per architecture:
- Llama and Mistral: q and k rows permuted from Hugging Face's rotate-half to ggml's
  interleaved rotary order (weights, biases, and a LoRA's B); Llama 3's rope scaling written
  as a rope_freqs tensor;
- Gemma 2/3: RMSNorm scales the input by (1 + w): every norm weight is stored plus one;
  Gemma 2 never loads an output matrix (always tied);
- Phi-3: qkv_proj and gate_up_proj stay fused (attn_qkv, ffn_up); long-rope factors as tensors.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gguf
import numpy as np

from localrun.errors import CheckpointError

Config = dict[str, Any]
Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Architecture:
    name: str  # llama.cpp's (general.architecture)
    arch: gguf.MODEL_ARCH
    keys: Callable[[Config, gguf.GGUFWriter], None]
    permute_qk: bool = False
    norm_plus_one: bool = False
    drop: tuple[str, ...] = ()  # tensors llama.cpp never loads for it
    extra: Callable[[Config], list[tuple[str, Array]]] = lambda _: []
    defaults: Config = field(default_factory=dict)  # config.json fields it may leave out


# config.json's numbers, checked once where they enter (`of`): each a positive integer in a
# range real models have. Out of range, one would size tables and lists (a hostile
# num_hidden_layers of 10^9 builds a tensor-name map that size) or divide by zero.
_COUNTS = {
    "hidden_size": 1 << 17, "intermediate_size": 1 << 20, "num_hidden_layers": 4096,
    "num_attention_heads": 4096, "num_key_value_heads": 4096, "head_dim": 4096,
    "vocab_size": 1 << 23, "max_position_embeddings": 1 << 27,
    "original_max_position_embeddings": 1 << 27, "sliding_window": 1 << 27,
}  # fmt: skip
_NUMBERS = (
    "rms_norm_eps", "rope_theta", "rope_local_base_freq", "partial_rotary_factor",
    "attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar",
)  # fmt: skip
# rope_scaling's (or rope_parameters') numbers, each positive and no larger than this (real
# factors are 1 to 64; past float32, the GGUF's type, one could not be written).
_ROPE_NUMBERS = ("factor", "low_freq_factor", "high_freq_factor", "attention_factor",
                 "beta_fast", "beta_slow")  # fmt: skip
MAX_ROPE_FACTOR = 1e6
_REQUIRED = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "rms_norm_eps",
)


def _validate(config: Config, where: str) -> None:
    for key in _REQUIRED:
        need(config, key)
    for key, most in _COUNTS.items():
        value = config.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= most
        ):
            raise CheckpointError(
                f"{where}/config.json: {key} is {value!r:.40}, not a count from 1 to {most}"
            )
    for key in _NUMBERS:
        value = config.get(key)
        if value is not None and not positive(value):
            raise CheckpointError(f"{where}/config.json: {key} is {value!r:.40}, not a number")
    _validate_rope(config, where)
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    dim = config.get("head_dim") or config["hidden_size"] // heads
    if heads % kv or dim % 2 or (config.get("head_dim") is None and config["hidden_size"] % heads):
        raise CheckpointError(
            f"{where}/config.json: {heads} heads, {kv} key-value heads and a head of {dim} do "
            "not divide the model"
        )


def _validate_rope(config: Config, where: str) -> None:
    """Check that each of rope_scaling's factors is a positive finite number.

    A factor of 0 was converted into a model whose positions all rotate alike, and NaN into one
    of NaN frequencies.
    """
    for source in ("rope_scaling", "rope_parameters"):
        rope = config.get(source)
        if rope is not None and not isinstance(rope, dict):
            raise CheckpointError(f"{where}/config.json: {source} is not an object")
        rope = _rope({source: rope}) if rope else {}
        for key in _ROPE_NUMBERS:
            value = rope.get(key)
            if value is not None and not positive(value, MAX_ROPE_FACTOR):
                raise CheckpointError(
                    f"{where}/config.json: {source}.{key} is {value!r:.40}, not a number above 0 "
                    f"and at most {MAX_ROPE_FACTOR:g}"
                )
        old = rope.get("original_max_position_embeddings")
        if old is not None and (not isinstance(old, int) or isinstance(old, bool)
                                or not 0 < old <= _COUNTS["max_position_embeddings"]):  # fmt: skip
            raise CheckpointError(
                f"{where}/config.json: {source}.original_max_position_embeddings is {old!r:.40}, "
                "not a count"
            )
        for key in ("long_factor", "short_factor"):
            values = rope.get(key)
            listed = isinstance(values, list) and len(values) <= 1 << 16
            if values is not None and not (listed and all(positive(v, 1e6) for v in values)):
                raise CheckpointError(
                    f"{where}/config.json: {source}.{key} is not a list of positive numbers"
                )


def positive(value: Any, most: float = sys.float_info.max) -> bool:
    """Return whether `value` is a number above 0 and at most `most`, and so finite.

    NaN and infinity fail the comparison, and an integer too large for a float is never
    converted to one.
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= most


def need(config: Config, *keys: str) -> Any:
    """The first of `keys` config.json has; CheckpointError naming them if none."""
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    raise CheckpointError(f"config.json has no {keys[0]}", hint="use the model's own config.json")


def head_dim(config: Config) -> int:
    if config.get("head_dim") is not None:
        return int(config["head_dim"])
    return int(need(config, "hidden_size")) // int(need(config, "num_attention_heads"))


def kv_heads(config: Config) -> int:
    """Key-value heads: num_key_value_heads, else as many as attention heads (no GQA)."""
    return int(config.get("num_key_value_heads") or need(config, "num_attention_heads"))


def _sizes(config: Config, w: gguf.GGUFWriter) -> None:
    """The sizes every decoder here writes: layers, context, widths, heads, norm epsilon."""
    w.add_block_count(int(need(config, "num_hidden_layers")))
    w.add_context_length(int(need(config, "max_position_embeddings")))
    w.add_embedding_length(int(need(config, "hidden_size")))
    w.add_feed_forward_length(int(need(config, "intermediate_size")))
    w.add_head_count(int(need(config, "num_attention_heads")))
    w.add_head_count_kv(kv_heads(config))
    w.add_layer_norm_rms_eps(float(need(config, "rms_norm_eps")))


def _common(config: Config, w: gguf.GGUFWriter) -> None:
    """The keys every decoder here shares (TextModel.set_gguf_parameters)."""
    _sizes(config, w)
    rope = _rope(config)
    if rope.get("rope_theta") is not None:
        w.add_rope_freq_base(float(rope["rope_theta"]))
    if config.get("head_dim") is not None:
        w.add_key_length(int(config["head_dim"]))
        w.add_value_length(int(config["head_dim"]))
    kind, factor = rope.get("rope_type") or rope.get("type"), rope.get("factor")
    if kind == "linear" and factor:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(factor))
    elif kind == "yarn" and factor:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(factor))
        w.add_rope_scaling_orig_ctx_len(int(rope.get("original_max_position_embeddings") or 0))
    elif kind not in (None, "default", "llama3", "dynamic"):
        raise CheckpointError(f"config.json: rope scaling {kind!r} is not converted here")


def _rope(config: Config) -> Config:
    """The rope parameters, from rope_scaling or transformers 5's rope_parameters."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope = rope.get("full_attention", rope) if isinstance(rope, dict) else {}
    return {"rope_theta": config.get("rope_theta"), **rope}


def _llama_keys(config: Config, w: gguf.GGUFWriter) -> None:
    _common(config, w)
    w.add_vocab_size(int(need(config, "vocab_size")))
    w.add_rope_dimension_count(head_dim(config))


def _llama3_freqs(config: Config) -> list[tuple[str, Array]]:
    """Llama 3.1+'s scaled rotary frequencies (LlamaModel.generate_extra_tensors)."""
    rope = _rope(config)
    if (rope.get("rope_type") or rope.get("type")) != "llama3":
        return []
    dim = head_dim(config)
    base = float(rope.get("rope_theta") or 10000.0)
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
    return [(name, np.asarray(out, dtype=np.float32))]


def _gemma2_keys(config: Config, w: gguf.GGUFWriter) -> None:
    _sizes(config, w)
    w.add_key_length(head_dim(config))
    w.add_value_length(head_dim(config))
    w.add_attn_logit_softcapping(float(config.get("attn_logit_softcapping") or 50.0))
    w.add_final_logit_softcapping(float(config.get("final_logit_softcapping") or 30.0))
    w.add_sliding_window(int(config.get("sliding_window") or 4096))


def _gemma3_keys(config: Config, w: gguf.GGUFWriter) -> None:
    if config.get("attn_logit_softcapping") is not None:
        raise CheckpointError("config.json: Gemma 3 with attn_logit_softcapping is not converted")
    _common(config, w)  # head_dim and rope_theta are always there: the defaults have them
    w.add_rope_freq_base_swa(float(config.get("rope_local_base_freq") or 10000.0))
    if config.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    if config.get("sliding_window_pattern") != 1:
        w.add_sliding_window(int(config.get("sliding_window") or 4096))
    layer_types = config.get("layer_types")
    if isinstance(layer_types, list) and len(layer_types) == config["num_hidden_layers"]:
        w.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])


def _phi3_keys(config: Config, w: gguf.GGUFWriter) -> None:
    hidden, heads = int(need(config, "hidden_size")), int(need(config, "num_attention_heads"))
    _sizes(config, w)
    w.add_rope_scaling_orig_ctx_len(
        int(need(config, "original_max_position_embeddings", "max_position_embeddings"))
    )
    w.add_rope_dimension_count(
        int(float(config.get("partial_rotary_factor") or 1.0) * hidden) // heads
    )
    w.add_rope_freq_base(float(need(config, "rope_theta")))
    w.add_sliding_window(int(config.get("sliding_window") or 0))
    rope = config.get("rope_scaling") or {}
    if rope.get("long_factor") is not None:
        longest = int(need(config, "max_position_embeddings"))
        original = int(need(config, "original_max_position_embeddings"))
        scale = longest / original
        factor = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0
        w.add_rope_scaling_attn_factors(factor)


def _phi3_factors(config: Config) -> list[tuple[str, Array]]:
    rope = config.get("rope_scaling") or {}
    if (rope.get("type") or rope.get("rope_type")) not in ("su", "longrope"):
        return []
    long, short = rope.get("long_factor"), rope.get("short_factor")
    dims = int(config["hidden_size"]) // int(config["num_attention_heads"])
    if (
        not isinstance(long, list)
        or not isinstance(short, list)
        or not len(long) == len(short) == dims // 2
    ):
        raise CheckpointError("config.json: rope_scaling's long and short factors do not fit")
    names = gguf.TENSOR_NAMES
    return [
        (names[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight", np.asarray(long, np.float32)),
        (names[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight", np.asarray(short, np.float32)),
    ]


_LLAMA = Architecture(
    "llama", gguf.MODEL_ARCH.LLAMA, _llama_keys, permute_qk=True, extra=_llama3_freqs
)
# Gemma3TextConfig's defaults: Gemma 3's multimodal checkpoints leave most of them out.
_GEMMA3_DEFAULTS: Config = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216,
    "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10000.0, "sliding_window": 4096, "query_pre_attn_scalar": 256,
}  # fmt: skip

_GEMMA3 = Architecture(
    "gemma3", gguf.MODEL_ARCH.GEMMA3, _gemma3_keys, norm_plus_one=True, defaults=_GEMMA3_DEFAULTS
)
ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": _LLAMA,
    "MistralForCausalLM": _LLAMA,
    "Qwen2ForCausalLM": Architecture("qwen2", gguf.MODEL_ARCH.QWEN2, _common),
    "Qwen3ForCausalLM": Architecture("qwen3", gguf.MODEL_ARCH.QWEN3, _common),
    "Gemma2ForCausalLM": Architecture(
        "gemma2", gguf.MODEL_ARCH.GEMMA2, _gemma2_keys, norm_plus_one=True,
        drop=("lm_head.weight",),
    ),
    "Gemma3ForCausalLM": _GEMMA3,
    "Gemma3ForConditionalGeneration": _GEMMA3,
    "Phi3ForCausalLM": Architecture("phi3", gguf.MODEL_ARCH.PHI3, _phi3_keys, extra=_phi3_factors),
}  # fmt: skip


def of(config: Config, where: str) -> tuple[Architecture, Config]:
    """Return the row for a config.json, and the config as the row reads it.

    That config has a multimodal model's text_config merged over it, and the architecture's
    defaults under it.
    """
    names = config.get("architectures")
    name = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else None
    if name not in ARCHITECTURES:
        known = sorted({n.removesuffix("ForCausalLM") for n in ARCHITECTURES if "Causal" in n})
        raise CheckpointError(
            f"{where}: the {name or 'unnamed'} architecture is not one localrun converts",
            hint=f"localrun converts {', '.join(known)} checkpoints; convert others with "
            "llama.cpp's convert_hf_to_gguf.py and use the GGUF",
        )
    row = ARCHITECTURES[name]
    text = config.get("text_config")
    merged = {**row.defaults, **config, **(text if isinstance(text, dict) else {})}
    _validate(merged, where)
    quantized = merged.get("quantization_config")
    if quantized:
        method = quantized.get("quant_method", "?") if isinstance(quantized, dict) else "?"
        raise CheckpointError(
            f"{where}: a quantized checkpoint ({method})",
            hint="convert the model's full-precision (BF16/F16) checkpoint",
        )
    return row, merged


def permute(rows: Array, heads: int) -> Array:
    """Hugging Face's rotate-half rotary layout to ggml's interleaved one, on axis 0."""
    shaped = rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:])
    out: Array = shaped.swapaxes(1, 2).reshape(rows.shape)
    return out


def head_rows(row: Architecture, config: Config, name: str, rows: int) -> int:
    """Return the number of rows tensor `name`, of `rows` rows, is converted in chunks of.

    It is the rows of one attention head where the conversion permutes rows within each head
    (Llama's q and k), else 1.
    """
    heads = _permuted_heads(row, config, name)
    if heads is None:
        return 1
    if heads < 1 or rows % heads or (rows // heads) % 2:
        raise CheckpointError(
            f"tensor {name} has {rows} rows, which {heads} heads of rotary pairs do not divide",
            hint="the checkpoint and its config.json must be the same model's",
        )
    return rows // heads


def transform(row: Architecture, config: Config, name: str, data: Array, group: int = 1) -> Array:
    """Return a tensor's rows as the GGUF holds them, in float32 when they change.

    `data` is whole groups of `group` rows (head_rows) of the tensor.
    """
    if _permuted_heads(row, config, name) is not None:
        return permute(data, len(data) // group)
    if row.norm_plus_one and name.endswith("norm.weight"):
        return data.astype(np.float32) + 1.0
    return data


def _permuted_heads(row: Architecture, config: Config, name: str) -> int | None:
    if row.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
        return int(config["num_attention_heads"])
    if row.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
        return kv_heads(config)
    return None
