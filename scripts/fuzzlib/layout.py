"""A minimal GGUF layout for the fuzzers: parse a file into its keys, tensor infos and data,
edit them, and serialize them back (with counts that may lie).

Only what a mutant needs: values are kept as parsed (the raw bytes of an array nobody edits are
written back as they were), and the tensor data is one opaque section.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ARRAY",
    "F32",
    "I32",
    "KV",
    "SCALARS",
    "STRING",
    "U32",
    "U64",
    "Layout",
    "Tensor",
    "parse",
    "serialize",
]

# GGUF value types: the scalars by their struct format, then strings and arrays.
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
STRING, ARRAY = 8, 9
U32, I32, F32, U64 = 4, 5, 6, 10


@dataclass
class KV:
    key: str
    vtype: int
    value: Any  # scalar, str (bytes allowed), or (item type, list) for arrays
    raw: bytes = b""  # the value's bytes as parsed (kept for arrays we do not edit)


@dataclass
class Tensor:
    name: str
    dims: list[int]
    ttype: int
    offset: int


@dataclass
class Layout:
    version: int
    kvs: list[KV]
    tensors: list[Tensor]
    data: bytes  # the tensor data section, from the aligned start

    def get(self, key: str) -> KV | None:
        return next((kv for kv in self.kvs if kv.key == key), None)

    def set(self, key: str, vtype: int, value: Any) -> None:
        found = self.get(key)
        if found is None:
            self.kvs.append(KV(key, vtype, value))
        else:
            found.vtype, found.value, found.raw = vtype, value, b""

    def drop(self, key: str) -> None:
        self.kvs = [kv for kv in self.kvs if kv.key != key]

    def alignment(self) -> int:
        kv = self.get("general.alignment")
        return kv.value if kv is not None and isinstance(kv.value, int) and kv.value > 0 else 32


def parse(blob: bytes) -> Layout:
    pos = 4
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", blob, pos)
    pos = 24

    def string() -> bytes:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", blob, pos)
        pos += 8
        out = blob[pos : pos + n]
        pos += n
        return out

    def value(vtype: int) -> Any:
        nonlocal pos
        if vtype in SCALARS:
            (v,) = struct.unpack_from(SCALARS[vtype], blob, pos)
            pos += struct.calcsize(SCALARS[vtype])
            return v
        if vtype == STRING:
            return string()
        itype, count = struct.unpack_from("<IQ", blob, pos)
        pos += 12
        return (itype, [value(itype) for _ in range(count)])

    kvs = []
    for _ in range(n_kv):
        key = string().decode()
        (vtype,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        start = pos
        v = value(vtype)
        kvs.append(KV(key, vtype, v, blob[start:pos]))
    tensors = []
    for _ in range(n_tensors):
        name = string().decode()
        (n_dims,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        dims = list(struct.unpack_from(f"<{n_dims}Q", blob, pos))
        pos += 8 * n_dims
        ttype, offset = struct.unpack_from("<IQ", blob, pos)
        pos += 12
        tensors.append(Tensor(name, dims, ttype, offset))
    layout = Layout(version, kvs, tensors, b"")
    align = layout.alignment()
    start = -(-pos // align) * align
    layout.data = blob[start:]
    return layout


def _pack_value(vtype: int, value: Any) -> bytes:
    if vtype in SCALARS:
        return struct.pack(SCALARS[vtype], value)
    if vtype == STRING:
        raw = value.encode() if isinstance(value, str) else value
        return struct.pack("<Q", len(raw)) + raw
    itype, items = value
    return struct.pack("<IQ", itype, len(items)) + b"".join(_pack_value(itype, i) for i in items)


def serialize(layout: Layout, *, counts: tuple[int, int] | None = None) -> bytes:
    """The file for `layout`; `counts` overrides the (tensor, key) counts in the header."""
    n_tensors, n_kv = counts or (len(layout.tensors), len(layout.kvs))
    out = bytearray(b"GGUF" + struct.pack("<IQQ", layout.version, n_tensors, n_kv))
    for kv in layout.kvs:
        out += _pack_value(STRING, kv.key) + struct.pack("<I", kv.vtype)
        out += kv.raw if kv.raw else _pack_value(kv.vtype, kv.value)
    for t in layout.tensors:
        out += _pack_value(STRING, t.name) + struct.pack(f"<I{len(t.dims)}Q", len(t.dims), *t.dims)
        out += struct.pack("<IQ", t.ttype, t.offset)
    align = layout.alignment()
    out += b"\0" * (-len(out) % align)
    return bytes(out + layout.data)
