"""A checkpoint and adapter fuzzer: tiny real checkpoints and PEFT adapters
(scripts/testmodels/hf_checkpoints.py), each mutated the way issue 57 found hostile or broken
ones (a FIFO where a file should be, a PEFT pattern key that backtracks for ever, alphas and rope
factors of 0, NaN, infinity or past float32), refused in one line or converted, and quickly:
never a hang, never an unexpected error."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI, assert_one_line_error
from testmodels.hf_checkpoints import Checkpoint, write_adapter, write_checkpoint

from localrun.errors import CheckpointError
from localrun.recipes import checkpoint, convert, lora
from localrun.recipes.lora import _Pattern

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
    with _quick(), pytest.raises(CheckpointError, match=f"{name}: a FIFO, not a regular file"):
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
    assert_one_line_error(refused, "model.safetensors: a FIFO, not a regular file")
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
        next(iter(found.values())).array()
    with _quick(), pytest.raises(CheckpointError, match="a FIFO"):
        checkpoint.read_json(folder / "model.safetensors", "checkpoint")
    (folder / "sub.json").mkdir()
    with pytest.raises(CheckpointError, match="a folder, not a regular file"):
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
    pattern = _Pattern(key, tmp_path)
    for name in NAMES:
        want = re.match(rf"(.*\.)?({key})$", name) is not None
        assert pattern.match(name, [1 << 30]) == want, (key, name)


def test_the_first_matching_key_gives_the_alpha_as_in_peft(tmp_path: Path) -> None:
    patterns = [(_Pattern("q_proj", tmp_path), 4.0), (_Pattern(".*proj", tmp_path), 32.0)]
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
    from localrun.store.models import Store

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
