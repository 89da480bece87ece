"""Read and validate GGUF files before anything native touches them.

`inspect(path)` refuses anything but a regular file (a FIFO or a device must never be opened for
reading: `FROM /dev/random` would hang, Ollama's CVE-2024-39721), then walks the header once
(`_scan_header`) with `struct`:

1. every length, count and offset is checked against the file size, and every count against
   limits real files are far below (MAX_KEYS, MAX_TENSORS, MAX_ARRAY), so the walk's time and
   memory are bounded by the file, not by what it claims. (The `gguf` package's reader is not
   used: it loops once per array element in Python, builds numpy objects for each, and reads
   past the end as empty arrays; a million empty strings took it past 4 GB.)
2. every tensor's offset + size lies within the file;
3. a model's values that llama.cpp trusts (hyper-parameters, block count against the tensors,
   shapes, tokenizer, chat template size) pass `localrun.gguf_rules.check_model`.

What it returns (`GGUFInfo`) is what the store records about a model: architecture, sizes,
quantization, chat template, license; and its vocabulary, which create compares with a draft's.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localrun import gguf_rules
from localrun.errors import FileNotFoundError_, InvalidGGUFError, NotRegularFileError

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
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFInfo:
    """What localrun needs to know about a GGUF file, read from its header."""

    path: str
    size: int
    version: int
    kind: str  # "model" or "adapter"
    architecture: str | None
    name: str | None
    tensor_count: int
    parameter_count: int
    context_length: int | None
    embedding_length: int | None
    block_count: int | None
    head_count: int | None
    quantization: str | None
    chat_template: str | None
    license: str | None
    adapter_type: str | None = None
    lora_alpha: float | None = None
    pooling_type: int | None = None  # set by models made for embeddings (llama_pooling_type)
    fim: bool = False  # has fill-in-the-middle tokens
    metadata: dict[str, Any] = field(default_factory=dict)
    # The vocabulary's raw token texts, from the same walk over the header (a draft model's
    # vocabulary is compared with its model's at create time).
    tokens: list[bytes] = field(default_factory=list, repr=False)

    def details(self) -> dict[str, Any]:
        """The JSON-able summary stored in a manifest's config."""
        return {
            "format": "gguf",
            "gguf_version": self.version,
            "kind": self.kind,
            "architecture": self.architecture,
            "name": self.name,
            "parameter_count": self.parameter_count,
            "context_length": self.context_length,
            "embedding_length": self.embedding_length,
            "block_count": self.block_count,
            "head_count": self.head_count,
            "quantization": self.quantization,
            "tensor_count": self.tensor_count,
            "adapter_type": self.adapter_type,
            "lora_alpha": self.lora_alpha,
            "pooling_type": self.pooling_type,
            "fim": self.fim,
        }


def open_regular(path: str | os.PathLike[str]) -> int:
    """Open `path` read-only, refusing anything that is not a regular file; returns the fd.

    The check is made before opening (a FIFO blocks in open()) and again on the open descriptor,
    so a file swapped for a FIFO or device in between is still refused.
    """
    shown = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError_(f"no such file: {shown}", hint="check the path") from None
    except OSError as exc:
        raise NotRegularFileError(f"cannot read {shown}: {exc.strerror}") from exc
    _require_regular(st, shown)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise NotRegularFileError(f"cannot read {shown}: {exc.strerror}") from exc
    try:
        _require_regular(os.fstat(fd), shown)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _require_regular(st: os.stat_result, shown: str) -> None:
    if stat.S_ISREG(st.st_mode):
        return
    what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
    if stat.S_ISFIFO(st.st_mode):
        what = "a FIFO (named pipe)"
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        what = "a device"
    elif stat.S_ISSOCK(st.st_mode):
        what = "a socket"
    raise NotRegularFileError(
        f"{shown} is {what}, not a GGUF file", hint="point to a .gguf model file"
    )


def inspect(path: str | os.PathLike[str]) -> GGUFInfo:
    """Validate a GGUF file completely and return what its header says."""
    fd = open_regular(path)
    try:
        return inspect_fd(fd, str(path))
    finally:
        os.close(fd)


def inspect_fd(fd: int, shown: str) -> GGUFInfo:
    """Validate the GGUF file open on `fd` (from `open_regular`); the fd stays open."""
    size = os.fstat(fd).st_size
    if size < 24:
        raise _bad(shown, f"only {size} bytes, too small for a GGUF header")
    with _mapped(fd, shown) as data:
        return _info(size, shown, *_scan_header(data, size, shown))


def _bad(shown: str, reason: str) -> InvalidGGUFError:
    return InvalidGGUFError(
        f"{shown} is not a valid GGUF file: {reason}",
        hint="re-download or re-convert the file; `localrun create` accepts GGUF models only",
    )


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

    def arch_value(self, suffix: str) -> Any:
        return self.metadata.get(f"{self.metadata.get('general.architecture')}.{suffix}")


_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_U64 = struct.Struct("<Q")


def scan(path: str | os.PathLike[str]) -> Header:
    """Validate the structure of a GGUF file quickly (no gguf package, no array contents).

    This is the check made before llama.cpp opens a file: every length, count and tensor
    extent is bounded by the file size. `inspect` does this and reads the values too.

    The result is remembered per file identity (device, inode, size, mtime), so the runner's
    offload plan and the engine's pre-load check share one walk over the header. Callers must
    not modify the returned Header.
    """
    fd = open_regular(path)
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        cached = _SCANNED.get(key)
        if cached is not None:
            return cached
        header = scan_fd(fd, str(path))
        if len(_SCANNED) >= 16:
            _SCANNED.pop(next(iter(_SCANNED)))
        _SCANNED[key] = header
        return header
    finally:
        os.close(fd)


_SCANNED: dict[tuple[int, int, int, int], Header] = {}


def scan_fd(fd: int, shown: str) -> Header:
    size = os.fstat(fd).st_size
    if size < 24:
        raise _bad(shown, f"only {size} bytes, too small for a GGUF header")
    with _mapped(fd, shown) as data:
        return _scan_header(data, size, shown)[0]


def _mapped(fd: int, shown: str) -> mmap.mmap:
    """The file mapped read-only; a file that cannot be mapped (sysfs, procfs) is not a GGUF."""
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise NotRegularFileError(
            f"cannot read {shown} as a file ({reason})",
            hint="point to a .gguf model file on a disk",
        ) from None


def _scan_header(data: mmap.mmap, size: int, shown: str) -> tuple[Header, list[bytes]]:
    """Walk the header with bounds checks on every length, decoding scalars and strings.

    Returns the header and the vocabulary's token texts (kept out of the Header, which `scan`
    caches: a large vocabulary is megabytes)."""
    if data[:4] != GGUF_MAGIC:
        raise _bad(shown, _printable(f"bad magic {bytes(data[:4])!r} (expected b'GGUF')"))
    (version,) = struct.unpack_from("<I", data, 4)
    if version & 0xFFFF == 0 and version != 0:
        raise _bad(shown, "big-endian GGUF files are not supported")
    if version not in SUPPORTED_VERSIONS:
        raise _bad(shown, f"unsupported GGUF version {version} (supported: 2, 3)")
    tensor_count, kv_count = struct.unpack_from("<QQ", data, 8)
    pos = 24

    def need(n: int, what: str) -> None:
        if n < 0 or pos + n > size:
            raise _bad(shown, f"{what} runs past the end of the file (truncated or corrupt)")

    def read_string(what: str) -> bytes:
        nonlocal pos
        need(8, what)
        (length,) = _U64.unpack_from(data, pos)
        pos += 8
        need(length, what)
        value = data[pos : pos + length]
        pos += length
        return value

    # Each key/value needs at least 13 bytes and each tensor info at least 29: absurd counts fail
    # here instead of in a loop. Past that, the counts are bounded by what real files hold, so
    # a small file cannot make the walk take seconds and gigabytes.
    if kv_count > MAX_KEYS:
        raise _bad(shown, f"header claims {kv_count} metadata keys (at most {MAX_KEYS})")
    if tensor_count > MAX_TENSORS:
        raise _bad(shown, f"header claims {tensor_count} tensors (at most {MAX_TENSORS})")
    if kv_count * 13 + tensor_count * 29 > size:
        raise _bad(
            shown,
            f"header claims {kv_count} metadata keys and {tensor_count} tensors, "
            f"more than a {size}-byte file can hold",
        )
    metadata: dict[str, Any] = {}
    tokens_span = (0, 0)
    tokens: list[bytes] = []
    for _ in range(kv_count):
        key = read_string("a metadata key")
        if len(key) > MAX_KEY_LENGTH:
            raise _bad(shown, "a metadata key is longer than 65535 bytes")
        need(4, f"metadata {_key(key)}")
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        field = key.decode("utf-8", errors="replace")
        if field in metadata:
            raise _bad(shown, f"metadata {_key(key)} appears twice (a duplicated key)")
        if field == "general.alignment" and vtype != 4:
            raise _bad(shown, "general.alignment must be a uint32")
        if vtype in _SCALAR_SIZES:
            need(_SCALAR_SIZES[vtype], f"metadata {_key(key)}")
            (metadata[field],) = struct.unpack_from(_SCALAR_FORMATS[vtype], data, pos)
            pos += _SCALAR_SIZES[vtype]
        elif vtype == _STRING:
            metadata[field] = read_string(f"metadata {_key(key)}").decode("utf-8", "replace")
        elif vtype == _ARRAY:
            need(12, f"metadata {_key(key)}")
            itype, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            metadata[field] = ("array", itype, count)
            if count > MAX_ARRAY and pos + count <= size:  # (past the end is reported below)
                too_many = f"an array of {count} items (at most {MAX_ARRAY})"
                raise _bad(shown, f"metadata {_key(key)} is {too_many}")
            if itype in _SCALAR_SIZES:
                need(count * _SCALAR_SIZES[itype], f"array {_key(key)} of {count} elements")
                pos += count * _SCALAR_SIZES[itype]
            elif itype == _STRING:
                need(count * 8, f"array {_key(key)} of {count} strings")
                unpack = _U64.unpack_from
                start = pos
                if field == "tokenizer.ggml.tokens":  # kept: the vocabulary is checked below
                    for _ in range(count):
                        if pos + 8 > size:
                            break
                        length = unpack(data, pos)[0]
                        tokens.append(data[pos + 8 : pos + 8 + length])
                        pos += 8 + length
                    tokens_span = (start, pos)
                for _ in range(count if field != "tokenizer.ggml.tokens" else 0):
                    if pos + 8 > size:  # the hot loop of a scan: merges
                        break
                    pos += 8 + unpack(data, pos)[0]
                need(0, f"array {_key(key)}")
            elif itype == _ARRAY:
                raise _bad(
                    shown,
                    f"metadata {_key(key)} is a nested array, which GGUF readers do not support",
                )
            else:
                raise _bad(shown, f"metadata {_key(key)} has unknown element type {itype}")
        else:
            raise _bad(shown, f"metadata {_key(key)} has unknown type {vtype}")

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if "general.alignment" in metadata and (alignment == 0 or alignment & (alignment - 1)):
        raise _bad(shown, f"general.alignment is {alignment}; it must be a power of two")

    infos: list[tuple[str, list[int], int, int]] = []
    for index in range(tensor_count):
        name = read_string(f"the name of tensor {index}")
        need(4, f"tensor {_key(name)}")
        (n_dims,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if len(name) >= MAX_TENSOR_NAME:
            raise _bad(shown, f"tensor {_key(name)} has a name of {len(name)} bytes (at most 63)")
        if not 1 <= n_dims <= MAX_DIMS:
            raise _bad(shown, f"tensor {_key(name)} has {n_dims} dimensions (1 to 4 allowed)")
        need(8 * n_dims + 12, f"tensor {_key(name)}")
        dims = list(struct.unpack_from(f"<{n_dims}Q", data, pos))
        pos += 8 * n_dims
        ttype, offset = struct.unpack_from("<IQ", data, pos)
        pos += 12
        infos.append((_printable(name.decode("utf-8", "replace")), dims, ttype, offset))
    data_start = -(-pos // alignment) * alignment
    if data_start > size and tensor_count:
        raise _bad(shown, "the tensor data is missing (truncated file)")
    tensors = _check_tensor_bounds(infos, data_start, alignment, size, shown)
    fim = _has_fim(data, tokens_span, metadata)
    header = Header(version, alignment, data_start, size, metadata, tensors, fim)
    try:
        gguf_rules.check_model(header, tokens)
    except gguf_rules.Refused as exc:
        raise _bad(shown, _printable(str(exc))) from None
    return header, tokens


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
    """Whether the vocabulary has a prefix, a suffix and a middle FIM token: named by id in the
    metadata, or found as whole entries (length-prefixed) of the token list."""
    start, end = span

    def listed(text: str) -> bool:
        raw = text.encode("utf-8")
        return data.find(_U64.pack(len(raw)) + raw, start, end) >= 0

    return all(
        any(isinstance(metadata.get(key), int) for key in keys) or any(map(listed, texts))
        for keys, texts in zip(_FIM_KEYS, _FIM_TEXTS, strict=True)
    )


def _check_tensor_bounds(
    infos: list[tuple[str, list[int], int, int]],
    data_start: int,
    alignment: int,
    size: int,
    shown: str,
) -> list[TensorInfo]:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    out = []
    for name, dims, ttype, offset in infos:
        try:
            qtype = GGMLQuantizationType(ttype)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise _bad(shown, f"tensor {name} has unknown type {ttype}") from None
        if dims[0] % block:
            raise _bad(
                shown,
                f"tensor {name}: first dimension {dims[0]} is not a multiple of "
                f"the block size {block}",
            )
        n_elements = 1
        for d in dims:
            n_elements *= d
        n_bytes = n_elements // block * type_size
        if offset % alignment:
            raise _bad(shown, f"tensor {name} is not aligned to {alignment} bytes")
        if (data_start + offset) % TENSOR_ALIGNMENT:
            # ggml maps tensor data in place and asserts 32-byte alignment (an abort, not an
            # error), which a general.alignment below 32 does not promise.
            raise _bad(
                shown,
                f"tensor {name} starts at byte {data_start + offset}, not a multiple of "
                f"{TENSOR_ALIGNMENT} (general.alignment is {alignment})",
            )
        if data_start + offset + n_bytes > size:
            raise _bad(
                shown,
                f"tensor {name} (offset {offset}, {n_bytes} bytes) lies past the "
                f"end of the {size}-byte file (truncated or corrupt)",
            )
        out.append(TensorInfo(name, qtype.name, tuple(dims), offset, n_bytes))
    return out


def _key(raw: bytes) -> str:
    text = _printable(raw.decode("utf-8", errors="replace"))
    return text if len(text) <= 60 else text[:57] + "..."


def _printable(text: str) -> str:
    # Names come from the file: escape control characters so that a hostile name can neither
    # break the one-line error message nor send escape sequences to the terminal.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _info(size: int, shown: str, scan: Header, tokens: list[bytes]) -> GGUFInfo:
    """What the store records, from the bounds-checked walk (no second parser: the `gguf`
    package's reader builds numpy objects per element, and took gigabytes on hostile headers)."""
    metadata: dict[str, Any] = {}
    for key, item in scan.metadata.items():
        if isinstance(item, tuple):  # arrays are not part of the summary
            continue
        if isinstance(item, str) and len(item) > 200 and key != "tokenizer.chat_template":
            item = item[:200] + "..."
        metadata[key] = item
    # The summary comes from the same code that describes pulled models, so a model is
    # described alike however it arrived.
    d = header_details([scan])
    return GGUFInfo(
        path=shown,
        size=size,
        version=scan.version,
        kind=d["kind"],
        architecture=d["architecture"],
        name=d["name"],
        tensor_count=len(scan.tensors),
        parameter_count=d["parameter_count"],
        context_length=d["context_length"],
        embedding_length=d["embedding_length"],
        block_count=d["block_count"],
        head_count=d["head_count"],
        quantization=d["quantization"],
        chat_template=_as_str(scan.metadata.get("tokenizer.chat_template")),
        license=_as_str(scan.metadata.get("general.license")),
        adapter_type=d["adapter_type"],
        lora_alpha=d["lora_alpha"],
        pooling_type=d["pooling_type"],
        fim=d["fim"],
        metadata=metadata,
        tokens=tokens,
    )


def _as_str(item: Any) -> str | None:
    return item if isinstance(item, str) else None


def header_details(headers: list[Header]) -> dict[str, Any]:
    """`GGUFInfo.details()` from fast header scans, for a model in one or several split files."""
    from gguf import LlamaFileType

    first = headers[0]
    meta = first.metadata
    arch = meta.get("general.architecture")
    tensors = [t for h in headers for t in h.tensors]
    count = 0
    for t in tensors:
        n = 1
        for d in t.dims:
            n *= d
        count += n
    quant = None
    if isinstance(meta.get("general.file_type"), int):
        try:
            quant = LlamaFileType(meta["general.file_type"]).name
            quant = quant.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            quant = None
    if quant is None:
        kinds = Counter(t.type_name for t in tensors if len(t.dims) >= 2)
        quant = kinds.most_common(1)[0][0] if kinds else None

    def arch_int(suffix: str) -> int | None:
        value = first.arch_value(suffix)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    kind = "adapter" if meta.get("general.type") == "adapter" else "model"
    alpha = meta.get("adapter.lora.alpha")
    return {
        "format": "gguf",
        "gguf_version": first.version,
        "kind": kind,
        "architecture": arch if isinstance(arch, str) else None,
        "name": meta.get("general.name") if isinstance(meta.get("general.name"), str) else None,
        "parameter_count": count,
        "context_length": arch_int("context_length"),
        "embedding_length": arch_int("embedding_length"),
        "block_count": arch_int("block_count"),
        "head_count": arch_int("attention.head_count"),
        "quantization": quant,
        "tensor_count": len(tensors),
        "adapter_type": meta.get("adapter.type") if kind == "adapter" else None,
        "lora_alpha": float(alpha) if isinstance(alpha, int | float) else None,
        "pooling_type": arch_int("pooling_type"),
        "fim": first.fim,
        "split_count": len(headers),
    }


def format_count(n: int) -> str:
    """134515008 -> '134.52M' (parameter counts as people write them)."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def is_gguf_path(path: Path) -> bool:
    return path.suffix.lower() == ".gguf"
