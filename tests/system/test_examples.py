"""Every example Modelfile in modelfiles/ builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import ROOT
from support.cli import CLI

EXAMPLES = sorted((ROOT / "modelfiles").glob("*.Modelfile"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.model
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_builds(cli: CLI, path: Path) -> None:
    result = cli("create", path.stem, "-f", str(path))
    assert result.code == 0, result.stderr
    shown = cli("show", path.stem)
    assert shown.code == 0 and "System" in shown.stdout and "Parameters" in shown.stdout
