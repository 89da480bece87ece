"""A PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors: what PEFT,
Unsloth and Axolotl save) converted to a GGUF LoRA for its base model, as llama.cpp's
convert_lora_to_gguf.py writes one.

The base is the GGUF the Modelfile's FROM names: its architecture, layer and head counts come
from its header and every adapted tensor must exist there with a matching shape, so an adapter
for another model is refused at create, not at load. A tensor `W` adapted by `B @ A` keeps A
and B as PEFT stores them ([r, in] and [out, r], which GGUF's reversed dimensions make ggml's
order); what the base's conversion does to W's rows (Llama's q/k permutation) is done to B's.
llama.cpp scales B @ A by alpha / r with r read from each B; PEFT's own scale (rsLoRA's
alpha / sqrt(r), per-module rank and alpha patterns) is folded into B so both agree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from localrun.errors import CheckpointError
from localrun.gguf import scan
from localrun.recipes import architectures
from localrun.recipes.checkpoint import Tensor, read_json, shard_files, tensors
from localrun.recipes.convert import F32, Progress, write_streamed

_LORA = re.compile(
    r"(?:base_model\.model\.)?(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?"
)


def adapter(folder: Path, base: Path, target: Path, progress: Progress | None = None) -> None:
    """Write the GGUF LoRA of adapter `folder`, made for the GGUF model `base`, to `target`."""
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
    alpha = settings.get("lora_alpha")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise CheckpointError(f"{folder}/adapter_config.json: no lora_alpha")
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
    names = gguf.get_tensor_name_map(row.arch, blocks)
    pairs = _pairs(folder, tensors(shard_files(folder, "adapter_model")))
    writer = gguf.GGUFWriter(target, arch)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_name(folder.resolve().name)
        jobs: list[tuple[Callable[[], Any], gguf.GGMLQuantizationType]] = []
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
            scale = _scale(settings, module, rank) * rank / float(alpha)
            a_shape = (a.shape[1], a.shape[0]) if embedding else a.shape
            for suffix, shape, make in (
                ("lora_a", a_shape, lambda a=a, e=embedding: a.f32().T if e else a.f32()),
                ("lora_b", b.shape, lambda b=b, m=module, s=scale: _b(row, m, b, s, heads, kv)),
            ):
                writer.add_tensor_info(f"{mapped}.{suffix}", shape, np.dtype(np.float32),
                                       math.prod(shape) * 4, raw_dtype=F32)  # fmt: skip
                jobs.append((make, F32))
        write_streamed(writer, target, jobs, progress)
    finally:
        writer.close()


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


def _scale(settings: dict[str, Any], module: str, rank: int) -> float:
    """PEFT's scale for a module: alpha / r, or alpha / sqrt(r) with rsLoRA, with the
    per-module patterns PEFT matches on the module's name."""
    alpha = float(settings["lora_alpha"])
    patterns = settings.get("alpha_pattern") or {}
    for key, value in patterns.items() if isinstance(patterns, dict) else ():
        try:  # PEFT's keys are regular expressions over the module's name
            matched = re.search(rf"(^|\.){key}$", module) is not None
        except re.error:
            raise CheckpointError(
                f"adapter_config.json: alpha_pattern {key!r:.60} is not a pattern"
            ) from None
        if matched and isinstance(value, (int, float)) and value > 0:
            alpha = float(value)
    return alpha / math.sqrt(rank) if settings.get("use_rslora") else alpha / rank


def _b(row: architectures.Architecture, module: str, b: Tensor, scale: float, heads: int,
       kv: int) -> Any:  # fmt: skip
    data = b.f32() * np.float32(scale)
    if row.permute_qk and module.endswith("q_proj"):
        return architectures.permute(data, heads)
    if row.permute_qk and module.endswith("k_proj"):
        return architectures.permute(data, kv)
    return data
