"""localrun as a program: how it starts its own children, installed with pip or frozen into one
binary, and the binary's unpacked builds.

The server runs each model in a runner process, create and pull jobs in a child, and catalog
imports in a child; `run` probes a model no runner has loaded yet in one. Installed with pip
these are `python -m <module>`. A frozen program (PyInstaller, scripts/build_binary.py) has no
`python` to run and no `-m`: `sys.executable` is the localrun binary itself, so children are
started as `localrun __localrun_module__ <module> ...`, which the program's entry point
(localrun/__main__.py) turns back into that module run as `__main__`, before the CLI (and its
imports) is touched.

`Asked` is a child that answers one JSON line for each it is sent, within a deadline: the
runner's grammar guard (engine.grammar_guard) and the server's checks (server.checker) run
what a client sent where a crash or a hang costs that child alone.

The binary (scripts/build_binary.py) unpacks itself into LOCALRUN_BINARY_CACHE once per build
and tells the program its build in LOCALRUN_BINARY_BUILD; `localrun prune` removes the other
builds there (`prune_builds`).

Imports nothing of localrun: the modules that start children import it, and it imports none of
them back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# argv[1] of a child started from the frozen binary; not a command a person types.
MODULE_FLAG = "__localrun_module__"
# The modules a child may be: nothing else is run from a command line.
CHILD_MODULES = frozenset(
    {
        "localrun.worker",
        "localrun.server.jobs",
        "localrun.scheduler.importer",
        "localrun.engine.backend_check",
        "localrun.engine.grammar_guard",
        "localrun.server.checker",
    }
)


def frozen() -> bool:
    """Whether this is the frozen binary rather than a Python installation."""
    return bool(getattr(sys, "frozen", False))


def command(module: str, *args: str) -> list[str]:
    """The argv that runs `module` as a program (its `if __name__ == "__main__"` part)."""
    if module not in CHILD_MODULES:
        raise ValueError(f"{module} is not a localrun child module")
    if frozen():
        return [sys.executable, MODULE_FLAG, module, *args]
    return [sys.executable, "-m", module, *args]


def cli(*args: str) -> list[str]:
    """The argv that runs the localrun command itself with `args` (`localrun launch` starting
    `localrun serve`)."""
    if frozen():
        return [sys.executable, *args]
    return [sys.executable, "-m", "localrun", *args]


LINE_LIMIT = 64 << 20  # bytes of one answer from an `Asked` child


class Asked:
    """A child process (`command(module, *args)`) asked one JSON line at a time; it answers
    each with one line. Not thread-safe: its owner takes turns."""

    def __init__(self, module: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            command(module, *args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, question: dict[str, Any], deadline_s: float) -> Any:
        """The child's answer to `question`: TimeoutError past `deadline_s` seconds, EOFError
        when the child died or answered nonsense (either way the child is killed)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(question).encode() + b"\n")
            self.proc.stdin.flush()
            line = _line(self.proc.stdout.fileno(), time.monotonic() + deadline_s)
            return json.loads(line)
        except TimeoutError:
            self.kill()
            raise
        except (OSError, ValueError) as exc:  # a broken pipe, no line, no JSON
            self.kill()
            raise EOFError(str(exc)) from None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()


def _line(fd: int, deadline: float) -> bytes:
    """One line read from `fd` by `deadline` (TimeoutError past it; OSError at its end)."""
    data = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if not selector.select(left):
                continue
            chunk = os.read(fd, 65536)
            if not chunk or len(data) + len(chunk) > LINE_LIMIT:
                raise OSError("the child ended" if not chunk else "the child's answer is too long")
            data += chunk
    return bytes(data)


# An unpack of this build that nothing points to is an interrupted one once it is this old
# (an unpack takes seconds; a start racing it may still be writing a younger one).
_STALE_S = 3600.0


# What scripts/build_binary.py's header writes there, and nothing else is touched: a published
# build `<version>-<16 hex>` (a symlink) and its unpack `.<version>-<16 hex>.<pid>` (a folder).
_BUILD = re.compile(r"[0-9A-Za-z.+!_-]{1,64}-[0-9a-f]{16}")
_UNPACK = re.compile(r"\.(" + _BUILD.pattern + r")\.[0-9]{1,10}")


def prune_builds(cache: Path) -> tuple[int, int]:
    """Remove from the binary's unpack folder the other builds (none a process still runs
    from) and interrupted unpacks of this one; returns (builds removed, bytes freed). Only
    names the binary's header makes are looked at; nothing happens outside a binary."""
    build = os.environ.get("LOCALRUN_BINARY_BUILD", "")
    if not frozen() or not build or not cache.is_dir():
        return 0, 0
    current = cache / build
    kept = os.path.realpath(current) if current.is_symlink() else ""
    running = _running_from()
    removed = freed = 0
    for entry in cache.iterdir():
        name = entry.name
        if entry.is_symlink():  # a published build: its name is the build id
            if name != build and _BUILD.fullmatch(name):
                entry.unlink()
            continue
        unpack = _UNPACK.fullmatch(name)
        if unpack is None or not entry.is_dir():
            continue  # not the binary's
        program = os.path.realpath(entry / "localrun")
        if program == kept or any(exe.startswith(os.path.realpath(entry)) for exe in running):
            continue  # the running build, or an older one still serving
        mine = unpack.group(1) == build
        if mine and time.time() - entry.stat().st_mtime < _STALE_S:
            continue  # an unpack racing this start
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file() and not f.is_symlink())
        shutil.rmtree(entry, ignore_errors=True)
        removed += 0 if mine else 1
        freed += size
    return removed, freed


def _running_from() -> set[str]:
    """The executables of this user's running processes."""
    import psutil

    found = set()
    for proc in psutil.process_iter(["exe"]):
        exe = proc.info.get("exe")
        if exe:
            found.add(os.path.realpath(exe))
    return found
