"""Write tiny GGUF fixtures for localrun's tests.

Everything here is built with the ``gguf`` package (``gguf.GGUFWriter``) and numpy only:

* :func:`write_tiny_model` - a tiny random-weight llama-architecture model that llama.cpp loads;
* :func:`write_tiny_lora` - a LoRA adapter GGUF matching that model;
* :func:`write_malformed` - broken files (truncated, bad magic, bad version, ...) made by writing
  a valid model and patching the exact bytes located with ``gguf.GGUFReader``.

``scripts/tiny_projectors.py`` holds the multimodal fixtures (a vision and an audio model with
their projectors) and ``scripts/tiny_reranker.py`` a reranker; the script writes them too.
Importing this module has no side effects. Run it as a script to write all fixtures::

    python scripts/make_test_models.py OUT_DIR
"""

from __future__ import annotations

import argparse
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
from gguf import (
    GGUFReader,
    GGUFType,
    GGUFValueType,
    GGUFWriter,
    Keys,
    LlamaFileType,
    TokenType,
)
from gguf.gguf_reader import ReaderField

__all__ = [
    "CHATML_TEMPLATE",
    "DEFAULT_PARAMS",
    "build_vocab",
    "main",
    "write_absurd_array_length",
    "write_all",
    "write_bad_magic",
    "write_bad_version",
    "write_empty",
    "write_malformed",
    "write_tensor_offset_past_end",
    "write_tiny_lora",
    "write_tiny_model",
    "write_truncated",
    "write_truncated_header",
    "write_zero_alignment",
]

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

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: A Qwen3-style reasoning template: the model opens <think> itself; `enable_thinking` false
#: closes an empty one in the generation prompt.
THINKING_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}{% endif %}"
)

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2

# Multi-character pieces first (they get the higher SentencePiece scores); every one of them can
# be built by merging two shorter pieces that are also in the vocabulary.
_MULTI_PIECES_TEXT = (
    "▁t ▁a ▁b ▁i ▁o ▁s ▁w ▁h ▁c th he in er an on re nd at en or es ed ll lo ld ng ▁th ▁the ▁is"
    " ▁of ▁to ▁and ▁in ▁it ▁on ▁he ▁hell ▁hello ▁wor ▁world ing"
)
_MULTI_PIECES = tuple(_MULTI_PIECES_TEXT.split())
_SINGLE_PIECES = ("▁", *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()")
_CONTROL_PIECES = ("<|im_start|>", "<|im_end|>")

# The ``extra_bytes`` padding columns are added to the FFN in multiples of this many.
_FFN_PAD_MULTIPLE = 32


#: Fill-in-the-middle control tokens (Qwen2.5-Coder's texts, which llama.cpp recognises).
FIM_PIECES = (
    "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|repo_name|>",
    "<|file_sep|>",
)  # fmt: skip


#: FIM tokens with texts llama.cpp does not know: found only by the GGUF's fim_*_token_id keys.
FIM_ID_PIECES = ("[INFILL_BEFORE]", "[INFILL_AFTER]", "[INFILL_HERE]")


def build_vocab(*, fim: bool | str = False) -> tuple[list[str], list[float], list[int]]:
    """Return ``(tokens, scores, token_types)`` of the tiny SentencePiece-style vocabulary.

    Layout: ``<unk>``, ``<s>``, ``</s>``, the 256 byte tokens ``<0x00>``..``<0xFF>``, about 130
    normal pieces (``▁the``, ``a``, ...) and the ChatML control tokens ``<|im_start|>`` and
    ``<|im_end|>`` last; with ``fim``, the FIM_PIECES control tokens after them (with
    ``fim="ids"``, FIM_ID_PIECES instead).
    """
    tokens = ["<unk>", "<s>", "</s>"]
    types = [int(TokenType.UNKNOWN), int(TokenType.CONTROL), int(TokenType.CONTROL)]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [int(TokenType.BYTE)] * 256
    scores = [0.0] * len(tokens)
    for rank, piece in enumerate(_MULTI_PIECES + _SINGLE_PIECES):
        tokens.append(piece)
        scores.append(-float(rank))
        types.append(int(TokenType.NORMAL))
    extra = FIM_ID_PIECES if fim == "ids" else FIM_PIECES if fim else ()
    for piece in _CONTROL_PIECES + extra:
        tokens.append(piece)
        scores.append(0.0)
        types.append(int(TokenType.CONTROL))
    return tokens, scores, types


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


def _add_vocab(
    writer: GGUFWriter, tokens: list[str], scores: list[float], types: list[int], template: str
) -> None:
    """The tiny SentencePiece-style vocabulary (build_vocab), its special tokens and template."""
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(template)


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
    (e.g. THINKING_TEMPLATE). ``swa > 0`` writes a granite_swa model instead (the same
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

    tokens, scores, types = build_vocab(fim=fim)
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
    _add_vocab(writer, tokens, scores, types, chat_template)
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


def write_all(writer: GGUFWriter) -> None:
    """Write the header, the metadata and the tensors added so far, and close the file."""
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


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
    _add_vocab(writer, tokens, scores, types, CHATML_TEMPLATE)
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


# --------------------------------------------------------------------------- malformed files
#
# Each sample is a valid small model patched in place. Byte positions come from gguf.GGUFReader
# (ReaderField.offset and .parts); the reader is dropped before the file is modified, so no
# memory map is open while the file is patched or truncated.


def write_split(
    source: str | os.PathLike[str], directory: str | os.PathLike[str], stem: str, parts: int = 3
) -> list[Path]:
    """Split a GGUF into `parts` files named `<stem>-0000i-of-0000n.gguf`, as gguf-split does.

    Every part carries the metadata and a share of the tensors, plus the `split.*` keys
    llama.cpp reads to load them as one model. Returns the parts in order.
    """
    from gguf import GGUFReader, GGUFValueType

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    reader = GGUFReader(source)
    arch = str(reader.fields["general.architecture"].contents())
    per_part = -(-len(reader.tensors) // parts)
    writer = GGUFWriter(directory / f"{stem}.gguf", arch, split_max_tensors=per_part)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor(
            tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(directory.glob(f"{stem}-*-of-*.gguf"))


def _write_small_valid(path: Path, *, alignment: int | None = None) -> Path:
    """Write the small valid model that the malformed samples are patched from."""
    return write_tiny_model(path, n_layer=1, alignment=alignment)


def _part_offset(field: ReaderField, index: int) -> int:
    """Return the file offset of ``field.parts[index]`` (parts are contiguous from the start)."""
    index %= len(field.parts)
    return field.offset + sum(int(part.nbytes) for part in field.parts[:index])


def _locate_part(path: Path, key: str, index: int) -> tuple[int, int]:
    """Return ``(file offset, value)`` of the scalar ``parts[index]`` of metadata field ``key``."""
    field = GGUFReader(path).fields[key]
    return _part_offset(field, index), int(field.parts[index][0])


def _locate_field(path: Path, key: str) -> tuple[int, int]:
    """Return ``(file offset, size in bytes)`` of metadata field ``key``."""
    field = GGUFReader(path).fields[key]
    return field.offset, sum(int(part.nbytes) for part in field.parts)


def _patch(path: Path, offset: int, old: bytes, new: bytes) -> None:
    """Overwrite ``old`` (checked) at ``offset`` with ``new`` (same length) in place."""
    if len(old) != len(new):
        raise ValueError("patch must not change the file size")
    with path.open("r+b") as f:
        f.seek(offset)
        if f.read(len(old)) != old:
            raise RuntimeError(f"{path}: unexpected bytes at offset {offset}")
        f.seek(offset)
        f.write(new)


def _truncate_to(path: Path, size: int) -> None:
    """Cut ``path`` down to ``size`` bytes."""
    with path.open("r+b") as f:
        f.truncate(size)


def write_truncated(path: str | os.PathLike[str]) -> Path:
    """Write a valid tiny model cut in the middle of its tensor data section."""
    path = _write_small_valid(Path(path))
    data_offset = int(GGUFReader(path).data_offset)
    _truncate_to(path, data_offset + (path.stat().st_size - data_offset) // 2)
    return path


def write_truncated_header(path: str | os.PathLike[str]) -> Path:
    """Write a valid tiny model cut in the middle of its metadata (the token list)."""
    path = _write_small_valid(Path(path))
    offset, size = _locate_field(path, Keys.Tokenizer.LIST)
    _truncate_to(path, offset + size // 2)
    return path


def write_bad_magic(path: str | os.PathLike[str]) -> Path:
    """Write a tiny model whose magic reads ``ggjt`` (the pre-GGUF llama.cpp format)."""
    path = _write_small_valid(Path(path))
    version_offset, _ = _locate_part(path, "GGUF.version", 0)
    _patch(path, version_offset - 4, b"GGUF", b"ggjt")  # the 4-byte magic precedes the version
    return path


def write_bad_version(path: str | os.PathLike[str]) -> Path:
    """Write a tiny model whose GGUF version field says 99."""
    path = _write_small_valid(Path(path))
    offset, version = _locate_part(path, "GGUF.version", 0)
    _patch(path, offset, struct.pack("<I", version), struct.pack("<I", 99))
    return path


def write_tensor_offset_past_end(path: str | os.PathLike[str]) -> Path:
    """Write a tiny model whose last tensor's (aligned) data offset points past the file end."""
    path = _write_small_valid(Path(path))
    reader = GGUFReader(path)
    field = reader.tensors[-1].field  # parts: name_len, name, n_dims, dims, type, offset
    offset, old_rel = _part_offset(field, 5), int(field.parts[5][0])
    data_offset, alignment = int(reader.data_offset), int(reader.alignment)
    del reader, field
    past_end = path.stat().st_size - data_offset + alignment
    new_rel = -(-past_end // alignment) * alignment
    _patch(path, offset, struct.pack("<Q", old_rel), struct.pack("<Q", new_rel))
    return path


def write_absurd_array_length(
    path: str | os.PathLike[str], *, key: str = Keys.Tokenizer.LIST
) -> Path:
    """Write a tiny model whose metadata array ``key`` declares 2**60 elements.

    Note: ``gguf.GGUFReader`` does not check the count against the file size; it parses "elements"
    up to the end of the file. With the default string array it then fails fast; with a numeric
    array (e.g. ``tokenizer.ggml.token_type``) it can loop forever on empty reads at EOF.
    """
    path = _write_small_valid(Path(path))
    if GGUFReader(path).fields[key].types[0] != GGUFValueType.ARRAY:
        raise ValueError(f"{key} is not an array field")
    # array field parts: key_len, key, value_type, item_type, count, items...
    offset, count = _locate_part(path, key, 4)
    _patch(path, offset, struct.pack("<Q", count), struct.pack("<Q", 2**60))
    return path


def write_zero_alignment(path: str | os.PathLike[str]) -> Path:
    """Write a tiny model whose ``general.alignment`` (uint32) is 0."""
    path = _write_small_valid(Path(path), alignment=32)
    offset, alignment = _locate_part(path, Keys.General.ALIGNMENT, -1)
    _patch(path, offset, struct.pack("<I", alignment), struct.pack("<I", 0))
    return path


def write_empty(path: str | os.PathLike[str]) -> Path:
    """Write a 0-byte file with a ``.gguf`` name."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def write_malformed(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Write every malformed sample into ``directory``; return ``{kind: path}``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    writers = {
        "truncated": write_truncated,
        "truncated_header": write_truncated_header,
        "bad_magic": write_bad_magic,
        "bad_version": write_bad_version,
        "tensor_offset_past_end": write_tensor_offset_past_end,
        "absurd_array_length": write_absurd_array_length,
        "zero_alignment": write_zero_alignment,
        "empty": write_empty,
    }
    return {kind: write(directory / f"{kind}.gguf") for kind, write in writers.items()}


def main(argv: list[str] | None = None) -> int:
    """Write the tiny model, its LoRA, the malformed samples, the multimodal models and the
    reranker into an output directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the GGUF files into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model weights")
    parser.add_argument("--f16", action="store_true", help="write f16 instead of f32 weights")
    parser.add_argument(
        "--extra-bytes", type=int, default=0, help="also write tiny-llama-big.gguf this much larger"
    )
    args = parser.parse_args(argv)
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    dtype: Literal["f32", "f16"] = "f16" if args.f16 else "f32"
    written = [
        write_tiny_model(out / "tiny-llama.gguf", seed=args.seed, dtype=dtype),
        write_tiny_lora(out / "tiny-llama-lora.gguf", base=DEFAULT_PARAMS),
    ]
    if args.extra_bytes:
        written.append(
            write_tiny_model(
                out / "tiny-llama-big.gguf",
                seed=args.seed,
                dtype=dtype,
                extra_bytes=args.extra_bytes,
            )
        )
    written += write_malformed(out / "malformed").values()
    from tiny_projectors import write_tiny_audio, write_tiny_vision  # they import this module
    from tiny_reranker import write_tiny_reranker

    written += [*write_tiny_vision(out), *write_tiny_audio(out)]
    written.append(write_tiny_reranker(out / "tiny-reranker.gguf"))
    for path in written:
        print(f"{path.stat().st_size:>12}  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
