"""The `localrun` command end to end with a model: what a long command prints off a terminal."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support.cli import CLI


def _modelfile(folder: Path, text: str, name: str = "Modelfile") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def project(tmp_path: Path, tiny_model: Path, tiny_lora: Path) -> Path:
    """A folder with the tiny model and adapter, as a user would have it."""
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(tiny_model, folder / "tiny.gguf")
    shutil.copy(tiny_lora, folder / "tiny-lora.gguf")
    return folder


@pytest.mark.model
def test_each_step_is_one_line_off_a_terminal(cli: CLI, project: Path) -> None:
    """Piped, a step announced before its bar (quantizing) printed twice, once as the
    announcement and once as the bar's line."""
    mf = _modelfile(project, "FROM ./tiny.gguf\n")
    made = cli("create", "small", "-f", str(mf), "--quantize", "q8_0")
    assert made.code == 0, made.stderr
    steps = [line for line in made.stderr.splitlines() if line.startswith("quantizing ")]
    assert steps == ["quantizing F32 model to Q8_0"], made.stderr
