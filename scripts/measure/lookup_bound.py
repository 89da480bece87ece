#!/usr/bin/env python3
"""How fast prompt lookup could possibly be here: an oracle bound for scripts/bench/speculative.py.

Draftless speculation can only draft tokens that occur, in that order, earlier in the prompt or
the answer; and verifying a draft of k tokens costs one llama_decode of k + 1 tokens. This
script measures that cost on this machine (the model, the threads, all rows with logits, as a
verification batch has), takes the greedy answer to each prompt of benchlib/workloads.py without
speculation, and finds the fastest any lookup drafter could produce exactly that answer: an
oracle that knows the answer and, at every token, drafts the longest run that follows it and
follows an earlier occurrence of the last three tokens in the history (at most `draft_max`
tokens), choosing the split of the answer into
batches that costs least (dynamic programming over the measured costs; benchlib/bound.py).

The ratio of that time to one-token decoding is the bound: no prompt-lookup drafter, ours or
llama-server's ngram modes on their first request, can beat it on this machine (a drafter with
a memory of earlier answers to the same prompt can, since it drafts tokens the history lacks).
Usage: .venv/bin/python scripts/measure/lookup_bound.py [--model GGUF] [--threads 2] [--corpus]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from benchlib import workloads
from benchlib.bound import bounds, report
from benchlib.common import default_model
from benchlib.corpus import corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the SmolLM2 starter)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--draft-max", type=int, default=64)
    parser.add_argument(
        "--corpus",
        action="store_true",
        help="the held-out prompts made from this repository (benchlib/corpus.py), not the "
        "workloads bench/speculative.py measures",
    )
    parser.add_argument(
        "--gpu-layers",
        type=int,
        default=0,
        help="layers on the GPU (a GPU build of llama.cpp: LLAMA_CPP_LIB_PATH; 99: all)",
    )
    args = parser.parse_args(argv)
    model = args.model or default_model()
    if model is None or not model.is_file():
        parser.error(f"no GGUF model at {model}; pass --model PATH")
    costs, found = bounds(
        model,
        args.threads,
        corpus() if args.corpus else workloads.WORKLOADS,
        workloads.SAMPLING,
        n_predict=workloads.N_PREDICT,
        n_ctx=workloads.CTX,
        draft_max=args.draft_max,
        gpu_layers=args.gpu_layers,
    )
    print(report(costs, found, args.draft_max))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
