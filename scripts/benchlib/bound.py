"""How fast prompt lookup could possibly be here: an oracle bound (scripts/measure/lookup_bound.py
prints it; scripts/bench/speculative.py reports it beside its measurements).

Draftless speculation can only draft tokens that occur, in that order, earlier in the prompt or
the answer; and verifying a draft of k tokens costs one llama_decode of k + 1 tokens. `bounds`
measures that cost on this machine (the model, the threads, all rows with logits, as a
verification batch has), takes the greedy answer to each prompt without speculation, and finds
the fastest any lookup drafter could produce exactly that answer: an oracle that knows the answer
and, at every token, drafts the longest run that follows it and follows an earlier occurrence of
the last three tokens in the history (at most `draft_max` tokens), choosing the split of the
answer into batches that costs least (dynamic programming over the measured costs).

The ratio of that time to one-token decoding is the bound: no prompt-lookup drafter, ours or
llama-server's ngram modes on their first request, can beat it on this machine (a drafter with
a memory of earlier answers to the same prompt can, since it drafts tokens the history lacks).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["KEY", "bounds", "copyable", "interpolate", "oracle_seconds", "replay", "report"]

COST_SIZES = (1, 2, 3, 5, 9, 17, 33, 65)  # batch sizes timed; others are interpolated
KEY = 3  # tokens of context a lookup matches before it drafts (its shortest n-gram)


def copyable(history: Sequence[int], wanted: Sequence[int], key: int = KEY) -> int:
    """How many tokens of `wanted` a lookup could draft after `history`: the longest common
    prefix of `wanted` and what follows an earlier occurrence of the history's last `key`
    tokens (the shortest n-gram a drafter matches)."""
    n = len(history)
    if n <= key or not wanted:
        return 0
    suffix = list(history[n - key :])
    best = 0
    for at in range(key, n):  # `at`: right after an occurrence of the suffix
        if history[at - key : at] != suffix:
            continue
        length = 0
        while length < len(wanted) and at + length < n and history[at + length] == wanted[length]:
            length += 1
        best = max(best, length)
    return best


def interpolate(costs: dict[int, float], k: int) -> float:
    """The cost of a batch of `k` tokens, linear between the measured sizes."""
    sizes = sorted(costs)
    if k in costs:
        return costs[k]
    if k > sizes[-1]:
        return costs[sizes[-1]] * k / sizes[-1]
    low = max(s for s in sizes if s < k)
    high = min(s for s in sizes if s > k)
    return costs[low] + (costs[high] - costs[low]) * (k - low) / (high - low)


def oracle_seconds(
    prompt: Sequence[int], answer: Sequence[int], costs: dict[int, float], draft_max: int
) -> float:
    """The least time to decode `answer` after `prompt` when each decode of token i may carry
    any draft of up to `draft_max` tokens that continue the answer and follow an occurrence of
    its last KEY tokens in the history (the prompt and the answer up to token i): dynamic
    programming from the end."""
    n = len(answer)
    # reach[i]: how many tokens after answer[i] a lookup could draft right.
    reach = [
        min(draft_max, copyable([*prompt, *answer[: i + 1]], answer[i + 1 :])) for i in range(n)
    ]
    best = [0.0] * (n + 1)
    for i in range(n - 1, -1, -1):
        best[i] = min(
            interpolate(costs, k + 1) + best[min(n, i + k + 1)] for k in range(reach[i] + 1)
        )
    return best[0]


def replay(
    prompt: Sequence[int],
    answer: Sequence[int],
    ends: Callable[[int], bool],
    costs: dict[int, float],
    budget: int,
    gpu_layers: int = 0,
) -> float:
    """Seconds localrun's drafter (engine.speculation.speculator, speculate auto, as on this CPU)
    would take to produce `answer` after `prompt`, each draft kept up to its first token that is not
    the answer's (nothing past its end): the drafter on exactly the answer one-token decoding
    gives, with no near tie flipped by a batch."""
    from localrun.engine.speculation import speculator as speculate
    from localrun.engine.speculation.costs import CostMeter, DecodeCost

    # The engine's drafter sees what batches cost as its loop measures them: these costs.
    meter = CostMeter(DecodeCost.for_device(gpu_layers))
    for size, seconds in costs.items():
        meter.record(size, seconds, 0)
    spec = speculate.Speculator(prompt, 64, meter.cost(0), ends=ends)
    i, seconds = 0, 0.0
    while i < len(answer):
        draft = spec.propose(answer[i], budget - i - 1)
        kept = 0
        while kept < len(draft) and i + 1 + kept < len(answer):
            if draft[kept] != answer[i + 1 + kept]:
                break
            kept += 1
        if draft:
            spec.settle(draft, kept)
        seconds += interpolate(costs, 1 + len(draft))
        i += 1 + kept
    return seconds


def measure_costs(model: Any, prompt: Sequence[int], rounds: int = 7) -> dict[int, float]:
    """Median seconds of one llama_decode of k tokens, all with logits, after `prompt`, in a
    context of the model's weights made for it, on the engine's loop thread (`on_loop`)."""
    import llama_cpp as lc

    from localrun.engine.sequence import put

    weights = model._weights
    ctx = weights.context(weights.context_params(model.options, model.n_ctx))
    memory = lc.llama_get_memory(ctx)
    batch = lc.llama_batch_init(max(max(COST_SIZES), 512), 0, 1)
    costs: dict[int, float] = {}
    try:
        for start in range(0, len(prompt), 512):
            chunk = prompt[start : start + 512]
            batch.n_tokens = put(batch, 0, chunk, start, 0, False)
            lc.llama_decode(ctx, batch)
        for k in COST_SIZES:
            times = []
            for _ in range(rounds):
                batch.n_tokens = put(batch, 0, prompt[-k:], len(prompt), 0, True)
                started = time.perf_counter()
                lc.llama_decode(ctx, batch)
                lc.llama_synchronize(ctx)  # a GPU backend computes asynchronously
                times.append(time.perf_counter() - started)
                lc.llama_memory_seq_rm(memory, 0, len(prompt), -1)
            costs[k] = statistics.median(times)
    finally:
        lc.llama_batch_free(batch)
        weights.free(ctx)
    return costs


def bounds(
    model_path: Path,
    threads: int,
    workloads: dict[str, tuple[str, ...]],
    sampling: dict[str, Any],
    *,
    n_predict: int = 256,
    n_ctx: int = 4096,
    draft_max: int = 64,
    gpu_layers: int = 0,
) -> tuple[dict[int, float], dict[str, dict[str, float]]]:
    """The measured batch costs, and per workload (name: raw prompts) the answers' length, the
    oracle's speed-up over one-token decoding (all the prompts' one-token time over all their
    oracle time), localrun's drafter's on the same answers and the share of the answers a
    lookup could draft; `sampling` holds the requests' options (greedy)."""
    from localrun.engine.batch import BatchEngine
    from localrun.engine.sequence import answer_ends
    from localrun.engine.types import LoadOptions, SamplingOptions

    load = LoadOptions(num_ctx=n_ctx, num_thread=threads, num_gpu=gpu_layers)
    model = BatchEngine(str(model_path), load, 1)
    ends = answer_ends(model._weights.vocab, frozenset())
    out: dict[str, dict[str, float]] = {}
    try:
        costs: dict[int, float] = {}
        for workload, texts in workloads.items():
            tokens = drafted = 0
            plain = fastest = ours = 0.0
            for text in texts:
                prompt = model.tokenize(text, add_special=True, parse_special=True)
                options: dict[str, Any] = {**sampling, "speculate": "off"}
                gen = model.generate(prompt, SamplingOptions(**options, num_predict=n_predict))
                for _ in gen.pieces:
                    pass
                answer = list(gen.tokens)
                if not costs:
                    # On the loop's thread: a second thread that decodes makes every decode of
                    # the process slower (localrun.engine.calls), these timings too.
                    costs = model.on_loop(functools.partial(measure_costs, model, prompt))
                tokens += len(answer)
                plain += len(answer) * costs[1]
                fastest += oracle_seconds(prompt, answer, costs, draft_max)
                ours += replay(prompt, answer, ends, costs, n_predict, gpu_layers)
                drafted += sum(
                    copyable([*prompt, *answer[: i + 1]], answer[i + 1 : i + 2]) > 0
                    for i in range(len(answer))
                )
            out[workload] = {
                "tokens": tokens,
                "bound": plain / fastest if fastest else 0.0,
                "drafter": plain / ours if ours else 0.0,
                "copyable": drafted / max(1, tokens),
            }
    finally:
        model.close()
    return costs, out


def report(costs: dict[int, float], found: dict[str, dict[str, float]], draft_max: int) -> str:
    lines = [
        "Batch costs here (one llama_decode, all rows with logits), in one-token decodes: "
        + ", ".join(f"{k}: {v / costs[1]:.2f}" for k, v in costs.items())
        + f" (one: {costs[1] * 1000:.1f} ms)",
        f"Prompt-lookup bound (an oracle drafting every run that follows a {KEY}-token match, "
        f"<= {draft_max} tokens):",
    ]
    for workload, f in found.items():
        lines.append(
            f"  {workload}: {f['bound']:.2f}x one-token decoding; {f['copyable']:.0%} of its "
            f"{int(f['tokens'])} answer tokens could be drafted; localrun's drafter on the same "
            f"answers: {f['drafter']:.2f}x"
        )
    return "\n".join(lines)
