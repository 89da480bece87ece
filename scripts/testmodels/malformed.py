"""Broken GGUF files for the tests of what localrun refuses: truncated, bad magic, bad version,
a tensor past the end, an absurd array length, zero alignment, empty.

Each sample is a valid small model patched in place. Byte positions come from gguf.GGUFReader
(ReaderField.offset and .parts); the reader is dropped before the file is modified, so no
memory map is open while the file is patched or truncated.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from gguf import GGUFReader, GGUFValueType, Keys
from gguf.gguf_reader import ReaderField

from testmodels.text import write_tiny_model

__all__ = [
    "write_absurd_array_length",
    "write_bad_magic",
    "write_bad_version",
    "write_empty",
    "write_malformed",
    "write_tensor_offset_past_end",
    "write_truncated",
    "write_truncated_header",
    "write_zero_alignment",
]


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
