"""pyright over localrun/ as Windows' and macOS's Python see it (`--pythonplatform`): 0 errors.
These machines are Linux, where the suite itself runs the code; this is how the other two are
checked here (docs/platforms.md says what else is, and how to run the Linux pass too)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support import ROOT

pytestmark = [pytest.mark.slow]


@pytest.mark.parametrize("platform", ["Windows", "Darwin"])
def test_pyright_finds_no_error(platform: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pyright", "--outputjson", "--pythonpath", sys.executable,
         "--pythonplatform", platform, "localrun"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.stdout.strip().startswith("{"), (done.stdout[-2000:], done.stderr[-2000:])
    report = json.loads(done.stdout)
    errors = [
        f"{d['file'].removeprefix(str(ROOT) + '/')}:{d['range']['start']['line'] + 1}: "
        f"{d['message'].splitlines()[0]}"
        for d in report["generalDiagnostics"]
        if d["severity"] == "error"
    ]
    assert errors == [], "\n".join(errors[:40])
    assert report["summary"]["filesAnalyzed"] > 200
