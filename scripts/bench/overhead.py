#!/usr/bin/env python3
"""Per-token cost of localrun's generation loop beyond llama_decode, in microseconds.

A decoded token costs one llama_decode (the model) plus what localrun does around it: sampling,
detokenizing, stop and filter checks, the event to the reader. On a GPU the model part shrinks
to a few milliseconds and the rest is what keeps `localrun run` below llama-bench. This runs a
model in this process (`localrun run`'s local runner, speculation off), times every llama_decode
of one token and the interval between tokens as the reader receives them, and prints per token:
the interval, llama_decode, and the difference (the loop's own cost), greedy and sampled; and the
median time on the loop's thread from one decode's end to the next one's start (the same cost,
less noisy on a shared machine, without what the reader's wake-ups cost decode). Then what a
chat template costs a request: rendering a ten-turn conversation with two tools through each of
llama.cpp's 70 real templates (tests/data/templates), the conversation adapted as for a
request, against a decoded token: the first rendering of a template (its probes, once per
template) and the ones after it.

A benchmark, not a test: medians of --repeat runs; it never fails on a slow number.

Usage: .venv/bin/python scripts/bench/overhead.py [--model smollm2:135m] [--tokens 200]
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

    from localrun.cli.run.connect import open_session
    from localrun.engine.library.native import lc

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
        results["template"] = render_cost(results["greedy"]["interval_us"])
        results["parsing"] = parse_cost(results["greedy"]["interval_us"])
    finally:
        opened.close()
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"model": args.model, "tokens": args.tokens, **results}, out, indent=2)
    return 0


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city"}},
                "required": ["city"],
            },
        },
    }
    for name in ("get_weather", "get_time")
]


def render_cost(token_us: float) -> dict[str, float]:
    """Microseconds a request's template rendering takes (first and later, median and max
    over the corpus), and the later median in decoded tokens."""
    from pathlib import Path

    from localrun.errors import TemplateError
    from localrun.formats import template

    turns: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for i in range(5):
        turns.append({"role": "user", "content": f"Question {i}: {PROMPT}"})
        turns.append({"role": "assistant", "content": f"Answer {i}: a keeper, a storm."})
    corpus = sorted((Path(__file__).resolve().parents[2] / "tests/data/templates").glob("*.jinja"))
    first: list[float] = []
    later: list[float] = []
    for path in corpus:
        source = path.read_text()
        times = []
        for _ in range(21):
            started = time.perf_counter()
            try:
                template.render(source, turns, tools=TOOLS, bos_token="<s>", eos_token="</s>")
            except TemplateError:
                break
            times.append(time.perf_counter() - started)
        if times:
            first.append(times[0])
            later.append(statistics.median(times[1:]))
    out = {
        "templates": len(later),
        "first_median_us": round(statistics.median(first) * 1e6, 1),
        "first_max_us": round(max(first) * 1e6, 1),
        "median_us": round(statistics.median(later) * 1e6, 1),
        "max_us": round(max(later) * 1e6, 1),
        "median_tokens": round(statistics.median(later) * 1e6 / token_us, 2),
    }
    print(
        f"template: {out['templates']} templates, a request's rendering {out['median_us']:.0f} us "
        f"median ({out['median_tokens']:.2f} decoded tokens), {out['max_us']:.0f} us at most; "
        f"the first of a template (its probes) {out['first_median_us']:.0f} us median, "
        f"{out['first_max_us']:.0f} us at most",
        flush=True,
    )
    return out


def parse_cost(token_us: float) -> dict[str, float]:
    """Microseconds the answer's parsing takes per streamed token (reasoning split off, calls
    held back and read), over every family's syntax, on a long answer: 2,000 tokens of
    reasoning and text with ten calls between them, fed a token (about 4 characters) at a
    time as the runner's sink feeds it."""
    import json as json_mod

    from localrun.formats import parsers, reasoning
    from localrun.formats.parsers.families.harmony import HarmonyStream
    from localrun.formats.parsers.stream import CallStream

    prose = "The keeper lit the lamp as the storm came in over the rocks. " * 4
    per_family: dict[str, float] = {}
    for family in parsers.FAMILIES:
        syntax = family.syntax.with_tools(TOOLS)
        call = syntax.write("get_weather", json_mod.dumps({"city": "Paris"}))
        open_, close = family.think
        if family.harmony:
            answer = f"<|channel|>analysis<|message|>{prose * 20}<|end|>" + "".join(
                f"<|start|>assistant{call}" for _ in range(10)
            )
        elif family.name == "llama3":  # the calls are the whole answer, joined by `;`
            answer = f"{open_}{prose * 20}{close}" + "; ".join([call] * 10)
        else:
            answer = f"{open_}{prose * 10}{close}" + "".join(
                f"{prose}\n{call}\n" for _ in range(10)
            )
        pieces = [answer[i : i + 4] for i in range(0, len(answer), 4)]
        times = []
        for _ in range(5):
            started = time.perf_counter()
            if family.harmony:
                channels = HarmonyStream(syntax)
                for piece in pieces:
                    channels.feed(piece)
                channels.finish()
                found = len(channels.calls)
            else:
                splitter = reasoning.Splitter(open=open_, close=close, drop=family.drop)
                stream = CallStream(syntax)
                found = 0
                for piece in pieces:
                    _, text = splitter.feed(piece)
                    found += len(stream.feed(text)[1])
                found += len(stream.feed(splitter.finish()[1])[1]) + len(stream.finish()[1])
            times.append((time.perf_counter() - started) / len(pieces))
            if found != 10:
                raise SystemExit(f"{family.name}: {found} calls read, not 10")
        per_family[family.name] = statistics.median(times) * 1e6
    median = statistics.median(per_family.values())
    worst = max(per_family, key=lambda name: per_family[name])
    out = {
        "families": len(per_family),
        "median_us_per_token": round(median, 2),
        "max_us_per_token": round(per_family[worst], 2),
        "max_family": worst,  # type: ignore[dict-item]
        "median_share_of_token": round(median / token_us, 5),
    }
    print(
        f"parsing: {out['families']} families, {median:.1f} us a streamed token median "
        f"({100 * median / token_us:.2f}% of a decoded token), {per_family[worst]:.1f} us "
        f"at most ({worst})",
        flush=True,
    )
    return out


if __name__ == "__main__":
    sys.exit(main())
