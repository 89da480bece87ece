"""A Hugging Face checkpoint folder read for conversion: its JSON files and safetensors tensors.

Each is checked against the file that holds it before a byte of data is read. A safetensors file
is an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and
byte range, then the data. A tensor is read in chunks of whole rows of about CHUNK bytes, never
a memory map that stays resident. So converting a 16 GB checkpoint, or one 2^22-row embedding,
holds a chunk's transform in memory, never a tensor. bf16 (what most checkpoints hold) has no
numpy type: it is read as uint16 and widened by a shift, exactly.

Hostile files are refused in one line (CheckpointError) before numpy sees them. One is a file
that is not a regular one: a FIFO named model.safetensors blocked `create` for good. Another is
a header over MAX_HEADER bytes or MAX_TENSORS tensors: one million empty tensors took 1 GB to
parse. So is a shape whose element count disagrees with its byte range (a header claiming 10^12
elements), and so are ranges outside the file or overlapping. So are dtypes a model does not
use: FP8 and other quantized checkpoints need their own dequantizer.
"""

from __future__ import annotations

import errno
import io
import itertools
import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np

from localrun.errors import CheckpointError, FileNotFoundError_, NotRegularFileError
from localrun.gguf import scan

# A header names each tensor in about 100 to 200 bytes: 32 MiB is 65,536 of the longest names
# with room to spare (safetensors' own reader allows 100 MB, which parses to gigabytes).
MAX_HEADER = 32 << 20
MAX_TENSORS = 1 << 16  # in a whole checkpoint: 4,096 layers (config's bound) of 16 each
CHUNK = 16 << 20  # bytes of a tensor read, converted and written at a time
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

    @property
    def rows(self) -> int:
        """The length of the first axis (a scalar is one row)."""
        return self.shape[0] if self.shape else 1

    def _row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * DTYPES[self.dtype][1]

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray[Any, Any]:
        """Rows [start, stop) as stored (bf16 as uint16), read into memory."""
        stop = self.rows if stop is None else stop
        kind, _ = DTYPES[self.dtype]
        out = np.empty((stop - start, *self.shape[1:]) if self.shape else (), dtype=kind)
        size = self._row_bytes()
        with self._opened() as handle:
            _read_into(handle, self.start + start * size, out, self.file)
        return out

    def columns(self, start: int, stop: int) -> np.ndarray[Any, Any]:
        """Columns [start, stop) of a matrix as stored, read one row's part at a time."""
        kind, width = DTYPES[self.dtype]
        out = np.empty((self.rows, stop - start), dtype=kind)
        with self._opened() as handle:
            for row in range(self.rows):
                at = self.start + (row * self.shape[1] + start) * width
                _read_into(handle, at, out[row], self.file)
        return out

    def chunks(self, group: int = 1) -> Iterator[np.ndarray[Any, Any]]:
        """Yield the tensor as stored, in chunks of about CHUNK bytes each.

        A chunk holds whole groups of `group` rows: an attention head's, where conversion
        permutes them.
        """
        step = max(1, CHUNK // max(1, self._row_bytes() * group)) * group
        for start in range(0, self.rows, step):
            yield self.read(start, min(self.rows, start + step))

    def column_chunks(self) -> Iterator[np.ndarray[Any, Any]]:
        """Yield a matrix as stored, in blocks of whole columns of about CHUNK bytes each.

        Its transpose's chunks of rows are made from these blocks.
        """
        step = max(1, CHUNK // max(1, self.rows * DTYPES[self.dtype][1]))
        for start in range(0, self.shape[1], step):
            yield self.columns(start, min(self.shape[1], start + step))

    def _opened(self) -> BinaryIO:
        try:
            return open_regular(self.file)
        except OSError as exc:
            raise CheckpointError(f"{self.file}: cannot read it: {exc.strerror}") from None


def widen(dtype: str, data: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Data of a tensor of safetensors type `dtype`, as stored, widened to float32."""
    if dtype == "BF16":
        return bf16_to_f32(data)
    return data.astype(np.float32, copy=False)


def _read_into(handle: BinaryIO, offset: int, out: np.ndarray[Any, Any], path: Path) -> None:
    view = out.reshape(-1).view(np.uint8).data
    reader = cast(io.BufferedReader, handle)
    reader.seek(offset)
    done = 0
    try:
        while done < len(view):
            count = reader.readinto(view[done:])
            if not count:
                raise CheckpointError(f"{path}: the file ends inside a tensor (it changed?)")
            done += count
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it: {exc.strerror}") from None


def bf16_to_f32(bits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return (bits.astype(np.uint32) << 16).view(np.float32)


_HINT = "a checkpoint's files are regular files (or links to them)"


def open_regular(path: Path) -> BinaryIO:
    """Open `path` for reading, refused in one line unless it is a regular file.

    A read of a FIFO waits for a writer that may never come. The checks are gguf.scan's, worded
    for a checkpoint. Raises FileNotFoundError when the file is absent.
    """
    try:
        fd = scan.open_regular(path, what="a checkpoint's file", hint=_HINT)
    except FileNotFoundError_:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path)) from None
    except NotRegularFileError as exc:
        raise CheckpointError(str(exc), hint=_HINT) from None
    return os.fdopen(fd, "rb")


def check_folder(folder: Path) -> None:
    """Refuse a checkpoint or adapter folder where a file to convert is not a regular file.

    The files are its JSON, safetensors and tokenizer files; a FIFO or a device is refused.
    """
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
        kind = scan.not_regular(mode)
        if kind is not None and not stat.S_ISDIR(mode):
            raise CheckpointError(f"{entry} is {kind}, not a checkpoint's file", hint=_HINT)


def read_json(path: Path, what: str, *, required: bool = True) -> Any:
    """A JSON file of the checkpoint, bounded; None when it is absent and not required."""
    try:
        data = read_bounded(path, MAX_JSON, f"a {what} file")
    except FileNotFoundError:
        if not required:
            return None
        raise CheckpointError(
            f"{path.parent}: no {path.name}",
            hint=f"a Hugging Face {what} folder has {path.name} beside its safetensors files",
        ) from None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: not valid JSON") from None


def read_bounded(path: Path, most: int, what: str) -> bytes:
    """Return a regular file's bytes, refused in one line past `most` bytes.

    `most` is more than `what` ever has. Raises FileNotFoundError when the file is absent.
    """
    try:
        with open_regular(path) as handle:
            data = handle.read(most + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it: {exc.strerror}") from None
    if len(data) > most:
        raise CheckpointError(f"{path}: larger than {most >> 20} MiB; not {what}")
    return data


def shard_files(folder: Path, prefix: str) -> list[Path]:
    """Return a checkpoint's safetensors files: those its index names, else the `prefix*` ones.

    A Mistral folder's consolidated.safetensors is the other format of the same weights.
    """
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
        if len(found) > MAX_TENSORS:
            raise CheckpointError(
                f"{path}: the checkpoint's files name more than {MAX_TENSORS} tensors; no model "
                "localrun converts has that many"
            )
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
            text = handle.read(length).decode("utf-8", "replace")
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it: {exc.strerror}") from None
    try:
        header = json.loads(text, object_pairs_hook=_counted(path))
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: its safetensors header is not JSON") from None
    del text
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


def _counted(path: Path) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    """Return json.loads' object hook, which refuses a header past MAX_TENSORS objects.

    It counts while json.loads parses, before the rest is built; a tensor's entry is one object.
    """
    count = 0

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal count
        count += 1
        if count > MAX_TENSORS + 2:  # with the header itself and its __metadata__
            raise CheckpointError(
                f"{path}: the header names more than {MAX_TENSORS} tensors; no model localrun "
                "converts has that many"
            )
        return dict(pairs)

    return hook


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
