"""scripts/system-deps in a terminal: apt-get in the terminal's foreground, the terminal's mode
as it was found.

The script runs under a pseudo-terminal that is its controlling terminal, in a session of its
own, as a person's shell runs it. Stand-ins first on PATH take the place of `id` (a user who is
not root), `sudo` (which runs its command) and `apt-get`, which does to the terminal what
apt-get does around dpkg: it saves the mode, sets it raw (SIGTTOU blocked), and sets the saved
mode back (SIGTTOU not blocked), the call that stops a process outside the terminal's
foreground process group. Nothing is installed, and no package list is asked for.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from support import ROOT

SCRIPT = ROOT / "scripts" / "system-deps"

# How long the script may take with stand-ins that do nothing: a hang, never a measure of speed.
DEADLINE_S = 120.0

APT_GET = """\
import json, os, signal, sys, termios, tty

def record(**fields):
    with open(os.environ["STUB_LOG"], "a") as log:
        log.write(json.dumps(fields) + "\\n")

tty_fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
record(
    args=sys.argv[1:],
    pid=os.getpid(),
    pgrp=os.getpgrp(),
    foreground=os.tcgetpgrp(tty_fd) == os.getpgrp(),
    stdin_tty=os.isatty(0),
)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
saved = termios.tcgetattr(tty_fd)
tty.setraw(tty_fd)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTTOU})
if os.environ.get("STUB_LEAVE_RAW"):  # as an apt-get killed before it sets the mode back
    record(left_raw=True)
    sys.exit(1)
termios.tcsetattr(tty_fd, termios.TCSAFLUSH, saved)
record(restored=True)
"""

SUDO = """\
#!/bin/sh
[ "$1" = -n ] && shift
exec "$@"
"""


def _stand_ins(bin_dir: Path) -> None:
    bin_dir.mkdir()
    apt_get = bin_dir / "apt-get"
    apt_get.write_text(f"#!{sys.executable}\n{APT_GET}")
    (bin_dir / "sudo").write_text(SUDO)
    (bin_dir / "id").write_text('#!/bin/sh\n[ "$1" = -u ] && echo 1000 || exec /usr/bin/id "$@"\n')
    for stand_in in ("apt-get", "sudo", "id"):
        (bin_dir / stand_in).chmod(0o755)
    # The script's own tools; chromium, glslc, ninja and docker-registry are left out, so every
    # package is missing.
    for tool in ("timeout", "stty", "ls", "true"):
        real = next(Path(d) / tool for d in ("/usr/bin", "/bin") if (Path(d) / tool).exists())
        (bin_dir / tool).symlink_to(real)


def _take_terminal() -> None:
    """In the child, after setsid: the pty on stdin becomes the session's controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _records(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def _kill(pgrps: set[int]) -> None:
    for pgrp in pgrps:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgrp, signal.SIGKILL)


def run_in_terminal(tmp_path: Path, **env: str) -> tuple[int, list[dict[str, object]], bool]:
    """Runs the script under a fresh pty; returns its status, apt-get's records, and whether
    the terminal's mode afterwards is the one it had before."""
    if not Path("/bin/bash").exists():
        pytest.skip("no /bin/bash")
    bin_dir = tmp_path / "bin"
    _stand_ins(bin_dir)
    log = tmp_path / "apt-get.jsonl"
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(
        ["/bin/bash", str(SCRIPT)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=_take_terminal,
        env={"PATH": str(bin_dir), "STUB_LOG": str(log), "HOME": str(tmp_path), **env},
    )
    try:
        deadline = time.monotonic() + DEADLINE_S
        while proc.poll() is None:
            records = _records(log)
            behind = [r for r in records if r.get("foreground") is False]
            if behind or time.monotonic() > deadline:
                # Stopped by SIGTTOU (or hung): nothing will come; kill what the script started.
                _kill({proc.pid, *(int(str(r["pgrp"])) for r in records if "pgrp" in r)})
                proc.wait()
                break
            # What the script writes is read and dropped, so that no write of its waits on us.
            if select.select([master], [], [], 0.1)[0]:
                with contextlib.suppress(OSError):
                    os.read(master, 4096)
        after = termios.tcgetattr(slave)
        return proc.returncode, _records(log), after == before
    finally:
        os.close(master)
        os.close(slave)


def test_apt_get_runs_in_the_foreground_and_the_terminal_is_left_as_found(
    tmp_path: Path,
) -> None:
    status, records, restored = run_in_terminal(tmp_path)
    calls = [r for r in records if "args" in r]
    assert calls, "apt-get was not run"
    assert calls[0]["args"][-1] == "docker-registry"  # type: ignore[index]
    assert all(r["foreground"] for r in calls), (
        "apt-get ran outside the terminal's foreground process group: its tcsetattr stops it "
        f"(SIGTTOU) until the timeout; {records}"
    )
    assert {"restored": True} in records
    assert not any(r["stdin_tty"] for r in calls)  # apt-get reads no terminal
    assert status == 0
    assert restored, "the terminal's mode was changed"


def test_a_mode_apt_get_leaves_is_set_back(tmp_path: Path) -> None:
    status, records, restored = run_in_terminal(tmp_path, STUB_LEAVE_RAW="1")
    assert {"left_raw": True} in records
    assert all(r["foreground"] for r in records if "args" in r), records
    assert status == 0
    assert restored, "the script left the terminal raw"
