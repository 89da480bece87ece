"""localrun as a program: how it starts its own children, and the binary's unpacked builds.

The server runs each model in a runner process, and create and pull jobs and catalog imports in
a child; `run` probes a model no runner has loaded yet in one. Installed with pip, these are
`python -m <module>`. A frozen program (PyInstaller, scripts/maintenance/build_binary.py) has
no `python` to run and no `-m`: `sys.executable` is the localrun binary itself. So children are
started as `localrun __localrun_module__ <module> ...`. The entry point (localrun/__main__.py)
turns that back into the module run as `__main__`, before the CLI and its imports are touched.

The binary unpacks itself into LOCALRUN_BINARY_CACHE once per build and tells the program its
build in LOCALRUN_BINARY_BUILD; `localrun prune` removes the other builds there (`prune_builds`).

It imports nothing of localrun: the modules that start children import it, never the reverse.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

# argv[1] of a child started from the frozen binary; not a command a person types.
MODULE_FLAG = "__localrun_module__"
# The modules a child may be: nothing else is run from a command line.
CHILD_MODULES = frozenset(
    {
        "localrun.worker",
        "localrun.server.ollama.jobs",
        "localrun.scheduler.importer",
        "localrun.engine.library.backend_check",
        "localrun.engine.sampling.grammar_guard",
        "localrun.server.schema.checker",
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
    """Return the argv that runs the localrun command itself with `args`.

    `localrun launch` uses it to start `localrun serve`.
    """
    if frozen():
        return [sys.executable, *args]
    return [sys.executable, "-m", "localrun", *args]


# An unpack of this build that nothing points to is an interrupted one once it is this old
# (an unpack takes seconds; a start racing it may still be writing a younger one).
_STALE_S = 3600.0


# What scripts/maintenance/build_binary.py's header writes there, and nothing else is touched: a
# published build `<version>-<16 hex>` (a symlink) and its unpack `.<version>-<16 hex>.<pid>` (a
# folder).
_BUILD = re.compile(r"[0-9A-Za-z.+!_-]{1,64}-[0-9a-f]{16}")
_UNPACK = re.compile(r"\.(" + _BUILD.pattern + r")\.[0-9]{1,10}")


def prune_builds(cache: Path) -> tuple[int, int]:
    """Remove the other builds and this build's interrupted unpacks from the binary's folder.

    A build a process still runs from is kept. It returns (builds removed, bytes freed). Only
    names the binary's header makes are looked at, and nothing happens outside a binary.
    """
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
