"""The `localrun` command end to end with a model: what a long command prints off a terminal."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.cli import CLI
from support.modelfiles import write_modelfile


@pytest.mark.model
def test_each_step_is_one_line_off_a_terminal(cli: CLI, project: Path) -> None:
    """Piped, a step announced before its bar (quantizing) printed twice, once as the
    announcement and once as the bar's line."""
    mf = write_modelfile(project, "FROM ./tiny.gguf\n")
    made = cli("create", "small", "-f", str(mf), "--quantize", "q8_0")
    assert made.code == 0, made.stderr
    steps = [line for line in made.stderr.splitlines() if line.startswith("quantizing ")]
    assert steps == ["quantizing F32 model to Q8_0"], made.stderr
