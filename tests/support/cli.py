"""The real `localrun` command in a subprocess with the test's environment, and what a failed
command must look like: one `Error: ...` line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from support import PATIENCE_S


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


class CLI:
    """Runs the real `localrun` command in a subprocess with the test's environment."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = PATIENCE_S,
    ) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "localrun", *args],
            input=input,
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env={**os.environ, **(env or {})},
            timeout=timeout,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """A failed command: non-zero exit, one 'Error: ...' line on stderr, no traceback."""
    assert result.code != 0, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), result.stderr
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
