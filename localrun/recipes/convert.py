"""A Hugging Face safetensors checkpoint folder converted to one GGUF file, streamed.

What a fine-tune (PEFT merged, Unsloth, Axolotl) or a hub download holds: config.json, the
tokenizer files and one or many `model*.safetensors`. The header (architecture keys, the
vocabulary, the chat template from tokenizer_config.json or chat_template.jinja) is written
first. Then each tensor is read, transformed and written a chunk of rows at a time
(checkpoint.CHUNK), so memory holds one chunk, never a tensor. A sparse checkpoint of 0 bytes
on disk whose config allows a 2^22 x 64 embedding took 2.9 GB when a tensor was made whole.
The caller gives a temporary file of the store's and removes it if this fails or is
interrupted: nothing half-written is ever a model.

Types follow llama.cpp's converter: norms, biases and vectors F32; the matrices BF16 from a
BF16 checkpoint (the bits copied), else F16. Every tensor's name and shape is checked against
config.json before the file is started, so a checkpoint that disagrees with its config is
refused in one line instead of failing in llama.cpp's loader.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from localrun.errors import CheckpointError
from localrun.recipes import architectures, tokenizer
from localrun.recipes.architectures import Architecture, Config
from localrun.recipes.checkpoint import (
    Tensor,
    check_folder,
    read_json,
    shard_files,
    tensors,
    widen,
)

Progress = Callable[[int, int], None]
Make = Callable[[], Iterable[Any]]  # a tensor's data in chunks of rows, made as it is written
Kind = gguf.GGMLQuantizationType
F32, F16, BF16 = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                  gguf.GGMLQuantizationType.BF16)  # fmt: skip
# Tensors of a multimodal checkpoint that are not the text model's (TextModel.filter_tensors).
_NOT_TEXT = ("vision_tower.", "multi_modal_projector.", "vision_model.", "audio_tower.",
             "visual.", "mm_projector.")  # fmt: skip


def checkpoint(folder: Path, target: Path, progress: Progress | None = None) -> None:
    """Write the GGUF of checkpoint `folder` to `target` (a new file)."""
    check_folder(folder)
    row, config = architectures.of(read_json(folder / "config.json", "checkpoint"), str(folder))
    found = tensors(shard_files(folder, "model"))
    rows = _check_counts(config, found, folder)
    vocab = tokenizer.read(folder, rows)
    plan = _plan(row, config, found, len(vocab.tokens), folder)
    source_type = next((t.dtype for _, t in plan if len(t.shape) == 2), "F16")
    matrices = BF16 if source_type == "BF16" else F16
    writer = gguf.GGUFWriter(target, row.name)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(folder.resolve().name)
        row.keys(config, writer)
        writer.add_file_type(
            gguf.LlamaFileType.MOSTLY_BF16 if matrices == BF16 else gguf.LlamaFileType.MOSTLY_F16
        )
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        vocab.write(writer, folder)
        jobs: list[tuple[str, tuple[int, ...], gguf.GGMLQuantizationType, Make]] = []
        for name, data in row.extra(config):
            jobs.append((name, data.shape, F32, functools.partial(_whole, data)))
        for name, tensor in plan:
            kind = _type_of(name, tensor, matrices)
            make = functools.partial(_data, row, config, tensor, kind)
            jobs.append((name, tensor.shape, kind, make))
        for name, shape, kind, _ in jobs:
            width = 4 if kind == F32 else 2
            dtype = np.dtype(np.float32 if kind == F32 else np.float16)
            writer.add_tensor_info(name, shape, dtype, math.prod(shape) * width, raw_dtype=kind)
        write_streamed(writer, target, [(make, kind) for _, _, kind, make in jobs], progress)
    finally:
        writer.close()


def write_streamed(
    writer: gguf.GGUFWriter,
    target: Path,
    jobs: list[tuple[Make, gguf.GGMLQuantizationType]],
    progress: Progress | None,
) -> None:
    """Write the header, then each tensor's chunks, made and written one at a time.

    Only one chunk is in memory at a time. Each tensor is aligned as gguf's writer aligns it.
    """
    writer.write_header_to_file(target)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None and len(writer.fout) == 1
    out, infos = writer.fout[0], list(writer.tensors[0].values())
    total = sum(info.nbytes for info in infos)
    done = 0
    for (make, kind), info in zip(jobs, infos, strict=True):
        writer.write_padding(out, out.tell())
        written = 0
        for chunk in make():
            data = np.ascontiguousarray(chunk)
            if kind in (F32, F16):
                data = data.astype(np.float32 if kind == F32 else np.float16, copy=False)
            data.tofile(out)
            written += data.nbytes
            done += data.nbytes
            if progress is not None:
                progress(done, total)
        if written != info.nbytes:  # the plan and the data disagree: never a file that lies
            raise CheckpointError(f"a tensor of {info.nbytes} bytes was written as {written}")
        writer.write_padding(out, written)
    writer.tensors[0].clear()
    writer.state = gguf.WriterState.WEIGHTS


def _whole(data: Any) -> Iterator[Any]:
    yield np.asarray(data)


def _check_counts(config: Config, found: dict[str, Tensor], folder: Path) -> int:
    """Return the embedding's rows, the vocabulary's size, once config.json's counts hold.

    config.json's layer and token counts are held against the tensors the files hold before
    anything is sized by them.
    """
    text = {n.replace("language_model.", ""): t for n, t in found.items()}
    text = {n: t for n, t in text.items() if not n.startswith(_NOT_TEXT)}
    layers = {int(m.group(1)) for n in text if (m := re.search(r"\.layers\.(\d+)\.", n))}
    blocks = int(config["num_hidden_layers"])
    if layers and max(layers) + 1 != blocks:
        raise CheckpointError(
            f"{folder}: config.json says {blocks} layers, the checkpoint holds {max(layers) + 1}",
            hint="the checkpoint and its config.json must be the same model's",
        )
    embedding = text.get("model.embed_tokens.weight")
    if embedding is None or len(embedding.shape) != 2:
        raise CheckpointError(
            f"{folder}: the checkpoint has no token embedding (model.embed_tokens)"
        )
    rows = embedding.shape[0]
    if config.get("vocab_size") not in (None, rows):
        raise CheckpointError(
            f"{folder}: config.json's vocab_size is {config['vocab_size']}, the token embedding "
            f"has {rows} rows",
            hint="the checkpoint and its config.json must be the same model's",
        )
    return int(rows)


def _plan(row: Architecture, config: Config, found: dict[str, Tensor], n_vocab: int,
          folder: Path) -> list[tuple[str, Tensor]]:  # fmt: skip
    """(GGUF name, tensor) for every tensor the model has, each name and shape checked."""
    blocks = int(architectures.need(config, "num_hidden_layers"))
    names = gguf.get_tensor_name_map(row.arch, blocks)
    shapes = _expected(row, config, n_vocab)
    plan: list[tuple[str, Tensor]] = []
    for name, tensor in found.items():
        text = name.replace("language_model.", "")
        if text.startswith(_NOT_TEXT) or text.endswith(".rotary_emb.inv_freq") or text in row.drop:
            continue
        mapped = names.get_name(text, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise CheckpointError(
                f"{folder}: tensor {name} is not part of a {row.name} model of {blocks} layers",
                hint="the checkpoint and its config.json must be the same model's",
            )
        want = shapes.get(mapped.split(".", 2)[-1] if mapped.startswith("blk.") else mapped)
        if want is not None and tensor.shape != want:
            raise CheckpointError(
                f"{folder}: tensor {name} has shape {list(tensor.shape)}, but config.json "
                f"makes it {list(want)}",
                hint="the checkpoint and its config.json must be the same model's",
            )
        plan.append((mapped, tensor))
    have = {mapped for mapped, _ in plan}
    for needed in ("token_embd.weight", f"blk.{blocks - 1}.attn_norm.weight"):
        if needed not in have:
            raise CheckpointError(
                f"{folder}: the checkpoint has no {needed} tensor (its files are incomplete)"
            )
    return plan


def _expected(row: Architecture, config: Config, n_vocab: int) -> dict[str, tuple[int, ...]]:
    """The shapes config.json gives the main tensors (a block's without its blk.N. prefix)."""
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    kv = architectures.kv_heads(config)
    ffn, dim = int(config["intermediate_size"]), architectures.head_dim(config)
    shapes = {
        "token_embd.weight": (n_vocab, hidden),
        "output.weight": (n_vocab, hidden),
        "output_norm.weight": (hidden,),
        "attn_norm.weight": (hidden,),
        "attn_q.weight": (heads * dim, hidden),
        "attn_k.weight": (kv * dim, hidden),
        "attn_v.weight": (kv * dim, hidden),
        "attn_output.weight": (hidden, heads * dim),
        "ffn_gate.weight": (ffn, hidden),
        "ffn_up.weight": (ffn, hidden),
        "ffn_down.weight": (hidden, ffn),
        "attn_q_norm.weight": (dim,),
        "attn_k_norm.weight": (dim,),
    }
    if row.name == "phi3":
        shapes["attn_qkv.weight"] = ((heads + 2 * kv) * dim, hidden)
        shapes["ffn_up.weight"] = (2 * ffn, hidden)
    return shapes


def _type_of(name: str, tensor: Tensor, matrices: Kind) -> Kind:
    if len(tensor.shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return F32
    return matrices


def _data(row: Architecture, config: Config, tensor: Tensor, kind: Kind) -> Iterator[Any]:
    """Yield a tensor's data as the GGUF stores it, a chunk of whole heads at a time.

    The checkpoint's BF16 or F16 values are copied, permuted where they must be. Others go
    through float32 (a Gemma norm's +1, F32 weights).
    """
    group = architectures.head_rows(row, config, tensor.name, tensor.rows)
    copied = (kind, tensor.dtype) in ((BF16, "BF16"), (F16, "F16"))
    for chunk in tensor.chunks(group):
        if copied:
            yield architectures.transform(row, config, tensor.name, chunk, group)
            continue
        data = architectures.transform(row, config, tensor.name, widen(tensor.dtype, chunk), group)
        if kind == BF16:
            data = gguf.quants.quantize(np.asarray(data, dtype=np.float32), kind)
        yield data
