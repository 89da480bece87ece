"""Mutants of a valid GGUF for scripts/fuzz/gguf_files.py, in two families:

- semantic (`semantic`): every numeric hyper-parameter at 0, -1, NaN, inf and 2^32-1, alignments,
  block counts that disagree with the tensors, foreign tokenizers, invalid UTF-8 vocabularies,
  vocabulary and embedding sizes that disagree, swapped shapes, oversized chat templates, and
  headers with a million keys, strings or tensor infos;
- structural (`structural`): flipped header bytes, truncation at every section, huge counts and
  lengths, tensor offsets past the end, bad dimension counts and types.

A mutant is a name and a function that makes its bytes (made when tried, not when listed).
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable
from typing import Any

from fuzzlib.layout import ARRAY, F32, KV, SCALARS, STRING, U32, Layout, Tensor, parse, serialize

__all__ = ["Mutant", "mutants", "semantic", "structural"]

Mutant = tuple[str, Callable[[], bytes]]


def _edit(base: bytes, change: Callable[[Layout], Any]) -> Callable[[], bytes]:
    def make() -> bytes:
        layout = parse(base)
        change(layout)
        return serialize(layout)

    return make


_EXTREMES = (
    ("0", 0),
    ("-1", -1),
    ("nan", math.nan),
    ("inf", math.inf),
    ("-inf", -math.inf),
    ("u32max", 2**32 - 1),
    ("2^31", 2**31),
)


def _numeric_keys(layout: Layout) -> list[KV]:
    return [kv for kv in layout.kvs if kv.vtype in SCALARS and kv.vtype != 7]


def semantic(base: bytes) -> list[Mutant]:
    """The named triggers: each is one deterministic mutant."""
    layout = parse(base)
    arch = layout.get("general.architecture")
    a = arch.value.decode() if arch is not None else "llama"
    out: list[Mutant] = []

    # Every numeric hyper-parameter at 0, -1, NaN, inf and 2^32-1 (same width, patched in place).
    for kv in _numeric_keys(layout):
        for label, number in _EXTREMES:

            def change(lay: Layout, key: str = kv.key, n: float = number) -> None:
                target = lay.get(key)
                assert target is not None
                if target.vtype in (F32, 12):
                    target.value = float(n) if not isinstance(n, int) or abs(n) < 2**40 else 1e30
                elif isinstance(n, float):
                    target.vtype, target.value = F32, n  # a float where an integer belongs
                else:
                    fmt = SCALARS[target.vtype]
                    bits = struct.calcsize(fmt) * 8
                    target.value = n % (1 << bits) if fmt.isupper() or fmt[1] in "BHIQ" else n
                    if fmt[1] in "bhiq":
                        half = 1 << (bits - 1)
                        target.value = ((n + half) % (1 << bits)) - half
                target.raw = b""

            out.append((f"{kv.key}={label}", _edit(base, change)))

    for align in (0, 1, 2, 3, 8, 16, 64, 4096, 2**31):
        out.append(
            (
                f"alignment={align}",
                _edit(base, lambda lay, v=align: lay.set("general.alignment", U32, v)),
            )
        )
    for count in (0, 1, 3, 64, 2**16, 2**32 - 1):
        out.append(
            (
                f"block_count={count}",
                _edit(base, lambda lay, v=count: lay.set(f"{a}.block_count", U32, v)),
            )
        )
    for model in ("bert", "t5", "rwkv", "gpt2", "none", "no_vocab", "plamo2", "unknown-model", ""):
        out.append(
            (
                f"tokenizer={model or 'empty'}",
                _edit(base, lambda lay, v=model: lay.set("tokenizer.ggml.model", STRING, v)),
            )
        )

    def tokens(lay: Layout) -> list[Any]:
        kv = lay.get("tokenizer.ggml.tokens")
        assert kv is not None
        return kv.value[1]  # type: ignore[no-any-return]

    def same_token(lay: Layout, text: bytes) -> None:
        kv = lay.get("tokenizer.ggml.tokens")
        assert kv is not None
        kv.value, kv.raw = (STRING, [text] * len(tokens(lay))), b""

    out.append(("tokens=same-invalid-utf8", _edit(base, lambda lay: same_token(lay, b"\xff\xfe"))))
    out.append(("tokens=same-valid", _edit(base, lambda lay: same_token(lay, b"a"))))
    out.append(("tokens=empty-strings", _edit(base, lambda lay: same_token(lay, b""))))

    def resize_vocab(lay: Layout, n: int) -> None:
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            kv = lay.get(key)
            if kv is not None:
                itype, items = kv.value
                items = (items * (n // max(1, len(items)) + 1))[:n]
                kv.value, kv.raw = (itype, items), b""

    for n in (0, 1, 10, 300):
        out.append((f"vocab={n}", _edit(base, lambda lay, v=n: resize_vocab(lay, v))))

    def scores_only(lay: Layout, key: str, n: int) -> None:
        kv = lay.get(key)
        if kv is not None:
            itype, items = kv.value
            kv.value, kv.raw = (itype, items[:n]), b""

    out.append(
        ("scores=short", _edit(base, lambda lay: scores_only(lay, "tokenizer.ggml.scores", 5)))
    )
    out.append(
        (
            "token_type=short",
            _edit(base, lambda lay: scores_only(lay, "tokenizer.ggml.token_type", 5)),
        )
    )
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        for v in (2**31, 2**32 - 1, 100_000):
            out.append((f"{key}={v}", _edit(base, lambda lay, k=key, n=v: lay.set(k, U32, n))))

    def swap_dims(lay: Layout, name: str) -> None:
        for t in lay.tensors:
            if t.name == name:
                t.dims = list(reversed(t.dims))

    for t in layout.tensors[:6]:
        if len(t.dims) > 1:
            out.append((f"swap:{t.name}", _edit(base, lambda lay, n=t.name: swap_dims(lay, n))))

    def drop_tensor(lay: Layout, name: str) -> None:
        lay.tensors = [t for t in lay.tensors if t.name != name]

    for name in (
        "token_embd.weight",
        "output_norm.weight",
        "blk.0.attn_q.weight",
        "blk.1.ffn_up.weight",
    ):
        out.append((f"drop:{name}", _edit(base, lambda lay, n=name: drop_tensor(lay, n))))

    def rename_tensor(lay: Layout, old: str, new: str) -> None:
        for t in lay.tensors:
            if t.name == old:
                t.name = new

    out.append(
        (
            "rename:blk.1->blk.7",
            _edit(
                base,
                lambda lay: [
                    rename_tensor(lay, t.name, t.name.replace("blk.1.", "blk.7."))
                    for t in list(lay.tensors)
                ],
            ),
        )
    )
    out.append(
        (
            "duplicate-tensor",
            _edit(base, lambda lay: lay.tensors.append(Tensor(**vars(lay.tensors[1])))),
        )
    )

    def set_dims(lay: Layout, name: str, dims: list[int]) -> None:
        for t in lay.tensors:
            if t.name == name:
                t.dims = dims

    for dims in ([0, 1], [1, 0], [64, 0], [2**40, 2**40]):
        out.append(
            (
                f"dims:token_embd={dims}",
                _edit(base, lambda lay, d=dims: set_dims(lay, "token_embd.weight", d)),
            )
        )

    template = "{{ 'x' }}" * (5_900_000 // 9)
    out.append(
        (
            "chat_template=5.9MB",
            _edit(base, lambda lay: lay.set("tokenizer.chat_template", STRING, template)),
        )
    )
    out.append(
        (
            "chat_template=bad-jinja",
            _edit(base, lambda lay: lay.set("tokenizer.chat_template", STRING, "{% for %}")),
        )
    )
    out.append(
        (
            "architecture=unknown",
            _edit(base, lambda lay: lay.set("general.architecture", STRING, "no-such-arch")),
        )
    )
    out.append(
        (
            "architecture=bert",
            _edit(base, lambda lay: lay.set("general.architecture", STRING, "bert")),
        )
    )
    out.append(("architecture=missing", _edit(base, lambda lay: lay.drop("general.architecture"))))
    out.append(
        ("architecture=u32", _edit(base, lambda lay: lay.set("general.architecture", U32, 7)))
    )
    out.append(
        (
            "general.type=adapter",
            _edit(base, lambda lay: lay.set("general.type", STRING, "adapter")),
        )
    )
    out.append(
        (
            "key-type-changed",
            _edit(base, lambda lay: lay.set(f"{a}.embedding_length", STRING, "64")),
        )
    )
    # Headers sized by their counts: the reader must be bounded by the file, not by the claims.
    out.append(
        (
            "1M-empty-strings",
            _edit(base, lambda lay: lay.set("fuzz.strings", ARRAY, (STRING, [b""] * 1_000_000))),
        )
    )
    out.append(
        (
            "1M-keys",
            _edit(base, lambda lay: lay.kvs.extend(KV(f"k{i}", 0, 0) for i in range(1_000_000))),
        )
    )
    out.append(
        (
            "1M-tensor-infos",
            _edit(
                base,
                lambda lay: lay.tensors.extend(
                    Tensor(f"t{i}", [32], 0, 0) for i in range(1_000_000)
                ),
            ),
        )
    )
    out.append(
        (
            "4M-u32-array",
            _edit(base, lambda lay: lay.set("fuzz.numbers", ARRAY, (U32, [0] * 4_000_000))),
        )
    )
    return out


def structural(base: bytes, rng: random.Random, count: int) -> list[Mutant]:
    """`count` seeded structural mutants: flipped bytes, truncations, huge counts and lengths."""
    layout = parse(base)
    header_end = len(base) - len(layout.data)
    # Section boundaries: after the fixed header, after each key/value, after each tensor info.
    bounds = [4, 8, 16, 24]
    pos = 24
    for kv in layout.kvs:
        pos += 8 + len(kv.key.encode()) + 4 + len(kv.raw)
        bounds.append(pos)
    for t in layout.tensors:
        pos += 8 + len(t.name.encode()) + 4 + 8 * len(t.dims) + 12
        bounds.append(pos)
    bounds += [header_end, header_end + 1, len(base) - 1]

    def flip(seed: int) -> Callable[[], bytes]:
        def make() -> bytes:
            r = random.Random(seed)
            data = bytearray(base)
            for _ in range(r.randint(1, 8)):
                data[r.randrange(header_end)] = r.randrange(256)
            return bytes(data)

        return make

    def truncate(at: int) -> Callable[[], bytes]:
        return lambda: base[:at]

    def put(offset: int, fmt: str, value: int) -> Callable[[], bytes]:
        def make() -> bytes:
            data = bytearray(base)
            struct.pack_into(fmt, data, offset, value)
            return bytes(data)

        return make

    huge = (2**64 - 1, 2**63, 2**32 - 1, 2**31, 10**9, 2**20)
    # Offsets of length fields: every key's length, every string value's length, array counts.
    lengths = []
    pos = 24
    for kv in layout.kvs:
        lengths.append((f"key-length:{kv.key}", pos))
        pos += 8 + len(kv.key.encode()) + 4
        if kv.vtype == STRING:
            lengths.append((f"string-length:{kv.key}", pos))
        elif kv.vtype == ARRAY:
            lengths.append((f"array-count:{kv.key}", pos + 4))
            lengths.append((f"array-type:{kv.key}", -pos))  # negative: the u32 item type
        pos += len(kv.raw)
    tensor_fields = []
    for t in layout.tensors:
        name_at = pos
        pos += 8 + len(t.name.encode())
        dims_at = pos + 4
        type_at = dims_at + 8 * len(t.dims)
        tensor_fields.append((t.name, name_at, pos, dims_at, type_at, type_at + 4))
        pos = type_at + 12

    candidates: list[Mutant] = []
    for at in bounds:
        candidates.append((f"truncate@{at}", truncate(at)))
    for label, offset in (("tensor-count", 8), ("kv-count", 16)):
        for v in (*huge, len(layout.tensors) + 1, len(layout.kvs) + 1, 0):
            candidates.append((f"{label}={v}", put(offset, "<Q", v)))
    for label, offset in lengths:
        if offset < 0:
            for v in (STRING + 100, ARRAY, 12, 13):
                candidates.append((f"{label}={v}", put(-offset, "<I", v)))
            continue
        for v in huge:
            candidates.append((f"{label}={v}", put(offset, "<Q", v)))
    for name, name_at, ndims_at, dims_at, type_at, offset_at in tensor_fields:
        candidates.append((f"name-length:{name}=huge", put(name_at, "<Q", 2**62)))
        for v in (0, 5, 2**32 - 1):
            candidates.append((f"n_dims:{name}={v}", put(ndims_at, "<I", v)))
        for v in (0, 3, 2**31, 2**62):
            candidates.append((f"dim0:{name}={v}", put(dims_at, "<Q", v)))
        for v in (5, 99, 2**31):
            candidates.append((f"type:{name}={v}", put(type_at, "<I", v)))
        for v in (1, 2**40, len(layout.data), 2**64 - 32):
            candidates.append((f"offset:{name}={v}", put(offset_at, "<Q", v)))
    rng.shuffle(candidates)
    chosen = candidates[:count]
    for i in range(len(chosen), count):
        chosen.append((f"flip#{i}", flip(rng.randrange(2**32))))
    return chosen


def mutants(base: bytes, *, seed: int, count: int) -> list[Mutant]:
    """`count` mutants: every semantic one first (as many as fit), then structural ones."""
    rng = random.Random(seed)
    named = semantic(base)
    if count < len(named):
        return rng.sample(named, count)
    return named + structural(base, rng, count - len(named))
