"""A GGUF header, read by a walk that checks every length, count and offset against the file.

`walk` reads the header of a mapped file with `struct`, once:

1. every length, count and offset is checked against the file size, and every count against limits
   real files are far below (MAX_KEYS, MAX_TENSORS, MAX_ARRAY). So the walk's time and memory are
   bounded by the file, not by what it claims. The `gguf` package's reader is not used: it loops
   once per array element in Python, builds numpy objects for each, and reads past the end as empty
   arrays. A million empty strings took it past 4 GB.
2. every tensor's offset + size lies within the file.

What it returns (`Header`, `TensorInfo`) is the structure alone. Whether a model's values are ones
llama.cpp can be trusted with is `localrun.gguf.rules`' question; `localrun.gguf.scan` asks both.
"""

from __future__ import annotations

import functools
import importlib.util
import mmap
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localrun.errors import InvalidGGUFError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4
MAX_TENSOR_NAME = 64  # llama.cpp's GGML_MAX_NAME, terminator included
MAX_KEY_LENGTH = 65_535
# Far beyond real files (tens of keys; a few thousand tensors; 256k-token vocabularies), and
# small enough that walking a hostile header stays within a second and a few hundred MB.
MAX_KEYS = 1 << 16
MAX_TENSORS = 1 << 17
MAX_ARRAY = 1 << 24
DEFAULT_ALIGNMENT = 32
TENSOR_ALIGNMENT = 32  # ggml's, for data used in place from the mapped file

# Fixed sizes of the scalar value types (GGUFValueType); 8 = string, 9 = array.
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
_TOKENS = "tokenizer.ggml.tokens"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str
    dims: tuple[int, ...]
    offset: int  # from the start of the tensor data
    n_bytes: int


@dataclass
class Header:
    """What the bounds-checked walk over a GGUF header found (no array contents)."""

    version: int
    alignment: int
    data_start: int
    size: int
    metadata: dict[str, Any]  # scalars and strings; arrays as ("array", element type, count)
    tensors: list[TensorInfo]
    fim: bool = False  # the vocabulary has fill-in-the-middle tokens (prefix, suffix, middle)
    # Of CHAT_TOKENS, those the vocabulary has (they tell which chat format a model without a
    # chat template was trained on), and its BOS and EOS tokens' texts.
    chat_tokens: frozenset[str] = frozenset()
    bos_text: str = ""
    eos_text: str = ""

    def arch_value(self, suffix: str) -> Any:
        return self.metadata.get(f"{self.metadata.get('general.architecture')}.{suffix}")


# The turn markers of the chat formats localrun knows by their tokens: formats/families.py's (gguf
# sits above formats; tests/unit/formats/test_apply_template.py keeps the two lists together).
CHAT_TOKENS = frozenset(
    {
        "<|im_start|>",
        "<|start_header_id|>",
        "<start_of_turn>",
        "[INST]",
        "<|user|>",
        "<|assistant|>",
        "<|end|>",
        "<|start_of_role|>",
        "<\uff5cUser\uff5c>",
        "<|START_OF_TURN_TOKEN|>",
        # The call tokens that tell a family whose template shows no calls (formats/parsers).
        "<|tool_call|>",
        "[TOOL_CALLS]",
        "<|tool_calls_section_begin|>",
        "<|tool_call_start|>",
        "<|thought_start|>",
    }
)
_CHAT_BYTES = {token.encode(): token for token in CHAT_TOKENS}


def invalid(shown: str, reason: str) -> InvalidGGUFError:
    """The error for a file that is not a valid GGUF, and why."""
    error = InvalidGGUFError(
        f"{shown} is not a valid GGUF file: {reason}",
        hint="re-download or re-convert the file; `localrun create` accepts GGUF models only",
    )
    error.file, error.reason = shown, reason
    return error


def walk(data: mmap.mmap, size: int, shown: str) -> tuple[Header, list[bytes]]:
    """Walk the header with bounds checks on every length, decoding scalars and strings.

    Returns the header and the vocabulary's token texts (kept out of the Header, which
    `localrun.gguf.scan.scan` caches: a large vocabulary is megabytes)."""
    version, tensor_count, kv_count = _preamble(data, size, shown)
    w = _Walk(data, size, shown)
    for _ in range(kv_count):
        w.metadata_entry()
    alignment = _alignment(w.metadata, shown)
    infos = [w.tensor_info(index) for index in range(tensor_count)]
    data_start = -(-w.pos // alignment) * alignment
    if data_start > size and tensor_count:
        raise invalid(shown, "the tensor data is missing (truncated file)")
    tensors = _check_tensor_bounds(infos, data_start, alignment, size, shown)
    fim = _has_fim(data, w.tokens_span, w.metadata)
    header = Header(version, alignment, data_start, size, w.metadata, tensors, fim)
    header.chat_tokens = frozenset(_CHAT_BYTES[t] for t in w.tokens if t in _CHAT_BYTES)
    header.bos_text = _token_text(w.tokens, w.metadata.get("tokenizer.ggml.bos_token_id"))
    header.eos_text = _token_text(w.tokens, w.metadata.get("tokenizer.ggml.eos_token_id"))
    return header, w.tokens


def _token_text(tokens: list[bytes], index: Any) -> str:
    if isinstance(index, int) and 0 <= index < len(tokens):
        return tokens[index].decode("utf-8", "replace")
    return ""


def _preamble(data: mmap.mmap, size: int, shown: str) -> tuple[int, int, int]:
    """(version, tensor count, key count) from the first 24 bytes, with the counts bounded."""
    if data[:4] != GGUF_MAGIC:
        raise invalid(shown, printable(f"bad magic {bytes(data[:4])!r} (expected b'GGUF')"))
    (version,) = struct.unpack_from("<I", data, 4)
    if version & 0xFFFF == 0 and version != 0:
        raise invalid(shown, "big-endian GGUF files are not supported")
    if version not in SUPPORTED_VERSIONS:
        raise invalid(shown, f"unsupported GGUF version {version} (supported: 2, 3)")
    tensor_count, kv_count = struct.unpack_from("<QQ", data, 8)
    # Each key/value needs at least 13 bytes and each tensor info at least 29: absurd counts fail
    # here instead of in a loop. Past that, the counts are bounded by what real files hold, so
    # a small file cannot make the walk take seconds and gigabytes.
    if kv_count > MAX_KEYS:
        raise invalid(shown, f"header claims {kv_count} metadata keys (at most {MAX_KEYS})")
    if tensor_count > MAX_TENSORS:
        raise invalid(shown, f"header claims {tensor_count} tensors (at most {MAX_TENSORS})")
    if kv_count * 13 + tensor_count * 29 > size:
        raise invalid(
            shown,
            f"header claims {kv_count} metadata keys and {tensor_count} tensors, "
            f"more than a {size}-byte file can hold",
        )
    return version, tensor_count, kv_count


def _alignment(metadata: dict[str, Any], shown: str) -> int:
    alignment: int = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if "general.alignment" in metadata and (alignment == 0 or alignment & (alignment - 1)):
        raise invalid(shown, f"general.alignment is {alignment}; it must be a power of two")
    return alignment


class _Walk:
    """A position in the mapped header; every read is checked against the file size first."""

    def __init__(self, data: mmap.mmap, size: int, shown: str) -> None:
        self.data, self.size, self.shown = data, size, shown
        self.pos = 24  # past the preamble
        self.metadata: dict[str, Any] = {}
        self.tokens: list[bytes] = []
        self.tokens_span = (0, 0)  # where the token list lies in the file

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise invalid(
                self.shown, f"{what} runs past the end of the file (truncated or corrupt)"
            )

    def string(self, what: str) -> bytes:
        self.need(8, what)
        (length,) = _U64.unpack_from(self.data, self.pos)
        self.pos += 8
        self.need(length, what)
        value = self.data[self.pos : self.pos + length]
        self.pos += length
        return value

    def metadata_entry(self) -> None:
        """Read one key and its value into `metadata` (arrays as their type and count)."""
        key = self.string("a metadata key")
        if len(key) > MAX_KEY_LENGTH:
            raise invalid(self.shown, "a metadata key is longer than 65535 bytes")
        self.need(4, f"metadata {_key(key)}")
        (vtype,) = struct.unpack_from("<I", self.data, self.pos)
        self.pos += 4
        field = key.decode("utf-8", errors="replace")
        if field in self.metadata:
            raise invalid(self.shown, f"metadata {_key(key)} appears twice (a duplicated key)")
        if field == "general.alignment" and vtype != 4:
            raise invalid(self.shown, "general.alignment must be a uint32")
        if vtype in _SCALAR_SIZES:
            self.need(_SCALAR_SIZES[vtype], f"metadata {_key(key)}")
            (self.metadata[field],) = struct.unpack_from(
                _SCALAR_FORMATS[vtype], self.data, self.pos
            )
            self.pos += _SCALAR_SIZES[vtype]
        elif vtype == _STRING:
            self.metadata[field] = self.string(f"metadata {_key(key)}").decode("utf-8", "replace")
        elif vtype == _ARRAY:
            self.metadata[field] = self.array(key, field)
        else:
            raise invalid(self.shown, f"metadata {_key(key)} has unknown type {vtype}")

    def array(self, key: bytes, field: str) -> tuple[str, int, int]:
        """Step over an array (keeping the token texts); returns ("array", type, count)."""
        self.need(12, f"metadata {_key(key)}")
        itype, count = struct.unpack_from("<IQ", self.data, self.pos)
        self.pos += 12
        if count > MAX_ARRAY and self.pos + count <= self.size:  # (past the end: reported below)
            too_many = f"an array of {count} items (at most {MAX_ARRAY})"
            raise invalid(self.shown, f"metadata {_key(key)} is {too_many}")
        if itype in _SCALAR_SIZES:
            self.need(count * _SCALAR_SIZES[itype], f"array {_key(key)} of {count} elements")
            self.pos += count * _SCALAR_SIZES[itype]
        elif itype == _STRING:
            self.need(count * 8, f"array {_key(key)} of {count} strings")
            if field == _TOKENS:  # kept: the vocabulary is checked by gguf.rules
                self._keep_tokens(count)
            else:
                self._skip_strings(count)
            self.need(0, f"array {_key(key)}")
        elif itype == _ARRAY:
            raise invalid(
                self.shown,
                f"metadata {_key(key)} is a nested array, which GGUF readers do not support",
            )
        else:
            raise invalid(self.shown, f"metadata {_key(key)} has unknown element type {itype}")
        return ("array", itype, count)

    def _keep_tokens(self, count: int) -> None:
        data, size, pos = self.data, self.size, self.pos
        unpack = _U64.unpack_from
        start = pos
        tokens = self.tokens
        for _ in range(count):
            if pos + 8 > size:
                break
            length = unpack(data, pos)[0]
            tokens.append(data[pos + 8 : pos + 8 + length])
            pos += 8 + length
        self.tokens_span = (start, pos)
        self.pos = pos

    def _skip_strings(self, count: int) -> None:
        # The hot loop of a walk (a vocabulary's merges): locals only.
        data, size, pos = self.data, self.size, self.pos
        unpack = _U64.unpack_from
        for _ in range(count):
            if pos + 8 > size:
                break
            pos += 8 + unpack(data, pos)[0]
        self.pos = pos

    def tensor_info(self, index: int) -> tuple[str, list[int], int, int]:
        """(name, dims, type, offset) of the next tensor."""
        name = self.string(f"the name of tensor {index}")
        self.need(4, f"tensor {_key(name)}")
        (n_dims,) = struct.unpack_from("<I", self.data, self.pos)
        self.pos += 4
        if len(name) >= MAX_TENSOR_NAME:
            raise invalid(
                self.shown, f"tensor {_key(name)} has a name of {len(name)} bytes (at most 63)"
            )
        if not 1 <= n_dims <= MAX_DIMS:
            raise invalid(
                self.shown, f"tensor {_key(name)} has {n_dims} dimensions (1 to 4 allowed)"
            )
        self.need(8 * n_dims + 12, f"tensor {_key(name)}")
        dims = list(struct.unpack_from(f"<{n_dims}Q", self.data, self.pos))
        self.pos += 8 * n_dims
        ttype, offset = struct.unpack_from("<IQ", self.data, self.pos)
        self.pos += 12
        return printable(name.decode("utf-8", "replace")), dims, ttype, offset


# The token texts llama.cpp recognises as FIM prefix, suffix and middle when a GGUF does not
# name their ids (llama-vocab.cpp): Qwen, StarCoder, DeepSeek, CodeLlama, GLM and others.
_FIM_TEXTS = (
    ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
     "<|code_prefix|>"),
    ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
     "<|code_suffix|>"),
    ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
     "<|code_middle|>"),
)  # fmt: skip
_FIM_KEYS = (
    ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"),
    ("tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"),
    ("tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"),
)


def _has_fim(data: mmap.mmap, span: tuple[int, int], metadata: dict[str, Any]) -> bool:
    """Whether the vocabulary has a prefix, a suffix and a middle FIM token.

    Each is named by id in the metadata, or found as a whole entry (length-prefixed) of the token
    list.
    """
    start, end = span

    def listed(text: str) -> bool:
        raw = text.encode("utf-8")
        return data.find(_U64.pack(len(raw)) + raw, start, end) >= 0

    return all(
        any(isinstance(metadata.get(key), int) for key in keys) or any(map(listed, texts))
        for keys, texts in zip(_FIM_KEYS, _FIM_TEXTS, strict=True)
    )


@functools.cache
def quant_sizes() -> dict[int, tuple[str, int, int]]:
    """(name, block size, bytes per block) of each ggml tensor type, from the gguf package.

    It is GGML_QUANT_SIZES, from the package's constants module loaded alone. The package's __init__
    imports numpy with its reader and writer (20 MB), which the server process, planning a load from
    a header, must not carry. The frozen binary, whose modules are no files, imports it whole.
    """
    loaded = sys.modules.get("gguf")
    if loaded is None:
        spec = importlib.util.find_spec("gguf")
        origin = Path(spec.origin).parent / "constants.py" if spec and spec.origin else None
        if origin is not None and origin.is_file():
            alone = importlib.util.spec_from_file_location("localrun._gguf_constants", origin)
            if alone is not None and alone.loader is not None:
                module = importlib.util.module_from_spec(alone)
                alone.loader.exec_module(module)
                return _table(module.GGML_QUANT_SIZES)
    from gguf import GGML_QUANT_SIZES

    return _table(GGML_QUANT_SIZES)


def _table(sizes: Any) -> dict[int, tuple[str, int, int]]:
    return {int(k): (k.name, int(v[0]), int(v[1])) for k, v in sizes.items()}


def _check_tensor_bounds(
    infos: list[tuple[str, list[int], int, int]],
    data_start: int,
    alignment: int,
    size: int,
    shown: str,
) -> list[TensorInfo]:
    sizes = quant_sizes()
    out = []
    for name, dims, ttype, offset in infos:
        try:
            type_name, block, type_size = sizes[ttype]
        except KeyError:
            raise invalid(shown, f"tensor {name} has unknown type {ttype}") from None
        if dims[0] % block:
            raise invalid(
                shown,
                f"tensor {name}: first dimension {dims[0]} is not a multiple of "
                f"the block size {block}",
            )
        n_elements = 1
        for d in dims:
            n_elements *= d
        n_bytes = n_elements // block * type_size
        if offset % alignment:
            raise invalid(shown, f"tensor {name} is not aligned to {alignment} bytes")
        if (data_start + offset) % TENSOR_ALIGNMENT:
            # ggml maps tensor data in place and asserts 32-byte alignment (an abort, not an
            # error), which a general.alignment below 32 does not promise.
            raise invalid(
                shown,
                f"tensor {name} starts at byte {data_start + offset}, not a multiple of "
                f"{TENSOR_ALIGNMENT} (general.alignment is {alignment})",
            )
        if data_start + offset + n_bytes > size:
            raise invalid(
                shown,
                f"tensor {name} (offset {offset}, {n_bytes} bytes) lies past the "
                f"end of the {size}-byte file (truncated or corrupt)",
            )
        out.append(TensorInfo(name, type_name, tuple(dims), offset, n_bytes))
    return out


def _key(raw: bytes) -> str:
    text = printable(raw.decode("utf-8", errors="replace"))
    return text if len(text) <= 60 else text[:57] + "..."


def printable(text: str) -> str:
    """`text` with control characters escaped."""
    # Names come from the file: escape control characters so that a hostile name can neither
    # break the one-line error message nor send escape sequences to the terminal.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
