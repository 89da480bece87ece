"""What a model GGUF must satisfy before llama.cpp is given it: the values llama.cpp trusts.

llama.cpp checks a file's structure, then trusts its hyper-parameters. A block count of 2^32-1 sizes
per-layer arrays (a runner grew to 6 GB from a 498 KB file). A block count of 0, a NaN epsilon, a
head count that does not divide, a BERT tokenizer on a llama model or a vocabulary of invalid UTF-8
abort it (SIGABRT) or make it hang. `check_model` refuses such files with the key and what is wrong,
from the header alone (`localrun.gguf.header.Header`). It checks that hyper-parameters are finite
and in range, and the block count against the `blk.N.*` tensors present. It checks tensor shapes
against the hyper-parameters they must match, the tokenizer against the architecture and the
vocabulary, and the chat template against the size the store accepts.

The bounds are far beyond any released model: the largest have ~200 blocks, 16k-wide embeddings,
256k-token vocabularies, templates of tens of KB. They refuse what llama.cpp would turn into an
allocation of gigabytes or an abort. This module reads nothing itself: `localrun.gguf.scan` calls it
after the walk and words the refusal.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from localrun.gguf.header import Header

MAX_BLOCKS = 4096
MAX_EMBEDDING = 1 << 20
MAX_HEADS = 1 << 14
MAX_VOCAB = 1 << 22
MAX_CONTEXT = 1 << 30
# The config blob that holds a GGUF's template must stay readable (store.SMALL_BLOB is 4 MiB).
MAX_TEMPLATE_BYTES = 1 << 20

# Tokenizers that only some architectures can use (llama.cpp's llama-vocab.cpp): a WordPiece
# (bert) vocabulary on a llama model has no byte fallback and aborts on the first token.
_TOKENIZER_ARCHS: dict[str, Callable[[str], bool]] = {
    "llama": lambda a: True,
    "gpt2": lambda a: True,
    "bert": lambda a: "bert" in a or a in ("neo-bert", "eurobert"),
    "t5": lambda a: a in ("t5", "t5encoder"),
    "rwkv": lambda a: a.startswith("rwkv"),
    "plamo2": lambda a: a == "plamo2",
}
_VOCAB_ARRAYS = ("tokenizer.ggml.scores", "tokenizer.ggml.token_type")
_BLOCK = re.compile(r"blk\.(\d+)\.")
_ATTENTION = re.compile(r"\.attn_(q|k|v|qkv)(_a|_b)?\.")  # a query, key or value projection


class Refused(Exception):
    """A model file llama.cpp must not see; the message names the key and the problem."""


def check_model(header: Header, tokens: list[bytes]) -> None:
    """Refuse (raise Refused) a model whose header would crash or exhaust llama.cpp.

    Adapters are checked by their base model's load, not here. `tokens` are the vocabulary's
    raw token texts.
    """
    meta = header.metadata
    if meta.get("general.type") == "adapter":
        return
    part = meta.get("split.no")
    if isinstance(part, int) and part > 0:
        # A later part of a split model holds tensors only; the first part has the rest.
        _check_tensors(header, str(meta.get("general.architecture")), None)
        return
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise Refused("general.architecture is missing: this is not a model llama.cpp can run")
    if arch == PROJECTOR_ARCH:
        _check_projector(header)
        return
    _check_numbers(meta, arch, attention=any(_ATTENTION.search(t.name) for t in header.tensors))
    _check_template(meta)
    split = meta.get("split.count")
    whole = not isinstance(split, int) or split <= 1
    n_vocab = _check_tokenizer(header, arch, tokens)
    _check_blocks(header, arch, whole)
    _check_tensors(header, arch, n_vocab)


PROJECTOR_ARCH = "clip"  # libmtmd's projectors (mmproj), for images and audio
MAX_IMAGE_SIDE = 8192


def _check_projector(header: Header) -> None:
    """A projector's numbers in the ranges libmtmd can allocate for, and at least one encoder."""
    meta = header.metadata
    encoders = [p for p in ("vision", "audio") if meta.get(f"clip.has_{p}_encoder") is True]
    if not encoders:
        raise Refused("this projector has neither a vision nor an audio encoder")
    for key, value in meta.items():
        if not key.startswith("clip.") or isinstance(value, bool):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise Refused(f"{key} is {value}; it must be a finite number")
        if isinstance(value, int) and not 0 <= value < 2**31:
            raise Refused(f"{key} is {value}; it must be between 0 and 2^31-1")
    for encoder in encoders:
        prefix = f"clip.{encoder}."
        bounds = {
            "block_count": (1, MAX_BLOCKS),
            "embedding_length": (1, MAX_EMBEDDING),
            "feed_forward_length": (1, 16 * MAX_EMBEDDING),
            "attention.head_count": (1, MAX_HEADS),
            "projection_dim": (1, MAX_EMBEDDING),
        }
        if encoder == "vision":
            bounds |= {"image_size": (1, MAX_IMAGE_SIDE), "patch_size": (1, MAX_IMAGE_SIDE)}
        for suffix, (low, high) in bounds.items():
            value = meta.get(prefix + suffix)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise Refused(f"{prefix}{suffix} is {value!r}; it must be between {low} and {high}")
        size, patch = meta.get(prefix + "image_size"), meta.get(prefix + "patch_size")
        if isinstance(size, int) and isinstance(patch, int) and patch > size:
            raise Refused(f"{prefix}patch_size ({patch}) is larger than its image_size ({size})")
    _check_tensors(header, PROJECTOR_ARCH, None)


def _check_numbers(meta: dict[str, Any], arch: str, *, attention: bool) -> None:
    """Every hyper-parameter of the architecture finite, and counts in range.

    A model without attention tensors (a recurrent one: Mamba, RWKV) has no heads: its converters
    write 0.
    """
    prefix = arch + "."
    for key, value in meta.items():
        if not key.startswith(prefix) or isinstance(value, bool):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise Refused(f"{key} is {value}; it must be a finite number")
        if isinstance(value, int) and not 0 <= value < 2**31:
            raise Refused(f"{key} is {value}; it must be between 0 and 2^31-1")

    def count(suffix: str, low: int, high: int, *, required: bool = False) -> int | None:
        key = prefix + suffix
        value = meta.get(key)
        if value is None and not required:
            return None
        if isinstance(value, tuple):  # a per-layer array (("array", type, count)): not a count
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            what = "missing" if value is None else f"a {type(value).__name__}"
            raise Refused(f"{key} is {what}; it must be a whole number")
        if not low <= value <= high:
            raise Refused(f"{key} is {value}; it must be between {low} and {high}")
        return value

    count("block_count", 1, MAX_BLOCKS, required=True)
    count("embedding_length", 1, MAX_EMBEDDING)
    count("context_length", 1, MAX_CONTEXT)
    count("feed_forward_length", 0, 16 * MAX_EMBEDDING)
    count("vocab_size", 1, MAX_VOCAB)
    count("attention.key_length", 1, 1 << 16)
    count("attention.value_length", 1, 1 << 16)
    least = 1 if attention else 0
    heads = count("attention.head_count", least, MAX_HEADS)
    kv_heads = count("attention.head_count_kv", least, MAX_HEADS)
    if heads and kv_heads and heads % kv_heads:
        raise Refused(
            f"{prefix}attention.head_count_kv ({kv_heads}) does not divide "
            f"{prefix}attention.head_count ({heads})"
        )
    for suffix in ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon"):
        eps = meta.get(prefix + suffix)
        if isinstance(eps, int | float) and not 0 < eps < 1:
            raise Refused(f"{prefix}{suffix} is {eps}; it must be between 0 and 1")
    base = meta.get(prefix + "rope.freq_base")
    if isinstance(base, int | float) and not base > 0:
        raise Refused(f"{prefix}rope.freq_base is {base}; it must be positive")


def _check_template(meta: dict[str, Any]) -> None:
    template = meta.get("tokenizer.chat_template")
    if isinstance(template, str) and len(template.encode()) > MAX_TEMPLATE_BYTES:
        size = len(template.encode())
        raise Refused(
            f"tokenizer.chat_template is {size} bytes; chat templates are limited to "
            f"{MAX_TEMPLATE_BYTES} bytes"
        )


def _check_tokenizer(header: Header, arch: str, tokens: list[bytes]) -> int:
    """The tokenizer model fits the architecture; the vocabulary is sized and valid.

    Returns the vocabulary size.
    """
    meta = header.metadata
    model = meta.get("tokenizer.ggml.model")
    if model in (None, "none", "no_vocab"):
        raise Refused(
            "tokenizer.ggml.model is "
            + ("missing" if model is None else repr(model))
            + ": the file has no vocabulary to turn text into tokens"
        )
    if not isinstance(model, str) or model not in _TOKENIZER_ARCHS:
        known = ", ".join(_TOKENIZER_ARCHS)
        raise Refused(f"tokenizer.ggml.model {model!r} is not a tokenizer llama.cpp has ({known})")
    if not _TOKENIZER_ARCHS[model](arch):
        raise Refused(f"tokenizer.ggml.model {model!r} does not work with {arch} models")
    listed = meta.get("tokenizer.ggml.tokens")
    if not (isinstance(listed, tuple) and listed[1] == 8):
        raise Refused("tokenizer.ggml.tokens is missing or is not a list of strings")
    n_vocab = len(tokens)
    if not 1 <= n_vocab <= MAX_VOCAB:
        raise Refused(f"tokenizer.ggml.tokens has {n_vocab} entries (1 to {MAX_VOCAB} allowed)")
    for key in _VOCAB_ARRAYS:
        array = meta.get(key)
        if isinstance(array, tuple) and array[2] != n_vocab:
            raise Refused(f"{key} has {array[2]} entries for {n_vocab} tokens")
    declared = meta.get(f"{arch}.vocab_size")
    if isinstance(declared, int) and declared != n_vocab:
        raise Refused(f"{arch}.vocab_size is {declared} but the vocabulary has {n_vocab} tokens")
    # llama.cpp maps each text to one id and asserts the map is as large as the list.
    if len(set(tokens)) != n_vocab:
        seen: set[bytes] = set()
        for index, token in enumerate(tokens):
            if token in seen:
                raise Refused(f"tokenizer.ggml.tokens entry {index} repeats an earlier token")
            seen.add(token)
    # RWKV's world vocabulary holds raw bytes; every other tokenizer's tokens are UTF-8 text.
    # Joined by a newline, the texts are valid UTF-8 exactly when each one is.
    if model != "rwkv":
        try:
            b"\n".join(tokens).decode("utf-8")
        except UnicodeDecodeError:
            for index, token in enumerate(tokens):
                try:
                    token.decode("utf-8")
                except UnicodeDecodeError:
                    raise Refused(
                        f"tokenizer.ggml.tokens entry {index} is not valid UTF-8 text"
                    ) from None
    return n_vocab


def _check_blocks(header: Header, arch: str, whole: bool) -> None:
    """The block count against the blk.N tensors present."""
    blocks = header.metadata[f"{arch}.block_count"]
    indices = set()
    for tensor in header.tensors:
        match = _BLOCK.match(tensor.name)
        if match:
            indices.add(int(match.group(1)))
    top = max(indices, default=-1)
    if top >= blocks:
        raise Refused(f"{arch}.block_count is {blocks} but the file has tensors for block {top}")
    if not whole:
        return  # the other parts of a split model hold the other blocks
    if not indices:
        raise Refused(f"{arch}.block_count is {blocks} but the file has no blk.N tensors")
    # Multi-token-prediction layers (nextn) may be counted in the block count and left out.
    extra = header.metadata.get(f"{arch}.nextn_predict_layers")
    spare = extra if isinstance(extra, int) else 0
    if blocks > top + 1 + spare:
        raise Refused(
            f"{arch}.block_count is {blocks} but the file has tensors for {top + 1} blocks"
        )
    missing = sorted(set(range(top + 1)) - indices)
    if missing:
        raise Refused(f"the file has no tensors for block {missing[0]} of {blocks}")


def _check_tensors(header: Header, arch: str, n_vocab: int | None) -> None:
    """Tensor names unique, dimensions non-zero, embeddings shaped by the hyper-parameters."""
    seen: set[str] = set()
    n_embd = header.metadata.get(f"{arch}.embedding_length")
    for tensor in header.tensors:
        if tensor.name in seen:
            raise Refused(f"tensor {tensor.name} appears twice (a duplicated tensor)")
        seen.add(tensor.name)
        if 0 in tensor.dims:
            raise Refused(f"tensor {tensor.name} has a zero dimension {list(tensor.dims)}")
        if tensor.name in ("token_embd.weight", "output.weight") and len(tensor.dims) == 2:
            width, rows = tensor.dims
            if isinstance(n_embd, int) and width != n_embd:
                raise Refused(
                    f"tensor {tensor.name} is {width} wide but {arch}.embedding_length is {n_embd}"
                )
            if n_vocab is not None and rows != n_vocab:
                raise Refused(
                    f"tensor {tensor.name} has {rows} rows for a vocabulary of {n_vocab} tokens"
                )
