"""A Hugging Face checkpoint folder read for conversion: its JSON files and its safetensors
tensors, each checked against the file that holds it before a byte of data is read.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and byte range, then the data. Tensors are handed out as numpy views of a memory
map, one at a time, so converting a 16 GB checkpoint holds one tensor's transform in memory,
never the model. bf16 (what most checkpoints hold) has no numpy type: it is read as uint16
and widened by a shift, exactly.

Hostile files are refused in one line (CheckpointError) before numpy sees them: a file that
is not a regular one (a FIFO named model.safetensors blocked `create` for good), a header over
MAX_HEADER bytes, a shape whose element count disagrees with its byte range (a header claiming
10^12 elements), ranges outside the file or overlapping, dtypes a model does not use (FP8 and
other quantized checkpoints need their own dequantizer).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from localrun.errors import CheckpointError

MAX_HEADER = 100 << 20  # bytes: safetensors' own reader refuses larger headers too
MAX_JSON = 64 << 20  # bytes: config.json, tokenizer.json (Gemma 3's is 33 MB), the index
MAX_DIMS = 8

DTYPES: dict[str, tuple[Any, int]] = {
    "F32": (np.float32, 4),
    "F16": (np.float16, 2),
    "BF16": (np.uint16, 2),  # widened by bf16_to_f32
    "F64": (np.float64, 8),
}


@dataclass(frozen=True)
class Tensor:
    """One tensor of a checkpoint: where its bytes are and what they hold."""

    name: str
    dtype: str  # the safetensors dtype: F32, F16, BF16, F64
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset in the file
    nbytes: int

    def array(self) -> np.ndarray[Any, Any]:
        """The tensor as stored (bf16 as uint16), a read-only view of the file."""
        kind, _ = DTYPES[self.dtype]
        if self.nbytes == 0:
            return np.zeros(self.shape, dtype=kind)
        try:
            with open_regular(self.file) as handle:  # the map outlives the handle
                data = np.memmap(handle, dtype=np.uint8, mode="r", offset=self.start,
                                 shape=self.nbytes)  # fmt: skip
        except OSError as exc:
            raise CheckpointError(f"{self.file}: cannot read it: {exc.strerror}") from None
        out: np.ndarray[Any, Any] = data.view(kind).reshape(self.shape)
        return out

    def f32(self) -> np.ndarray[Any, Any]:
        """The tensor widened to float32."""
        data = self.array()
        if self.dtype == "BF16":
            return bf16_to_f32(data)
        return data.astype(np.float32)


def bf16_to_f32(bits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading, refused unless it is a regular file: a read of a FIFO (or a
    terminal, a socket) waits for a writer that may never come. The type is checked before the
    open, and again on what was opened, without blocking (O_NONBLOCK), in case the path was
    swapped between the two."""
    _regular(path, os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        _regular(path, os.fstat(fd).st_mode)
        if _NONBLOCK:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def _regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else (
            "a device or socket")  # fmt: skip
        raise CheckpointError(
            f"{path}: {kind}, not a regular file",
            hint="a checkpoint's files are regular files (or links to them)",
        )


def check_folder(folder: Path) -> None:
    """Refuse a file of a checkpoint or adapter folder that conversion would read (its JSON,
    safetensors and tokenizer files) when it is not a regular file (a FIFO, a device)."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return  # the reads that follow name what is missing
    for entry in entries:
        if entry.suffix not in (".json", ".safetensors", ".model", ".txt"):
            continue
        try:
            mode = os.stat(entry).st_mode
        except OSError:
            continue  # a dangling link: the read that needs it says so
        if not stat.S_ISDIR(mode):
            _regular(entry, mode)


def read_json(path: Path, what: str, *, required: bool = True) -> Any:
    """A JSON file of the checkpoint, bounded; None when it is absent and not required."""
    try:
        with open_regular(path) as handle:
            data = handle.read(MAX_JSON + 1)
    except FileNotFoundError:
        if not required:
            return None
        raise CheckpointError(
            f"{path.parent}: no {path.name}",
            hint=f"a Hugging Face {what} folder has {path.name} beside its safetensors files",
        ) from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it: {exc.strerror}") from None
    if len(data) > MAX_JSON:
        raise CheckpointError(f"{path}: larger than {MAX_JSON >> 20} MiB; not a {what} file")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: not valid JSON") from None


def shard_files(folder: Path, prefix: str) -> list[Path]:
    """The safetensors files of a checkpoint: those its index names, else `prefix*.safetensors`
    (a Mistral folder's consolidated.safetensors is the other format of the same weights)."""
    index = folder / f"{prefix}.safetensors.index.json"
    if index.is_file():
        mapping = read_json(index, "checkpoint")
        weight_map = mapping.get("weight_map") if isinstance(mapping, dict) else None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no weight_map")
        names = sorted({str(v) for v in weight_map.values()})
        for name in names:
            if not re.fullmatch(r"[\w.-]+\.safetensors", name):
                raise CheckpointError(f"{index}: names a file outside the folder ({name!r:.80})")
        return [folder / name for name in names]
    files = sorted(folder.glob(f"{prefix}*.safetensors"))
    if not files:
        found = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        raise CheckpointError(
            f"{folder}: no {prefix}*.safetensors file"
            + (f" ({found[0]} is a PyTorch pickle, which localrun does not load)" if found else ""),
            hint="save the checkpoint with safe_serialization=True (save_pretrained's default)",
        )
    return files


def tensors(files: list[Path]) -> dict[str, Tensor]:
    """Every tensor of the files, by name; each header checked against its file."""
    found: dict[str, Tensor] = {}
    for path in files:
        for tensor in _header(path):
            if tensor.name in found:
                raise CheckpointError(f"{path}: tensor {tensor.name} is in two files")
            found[tensor.name] = tensor
    return found


def _header(path: Path) -> Iterator[Tensor]:
    try:
        with open_regular(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length < 2 or length > MAX_HEADER or length + 8 > size:
                raise CheckpointError(
                    f"{path}: not a safetensors file (a header of {length} bytes in a file of "
                    f"{size})"
                )
            raw = handle.read(length)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it: {exc.strerror}") from None
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: its safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: its safetensors header is not an object")
    header.pop("__metadata__", None)
    base, data_size = 8 + length, size - 8 - length
    ranges = []
    for name, entry in header.items():
        tensor = _entry(path, name, entry, base, data_size)
        ranges.append((tensor.start, tensor.start + tensor.nbytes, name))
        yield tensor
    ranges.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(ranges):
        if start < end:
            raise CheckpointError(f"{path}: tensors {first} and {second} overlap")


def _entry(path: Path, name: str, entry: Any, base: int, data_size: int) -> Tensor:
    if not isinstance(entry, dict):
        raise CheckpointError(f"{path}: tensor {name!r:.80} has no description")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPES:
        raise CheckpointError(
            f"{path}: tensor {name} is {dtype!r:.20}; localrun converts F32, F16 and BF16 "
            "checkpoints",
            hint="a quantized checkpoint (FP8, GPTQ, AWQ) needs its full-precision original",
        )
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise CheckpointError(f"{path}: tensor {name} has no valid shape ({shape!r:.80})")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise CheckpointError(f"{path}: tensor {name}'s bytes lie outside the file")
    nbytes = offsets[1] - offsets[0]
    if math.prod(shape) * DTYPES[dtype][1] != nbytes:
        raise CheckpointError(
            f"{path}: tensor {name} claims shape {shape} ({math.prod(shape)} elements) in "
            f"{nbytes} bytes of {dtype}"
        )
    return Tensor(name, dtype, tuple(shape), path, base + offsets[0], nbytes)
