"""A checkpoint and adapter fuzzer: tiny real checkpoints and PEFT adapters
(scripts/testmodels/hf_checkpoints.py), each mutated the way issue 57 found hostile or broken
ones (a FIFO where a file should be, a PEFT pattern key that backtracks for ever, alphas and rope
factors of 0, NaN, infinity or past float32), refused in one line or converted, and quickly:
never a hang, never an unexpected error."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from testmodels.hf_checkpoints import (
    FAMILIES,
    Checkpoint,
    write_adapter,
    write_checkpoint,
    write_safetensors,
)

from localrun.errors import CheckpointError
from localrun.recipes import checkpoint, convert, lora
from localrun.recipes.patterns import Pattern

from support.cli import CLI, assert_one_line_error

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")

QUICK_S = 2.0  # every case answers within this; the FIFO and the pattern key hung for good


@contextmanager
def _quick() -> Iterator[None]:
    started = time.monotonic()
    yield
    assert time.monotonic() - started < QUICK_S


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, Path]:
    """A tiny Llama checkpoint and its GGUF (the base an adapter converts against)."""
    root = tmp_path_factory.mktemp("fuzz")
    ck = write_checkpoint(root / "llama", "llama")
    convert.checkpoint(ck.folder, root / "llama.gguf")
    return ck, root / "llama.gguf"


def _copy(folder: Path, tmp_path: Path, name: str = "bad") -> Path:
    out = tmp_path / name
    shutil.copytree(folder, out)
    return out


def _fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


# -- files that are not regular files ------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_a_fifo_in_a_checkpoint_is_refused_not_read(
    name: str, tmp_path: Path, llama: tuple[Checkpoint, Path]
) -> None:
    folder = _copy(llama[0].folder, tmp_path)
    _fifo(folder / name)
    with _quick(), pytest.raises(CheckpointError, match=f"{name} is a FIFO"):
        convert.checkpoint(folder, tmp_path / "out.gguf")


def test_create_refuses_a_fifo_model_file_in_one_line(
    cli: CLI, tmp_path: Path, llama: tuple[Checkpoint, Path]
) -> None:
    """Issue 57: `localrun create` read the FIFO and never exited (300 s and counting)."""
    folder = _copy(llama[0].folder, tmp_path)
    _fifo(folder / "model.safetensors")
    (tmp_path / "Modelfile").write_text("FROM ./bad\n")
    started = time.monotonic()
    refused = cli("create", "x", "-f", str(tmp_path / "Modelfile"), timeout=60)
    assert_one_line_error(
        refused, "model.safetensors is a FIFO (named pipe), not a checkpoint's file"
    )
    assert time.monotonic() - started < 30  # the interpreter's start included; it hung before


def test_a_fifo_adapter_file_is_refused(tmp_path: Path, llama: tuple[Checkpoint, Path]) -> None:
    ck, base = llama
    write_adapter(tmp_path / "adapter", ck)
    _fifo(tmp_path / "adapter" / "adapter_model.safetensors")
    with _quick(), pytest.raises(CheckpointError, match="a FIFO"):
        lora.adapter(tmp_path / "adapter", base, tmp_path / "out.gguf")


def test_a_file_swapped_for_a_fifo_after_the_folder_was_checked_is_refused(
    tmp_path: Path, llama: tuple[Checkpoint, Path]
) -> None:
    """The reads check what they opened, without blocking, as well as what the folder held."""
    folder = _copy(llama[0].folder, tmp_path)
    found = checkpoint.tensors(checkpoint.shard_files(folder, "model"))
    _fifo(folder / "model.safetensors")
    with _quick(), pytest.raises(CheckpointError, match="a FIFO"):
        next(iter(found.values())).read()
    with _quick(), pytest.raises(CheckpointError, match="a FIFO"):
        checkpoint.read_json(folder / "model.safetensors", "checkpoint")
    (folder / "sub.json").mkdir()
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint's file"):
        checkpoint.read_json(folder / "sub.json", "checkpoint")


# -- adapter_config.json's patterns and numbers ---------------------------------------------------


def _adapter(tmp_path: Path, llama: tuple[Checkpoint, Path], **change: Any) -> Callable[[], None]:
    ck, base = llama
    folder = tmp_path / "adapter"
    write_adapter(folder, ck)
    settings = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**settings, **change}))
    return lambda: lora.adapter(folder, base, tmp_path / "out.gguf")


HOSTILE_KEYS = ["(.+)+X", "(a|a)*b", "(.*)*(.*)*(.*)*Z", ".*" * 30 + "Y", r"(\w+\.?)+$X"]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_a_backtracking_pattern_key_is_matched_in_linear_time(
    key: str, tmp_path: Path, llama: tuple[Checkpoint, Path]
) -> None:
    """Issue 57: `(.+)+X` held a core at 100% for good in Python's re; matched by the Pike VM
    it converts (it names no module) in milliseconds."""
    make = _adapter(tmp_path, llama, alpha_pattern={key: 16})
    with _quick():
        make()
    assert (tmp_path / "out.gguf").stat().st_size > 0


UNSUPPORTED = {"(?=q)": "(?=", r"\1": r"\1", "(?i)q_proj": "(?i", "a**": "repeated repeat",
               "*a": "nothing to repeat", "(q_proj": "unclosed (", "q_proj)": "unmatched )",
               "[q": "unclosed [", "a{5000}": "steps", "": "not a pattern"}  # fmt: skip


@pytest.mark.parametrize("key", sorted(UNSUPPORTED))
def test_a_pattern_key_outside_the_matched_syntax_is_refused(
    key: str, tmp_path: Path, llama: tuple[Checkpoint, Path]
) -> None:
    make = _adapter(tmp_path, llama, alpha_pattern={key: 16})
    with _quick(), pytest.raises(CheckpointError, match=re.escape(UNSUPPORTED[key])):
        make()


NAMES = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.k_proj",
         "model.layers.10.mlp.down_proj", "model.embed_tokens", "lm_head", "q_proj",
         "model.layers.3.mlp.gate_up_proj"]  # fmt: skip
KEYS = ["q_proj", "self_attn.q_proj", "layers.1.self_attn.k_proj", r"layers\.1\..*",
        r"layers\.\d+\.mlp\..*", "model.layers.1.self_attn.k_proj", "(q|k|v)_proj", "(?:q|k)_proj",
        r"layers\.[0-3]\.self_attn\.(q|k)_proj", ".*proj", "mlp.*", "lm_head", "layers.1.*",
        "^model.*proj$", r"\w+_proj", "[^q]_proj", "(?P<x>q)_proj", r"layers\.\d{1,2}\.mlp\..*",
        "layers..", "proj", "o_proj|down_proj", "gate_(up_)?proj", "x*q_proj", "[a-z_]+",
        "down_proj+", r"\Amodel.*", "embed_tokens$"]  # fmt: skip


@pytest.mark.parametrize("key", KEYS)
def test_pattern_keys_match_as_peft_matches_them(key: str, tmp_path: Path) -> None:
    """The same answer as PEFT's re.match(rf"(.*\\.)?({key})$", name) for the keys adapters
    use: names, dotted paths, classes, groups, alternation, repeats."""
    pattern = Pattern(key, tmp_path)
    for name in NAMES:
        want = re.match(rf"(.*\.)?({key})$", name) is not None
        assert pattern.match(name, [1 << 30]) == want, (key, name)


def test_the_first_matching_key_gives_the_alpha_as_in_peft(tmp_path: Path) -> None:
    patterns = [(Pattern("q_proj", tmp_path), 4.0), (Pattern(".*proj", tmp_path), 32.0)]
    assert lora._scale(patterns, 8.0, False, "model.layers.0.self_attn.q_proj", 4, [99]) == 1.0
    assert lora._scale(patterns, 8.0, False, "model.layers.0.mlp.up_proj", 4, [999]) == 8.0
    assert lora._scale(patterns, 8.0, True, "model.embed_tokens", 4, [999]) == 4.0


BAD_NUMBERS = {
    "lora_alpha 1e308": ({"lora_alpha": 1e308}, "lora_alpha is 1e+308"),
    "lora_alpha NaN": ({"lora_alpha": float("nan")}, "lora_alpha is nan"),
    "lora_alpha inf": ({"lora_alpha": float("inf")}, "lora_alpha is inf"),
    "lora_alpha -inf": ({"lora_alpha": float("-inf")}, "lora_alpha is -inf"),
    "lora_alpha 0": ({"lora_alpha": 0}, "lora_alpha is 0"),
    "lora_alpha text": ({"lora_alpha": "16"}, "lora_alpha is '16'"),
    "alpha_pattern NaN": ({"alpha_pattern": {"q_proj": float("nan")}}, "alpha_pattern['q_proj']"),
    "alpha_pattern 1e308": ({"alpha_pattern": {"q_proj": 1e308}}, "alpha_pattern['q_proj']"),
    "rank_pattern 0": ({"rank_pattern": {"q_proj": 0}}, "rank_pattern['q_proj'] is 0"),
    "r -1": ({"r": -1}, "r is -1"),
    "r inf": ({"r": float("inf")}, "r is inf"),
    "alpha_pattern a list": ({"alpha_pattern": ["q_proj"]}, "alpha_pattern is not an object"),
    # An integer no float holds: compared, never converted (math.isfinite raised OverflowError).
    "lora_alpha 10**400": ({"lora_alpha": 10**400}, "lora_alpha is 1000"),
    "r 10**400": ({"r": 10**400}, "r is 1000"),
}


@pytest.mark.parametrize("case", sorted(BAD_NUMBERS))
def test_a_non_finite_or_out_of_range_alpha_or_rank_is_refused(
    case: str, tmp_path: Path, llama: tuple[Checkpoint, Path]
) -> None:
    """Issue 57: 1e308 ended in an unexpected OverflowError; NaN and inf made a NaN adapter."""
    change, said = BAD_NUMBERS[case]
    make = _adapter(tmp_path, llama, **change)
    with _quick(), pytest.raises(CheckpointError, match=re.escape(said)):
        make()
    assert not (tmp_path / "out.gguf").exists() or not (tmp_path / "out.gguf").stat().st_size


def test_create_refuses_a_nan_alpha_in_one_line(
    cli: CLI, tmp_path: Path, llama: tuple[Checkpoint, Path]
) -> None:
    ck, _ = llama
    write_adapter(tmp_path / "lora", ck)
    settings = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    settings["lora_alpha"] = float("nan")
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps(settings))
    (tmp_path / "Modelfile").write_text(f"FROM {ck.folder}\nADAPTER ./lora\n")
    refused = cli("create", "x", "-f", str(tmp_path / "Modelfile"))
    assert_one_line_error(refused, "lora_alpha is nan")


# -- config.json's rope scaling --------------------------------------------------------------


ROPES = [("llama3", 0), ("linear", 0), ("yarn", -2.0), ("linear", float("nan")),
         ("llama3", float("inf")), ("yarn", 1e300), ("yarn", "4"), ("yarn", 10**400)]  # fmt: skip


@pytest.mark.parametrize(("kind", "factor"), ROPES)
def test_an_invalid_rope_scaling_factor_is_refused(
    kind: str, factor: Any, tmp_path: Path, llama: tuple[Checkpoint, Path]
) -> None:
    """Issue 57: a factor of 0 (and NaN, inf, -2) converted; 1e300 ended in OverflowError."""
    folder = _copy(llama[0].folder, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["rope_scaling"].update(rope_type=kind, factor=factor)
    (folder / "config.json").write_text(json.dumps(config))
    with _quick(), pytest.raises(CheckpointError, match=r"rope_scaling\.factor is"):
        convert.checkpoint(folder, tmp_path / "out.gguf")


@pytest.mark.parametrize(
    "change",
    [{"low_freq_factor": 0}, {"original_max_position_embeddings": -1},
     {"rope_type": "longrope", "long_factor": [1.0, float("nan")], "short_factor": [1.0]},
     {"rope_type": "longrope", "long_factor": [10**400], "short_factor": [1.0]}],
)  # fmt: skip
def test_the_other_rope_scaling_numbers_are_checked(
    change: dict[str, Any], tmp_path: Path, llama: tuple[Checkpoint, Path]
) -> None:
    folder = _copy(llama[0].folder, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["rope_scaling"].update(change)
    (folder / "config.json").write_text(json.dumps(config))
    with _quick(), pytest.raises(CheckpointError, match="rope_scaling"):
        convert.checkpoint(folder, tmp_path / "out.gguf")


def test_create_refuses_a_rope_factor_of_zero_in_one_line(
    cli: CLI, tmp_path: Path, llama: tuple[Checkpoint, Path]
) -> None:
    folder = _copy(llama[0].folder, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["rope_scaling"]["factor"] = 0
    (folder / "config.json").write_text(json.dumps(config))
    (tmp_path / "Modelfile").write_text("FROM ./bad\n")
    refused = cli("create", "x", "-f", str(tmp_path / "Modelfile"))
    assert_one_line_error(refused, "rope_scaling.factor is 0")


# -- a full disk ---------------------------------------------------------------------------------


def test_a_short_write_while_converting_is_a_full_disk(
    tmp_path: Path, llama: tuple[Checkpoint, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """numpy's tofile says a full disk as "N requested and M written", with no errno (issue
    57): it is DiskFullError's one line, not the numbers."""
    from localrun.errors import DiskFullError
    from localrun.recipes import create, modelfile
    from localrun.store.local import Store

    def short(*_: Any, **__: Any) -> None:
        raise OSError("37184 requested and 32784 written")

    monkeypatch.setattr(convert, "checkpoint", short)
    folder = _copy(llama[0].folder, tmp_path)
    parsed = modelfile.parse(f"FROM {folder}\n")
    store = Store(tmp_path / "models")
    with pytest.raises(DiskFullError, match="no space left to convert"):
        create.create(store, create.names.parse("x"), parsed, tmp_path)
    assert store.names() == []


def test_a_config_number_no_float_holds_is_refused(
    tmp_path: Path, llama: tuple[Checkpoint, Path]
) -> None:
    folder = _copy(llama[0].folder, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["rms_norm_eps"] = 10**400
    (folder / "config.json").write_text(json.dumps(config))
    with _quick(), pytest.raises(CheckpointError, match="rms_norm_eps is 1000"):
        convert.checkpoint(folder, tmp_path / "out.gguf")


# -- memory: a chunk of rows, never a tensor -------------------------------------------------------


def _sparse(folder: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Rewrite the folder's model.safetensors with the tensors `shapes` names grown to those
    shapes, their bytes a hole: gigabytes of zeros from 0 bytes on disk."""
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header, data = json.loads(raw[8 : 8 + size]), raw[8 + size :]
    header.pop("__metadata__", None)
    out: dict[str, Any] = {}
    pieces: list[bytes | int] = []
    offset = 0
    for name, entry in header.items():
        start, end = entry["data_offsets"]
        piece: bytes | int = data[start:end]
        if name in shapes:
            entry = {**entry, "shape": list(shapes[name])}
            piece = math.prod(shapes[name]) * checkpoint.DTYPES[entry["dtype"]][1]
        length = piece if isinstance(piece, int) else len(piece)
        out[name] = {**entry, "data_offsets": [offset, offset + length]}
        pieces.append(piece)
        offset += length
    text = json.dumps(out).encode()
    text += b" " * (-len(text) % 8)
    with path.open("wb") as handle:
        handle.write(len(text).to_bytes(8, "little") + text)
        for piece in pieces:
            handle.seek(piece, os.SEEK_CUR) if isinstance(piece, int) else handle.write(piece)
        handle.truncate()


PEAK = r"""
import resource, sys
from pathlib import Path
from localrun.recipes import convert
idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
convert.checkpoint(Path(sys.argv[1]), Path(sys.argv[2]))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - idle) // 1024)
"""


def test_a_sparse_checkpoint_converts_in_memory_of_a_chunk(tmp_path: Path) -> None:
    """Six F32 matrices of 128 MiB each, 0 bytes on disk (what config.json's intermediate_size
    of 2^19 allows): converted with the process grown by a few chunks, not by a tensor (2.75
    tensors before: 2.9 GB for a 1 GiB embedding)."""
    ck = write_checkpoint(tmp_path / "sparse", "llama", dtype="F32")
    ffn, hidden = 1 << 19, ck.config["hidden_size"]
    config = {**ck.config, "intermediate_size": ffn}
    (ck.folder / "config.json").write_text(json.dumps(config))
    grown = {
        f"model.layers.{i}.mlp.{m}.weight": (hidden, ffn) if m == "down_proj" else (ffn, hidden)
        for i in range(2)
        for m in ("gate_proj", "up_proj", "down_proj")
    }
    _sparse(ck.folder, grown)
    assert (ck.folder / "model.safetensors").stat().st_blocks * 512 < 1 << 20
    target = tmp_path / "out.gguf"
    done = subprocess.run([sys.executable, "-c", PEAK, str(ck.folder), str(target)],
                          capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    grew_mb = int(done.stdout.strip())
    assert grew_mb < 100, grew_mb  # a chunk is 16 MiB; one tensor was 128 MiB, its copies 320
    assert target.stat().st_size > 6 * (64 << 20)  # every F16 matrix written


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_chunk_of_one_head_converts_to_the_same_file(
    family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of one row (of one head, where Llama's q and k rows are permuted within heads)
    give the same GGUF as a tensor in one chunk."""
    ck = write_checkpoint(tmp_path / family, family, dtype="F32" if family == "llama" else "BF16")
    whole, rows = tmp_path / "whole.gguf", tmp_path / "rows.gguf"
    convert.checkpoint(ck.folder, whole)
    monkeypatch.setattr(checkpoint, "CHUNK", 1)
    convert.checkpoint(ck.folder, rows)
    assert rows.read_bytes() == whole.read_bytes()


def test_an_adapter_in_chunks_of_one_row_converts_to_the_same_file(
    tmp_path: Path, llama: tuple[Checkpoint, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for an adapter, an embedding's LoRA included (its A is written transposed,
    read a block of columns at a time)."""
    ck, base = llama
    write_adapter(tmp_path / "adapter", ck)
    path = tmp_path / "adapter" / "adapter_model.safetensors"
    found = {t.name: t.read() for t in checkpoint.tensors([path]).values()}
    rng = np.random.default_rng(3)
    vocab, hidden = ck.config["vocab_size"], ck.config["hidden_size"]
    embedding = "base_model.model.model.embed_tokens"
    found[f"{embedding}.lora_embedding_A"] = rng.normal(0, 0.3, (4, vocab)).astype(np.float32)
    found[f"{embedding}.lora_embedding_B"] = rng.normal(0, 0.3, (hidden, 4)).astype(np.float32)
    write_safetensors(path, found, "F32")
    whole, rows = tmp_path / "whole.gguf", tmp_path / "rows.gguf"
    lora.adapter(tmp_path / "adapter", base, whole)
    monkeypatch.setattr(checkpoint, "CHUNK", 1)
    lora.adapter(tmp_path / "adapter", base, rows)
    assert rows.read_bytes() == whole.read_bytes()
    assert b"token_embd.weight.lora_a" in whole.read_bytes()


def test_a_header_of_too_many_tensors_is_refused_while_parsing(tmp_path: Path) -> None:
    """One million empty tensors (a 75 MB header) took 1 GB to parse before the refusal."""
    path = tmp_path / "model.safetensors"
    entry = '"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
    text = ("{" + ",".join(entry % i for i in range(checkpoint.MAX_TENSORS + 8)) + "}").encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text)
    with _quick(), pytest.raises(CheckpointError, match="more than 65536 tensors"):
        checkpoint.tensors([path])
    big = tmp_path / "big.safetensors"
    with big.open("wb") as handle:
        handle.write((checkpoint.MAX_HEADER + 1).to_bytes(8, "little"))
        handle.truncate(checkpoint.MAX_HEADER + 64)
    with _quick(), pytest.raises(CheckpointError, match="not a safetensors file"):
        checkpoint.tensors([big])


def test_a_vocabulary_padded_far_past_its_tokenizer_is_refused(
    tmp_path: Path, llama: tuple[Checkpoint, Path]
) -> None:
    """config.json's vocab_size of 2^21 over a tokenizer of a few hundred tokens wrote two
    million pad tokens in Python (256 MB, 20 s) before any tensor."""
    folder = _copy(llama[0].folder, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = 1 << 21
    (folder / "config.json").write_text(json.dumps(config))
    _sparse(folder, {"model.embed_tokens.weight": (1 << 21, config["hidden_size"])})
    with _quick(), pytest.raises(CheckpointError, match=r"the tokenizer has \d+ tokens"):
        convert.checkpoint(folder, tmp_path / "out.gguf")
