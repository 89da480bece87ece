"""A Hugging Face tokenizer as llama.cpp's vocabulary: the GGUF `tokenizer.ggml.*` keys.

Two kinds, as llama.cpp's convert_hf_to_gguf.py writes them, without transformers:
- byte-level BPE (Llama 3, Qwen 2/3, SmolLM): `gpt2` with tokens, types and merges; the
  pre-tokenizer (`tokenizer.ggml.pre`) named from tokenizer.json's own regex, where llama.cpp
  hashes a tokenization that would need transformers;
- SentencePiece (Llama 2, Mistral, Gemma, Phi-3): `llama` with tokens, scores and types, from
  tokenizer.model (a protobuf, read here without the sentencepiece package) or, without it,
  from tokenizer.json's byte-fallback BPE, each merged piece scored by its merge's rank (what
  SentencePiece's own BPE scores order; llama.cpp merges the best-scored pair first).
Special tokens, add_bos/add_eos and the chat template come from gguf's SpecialVocab
(tokenizer_config.json, chat_template.jinja), which needs no tokenizer runtime either.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from localrun.errors import CheckpointError
from localrun.recipes.checkpoint import read_bounded, read_json

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# tokenizer.json's pre-tokenizer regexes and the names llama.cpp gives them (llama-vocab.cpp).
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_BY_REGEX = {_LLAMA3: "llama-bpe", _QWEN2: "qwen2", _TEKKEN: "tekken"}
_LOOKS_SPECIAL = re.compile(r"<\|.*\|>|<｜.*｜>|<unused\d*>|<pad>|<mask>|<2mass>|\[@BOS@\]")
_BYTE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass
class Vocabulary:
    model: str  # "gpt2" or "llama"
    pre: str
    tokens: list[str] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    scores: list[float] | None = None
    add_space_prefix: bool | None = None

    def write(self, writer: gguf.GGUFWriter, folder: Path) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        # gguf's SpecialVocab reads these with a bare json.load: each is read here first, bounded
        # and checked, so that a damaged one is said in one line.
        for name in ("tokenizer_config.json", "chat_template.json"):
            found = read_json(folder / name, "tokenizer", required=False)
            if found is not None and not isinstance(found, dict):
                raise CheckpointError(f"{folder}/{name}: not a JSON object")
        try:
            special = gguf.SpecialVocab(
                folder, load_merges=self.model == "gpt2", n_vocab=len(self.tokens)
            )
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise CheckpointError(f"{folder}: its special tokens cannot be read ({exc})") from exc
        if self.model == "gpt2" and not special.merges:
            raise CheckpointError(f"{folder}/tokenizer.json: a BPE tokenizer without merges")
        special.add_to_gguf(writer, quiet=True)


def read(folder: Path, size: int | None) -> Vocabulary:
    """Return the vocabulary of a checkpoint folder, padded to `size` tokens.

    `size` is config.json's vocab_size, the embedding's rows. Padding fills in where the
    tokenizer has fewer tokens.
    """
    described = read_json(folder / "tokenizer.json", "tokenizer", required=False)
    spm = folder / "tokenizer.model"
    if described is None and not spm.is_file():
        raise CheckpointError(
            f"{folder}: no tokenizer.json or tokenizer.model",
            hint="copy the tokenizer files of the base model into the folder",
        )
    model = described.get("model") if isinstance(described, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        if spm.is_file():
            return _sentencepiece(folder, spm, described, size)
        kind = model.get("type") if isinstance(model, dict) else None
        raise CheckpointError(
            f"{folder}/tokenizer.json: a {kind or 'unknown'} tokenizer; localrun converts BPE "
            "and SentencePiece tokenizers"
        )
    assert isinstance(described, dict)  # `model` was read from it
    if model.get("byte_fallback"):
        if spm.is_file():  # the original, with SentencePiece's own scores
            return _sentencepiece(folder, spm, described, size)
        return _byte_fallback(folder, described, model, size)
    return _byte_level(folder, described, model, size)


def _byte_level(folder: Path, described: dict[str, Any], model: dict[str, Any],
                size: int | None) -> Vocabulary:  # fmt: skip
    vocab = _vocab(folder, model)
    added = _added(described)
    tokens, types = _layout(vocab, added, size, folder)
    return Vocabulary("gpt2", _pre(folder, described), tokens, types)


def _byte_fallback(folder: Path, described: dict[str, Any], model: dict[str, Any],
                   size: int | None) -> Vocabulary:  # fmt: skip
    vocab = _vocab(folder, model)
    added = _added(described)
    tokens, types = _layout(vocab, added, size, folder)
    ranks: dict[str, int] = {}
    for rank, merge in enumerate(model.get("merges") or []):
        pair = merge.split(" ", 1) if isinstance(merge, str) else merge
        if isinstance(pair, list) and len(pair) == 2:
            ranks.setdefault(str(pair[0]) + str(pair[1]), rank)
    unk = model.get("unk_token")
    scores = []
    for index, token in enumerate(tokens):
        if types[index] == NORMAL and token == unk:
            types[index] = UNKNOWN
        if types[index] == NORMAL:
            scores.append(-float(ranks.get(token, len(ranks) + index)))
        else:
            scores.append(-1000.0 if types[index] in (USER_DEFINED, UNUSED) else 0.0)
    return Vocabulary("llama", "default", tokens, types, scores, _space_prefix(described))


def _vocab(folder: Path, model: dict[str, Any]) -> dict[int, str]:
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise CheckpointError(f"{folder}/tokenizer.json: its model has no vocab")
    out: dict[int, str] = {}
    for token, index in vocab.items():
        if not isinstance(index, int) or index < 0 or index in out:
            raise CheckpointError(f"{folder}/tokenizer.json: token {token!r:.40} has a bad id")
        out[index] = token
    return out


def _added(described: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {
        a["id"]: a
        for a in described.get("added_tokens") or []
        if isinstance(a, dict)
        and isinstance(a.get("id"), int)
        and isinstance(a.get("content"), str)
    }


def _layout(vocab: dict[int, str], added: dict[int, dict[str, Any]], size: int | None,
            folder: Path) -> tuple[list[str], list[int]]:  # fmt: skip
    """Return the tokens and their types in id order.

    Added tokens are typed as llama.cpp types them. Gaps and the tail up to `size` are filled
    with unique [PADn] tokens.
    """
    highest = max([*vocab, *added], default=-1)
    count = size if size is not None else highest + 1
    if highest >= count:
        raise CheckpointError(
            f"{folder}: the tokenizer has token id {highest}, but config.json's vocab_size is "
            f"{count}"
        )
    _check_padding(folder, count, len(vocab.keys() | added.keys()))
    tokens, types = [], []
    for index in range(count):
        if index in added:
            text = added[index]["content"]
            if added[index].get("special") or _LOOKS_SPECIAL.fullmatch(text):
                tokens.append(text)
                types.append(CONTROL)
            else:
                tokens.append(text.replace("\u2581", " "))
                types.append(USER_DEFINED)
        elif index in vocab:
            tokens.append(vocab[index])
            types.append(BYTE if _BYTE.fullmatch(vocab[index]) else NORMAL)
        else:
            tokens.append(f"[PAD{index}]")
            types.append(UNUSED)
    if len(set(tokens)) != len(tokens):
        raise CheckpointError(f"{folder}/tokenizer.json: two tokens have the same text")
    return tokens, types


# Real configs pad vocab_size past the tokenizer to a round number: a few to a few thousand
# tokens (Qwen2 271, Phi-2 905, ChatGLM3 226). Each pad is a token written in Python: a
# vocab_size of 2^22 over a tokenizer of 600 took 256 MB and 20 s before a tensor was read.
MAX_PADDING = 1 << 14


def _check_padding(folder: Path, count: int, have: int) -> None:
    """Refuse a vocabulary padded far past the tokenizer's own tokens (or their ids' gaps)."""
    if count - have > max(MAX_PADDING, have // 4):
        raise CheckpointError(
            f"{folder}: config.json's vocab_size is {count}, but the tokenizer has {have} tokens",
            hint="the checkpoint and its tokenizer must be the same model's",
        )


def _pre(folder: Path, described: dict[str, Any]) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, read from its structure."""
    pre = described.get("pre_tokenizer")
    listed: Any = [pre]
    if isinstance(pre, dict) and pre.get("type") == "Sequence":
        listed = pre.get("pretokenizers") or []
    steps: list[dict[str, Any]] = [s for s in listed if isinstance(s, dict)]
    kinds = [s.get("type") for s in steps]
    for step in steps:
        pattern = step.get("pattern") if step.get("type") == "Split" else None
        regex = pattern.get("Regex") if isinstance(pattern, dict) else None
        if regex in _PRE_BY_REGEX:
            return _PRE_BY_REGEX[regex]
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    raise CheckpointError(
        f"{folder}/tokenizer.json: its pre-tokenizer ({', '.join(map(str, kinds)) or 'none'}) "
        "is not one localrun knows how llama.cpp names",
        hint="localrun converts the tokenizers of Llama 3, Qwen 2/3, Mistral Nemo, SmolLM and "
        "GPT-2, and SentencePiece ones",
    )


def _space_prefix(described: dict[str, Any]) -> bool:
    """Whether the tokenizer puts a ▁ before the text (Llama 2 yes, Gemma no)."""
    steps: list[Any] = []
    for part in ("normalizer", "pre_tokenizer"):
        item = described.get(part)
        if isinstance(item, dict):
            steps += item.get("normalizers") or item.get("pretokenizers") or [item]
    for step in steps:
        if not isinstance(step, dict):
            continue
        if step.get("type") == "Prepend" and step.get("prepend") == "\u2581":
            return True
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always") in ("first", "always")
    return False


# -- tokenizer.model: SentencePiece's protobuf ------------------------------------------------


def _sentencepiece(folder: Path, path: Path, described: Any, size: int | None) -> Vocabulary:
    pieces, add_dummy_prefix = _read_model_proto(path)
    count = size if size is not None else len(pieces)
    _check_padding(folder, count, len(pieces))
    tokens = [f"[PAD{i}]" for i in range(count)]
    scores, types = [-10000.0] * count, [UNUSED] * count
    for index, (piece, score, kind) in enumerate(pieces[:count]):
        tokens[index], scores[index] = piece, score
        types[index] = kind if kind in (UNKNOWN, CONTROL, UNUSED, BYTE) else NORMAL
    added = _added(described) if isinstance(described, dict) else {}
    config = read_json(folder / "tokenizer_config.json", "tokenizer", required=False)
    decoder = config.get("added_tokens_decoder") if isinstance(config, dict) else None
    for key, entry in (decoder or {}).items():
        if key.isdigit() and isinstance(entry, dict) and isinstance(entry.get("content"), str):
            added.setdefault(int(key), {"id": int(key), **entry})
    for index, entry in added.items():
        if index < count and (index >= len(pieces) or tokens[index] != entry["content"]):
            special = entry.get("special") or _LOOKS_SPECIAL.fullmatch(entry["content"])
            tokens[index] = entry["content"]
            types[index], scores[index] = (CONTROL if special else USER_DEFINED), -1000.0
    if len(set(tokens)) != len(tokens):
        raise CheckpointError(f"{path}: two tokens have the same text")
    return Vocabulary("llama", "default", tokens, types, scores, add_dummy_prefix)


# SentencePiece models are a few MB (Gemma 3's 262k pieces: 4.7 MB).
MAX_MODEL_PROTO = 64 * 1024 * 1024


def _read_model_proto(path: Path) -> tuple[list[tuple[str, float, int]], bool]:
    """(piece, score, type) for each piece, and add_dummy_prefix, from a ModelProto."""
    try:
        data = read_bounded(path, MAX_MODEL_PROTO, "a tokenizer's model")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    pieces: list[tuple[str, float, int]] = []
    add_dummy_prefix = True
    try:
        for number, wire, value in _fields(data):
            if number == 1 and wire == 2:
                text, score, kind = "", 0.0, NORMAL
                for inner, inner_wire, item in _fields(value):
                    if inner == 1 and inner_wire == 2:
                        text = bytes(item).decode("utf-8")
                    elif inner == 2 and inner_wire == 5:
                        score = struct.unpack("<f", item)[0]
                    elif inner == 3 and inner_wire == 0:
                        kind = int(item)
                pieces.append((text, score, kind))
            elif number == 3 and wire == 2:
                for inner, inner_wire, item in _fields(value):
                    if inner == 3 and inner_wire == 0:
                        add_dummy_prefix = bool(item)
    except (IndexError, ValueError, struct.error, UnicodeDecodeError):
        raise CheckpointError(f"{path}: not a SentencePiece model") from None
    if not pieces:
        raise CheckpointError(f"{path}: a SentencePiece model without pieces")
    return pieces, add_dummy_prefix


def _fields(data: bytes | memoryview) -> Any:
    """(field number, wire type, value) of each field of a protobuf message."""
    view, at = memoryview(data), 0
    while at < len(view):
        key, at = _varint(view, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(view, at)
            yield number, wire, value
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if at + width > len(view):
                raise ValueError("truncated")
            yield number, wire, bytes(view[at : at + width])
            at += width
        elif wire == 2:
            length, at = _varint(view, at)
            if at + length > len(view):
                raise ValueError("truncated")
            yield number, wire, view[at : at + length]
            at += length
        else:
            raise ValueError(f"wire type {wire}")


def _varint(view: memoryview, at: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = view[at]
        at += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, at
        if shift > 63:
            raise ValueError("varint too long")
