"""Read and validate GGUF files before anything native touches them.

`inspect(path)` refuses anything but a regular file (a FIFO or a device must never be opened for
reading: `FROM /dev/random` would hang, Ollama's CVE-2024-39721), maps it and then:

1. walks the header once (`localrun.gguf.header.walk`), every length, count, offset and tensor
   extent checked against the file size and every count bounded;
2. checks a model's values that llama.cpp trusts (hyper-parameters, block count against the
   tensors, shapes, tokenizer, chat template size) with `localrun.gguf.rules.check_model`.

`scan(path)` does the same and keeps the Header alone (remembered per file), for the checks made
just before llama.cpp opens a file. What `inspect` returns (`GGUFInfo`) is what the store records
about a model: architecture, sizes, quantization, chat template, license; and its vocabulary,
which create compares with a draft's.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localrun.errors import FileNotFoundError_, NotRegularFileError
from localrun.gguf import rules
from localrun.gguf.header import Header, invalid, printable, walk
from localrun.host import files


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
    sliding_window: int | None = None  # local attention layers' window (gguf.memory)
    fim: bool = False  # has fill-in-the-middle tokens
    modalities: list[str] | None = None  # a projector's: "vision", "audio"
    projection_dim: int | None = None  # a projector's: the text model's embedding width
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
            "sliding_window": self.sliding_window,
            "fim": self.fim,
            **(
                {"modalities": self.modalities, "projection_dim": self.projection_dim}
                if self.kind == "projector"
                else {}
            ),
        }


def open_regular(
    path: str | os.PathLike[str],
    *,
    what: str = "a GGUF file",
    hint: str = "point to a .gguf model file",
) -> int:
    """Open `path` read-only, refusing anything that is not a regular file; return the fd.

    The fd is blocking again once open. `what` and `hint` word the refusal for the caller's kind of
    file.

    The check is made before opening, since a FIFO blocks in open(). It is made again on the open
    descriptor, opened without blocking, so a file swapped for a FIFO or device in between is still
    refused.
    """
    shown = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError_(f"no such file: {shown}", hint="check the path") from None
    except OSError as exc:
        raise NotRegularFileError(f"cannot read {shown}: {exc.strerror}") from exc
    _require_regular(st.st_mode, shown, what, hint)
    nonblocking = getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, os.O_RDONLY | nonblocking | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise NotRegularFileError(f"cannot read {shown}: {exc.strerror}") from exc
    try:
        _require_regular(os.fstat(fd).st_mode, shown, what, hint)
        if nonblocking:
            files.blocking(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def not_regular(mode: int) -> str | None:
    """What a file of `st_mode` is, as "a FIFO (named pipe)", or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def _require_regular(mode: int, shown: str, what: str, hint: str) -> None:
    kind = not_regular(mode)
    if kind is not None:
        raise NotRegularFileError(f"{shown} is {kind}, not {what}", hint=hint)


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
        raise invalid(shown, f"only {size} bytes, too small for a GGUF header")
    with _mapped(fd, shown) as data:
        return _info(size, shown, *_read(data, size, shown))


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
        raise invalid(shown, f"only {size} bytes, too small for a GGUF header")
    with _mapped(fd, shown) as data:
        return _read(data, size, shown)[0]


def _read(data: mmap.mmap, size: int, shown: str) -> tuple[Header, list[bytes]]:
    """The header and the vocabulary's token texts, once the structure and the values pass."""
    header, tokens = walk(data, size, shown)
    try:
        rules.check_model(header, tokens)
    except rules.Refused as exc:
        raise invalid(shown, printable(str(exc))) from None
    return header, tokens


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


def _info(size: int, shown: str, scan: Header, tokens: list[bytes]) -> GGUFInfo:
    """What the store records, from the bounds-checked walk.

    There is no second parser: the `gguf` package's reader builds numpy objects per element, and
    took gigabytes on hostile headers.
    """
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
        sliding_window=d["sliding_window"],
        fim=d["fim"],
        modalities=d.get("modalities"),
        projection_dim=d.get("projection_dim"),
        metadata=metadata,
        tokens=tokens,
    )


def _as_str(item: Any) -> str | None:
    return item if isinstance(item, str) else None


def _projector_details(meta: dict[str, Any]) -> dict[str, Any]:
    dims = [meta.get(f"clip.{m}.projection_dim") for m in ("vision", "audio")]
    return {
        "modalities": [m for m in ("vision", "audio") if meta.get(f"clip.has_{m}_encoder") is True],
        "projection_dim": next(
            (d for d in dims if isinstance(d, int) and not isinstance(d, bool)), None
        ),
    }


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
    if arch == "clip":
        kind = "projector"
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
        "sliding_window": arch_int("attention.sliding_window"),
        "fim": first.fim,
        "split_count": len(headers),
        # A projector's: what it takes in, and the width of what it hands the text model.
        **(_projector_details(meta) if kind == "projector" else {}),
    }


def format_count(n: int) -> str:
    """134515008 -> '134.52M' (parameter counts as people write them)."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def is_gguf_path(path: Path) -> bool:
    return path.suffix.lower() == ".gguf"
