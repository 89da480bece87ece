"""The real `localrun` command in a subprocess with the test's environment, and what a failed
command must look like: one `Error: ...` line, never a traceback; where a localrun a test starts
looks for a server (NO_SERVER, localrun_env) and the check that it never reaches one the test did
not start (check_no_default_server, which conftest's session fixture applies to every process)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localrun.settings import parse

from support import PATIENCE_S

# Where every localrun a test starts looks for a server, unless the test names one it started: a
# closed port. A `localrun serve` a developer left running on the default port must not answer
# the tests' commands (`run` would load the model there, from that server's store).
NO_SERVER = "127.0.0.1:9"

_COMMAND = re.compile(r"(?:^|[\s/;&|(])localrun(?:\s|$)")
# What localrun runs without ever asking a server (the binary's build checks its --version).
NEVER_ASKS = ("--version", "--help", "env")


def localrun_args(argv: Any) -> list[str] | None:
    """The arguments of the localrun command a command line starts (`python -m localrun`, the
    binary: a file named localrun), [] for a shell line with localrun as a command in it, None
    for any other program."""
    if isinstance(argv, (str, bytes, os.PathLike)):
        return [] if _COMMAND.search(os.fsdecode(argv)) else None
    parts = [os.fsdecode(part) for part in argv]
    if parts[1:3] == ["-m", "localrun"]:
        return parts[3:]
    if parts and Path(parts[0]).name == "localrun":
        return parts[1:]
    if parts and Path(parts[0]).name in ("sh", "bash") and any(map(_COMMAND.search, parts[1:])):
        return []
    return None


def localrun_env(**settings: str) -> dict[str, str]:
    """This environment without its LOCALRUN_* settings, for a localrun started outside a test's
    own (a session's fixture): no server (NO_SERVER) and no registry (as `home` sets them)
    unless `settings` name them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALRUN_")}
    return {**env, "LOCALRUN_HOST": NO_SERVER, "LOCALRUN_REGISTRY": "off", **settings}


def check_no_default_server(argv: Any, env: Any) -> None:
    """Refuses to start a localrun whose environment leaves LOCALRUN_HOST at the default port
    (unset, or naming it): only a server someone else started could answer there."""
    args = localrun_args(argv)
    if args is None or (args and args[0] in NEVER_ASKS):
        return
    seen = os.environ if env is None else env
    host = seen.get("LOCALRUN_HOST")
    if host is not None:
        try:
            port = parse.parse_host(host)[1]
        except ValueError:
            return  # a test of a malformed value: refused before anything is reached
        if port != parse.DEFAULT_PORT:
            return
    raise AssertionError(
        f"{argv!r} would reach a server on the default port ({parse.DEFAULT_PORT}) that this "
        f"test did not start: give its environment LOCALRUN_HOST (support.cli.NO_SERVER, or the "
        "test's own server)"
    )


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
