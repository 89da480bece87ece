"""A PEFT LoRA adapter folder converted to a GGUF LoRA for its base model.

The folder (adapter_config.json, adapter_model.safetensors) is what PEFT, Unsloth and Axolotl
save; the GGUF is what llama.cpp's convert_lora_to_gguf.py writes.

The base is the GGUF the Modelfile's FROM names. Its architecture, layer and head counts come
from its header, and every adapted tensor must exist there with a matching shape. So an adapter
for another model is refused at create, not at load. A tensor `W` adapted by `B @ A` keeps A
and B as PEFT stores them ([r, in] and [out, r], which GGUF's reversed dimensions make ggml's
order). What the base's conversion does to W's rows (Llama's q/k permutation) is done to B's.
llama.cpp scales B @ A by alpha / r, with r read from each B. PEFT's own scale (rsLoRA's
alpha / sqrt(r), per-module rank and alpha patterns) is folded into B so both agree.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from localrun.errors import CheckpointError
from localrun.gguf import scan
from localrun.recipes import architectures
from localrun.recipes.checkpoint import (
    Tensor,
    check_folder,
    read_json,
    shard_files,
    tensors,
    widen,
)
from localrun.recipes.convert import F32, Make, Progress, write_streamed
from localrun.recipes.patterns import MAX_PATTERNS, MAX_STEPS, Pattern

_LORA = re.compile(
    r"(?:base_model\.model\.)?(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?"
)


def adapter(folder: Path, base: Path, target: Path, progress: Progress | None = None) -> None:
    """Write the GGUF LoRA of adapter `folder`, made for the GGUF model `base`, to `target`."""
    check_folder(folder)
    settings = _read_settings(folder)
    patterns = _settings(folder, settings)  # lora_alpha is there, and a number
    alpha, rslora, budget = float(settings["lora_alpha"]), bool(settings.get("use_rslora")), [
        MAX_STEPS]  # fmt: skip
    # The project's own bounded header walk (cached per file), not gguf's reader, which reads
    # every array element of the vocabulary in Python.
    header = scan.scan(base)
    arch = str(header.metadata.get("general.architecture") or "")
    row = next((r for r in architectures.ARCHITECTURES.values() if r.name == arch), None)
    if row is None:
        known = sorted({r.name for r in architectures.ARCHITECTURES.values()})
        raise CheckpointError(
            f"{folder}: the base model is {arch or 'of no known architecture'}; localrun converts "
            f"adapters for {', '.join(known)} models",
        )
    blocks = int(header.arch_value("block_count") or 0)
    heads = int(header.arch_value("attention.head_count") or 0)
    kv = int(header.arch_value("attention.head_count_kv") or heads)
    shapes = {t.name: tuple(reversed(t.dims)) for t in header.tensors}
    config = {"num_attention_heads": heads, "num_key_value_heads": kv}  # what B's rows need
    names = gguf.get_tensor_name_map(row.arch, blocks)
    pairs = _pairs(folder, tensors(shard_files(folder, "adapter_model")))
    writer = gguf.GGUFWriter(target, arch)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_name(folder.resolve().name)
        jobs: list[tuple[Make, gguf.GGMLQuantizationType]] = []
        for module, (a, b, embedding) in sorted(pairs.items()):
            mapped = names.get_name(module + ".weight", try_suffixes=(".weight",))
            if mapped is None or mapped not in shapes:
                raise CheckpointError(
                    f"{folder}: the adapter changes {module}, which the {arch} base model has not",
                    hint="use an adapter trained for this base model",
                )
            rank = a.shape[0]
            made = (b.shape[0], a.shape[1]) if not embedding else (a.shape[1], b.shape[0])
            if made != shapes[mapped] or b.shape[1] != rank:
                raise CheckpointError(
                    f"{folder}: {module}'s adapter makes a {list(made)} matrix; the base model's "
                    f"{mapped} is {list(shapes[mapped])}",
                    hint="use an adapter trained for this base model",
                )
            scale = _scale(patterns, alpha, rslora, module, rank, budget) * rank / alpha
            a_shape = (a.shape[1], a.shape[0]) if embedding else a.shape
            for suffix, shape, make in (
                ("lora_a", a_shape, functools.partial(_a, a, embedding)),
                ("lora_b", b.shape, functools.partial(_b, row, config, module, b, scale)),
            ):
                writer.add_tensor_info(f"{mapped}.{suffix}", shape, np.dtype(np.float32),
                                       math.prod(shape) * 4, raw_dtype=F32)  # fmt: skip
                jobs.append((make, F32))
        write_streamed(writer, target, jobs, progress)
    finally:
        writer.close()


def _read_settings(folder: Path) -> dict[str, Any]:
    """adapter_config.json, refused unless it describes a LoRA (not DoRA, not another PEFT)."""
    settings = read_json(folder / "adapter_config.json", "adapter")
    if not isinstance(settings, dict):
        raise CheckpointError(f"{folder}/adapter_config.json: not an object")
    if str(settings.get("peft_type", "LORA")).upper() != "LORA":
        raise CheckpointError(
            f"{folder}: a {settings.get('peft_type')} adapter; llama.cpp applies LoRA adapters"
        )
    if settings.get("use_dora"):
        raise CheckpointError(
            f"{folder}: a DoRA adapter (its magnitude vectors are not a LoRA's)",
            hint="merge it into the model (PEFT's merge_and_unload) and convert the merged model",
        )
    return settings


def _pairs(folder: Path, found: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor, bool]]:
    """module -> (A, B, is an embedding's), every A with its B; what is no LoRA refused."""
    halves: dict[str, dict[str, Tensor]] = {}
    for name, tensor in found.items():
        match = _LORA.fullmatch(name)
        if match is None:
            if "norm" in name:
                continue  # llama.cpp ignores norms in an adapter
            what = "a DoRA magnitude" if "magnitude" in name else "a full weight"
            raise CheckpointError(
                f"{folder}: tensor {name} is {what}, not a LoRA's (modules_to_save, DoRA or a "
                "bias)",
                hint="merge the adapter into the model (merge_and_unload) and convert that",
            )
        module = match.group(1).replace("language_model.", "")
        halves.setdefault(module, {})[match.group(2)] = tensor
    out = {}
    for module, parts in halves.items():
        embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a = parts.get("lora_embedding_A" if embedding else "lora_A")
        b = parts.get("lora_embedding_B" if embedding else "lora_B")
        if a is None or b is None or len(a.shape) != 2 or len(b.shape) != 2:
            raise CheckpointError(f"{folder}: {module} has half a LoRA (an A without its B)")
        out[module] = (a, b, embedding)
    if not out:
        raise CheckpointError(f"{folder}: the adapter has no LoRA tensors")
    return out


def _scale(patterns: list[tuple[Pattern, float]], alpha: float, rslora: bool, module: str,
           rank: int, budget: list[int]) -> float:  # fmt: skip
    """Return PEFT's scale for a module: alpha / r, or alpha / sqrt(r) with rsLoRA.

    The alpha is that of the first alpha_pattern key matching the module's name, as peft's
    get_pattern_key picks it.
    """
    for pattern, value in patterns:
        if pattern.match(module, budget):
            alpha = value
            break
    return alpha / math.sqrt(rank) if rslora else alpha / rank


# lora_alpha and r as real adapters have them (8 to 512, ranks to 256): a bound far above,
# so a value of 1e308 (past float32, the GGUF's type) or NaN is refused, not written.
MAX_ALPHA = 1e6
MAX_RANK = 1 << 16


def _number(folder: Path, what: str, value: Any, most: float, *, count: bool = False) -> float:
    if not architectures.positive(value, most) or (count and not isinstance(value, int)):
        raise CheckpointError(
            f"{folder}/adapter_config.json: {what} is {value!r:.40}, not a "
            + (f"count from 1 to {most:.0f}" if count else f"number above 0 and at most {most:g}")
        )
    return float(value)


def _settings(folder: Path, settings: dict[str, Any]) -> list[tuple[Pattern, float]]:
    """Check adapter_config.json's numbers and compile alpha_pattern's keys.

    The numbers are lora_alpha, r and the patterns' values. Each problem is refused in one line.
    """
    if settings.get("lora_alpha") is None:
        raise CheckpointError(f"{folder}/adapter_config.json: no lora_alpha")
    _number(folder, "lora_alpha", settings["lora_alpha"], MAX_ALPHA)
    if settings.get("r") is not None:
        _number(folder, "r", settings["r"], MAX_RANK, count=True)
    compiled = []
    for field, most, count in (("rank_pattern", MAX_RANK, True), ("alpha_pattern", MAX_ALPHA,
                                                                  False)):  # fmt: skip
        patterns = settings.get(field) or {}
        if not isinstance(patterns, dict):
            raise CheckpointError(f"{folder}/adapter_config.json: {field} is not an object")
        if len(patterns) > MAX_PATTERNS:
            raise CheckpointError(
                f"{folder}/adapter_config.json: {field} has {len(patterns)} keys; localrun "
                f"matches up to {MAX_PATTERNS}"
            )
        for key, value in patterns.items():
            value = _number(folder, f"{field}[{key!r:.60}]", value, most, count=count)
            if field == "alpha_pattern":  # a rank is read from each B, not matched
                compiled.append((Pattern(key, folder), value))
    return compiled


def _a(a: Tensor, embedding: bool) -> Iterator[Any]:
    """Yield A in float32, in chunks of rows.

    An embedding's A is transposed ([in, r]) and read a block of its columns at a time.
    """
    if not embedding:
        for chunk in a.chunks():
            yield widen(a.dtype, chunk)
        return
    for block in a.column_chunks():
        yield widen(a.dtype, block).T


def _b(row: architectures.Architecture, config: dict[str, Any], module: str, b: Tensor,
       scale: float) -> Iterator[Any]:  # fmt: skip
    """Yield B scaled, a chunk of whole heads at a time.

    Its rows are permuted as the base's conversion permuted W's.
    """
    name = f"{module}.weight"
    group = architectures.head_rows(row, config, name, b.rows)
    for chunk in b.chunks(group):
        data = widen(b.dtype, chunk) * np.float32(scale)
        yield architectures.transform(row, config, name, data, group)
