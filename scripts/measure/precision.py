#!/usr/bin/env python3
"""How close each way localrun can run a model on the CPU comes to the model itself: each
token's log-probability of a few thousand tokens of text, read by

- the installed llama.cpp with flash attention on (what the engine runs without the exact
  runtime: llama.cpp's CPU default),
- the installed llama.cpp with flash attention off,
- the exact runtime (flash attention on, its batch-invariant kernel; `localrun runtime install
  exact` first),

each against a high-precision reference on the same GGUF: the installed llama.cpp with an F32
KV cache and flash attention off, the text read in one batch (the weights stay as quantized:
that is the model). Printed per model: tokens, the median, 95th percentile and largest
|difference| in nats, the sum of the differences' magnitudes per 1,000 tokens, and how often the
likeliest token is the reference's.

    .venv/bin/python scripts/measure/precision.py [--tokens 3000] [--model PATH]... [--json OUT]

Each reading runs in a child process of its own (LOCALRUN_EXACT=off for the installed library),
the text in windows of --window tokens, each read whole from a cold cache.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from benchlib.common import default_model

ROOT = Path(__file__).resolve().parents[2]

_CHILD = r"""
import json, sys
import numpy as np
path, windows, kind = json.loads(sys.stdin.read())
import localrun.engine.library.native  # the exact runtime (where asked for) before llama_cpp loads
from localrun.engine.library.machine import machine_params
from localrun.runtimes import exact
import llama_cpp
if kind == "exact runtime" and exact.current().runtime is None:
    sys.exit("the exact runtime is not installed here: localrun runtime install exact")
n = max(len(w) for w in windows) + 1
extra = {}
if kind == "reference":
    extra = dict(flash_attn=False, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
elif kind == "installed-fa-off":
    extra = dict(flash_attn=False)
else:
    extra = dict(flash_attn=True)
llm = machine_params().llama(path, n_ctx=n, n_batch=n, n_ubatch=n, logits_all=True,
                             verbose=False, **extra)
out = []
for ids in windows:
    llm.reset()
    llm.eval(list(ids))
    rows = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    peak = rows.max(axis=1, keepdims=True)
    norm = rows - (peak + np.log(np.exp(rows - peak).sum(axis=1, keepdims=True)))
    out.append([[float(norm[i - 1, ids[i]]) for i in range(1, len(ids))],
                [int(norm[i - 1].argmax()) for i in range(1, len(ids))]])
print(json.dumps(out))
"""

KINDS = {
    "reference": {"LOCALRUN_EXACT": "off"},
    "installed, flash attention on": {"LOCALRUN_EXACT": "off"},
    "installed-fa-off": {"LOCALRUN_EXACT": "off"},
    "exact runtime": {"LOCALRUN_EXACT": "on"},
}
SHOWN = {"installed-fa-off": "installed, flash attention off"}


def read(path: str, windows: list[list[int]], kind: str) -> list[Any] | None:
    env = {**os.environ, **KINDS[kind], "PYTHONPATH": str(ROOT / "scripts")}
    done = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps([path, windows, kind]),
                          capture_output=True, text=True, env=env)  # fmt: skip
    if done.returncode != 0:
        print(f"  {kind}: failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return list(json.loads(done.stdout))


def text_tokens(path: str, count: int) -> list[int]:
    """`count` tokens of English prose (this project's docs) as the model tokenizes them."""
    from localrun.engine.library.machine import machine_params

    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md")))
    llm = machine_params().llama(path, n_ctx=64, vocab_only=True, verbose=False)
    ids: list[int] = llm.tokenize(text.encode(), add_bos=True, special=False)
    return ids[:count]


def compare(reference: list[Any], other: list[Any]) -> dict[str, float]:
    diffs, same, total = [], 0, 0
    for (ref_lp, ref_top), (lp, top) in zip(reference, other, strict=True):
        diffs += [abs(a - b) for a, b in zip(ref_lp, lp, strict=True)]
        same += sum(a == b for a, b in zip(ref_top, top, strict=True))
        total += len(ref_top)
    diffs.sort()
    return {
        "tokens": len(diffs),
        "median": statistics.median(diffs),
        "p95": diffs[int(0.95 * (len(diffs) - 1))],
        "max": diffs[-1],
        "per_1000": 1000 * sum(diffs) / len(diffs),
        "same_top": same / total,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=3000)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--model", action="append", help="a GGUF (default: the starter)")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    models = args.model or [default_model()]
    results: dict[str, Any] = {}
    print(f"{'model':28} {'path':32} {'tokens':>6} {'median':>9} {'p95':>9} {'max':>8} "
          f"{'Σ|Δ|/1k':>8} {'same top':>8}")  # fmt: skip
    for path in models:
        ids = text_tokens(path, args.tokens)
        windows = [ids[i : i + args.window] for i in range(0, len(ids), args.window)]
        windows = [w for w in windows if len(w) > 8]
        readings = {kind: read(path, windows, kind) for kind in KINDS}
        reference = readings.pop("reference")
        if reference is None:
            return 1
        name = Path(path).name[:28]
        for kind, reading in readings.items():
            if reading is None:
                continue
            figures = compare(reference, reading)
            results.setdefault(name, {})[SHOWN.get(kind, kind)] = figures
            print(f"{name:28} {SHOWN.get(kind, kind):32} {figures['tokens']:6} "
                  f"{figures['median']:9.2e} {figures['p95']:9.2e} {figures['max']:8.4f} "
                  f"{figures['per_1000']:8.3f} {figures['same_top']:8.2%}", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
