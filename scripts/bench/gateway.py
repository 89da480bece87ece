#!/usr/bin/env python3
"""What the gateway costs: `localrun serve` routing a model to an upstream server, against the
same upstream called directly.

The upstream is a `localrun serve` with the model (SmolLM2 135M from the starter wheel by
default; PARAMETER num_thread from --threads) under a name the gateway's own store does not
have; the gateway is a second `localrun serve` whose upstreams.toml names it, in the OpenAI
dialect (--dialect ollama for the other).
Each round streams one raw completion straight from the upstream and one through the gateway,
in alternating order, of the same prompt (so the same greedy answer: speculative decoding
drafts alike), N_PREDICT tokens, the client timing them on the wire (the decode rate); then
SHORT_PER_ROUND one-token answers to a 3-token prompt on each path (the time to the first token
the gateway adds, which a 200-token prompt's evaluation would bury in its noise). Medians.

Where llama.cpp's threads take every core (2 threads on 2 cores), each piece the gateway
forwards wakes a process that preempts one of them: run it also with --threads 1 to see the
hop's own cost, as on a gateway that has a core (or a machine) of its own.

Targets (issue 14): the gateway's decode rate within 5% of the direct one, and its time to the
first token under 10 ms more. A benchmark, not a test: it prints numbers, it never fails on a
slow one. Usage: .venv/bin/python scripts/bench/gateway.py [--rounds 10] [--dialect openai]
(or scripts/bench/decode.py --suite gateway)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from benchlib.common import Unavailable, default_model, say
from benchlib.report import median
from benchlib.stacks.serve import Server, free_port
from benchlib.stacks.store import localrun_cmd, served_env
from benchlib.streams import THREADS, Stream, ollama_stream, prompt, response_lines

N_PREDICT = 128
SHORT_PER_ROUND = 3  # one-token answers to a tiny prompt per path and round (the TTFT figure)
MODEL = "gateway-bench:latest"  # a name only the upstream has: the gateway must route it
TARGET_DECODE = 0.95
TARGET_TTFT_MS = 10.0


def _serve(name: str, home: Path, threads: int, model: str) -> Server:
    env = served_env(home)
    port = free_port()
    cmd = [*localrun_cmd(), "serve", "--host", "127.0.0.1", "--port", str(port)]

    def streamer(port: int, model: str, n: int, n_predict: int) -> Stream:
        return _stream(port, model, n, n_predict)

    return Server(name, cmd, port, "/api/version", streamer, env=env, model=model)


def _stream(port: int, model: str, n: int, n_predict: int) -> Stream:
    """One raw completion with sampling options only: no load-time option (num_ctx,
    num_thread), which an OpenAI-dialect hop could not carry, so both paths use the runner the
    upstream loaded with the model's own settings."""
    options = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": n_predict}
    body = {"model": model, "prompt": prompt(n), "raw": True, "stream": True,
            "options": options}  # fmt: skip
    return ollama_stream(port, body)


def _first_byte(port: int, n: int) -> float:
    """Seconds to the first piece of a one-token answer to a 3-token prompt: the time the
    path adds shows, not the prompt's evaluation and its noise."""
    result = Stream()
    body = {"model": MODEL, "prompt": f"{n}:", "raw": True, "stream": True,
            "options": {"temperature": 0, "num_predict": 1}}  # fmt: skip
    for line in response_lines(port, "/api/generate", body, result):
        if result.first is None:
            result.first = time.perf_counter()
        if json.loads(line).get("done"):
            break
    assert result.first is not None
    return result.first - result.sent


def run(model: Path, rounds: int, threads: int, dialect: str) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="localrun-gateway-bench-"))
    logdir = home / "logs"
    logdir.mkdir()
    up_home, gw_home = home / "upstream", home / "gateway"
    up_home.mkdir()
    gw_home.mkdir()
    modelfile = up_home / "Modelfile"
    modelfile.write_text(f"FROM {model.resolve()}\nPARAMETER num_thread {threads}\n")
    env = {**os.environ, "LOCALRUN_HOME": str(up_home)}
    subprocess.run(
        [*localrun_cmd(), "create", MODEL, "-f", str(modelfile), "-q"], env=env, check=True
    )
    upstream = _serve("upstream (direct)", up_home, threads, MODEL)
    (gw_home / "upstreams.toml").write_text(
        f'[upstreams.bench]\nurl = "http://127.0.0.1:{upstream.port}"\n'
        f'dialect = "{dialect}"\nmodels = ["{MODEL}"]\n'
    )
    gateway = _serve(f"gateway ({dialect} upstream)", gw_home, threads, MODEL)
    samples: dict[str, list[Stream]] = {upstream.name: [], gateway.name: []}
    short: dict[str, list[float]] = {upstream.name: [], gateway.name: []}
    try:
        for server in (upstream, gateway):
            server.start(logdir)
        for server in (upstream, gateway):
            server.wait_ready()
        upstream.stream(1000, 8)  # load the model, outside the measurement
        n = 0
        for r in range(rounds):
            order = (upstream, gateway) if r % 2 == 0 else (gateway, upstream)
            for server in order:  # the same prompt on both paths: the same greedy answer
                sample = server.stream(10_000 + r, N_PREDICT)
                if sample.error:
                    raise Unavailable(f"{server.name}: {sample.error}")
                samples[server.name].append(sample)
            for _ in range(SHORT_PER_ROUND):
                for server in order:
                    n += 1
                    short[server.name].append(_first_byte(server.port, n))
            say(f"round {r + 1}/{rounds} done")
    finally:
        for server in (gateway, upstream):
            server.stop()
        shutil.rmtree(home, ignore_errors=True)
    return summarise(samples, short, upstream.name, gateway.name, dialect)


def summarise(
    samples: dict[str, list[Stream]],
    short: dict[str, list[float]],
    direct: str,
    via: str,
    dialect: str,
) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for name, streams in samples.items():
        rows[name] = {
            "ttft_ms": (median([s.ttft for s in streams]) or 0) * 1000,
            "short_ttft_ms": statistics.median(short[name]) * 1000,
            "decode": median([s.decode_rate for s in streams]) or 0.0,
            "tokens": [s.tokens for s in streams],
        }
    decode_ratio = rows[via]["decode"] / rows[direct]["decode"] if rows[direct]["decode"] else 0
    added_ms = rows[via]["short_ttft_ms"] - rows[direct]["short_ttft_ms"]
    lines = [
        f"Gateway cost, {dialect} upstream, N_PREDICT={N_PREDICT}, "
        f"{len(samples[direct])} rounds (medians)",
        "",
        "path | first token (3-token prompt) | decode (tok/s, ~200-token prompt)",
        "--- | --- | ---",
    ]
    for name, row in rows.items():
        lines.append(f"{name} | {row['short_ttft_ms']:.1f} ms | {row['decode']:.1f}")
    lines += [
        "",
        f"decode through the gateway: {decode_ratio:.3f}x direct (target >= {TARGET_DECODE})",
        f"time to first token added: {added_ms:+.1f} ms (target < {TARGET_TTFT_MS:g} ms)",
    ]
    if rows[via]["tokens"] != rows[direct]["tokens"]:
        lines.append(f"token counts differ: {rows[via]['tokens']} vs {rows[direct]['tokens']}")
    report = "\n".join(lines)
    return {"rows": rows, "decode_ratio": decode_ratio, "ttft_added_ms": added_ms,
            "report": report}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the SmolLM2 starter)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--dialect", choices=("openai", "ollama"), default="openai")
    args = parser.parse_args()
    model = args.model or default_model()
    if model is None or not model.is_file():
        parser.error("no GGUF model; pass --model PATH")
    result = run(model, args.rounds, args.threads, args.dialect)
    print(result["report"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
