#!/usr/bin/env python3
"""Per-token cost of localrun's generation loop beyond llama_decode, in microseconds.

A decoded token costs one llama_decode (the model) plus what localrun does around it: sampling,
detokenizing, stop and filter checks, the event to the reader. On a GPU the model part shrinks
to a few milliseconds and the rest is what keeps `localrun run` below llama-bench. This runs a
model in this process (`localrun run`'s local runner, speculation off), times every llama_decode
of one token and the interval between tokens as the reader receives them, and prints per token:
the interval, llama_decode, and the difference (the loop's own cost), greedy and sampled; and the
median time on the loop's thread from one decode's end to the next one's start (the same cost,
less noisy on a shared machine, without what the reader's wake-ups cost decode).

A benchmark, not a test: medians of --repeat runs; it never fails on a slow number.

Usage: .venv/bin/python scripts/bench_overhead.py [--model smollm2:135m] [--tokens 200]
       [--repeat 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

PROMPT = "Write a long story about a lighthouse keeper and a storm."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    os.environ["LOCALRUN_SPECULATE"] = "off"
    os.environ["LOCALRUN_HOST"] = "127.0.0.1:9"  # never a server: the runner in this process

    from localrun.cli.session import open_session
    from localrun.engine.native import lc

    decode_s: list[float] = []
    gaps: list[float] = []  # from one decode's end to the next one's start, on the loop thread
    ended = [0.0]
    real_decode = lc.llama_decode

    def timed_decode(ctx: Any, batch: Any) -> int:
        started = time.perf_counter()
        rc = real_decode(ctx, batch)
        if batch.n_tokens == 1:
            decode_s.append(time.perf_counter() - started)
            if ended[0]:
                gaps.append(started - ended[0])
            ended[0] = time.perf_counter()
        else:
            ended[0] = 0.0
        return int(rc)

    lc.llama_decode = timed_decode
    opened = open_session(args.model, {})
    results: dict[str, Any] = {}
    try:
        for label, options in (
            ("greedy", {"temperature": 0}),
            ("sampled", {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "seed": 1}),
        ):
            intervals, decodes, loop = [], [], []
            for _ in range(args.repeat):
                decode_s.clear()
                gaps.clear()
                ended[0] = 0.0
                stamps: list[float] = []
                answer = opened.chat(
                    [{"role": "user", "content": PROMPT}],
                    options={**options, "num_predict": args.tokens},
                )
                for _piece in answer:
                    stamps.append(time.perf_counter())
                n = len(stamps)
                if n < 3 or len(decode_s) < 2:
                    continue
                intervals.append((stamps[-1] - stamps[0]) / (n - 1))
                decodes.append(statistics.mean(decode_s[1:]))
                loop.append(statistics.median(gaps))
            interval, decode = statistics.median(intervals), statistics.median(decodes)
            results[label] = {
                "interval_us": round(interval * 1e6, 1),
                "llama_decode_us": round(decode * 1e6, 1),
                "beyond_decode_us": round((interval - decode) * 1e6, 1),
                "share": round((interval - decode) / interval, 4),
                "loop_gap_us": round(statistics.median(loop) * 1e6, 1),
            }
            r = results[label]
            print(
                f"{label:8} per token: {r['interval_us']:8.1f} us, llama_decode "
                f"{r['llama_decode_us']:8.1f} us, beyond it {r['beyond_decode_us']:7.1f} us "
                f"({100 * r['share']:.1f}%); between decodes (median) {r['loop_gap_us']:6.1f} us",
                flush=True,
            )
    finally:
        opened.close()
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"model": args.model, "tokens": args.tokens, **results}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
