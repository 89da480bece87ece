#!/usr/bin/env python3
"""Install localrun from this checkout with pip, compiling llama.cpp once and showing progress.

README's first command runs it in a fresh virtual environment. It runs
    python -m pip install -v '.[starter]'     (or the arguments given)
with CMAKE_ARGS naming localrun/runtimes/exact.cmake. pip's build of llama-cpp-python then
compiles llama.cpp's CPU library once, as the exact runtime, and leaves out what the Python
package never loads (docs/exact-runtime.md).

pip's whole output goes to a log file. The terminal gets a line for each step and a status line
that moves every second: the packages collected, each target compiled ([37/137] ops.cpp) and
the install. Without a terminal, a line is printed at least every 10 s. A failed install prints
the last lines of the log and its path. Standard library only: localrun is not installed yet.

Usage: python scripts/install.py [--no-exact] [--log FILE] [-- PIP_ARGUMENTS ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = ROOT / "localrun" / "runtimes" / "exact.cmake"
QUIET_LINE_S = 10.0  # without a terminal, the longest stretch with no line
TARGET = re.compile(r"^\s*\[(\d+)/(\d+)\]\s+(.*)$")
NAMED = re.compile(r"(?:\bobject|\s-o|\blibrary)\s+(\S+)")


def _minutes(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


class Progress:
    """The step under way, shown on one line that a clock thread keeps moving."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.step = "starting pip"
        self.detail = ""
        self.started = self.said = time.monotonic()
        self.compiled = 0
        self.compile_started = 0.0
        self.lock = threading.Lock()
        self.done = threading.Event()

    def line(self, text: str) -> None:
        """A line that stays: a finished step."""
        with self.lock:
            self._clear()
            print(text, flush=True)
            self.said = time.monotonic()

    def set(self, step: str, detail: str = "") -> None:
        with self.lock:
            if step != self.step:
                self.started = time.monotonic()
            self.step, self.detail = step, detail
        self.show()

    def show(self) -> None:
        with self.lock:
            now = time.monotonic()
            text = f"{self.step} ({_minutes(now - self.started)})"
            if self.detail:
                text += f": {self.detail}"
            if self.tty:
                width = max(20, _columns() - 1)
                sys.stdout.write("\r" + text[:width].ljust(width))
                sys.stdout.flush()
            elif now - self.said >= QUIET_LINE_S:
                print(text, flush=True)
                self.said = now

    def _clear(self) -> None:
        if self.tty:
            sys.stdout.write("\r" + " " * max(20, _columns() - 1) + "\r")

    def tick(self) -> None:
        while not self.done.wait(1.0):
            self.show()

    def close(self) -> None:
        self.done.set()
        with self.lock:
            self._clear()
            sys.stdout.flush()


def _columns() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 80


def read(line: str, progress: Progress) -> None:
    """Move the progress along one line of `pip install -v`."""
    text = line.strip()
    found = TARGET.match(line)
    if found:
        done, total, rest = found.groups()
        named = NAMED.search(rest)
        name = Path(named.group(1)).name if named else rest[:40]
        for suffix in (".o", ".obj"):
            name = name.removesuffix(suffix)
        if not progress.compile_started:
            progress.compile_started = time.monotonic()
        progress.compiled = int(total)
        progress.set("compiling llama.cpp", f"[{done}/{total}] {name}")
    elif text.startswith("Collecting "):
        progress.set("collecting packages", text.removeprefix("Collecting ").split()[0])
    elif text.startswith("Downloading "):
        progress.set("downloading", text.removeprefix("Downloading ").split()[0])
    elif text.startswith("Building wheel for "):
        name = text.removeprefix("Building wheel for ").split()[0]
        progress.set(f"building {name}")
    elif text.startswith("Created wheel for "):
        name = text.removeprefix("Created wheel for ").split(":")[0]
        if progress.compile_started and name.startswith("llama"):
            took = _minutes(time.monotonic() - progress.compile_started)
            progress.line(f"compiled llama.cpp: {progress.compiled} targets in {took}")
        progress.line(f"built {name}")
    elif text.startswith("Installing collected packages:"):
        count = len(text.split(":", 1)[1].split(","))
        progress.set("installing", f"{count} packages")
    elif text.startswith("Successfully installed"):
        progress.line(f"installed {len(text.split()) - 2} packages")
    elif "localrun: the exact runtime's patches applied" in text:
        progress.line("llama.cpp's CPU library: built as the exact runtime (compiled once)")
    elif "localrun: the exact runtime's patches were not applied" in text:
        progress.line("warning: " + text.split("localrun: ", 1)[1])


def _exact_marker() -> bool | None:
    """Whether the installed llama_cpp carries exact.cmake's marker; None where not Linux."""
    if not sys.platform.startswith("linux"):
        return None
    import importlib
    import importlib.util

    importlib.invalidate_caches()  # llama_cpp was installed after this process started
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return False
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return (lib / "localrun-exact.json").is_file()


def environment(base: dict[str, str], *, exact: bool = True) -> dict[str, str]:
    """`base` with exact.cmake added to CMAKE_ARGS (after what the user set there)."""
    flag = f"-DCMAKE_PROJECT_INCLUDE={INCLUDE.as_posix()}"
    if not exact:
        flag += " -DLOCALRUN_EXACT=OFF"
    return {**base, "CMAKE_ARGS": f"{base.get('CMAKE_ARGS', '')} {flag}".strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "install").splitlines()[0])
    parser.add_argument(
        "--no-exact", action="store_true", help="build llama.cpp's CPU library as upstream has it"
    )
    parser.add_argument("--log", type=Path, help="pip's whole output (default: in the venv)")
    parser.add_argument("pip_args", nargs="*", help="what pip installs (default: '.[starter]')")
    args = parser.parse_args(argv)
    targets = args.pip_args or [".[starter]"]
    env = environment(dict(os.environ), exact=not args.no_exact)
    log = args.log or Path(sys.prefix) / "localrun-install.log"
    command = [sys.executable, "-m", "pip", "install", "-v", *targets]
    tty = sys.stdout.isatty()
    progress = Progress(tty)
    print(f"pip install {' '.join(targets)} (the whole output: {log})", flush=True)
    clock = threading.Thread(target=progress.tick, daemon=True)
    clock.start()
    tail: deque[str] = deque(maxlen=40)
    began = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                out.write(line)
                tail.append(line.rstrip("\n"))
                read(line, progress)
            code = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            code = proc.wait()
        finally:
            progress.close()
    if code != 0:
        print("\n".join(tail), file=sys.stderr)
        print(f"pip failed (exit {code}); its whole output: {log}", file=sys.stderr)
        return code
    print(f"localrun installed in {_minutes(time.monotonic() - began)}")
    if not args.pip_args and not args.no_exact and _exact_marker() is False:
        print(
            "note: llama-cpp-python came from pip's cache, built without the exact runtime; "
            "`localrun runtime install exact` builds it (a few minutes)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
