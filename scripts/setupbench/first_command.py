#!/usr/bin/env python3
"""Time README's first command on a fresh copy of the project, with its longest silence.

The command is taken from README.md's first sh block at the revision asked (--rev; default: the
working tree) and run in a copy of the project at that revision, under a pseudo-terminal (as a
person runs it, so pip shows its spinner), with an empty pip cache and an empty home: what a
newcomer's fresh machine does, downloads from PyPI included. Every output chunk is timestamped.
It prints the whole wall time, the longest silence (the longest stretch with nothing written
to the terminal, spinners and status lines included), every silence over 10 s, and when the
milestones came (pip's compile, the install, the answer).

Issue 95's goal: under 5 minutes on 2 quiet cores, and no silence over 10 s. Run it on a quiet
machine: nothing else compiling, no test suite, no benchmark.

Usage: python scripts/setupbench/first_command.py [--rev REV] [--keep] [--log FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LONG_SILENCE_S = 10.0
MILESTONES = {
    "compile starts": re.compile(r"Building wheel for llama|compiling llama\.cpp"),
    "compiled": re.compile(r"compiled llama\.cpp|Successfully built|Created wheel for llama"),
    "installed": re.compile(r"Successfully installed|localrun installed in"),
    "exact runtime built": re.compile(r"installed runtime exact"),
}


def readme_command(readme: str) -> str:
    """The first sh block of README.md: the install-and-ask command."""
    found = re.search(r"```sh\n(.*?)\n```", readme, re.S)
    if not found:
        raise SystemExit("README.md has no sh block")
    return found.group(1).strip()


def copy_project(rev: str | None, into: Path) -> str:
    """The project at `rev` (or the working tree: tracked and unignored files) in `into`."""
    into.mkdir(parents=True)
    if rev:
        archive = subprocess.run(
            ["git", "archive", rev], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
        return (into / "README.md").read_text(encoding="utf-8")
    names = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
    ).stdout.split("\0")
    for name in filter(None, names):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return (into / "README.md").read_text(encoding="utf-8")


def run_in_terminal(command: str, cwd: Path, env: dict[str, str]) -> list[tuple[float, bytes]]:
    """Run `command` with bash under a pseudo-terminal; each chunk of output with its time."""
    if sys.platform == "win32":
        raise SystemExit("this measurement needs a POSIX pseudo-terminal (Linux or macOS)")
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal's shell
        os.chdir(cwd)
        os.execvpe("bash", ["bash", "-c", command], env)
    chunks: list[tuple[float, bytes]] = []
    start = time.monotonic()
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append((time.monotonic() - start, data))
    _, status = os.waitpid(pid, 0)
    chunks.append(
        (time.monotonic() - start, f"\n[exit {os.waitstatus_to_exitcode(status)}]".encode())
    )
    return chunks


def silences(chunks: list[tuple[float, bytes]]) -> list[tuple[float, float]]:
    """(start, length) of each stretch between two chunks, longest first."""
    out = []
    previous = 0.0
    for at, _ in chunks:
        out.append((previous, at - previous))
        previous = at
    return sorted(out, key=lambda s: -s[1])


def milestones(chunks: list[tuple[float, bytes]]) -> dict[str, float]:
    found: dict[str, float] = {}
    text = ""
    for at, data in chunks:
        text = (text + data.decode("utf-8", "replace"))[-4000:]
        for name, pattern in MILESTONES.items():
            if name not in found and pattern.search(text):
                found[name] = at
    return found


def _minutes(seconds: float) -> str:
    return f"{int(seconds) // 60} min {seconds % 60:.0f} s ({seconds:.0f} s)"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "first command").splitlines()[0])
    parser.add_argument(
        "--rev", help="the revision whose README and code to run (default: the tree)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--log", type=Path, help="write the timestamped output here")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="localrun-first-command-"))
    try:
        project = scratch / "localrun"
        command = readme_command(copy_project(args.rev, project))
        home = scratch / "home"
        home.mkdir()
        keep = ("PATH", "LANG", "LC_ALL", "TERM", "TMPDIR")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env.update(
            HOME=str(home),
            PIP_CACHE_DIR=str(scratch / "pip-cache"),
            TERM=env.get("TERM", "xterm-256color"),
            COLUMNS="100",
            LINES="40",
        )
        print(f"$ {command}\n(in {project}, HOME={home}, an empty pip cache)", flush=True)
        chunks = run_in_terminal(command, project, env)
        total = chunks[-1][0]
        if args.log:
            with args.log.open("w", encoding="utf-8") as f:
                for at, data in chunks:
                    f.write(f"{at:8.2f} {data.decode('utf-8', 'replace')!r}\n")
        tail = b"".join(data for _, data in chunks[-30:]).decode("utf-8", "replace")
        print(tail[-1500:])
        print(f"\nwall time: {_minutes(total)}")
        gaps = silences(chunks)
        print(f"longest silence: {gaps[0][1]:.1f} s, from {gaps[0][0]:.0f} s")
        long = [g for g in gaps if g[1] > LONG_SILENCE_S]
        print(f"silences over {LONG_SILENCE_S:.0f} s: {len(long)}")
        for start, length in sorted(long):
            print(f"  {length:6.1f} s from {start:.0f} s")
        for name, at in milestones(chunks).items():
            print(f"{name}: at {_minutes(at)}")
        return 0 if chunks[-1][1].endswith(b"[exit 0]") else 1
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"kept {scratch}")


if __name__ == "__main__":
    sys.exit(main())
