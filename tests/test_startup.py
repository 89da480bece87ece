"""`localrun --help` and `localrun list` must not import the heavy packages (speed budget)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import PATIENCE_S

HEAVY = ("llama_cpp", "fastapi", "uvicorn", "huggingface_hub", "modelscope", "gguf", "numpy")

_PROBE = """
import json, sys
from localrun.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = %r
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "--json"], ["env"]])
def test_light_commands_import_no_heavy_package(args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE % (HEAVY,), *args],
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )
    loaded = json.loads(proc.stderr.strip().splitlines()[-1])
    assert loaded == [], f"`localrun {' '.join(args)}` imported {loaded}"


def test_probe_detects_heavy_imports() -> None:
    """The probe itself works: a heavy module that is loaded is reported."""
    proc = subprocess.run(
        [sys.executable, "-c", "import gguf\n" + _PROBE % (HEAVY,), "--help"],
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )
    assert "gguf" in json.loads(proc.stderr.strip().splitlines()[-1])
