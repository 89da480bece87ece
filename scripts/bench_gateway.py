#!/usr/bin/env python3
"""What the gateway costs: `localrun serve` routing a model to an upstream server, against the
same upstream called directly.

The upstream is a `localrun serve` with the model (SmolLM2 135M from the starter wheel by
default) under a name the gateway's own store does not have; the gateway is a second `localrun
serve` whose upstreams.toml names it, in the OpenAI dialect (--dialect ollama for the other).
Each round streams one raw completion straight from the upstream and one through the gateway,
in alternating order, each with a prompt of its own (no shared KV prefix), greedy, N_PREDICT
tokens, the client timing the first token and the rest on the wire. Medians are reported.

Targets (issue 14): the gateway's decode rate within 5% of the direct one, and its time to the
first token under 10 ms more. A benchmark, not a test: it prints numbers, it never fails on a
slow one. Usage: .venv/bin/python scripts/bench_gateway.py [--rounds 10] [--dialect openai]
(or scripts/bench.py --suite gateway)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench
import bench_serve
from bench_serve import Server, Stream, free_port, say

N_PREDICT = 128
MODEL = "gateway-bench:latest"  # a name only the upstream has: the gateway must route it
TARGET_DECODE = 0.95
TARGET_TTFT_MS = 10.0


def _serve(name: str, home: Path, threads: int, model: str) -> Server:
    env = {**os.environ, "LOCALRUN_HOME": str(home), "LOCALRUN_KEEP_ALIVE": "-1"}
    for unset in ("LOCALRUN_MODELS", "LOCALRUN_API_KEY", "LOCALRUN_HOST"):
        env.pop(unset, None)
    port = free_port()
    cmd = [*bench._localrun_cmd(), "serve", "--host", "127.0.0.1", "--port", str(port)]

    def streamer(port: int, model: str, n: int, n_predict: int) -> Stream:
        return bench_serve.localrun_stream(port, model, n, n_predict, threads=threads)

    return Server(name, cmd, port, "/api/version", streamer, env=env, model=model)


def run(model: Path, rounds: int, threads: int, dialect: str) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="localrun-gateway-bench-"))
    logdir = home / "logs"
    logdir.mkdir()
    up_home, gw_home = home / "upstream", home / "gateway"
    up_home.mkdir()
    gw_home.mkdir()
    modelfile = up_home / "Modelfile"
    modelfile.write_text(f"FROM {model.resolve()}\n")
    env = {**os.environ, "LOCALRUN_HOME": str(up_home)}
    subprocess.run(
        [*bench._localrun_cmd(), "create", MODEL, "-f", str(modelfile), "-q"], env=env, check=True
    )
    upstream = _serve("upstream (direct)", up_home, threads, MODEL)
    (gw_home / "upstreams.toml").write_text(
        f'[upstreams.bench]\nurl = "http://127.0.0.1:{upstream.port}"\n'
        f'dialect = "{dialect}"\nmodels = ["{MODEL}"]\n'
    )
    gateway = _serve(f"gateway ({dialect} upstream)", gw_home, threads, MODEL)
    samples: dict[str, list[Stream]] = {upstream.name: [], gateway.name: []}
    try:
        for server in (upstream, gateway):
            server.start(logdir)
        for server in (upstream, gateway):
            server.wait_ready()
        upstream.stream(1000, 8)  # load the model, outside the measurement
        n = 0
        for r in range(rounds):
            order = (upstream, gateway) if r % 2 == 0 else (gateway, upstream)
            for server in order:
                n += 1
                sample = server.stream(n, N_PREDICT)
                if sample.error:
                    raise bench.Unavailable(f"{server.name}: {sample.error}")
                samples[server.name].append(sample)
            say(f"round {r + 1}/{rounds} done")
    finally:
        for server in (gateway, upstream):
            server.stop()
        shutil.rmtree(home, ignore_errors=True)
    return summarise(samples, upstream.name, gateway.name, dialect)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(
    samples: dict[str, list[Stream]], direct: str, via: str, dialect: str
) -> dict[str, Any]:
    rows = {}
    for name, streams in samples.items():
        rows[name] = {
            "ttft_ms": (_median([s.ttft for s in streams]) or 0) * 1000,
            "decode": _median([s.decode_rate for s in streams]) or 0.0,
            "tokens": [s.tokens for s in streams],
        }
    decode_ratio = rows[via]["decode"] / rows[direct]["decode"] if rows[direct]["decode"] else 0
    added_ms = rows[via]["ttft_ms"] - rows[direct]["ttft_ms"]
    lines = [
        f"Gateway cost, {dialect} upstream, N_PREDICT={N_PREDICT}, "
        f"{len(samples[direct])} rounds (medians)",
        "",
        "path | time to first token | decode (tok/s, client side)",
        "--- | --- | ---",
    ]
    for name, row in rows.items():
        lines.append(f"{name} | {row['ttft_ms']:.1f} ms | {row['decode']:.1f}")
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
    parser.add_argument("--threads", type=int, default=bench_serve.THREADS)
    parser.add_argument("--dialect", choices=("openai", "ollama"), default="openai")
    args = parser.parse_args()
    model = args.model or bench._default_model()
    if model is None or not model.is_file():
        parser.error("no GGUF model; pass --model PATH")
    result = run(model, args.rounds, args.threads, args.dialect)
    print(result["report"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
