"""localrun's start-up where the POSIX-only modules do not exist (Windows), checked on Linux:
`list`, `create`, `run`, `pull` and `serve` (its runners and schema checkers too) run with
`fcntl`, `resource`, `termios`, `pty`, `pwd` and `grp` hidden from localrun's own code
(tests/support/posix_hidden, a sitecustomize every child process imports as well)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from support import PATIENCE_S, ROOT
from support.cli import CLI, assert_one_line_error
from support.serve import Serve

pytestmark = [pytest.mark.model, pytest.mark.server]

HIDDEN = ROOT / "tests" / "support" / "posix_hidden"


@pytest.fixture
def hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [str(HIDDEN), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))


def test_the_commands_start_without_the_posix_only_modules(
    hidden: None, cli: CLI, tiny_model: Path, tmp_path: Path, home: Path
) -> None:
    (tmp_path / "Modelfile").write_text(f"FROM {tiny_model}\nPARAMETER num_predict 4\n")
    listed = cli("list")
    assert listed.code == 0, listed.stderr
    made = cli("create", "tiny", "-f", str(tmp_path / "Modelfile"))
    assert made.code == 0, made.stderr
    ran = cli("run", "tiny", "Hi")
    assert ran.code == 0 and "Traceback" not in ran.stderr, ran.stderr
    assert "tiny" in cli("list").stdout
    info = cli("info")
    assert info.code == 0 and "memory caps" in info.stdout, info.stderr
    # A pull from a registry that is not there: its one-line error, not a missing module.
    pulled = cli("pull", "127.0.0.1:9/library/nothing:latest")
    assert_one_line_error(pulled)
    assert "module" not in pulled.stderr

    served = Serve(home)
    try:
        base = served.url
        assert httpx.get(f"{base}/api/version", timeout=PATIENCE_S).status_code == 200
        body = {"model": "tiny", "prompt": "Hi", "stream": False, "options": {"num_predict": 4}}
        answer = httpx.post(f"{base}/api/generate", json=body, timeout=PATIENCE_S)
        assert answer.status_code == 200, answer.text
        # A schema checked after (uniqueItems) goes through a checker child: capped where the
        # system can, checked either way.
        body["format"] = {"type": "array", "uniqueItems": True}
        checked = httpx.post(f"{base}/api/generate", json=body, timeout=PATIENCE_S)
        assert checked.status_code in (200, 422), checked.text
        assert served.stop(signal.SIGTERM) == 0
    finally:
        served.kill()
    _, err = served.proc.communicate(timeout=PATIENCE_S)
    assert "Traceback" not in err and "No module named" not in err, err
