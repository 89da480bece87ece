"""Writing a GGUF to disk in one go, and splitting one into parts as gguf-split does."""

from __future__ import annotations

import os
from pathlib import Path

from gguf import GGUFReader, GGUFValueType, GGUFWriter

__all__ = ["write_all", "write_split"]


def write_all(writer: GGUFWriter) -> None:
    """Write the header, the metadata and the tensors added so far, and close the file."""
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def write_split(
    source: str | os.PathLike[str], directory: str | os.PathLike[str], stem: str, parts: int = 3
) -> list[Path]:
    """Split a GGUF into `parts` files named `<stem>-0000i-of-0000n.gguf`, as gguf-split does.

    Every part carries the metadata and a share of the tensors, plus the `split.*` keys
    llama.cpp reads to load them as one model. Returns the parts in order.
    """
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
