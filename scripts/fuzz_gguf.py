"""A seeded GGUF fuzzer: mutants of a valid tiny model pushed through `create` and `run`.

Every mutant must end in one of two ways: `localrun create` refuses it with a one-line error, or
the model it made answers `localrun run` (or `run` fails with a one-line error). A signal, a
traceback, a hang past the timeout or memory past the bound is a defect, reported with the
mutant's name and kept on disk with --keep.

    python scripts/fuzz_gguf.py --count 600 --seed 0 [--jobs 2] [--out DIR] [--keep]

Mutants come in two families (see `mutants()`):
- structural: flipped header bytes, truncation at every section, huge counts and lengths,
  tensor offsets past the end, bad dimension counts and types;
- semantic: every numeric hyper-parameter at 0, -1, NaN, inf and 2^32-1, alignments, block
  counts that disagree with the tensors, foreign tokenizers, invalid UTF-8 vocabularies,
  vocabulary and embedding sizes that disagree, swapped shapes, oversized chat templates, and
  headers with a million keys, strings or tensor infos.

The same code is used by tests/test_fuzz_gguf.py on a seeded sample small enough for CI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --- a minimal GGUF layout: parse, edit, serialize -----------------------------------------------

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
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
        if vtype in _SCALARS:
            (v,) = struct.unpack_from(_SCALARS[vtype], blob, pos)
            pos += struct.calcsize(_SCALARS[vtype])
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
    if vtype in _SCALARS:
        return struct.pack(_SCALARS[vtype], value)
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


# --- mutants ----------------------------------------------------------------------------------

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
    return [kv for kv in layout.kvs if kv.vtype in _SCALARS and kv.vtype != 7]


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
                    fmt = _SCALARS[target.vtype]
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


# --- running ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    stage: str  # "create" refused, "run" failed cleanly, "answered", or "defect"
    detail: str
    seconds: float
    peak_rss: int = 0
    defects: list[str] = field(default_factory=list)


def _tree_rss(proc: Any) -> int:
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_bounded(
    argv: list[str], env: dict[str, str], timeout: float, memory: int
) -> tuple[int | None, str, str, int, str | None]:
    """Run argv; returns (exit code, stdout, stderr, peak RSS of its tree, a bound broken)."""
    import psutil

    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    ps = psutil.Process(proc.pid)
    peak, broken = 0, None
    outputs: dict[str, str] = {}

    def drain(name: str, stream: Any) -> None:
        outputs[name] = stream.read()

    readers = [
        threading.Thread(target=drain, args=("out", proc.stdout), daemon=True),
        threading.Thread(target=drain, args=("err", proc.stderr), daemon=True),
    ]
    for t in readers:
        t.start()
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        peak = max(peak, _tree_rss(ps))
        if peak > memory:
            broken = f"memory past {memory // 2**20} MiB"
        elif time.monotonic() > deadline:
            broken = f"still running after {timeout:.0f} s"
        if broken:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    code = proc.wait()
    for t in readers:
        t.join(5)
    return code, outputs.get("out", ""), outputs.get("err", ""), peak, broken


def clean_failure(code: int | None, stderr: str) -> str | None:
    """None when a failed command ended as it should (one 'Error:' line); else what was wrong."""
    if code is not None and code < 0:
        return f"died by {signal.Signals(-code).name}"
    if "Traceback" in stderr:
        return "printed a traceback"
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    if len(errors) != 1:
        return f"expected one 'Error:' line, got: {stderr.strip()[-300:]!r}"
    return None


def try_mutant(
    name: str, data: bytes, workdir: Path, env: dict[str, str], timeout: float, memory: int
) -> Outcome:
    started = time.monotonic()
    slot = workdir / f"m{zlib.crc32(name.encode()):08x}"
    slot.mkdir(parents=True, exist_ok=True)
    (slot / "model.gguf").write_bytes(data)
    (slot / "Modelfile").write_text("FROM ./model.gguf\n")
    model = f"fuzz-{slot.name}"
    cli = [sys.executable, "-m", "localrun"]
    outcome = Outcome(name, "defect", "", 0.0)
    try:
        code, _, err, peak, broken = run_bounded(
            [*cli, "create", model, "-f", str(slot / "Modelfile")], env, timeout, memory
        )
        outcome.peak_rss = peak
        if broken:
            outcome.defects.append(f"create: {broken}")
        elif code != 0:
            problem = clean_failure(code, err)
            if problem:
                outcome.defects.append(f"create: {problem}")
            else:
                outcome.stage, outcome.detail = "create", err.strip().splitlines()[-1]
        else:
            code, out, err, peak, broken = run_bounded(
                [*cli, "run", model, "-p", "num_predict=8", "--seed", "1", "Hello"],
                env,
                timeout,
                memory,
            )
            outcome.peak_rss = max(outcome.peak_rss, peak)
            if broken:
                outcome.defects.append(f"run: {broken}")
            elif code != 0:
                problem = clean_failure(code, err)
                if problem:
                    outcome.defects.append(f"run: {problem}")
                else:
                    outcome.stage, outcome.detail = "run", err.strip().splitlines()[-1]
            else:
                outcome.stage, outcome.detail = "answered", out.strip()[:60]
            subprocess.run([*cli, "rm", model], env=env, capture_output=True, timeout=60)
    finally:
        shutil.rmtree(slot, ignore_errors=True)
    if outcome.defects:
        outcome.stage, outcome.detail = "defect", "; ".join(outcome.defects)
    outcome.seconds = time.monotonic() - started
    return outcome


def fuzz(
    base: Path,
    *,
    seed: int,
    count: int,
    jobs: int = 2,
    timeout: float = 60.0,
    memory: int = 2 * 2**30,
    home: Path | None = None,
    keep: Path | None = None,
    progress: Callable[[Outcome], None] = lambda _: None,
) -> list[Outcome]:
    """Try `count` mutants of `base`; returns one Outcome each."""
    data = base.read_bytes()
    chosen = mutants(data, seed=seed, count=count)
    with tempfile.TemporaryDirectory(prefix="localrun-fuzz-") as tmp:
        root = Path(tmp)
        env = {
            **os.environ,
            "LOCALRUN_HOME": str(home or root / "home"),
            "LOCALRUN_HOST": "127.0.0.1:9",  # never a running server: every run is in-process
            "NO_COLOR": "1",
        }
        env.pop("LOCALRUN_MODELS", None)

        def one(item: Mutant) -> Outcome:
            name, make = item
            try:
                mutant = make()
            except Exception as exc:  # a mutation that does not apply to this base
                return Outcome(name, "skipped", f"{type(exc).__name__}: {exc}", 0.0)
            result = try_mutant(name, mutant, root / "work", env, timeout, memory)
            if result.stage == "defect" and keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / f"{len(os.listdir(keep)):04d}.gguf").write_bytes(mutant)
                (keep / f"{len(os.listdir(keep)) - 1:04d}.txt").write_text(
                    f"{name}\n{result.detail}\n"
                )
            progress(result)
            return result

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            return list(pool.map(one, chosen))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per command")
    parser.add_argument("--memory-mb", type=int, default=2048, help="bound on a command's tree RSS")
    parser.add_argument(
        "--base", type=Path, help="the valid GGUF to mutate (default: a tiny model)"
    )
    parser.add_argument("--keep", type=Path, help="write the mutants that found a defect here")
    parser.add_argument("--json", type=Path, help="write every outcome here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    with tempfile.TemporaryDirectory() as tmp:
        base = args.base
        if base is None:
            import make_test_models

            base = make_test_models.write_tiny_model(Path(tmp) / "tiny.gguf")
        started = time.monotonic()
        done = [0]

        def show(o: Outcome) -> None:
            done[0] += 1
            if o.stage == "defect":
                print(f"DEFECT {o.name}: {o.detail}", flush=True)
            elif done[0] % 50 == 0:
                print(f"{done[0]} mutants tried ({time.monotonic() - started:.0f} s)", flush=True)

        outcomes = fuzz(
            base,
            seed=args.seed,
            count=args.count,
            jobs=args.jobs,
            timeout=args.timeout,
            memory=args.memory_mb * 2**20,
            keep=args.keep,
            progress=show,
        )
    stages: dict[str, int] = {}
    for o in outcomes:
        stages[o.stage] = stages.get(o.stage, 0) + 1
    peak = max((o.peak_rss for o in outcomes), default=0)
    hangs = sum("still running" in o.detail for o in outcomes)
    blowups = sum("memory past" in o.detail for o in outcomes)
    crashes = stages.get("defect", 0) - hangs - blowups
    print(
        f"\n{len(outcomes)} mutants in {time.monotonic() - started:.0f} s: "
        f"{stages.get('create', 0)} refused by create, "
        f"{stages.get('answered', 0) + stages.get('run', 0)} accepted "
        f"({stages.get('answered', 0)} answered, {stages.get('run', 0)} refused by run), "
        f"{stages.get('skipped', 0)} skipped; defects: {crashes} crashes, {hangs} hangs, "
        f"{blowups} memory blow-ups; peak RSS of a command tree {peak / 2**20:.0f} MiB"
    )
    if args.json:
        args.json.write_text(json.dumps([vars(o) for o in outcomes], indent=1))
    return 1 if stages.get("defect") else 0


if __name__ == "__main__":
    sys.exit(main())
