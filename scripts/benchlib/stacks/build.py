"""The llama.cpp the benchmarks compare localrun with: llama-bench, llama-server and
llama-mtmd-cli built from the llama.cpp that llama-cpp-python vendors (its sdist from PyPI), with
the flags its wheel uses, into a cache folder on first use (several minutes on two cores); with
--cuda the same build with the CUDA backend, and every stack offloaded to the GPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib.common import run_command, say

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
DEFAULT_CACHE = Path.home() / ".cache" / "localrun-bench"

# The wheel is built by scikit-build-core (Release) through llama-cpp-python's CMakeLists, which
# only forces BUILD_SHARED_LIBS and LLAMA_BUILD_COMMON on Linux; everything else keeps llama.cpp's
# defaults: GGML_NATIVE=ON (-march=native), GGML_OPENMP=ON, GGML_LLAMAFILE=ON, GGML_CPU_REPACK=ON.
# The build below uses the same, spelled out so that a change of default cannot split them.
WHEEL_CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_NATIVE=ON",
    "-DGGML_OPENMP=ON",
    "-DGGML_LLAMAFILE=ON",
    "-DGGML_CPU_REPACK=ON",
]
# Only what the bench needs: no tests or examples; no HTTPS, npm or Hugging Face download for the
# server's web UI (the build would otherwise fetch the UI from the network).
TOOL_CMAKE_FLAGS = [
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DGGML_CCACHE=OFF",
    "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
]
BUILD_TARGETS = [
    "llama-bench", "llama-batched-bench", "llama-server", "llama-mtmd-cli", "llama-quantize"
]  # fmt: skip
# --cuda: the same build with the CUDA backend, for the card of the machine it is built on
# (GGML_NATIVE=ON makes ggml compile for the detected architecture only). Every stack then runs
# on the GPU: llama-bench and llama-server get OFFLOAD, localrun and llama-cpp-python load the
# build's libraries (LLAMA_CPP_LIB_PATH) and offload as they decide (localrun: everything that
# fits, llama-cpp-python: n_gpu_layers=-1).
CUDA_CMAKE_FLAGS = ["-DGGML_CUDA=ON"]
# rpc: the same build with llama.cpp's RPC backend and its rpc-server (scripts/bench/workers.py),
# in a folder of its own so that the other benchmarks' llama.cpp registers no RPC backend.
RPC_CMAKE_FLAGS = ["-DGGML_RPC=ON"]
RPC_TARGETS = ["llama-bench", "ggml-rpc-server"]
OFFLOAD: list[str] = []  # llama.cpp tool arguments; ["-ngl", "99"] once offload_to() ran
# A Python process that opens a CUDA build's libraries with nothing before them crashes loading a
# BPE model (localrun.engine.library.native.load_cxx_runtime says why); localrun preloads libstdc++
# itself, and llama-cpp-python's own server gets it this way.
CXX_FIRST = {"LD_PRELOAD": "libstdc++.so.6"}
CUDA_HELP = (
    "build llama.cpp with CUDA (into build-cuda unless --llama-cpp-build) and run every stack "
    "on the GPU"
)
BUILD_INFO = "localrun-bench-build.json"


@dataclass
class Build:
    """A llama.cpp build folder with llama-bench and what it was built from."""

    dir: Path
    info: dict[str, Any]

    @property
    def llama_bench(self) -> Path:
        return self.dir / "bin" / "llama-bench"

    @property
    def llama_quantize(self) -> Path:
        return self.dir / "bin" / "llama-quantize"


def _fetch_source(root: Path) -> Path:
    """Download and unpack the llama-cpp-python sdist once; return its vendored llama.cpp."""
    unpacked = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
    source = unpacked / "vendor" / "llama.cpp"
    if (source / "CMakeLists.txt").is_file():
        return source
    download = root / "download"
    sdists = sorted(download.glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
            f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(download),
        ]  # fmt: skip
        say(f"downloading the llama-cpp-python sdist: {shlex.join(cmd)}")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        sdists = sorted(download.glob("llama_cpp_python-*.tar.gz"))
    say(f"unpacking {sdists[-1]}")
    # Unpack beside the target and rename, so that an interrupted run leaves no half tree behind.
    with tempfile.TemporaryDirectory(dir=root) as tmp, tarfile.open(sdists[-1]) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp, filter="data")
        else:  # Python < 3.10.12 has no extraction filters; the sdist comes from PyPI
            tar.extractall(tmp)
        os.replace(Path(tmp) / unpacked.name, unpacked)
    return source


def _compile_flags(build_dir: Path) -> str:
    """The optimisation flags ggml-cpu.c was compiled with, from compile_commands.json."""
    try:
        commands = json.loads((build_dir / "compile_commands.json").read_text())
    except (OSError, ValueError):
        return "unknown"
    for entry in commands:
        if entry["file"].endswith("ggml-cpu.c"):
            args = shlex.split(entry.get("command", "")) or entry.get("arguments", [])
            keep = [a for a in args if re.match(r"-(O|m|f|std=|DNDEBUG|DGGML_USE_)", a)]
            return " ".join(keep)
    return "unknown"


def ensure_build(
    build_dir: Path | None, cache: Path, jobs: int, cuda: bool = False, rpc: bool = False
) -> Build:
    """Return a llama.cpp build with llama-bench and llama-server, building it when missing
    (`cuda`: with the CUDA backend, `rpc`: llama-bench and rpc-server with the RPC backend, each
    in a folder of its own)."""
    root = cache / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"
    default = root / ("build-cuda" if cuda else "build-rpc" if rpc else "build")
    build_dir = (build_dir or default).expanduser().resolve()
    info_file = build_dir / BUILD_INFO
    targets = RPC_TARGETS if rpc else BUILD_TARGETS
    if all((build_dir / "bin" / t).is_file() for t in targets):
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        if cuda and not _built_with_cuda(build_dir):
            raise OSError(f"{build_dir} is a llama.cpp build without CUDA")
        say(f"reusing the llama.cpp build in {build_dir}")
        # Described from the build folder itself: a --llama-cpp-build may come from elsewhere.
        return Build(build_dir, {**info, **_describe(build_dir)})

    root.mkdir(parents=True, exist_ok=True)
    source = _fetch_source(root)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = [
        "cmake", "-S", str(source), "-B", str(build_dir), *generator,
        *WHEEL_CMAKE_FLAGS, *TOOL_CMAKE_FLAGS, *(CUDA_CMAKE_FLAGS if cuda else []),
        *(RPC_CMAKE_FLAGS if rpc else []),
    ]  # fmt: skip
    compile_ = ["cmake", "--build", str(build_dir), "--target", *targets, "-j", str(jobs)]
    say(f"building llama-bench and llama-server (several minutes with -j{jobs})")
    start = time.perf_counter()
    for cmd in (configure, compile_):
        say(f"$ {shlex.join(cmd)}")
        subprocess.run(cmd, check=True, stdout=sys.stderr)
    seconds = time.perf_counter() - start
    say(f"built in {seconds:.0f} s")
    info = {
        "llama_cpp_python": LLAMA_CPP_PYTHON_VERSION,
        "source": str(source),
        "cmake_command": shlex.join(configure),
        "build_seconds": round(seconds, 1),
        "jobs": jobs,
    }
    info_file.write_text(json.dumps(info, indent=2) + "\n")
    return Build(build_dir, {**info, **_describe(build_dir)})


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `build_for` reads: --cache-dir, --llama-cpp-build, --jobs and --cuda."""
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--llama-cpp-build", type=Path, help="reuse (or build into) this folder")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="build jobs")
    parser.add_argument("--cuda", action="store_true", help=CUDA_HELP)


def build_for(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Build | None:
    """The llama.cpp build a benchmark's arguments ask for (--llama-cpp-build, --cache-dir,
    --jobs, --cuda), or None if it failed (its stacks are then left out). With --cuda every
    stack offloads to the GPU, and a failed build ends the run."""
    try:
        build = ensure_build(args.llama_cpp_build, args.cache_dir, args.jobs, args.cuda)
    except (OSError, tarfile.TarError, subprocess.CalledProcessError) as exc:
        if args.cuda:
            parser.error(f"--cuda needs the llama.cpp build with CUDA, which failed: {exc}")
        say(f"llama.cpp build failed: {exc}")
        return None
    if args.cuda:
        offload_to(build)
    return build


def _built_with_cuda(build_dir: Path) -> bool:
    return _cmake_cache(build_dir).get("GGML_CUDA", "").upper() in ("ON", "TRUE", "1")


def _cmake_cache(build_dir: Path) -> dict[str, str]:
    """The build's CMake cache, name: value (types dropped); {} without one."""
    cache: dict[str, str] = {}
    try:
        text = (build_dir / "CMakeCache.txt").read_text()
    except OSError:
        return cache
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith(("#", "//")):
            cache[name.split(":")[0]] = value
    return cache


def offload_to(build: Build) -> None:
    """Run every stack of this process on `build`'s GPU: the llama.cpp tools with all layers
    offloaded, and localrun and llama-cpp-python (subprocesses, which inherit the environment)
    on the build's own libraries instead of the wheel's CPU ones."""
    OFFLOAD[:] = ["-ngl", "99"]
    os.environ["LLAMA_CPP_LIB_PATH"] = str(build.dir / "bin")
    say(f"offloading to the GPU: llama.cpp tools with {shlex.join(OFFLOAD)}, localrun and "
        f"llama-cpp-python with LLAMA_CPP_LIB_PATH={build.dir / 'bin'}")  # fmt: skip


def _describe(build_dir: Path) -> dict[str, Any]:
    """What decides the speed of a build: the wheel's CMake options as cached, flags, compiler."""
    wanted = [flag.removeprefix("-D").split("=")[0] for flag in WHEEL_CMAKE_FLAGS]
    cache = _cmake_cache(build_dir)
    return {
        "cmake_cache": {name: cache.get(name, "?") for name in wanted},
        "compile_flags": _compile_flags(build_dir),
        "compiler": compiler(build_dir / "bin" / "libggml-cpu.so"),
    }


def compiler(library: Path) -> str:
    """The compiler recorded in a shared library's .comment section (GCC/clang both write it)."""
    try:
        out = subprocess.run(
            ["readelf", "-p", ".comment", str(library)], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    found = re.findall(r"\]\s+(.+)", out)
    return "; ".join(dict.fromkeys(f.strip() for f in found)) or "unknown"


def build_line(build: Build | None) -> str:
    """A build for a report, in one line: its folder, the time it took, its CMake options, and
    the flags and compiler of its CPU backend."""
    if build is None:
        return "n/a"
    info = build.info
    flags = " ".join(f"{name}={value}" for name, value in info["cmake_cache"].items())
    built = f" (built in {info['build_seconds']:.0f} s, -j{info['jobs']})" if "jobs" in info else ""
    return (
        f"{build.dir}{built}: cmake {flags}; compiled {info['compile_flags']} "
        f"with {info['compiler']}"
    )


def wheel_line(libdir: Path | None) -> str:
    """llama-cpp-python's wheel (its libraries in `libdir`) for a report, in one line."""
    if libdir is None:
        return "llama_cpp not installed"
    flags = " ".join(f.removeprefix("-D") for f in WHEEL_CMAKE_FLAGS)
    built_by = compiler(libdir / "libggml-cpu.so")
    return f"{libdir}: scikit-build-core, llama.cpp defaults ({flags}) with {built_by}"


# localrun's llama.cpp parameters for this machine (localrun.engine.library.machine), printed by a
# child process so that llama_cpp is never loaded into a benchmark's own.
_MACHINE = (
    "import json; from localrun.engine.library.machine import machine_params as m; p = m(); "
    "print(json.dumps({'server': p.server_args(), 'bench': p.bench_args()}))"
)


@functools.cache
def _machine() -> dict[str, list[str]]:
    out = run_command([sys.executable, "-c", _MACHINE], timeout=300)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def server_args() -> list[str]:
    """The arguments that give llama-server, llama-cli and llama-mtmd-cli the model parameters
    localrun uses here (no weight repacking on a CPU with AMX: llama.cpp's AMX kernels crash,
    llama.cpp#20824). Every llama.cpp program a benchmark starts takes them."""
    return list(_machine()["server"])


def bench_args() -> list[str]:
    """The same for llama-bench."""
    return list(_machine()["bench"])
