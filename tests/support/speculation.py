"""Speculative decoding under test: the code-editing prompt whose answer copies the prompt,
the one-slot engine's answer and timings, and the comparison of two answers up to a near tie
(a batch's logits differ from one token's in the last bits)."""

from __future__ import annotations

import threading
from typing import Any

import llama_cpp as lc
import numpy as np
import pytest

from localrun.engine.batch import BatchEngine
from localrun.engine.types import SamplingOptions, Timings

CODE = '''\
class Inventory:
    """Items in stock, by name."""

    def __init__(self) -> None:
        self.items: dict[str, int] = {}

    def add(self, name: str, count: int = 1) -> None:
        self.items[name] = self.items.get(name, 0) + count

    def remove(self, name: str, count: int = 1) -> None:
        left = self.items.get(name, 0) - count
        if left < 0:
            raise ValueError(f"only {self.items.get(name, 0)} {name} in stock")
        self.items[name] = left

    def total(self) -> int:
        return sum(self.items.values())
'''


def edit_prompt(code: str = CODE) -> str:
    return (
        "<|im_start|>system\nYou are a code editor. You repeat the user's code exactly, with "
        "only the requested change.<|im_end|>\n"
        f"<|im_start|>user\n```python\n{code}```\nRename `total` to `count_all`.<|im_end|>\n"
        "<|im_start|>assistant\n```python\n"
    )


def greedy(**kw: Any) -> SamplingOptions:
    base: dict[str, Any] = {"temperature": 0.0, "repeat_penalty": 1.0, "num_predict": 160}
    return SamplingOptions(**{**base, **kw})


def run(
    model: BatchEngine, prompt: list[int], sampling: SamplingOptions
) -> tuple[list[int], Timings]:
    gen = model.generate(prompt, sampling)
    for _ in gen.pieces:
        pass
    return gen.tokens, gen.timings


def one_token_logits(model: BatchEngine, tokens: list[int]) -> Any:
    """The logits after `tokens`, the last one decoded alone, in a context of the model's own
    weights made for it (the engine's is its loop's)."""
    weights = model._weights
    ctx = weights.context(weights.context_params(model.options, model.n_ctx))
    try:
        for start in range(0, len(tokens) - 1, 512):
            chunk = tokens[start : min(start + 512, len(tokens) - 1)]
            arr = (lc.llama_token * len(chunk))(*chunk)
            assert lc.llama_decode(ctx, lc.llama_batch_get_one(arr, len(chunk))) == 0
        last = (lc.llama_token * 1)(tokens[-1])
        assert lc.llama_decode(ctx, lc.llama_batch_get_one(last, 1)) == 0
        row = lc.llama_get_logits_ith(ctx, -1)
        return np.ctypeslib.as_array(row, (model.n_vocab,)).copy()
    finally:
        weights.free(ctx)


def top_two(model: BatchEngine, tokens: list[int]) -> tuple[tuple[int, int], float]:
    """The two likeliest next tokens after `tokens` (one-token decoding) and their gap."""
    row = one_token_logits(model, tokens)
    best = np.argsort(-row)[:2]
    return (int(best[0]), int(best[1])), float(row[best[0]] - row[best[1]])


def assert_same_or_near_tie(
    model: BatchEngine, prompt: list[int], plain: list[int], fast: list[int]
) -> None:
    """The speculative output is the plain one, or leaves it only where the two candidates were
    nearly tied (the next token after a flip follows its own text, so only the first counts)."""
    if plain == fast:
        return
    n = min(len(plain), len(fast))
    first = next((i for i in range(n) if plain[i] != fast[i]), n)
    if first == n:  # one is a prefix of the other: a stop token chosen at a near tie
        pytest.fail(f"one output stops early at {first}: {len(plain)} against {len(fast)} tokens")
    pair, gap = top_two(model, prompt + plain[:first])
    assert {plain[first], fast[first]} == set(pair), (first, pair, plain[first], fast[first])
    assert gap < 1.0, f"tokens differ at {first} where the model was sure (gap {gap:.2f})"


def kv_end(model: BatchEngine) -> int:
    return int(lc.llama_memory_seq_pos_max(model._slots.memory.handle, 0)) + 1


def cached(model: BatchEngine) -> list[int]:
    """The tokens the one slot's KV sequence holds."""
    return model._slots.all[0].cache


class Sink:
    """What a batch engine sends for one request."""

    def __init__(self) -> None:
        self.finished = threading.Event()
        self.logprobs: list[dict[str, Any]] = []
        self.tokens: list[int] = []
        self.timings = Timings()
        self.failure: Exception | None = None

    def piece(self, text: str, logprobs: list[dict[str, Any]] | None = None) -> None:
        self.logprobs += logprobs or []

    def done(self, reason: str, timings: Timings, tokens: list[int]) -> None:
        self.timings, self.tokens = timings, tokens
        self.finished.set()

    def error(self, exc: Exception) -> None:
        self.failure = exc
        self.finished.set()


CODE_INPUT = f"```python\n{CODE}```\n"


def repeat_code(model: str, *params: str) -> list[str]:
    """`localrun run` arguments that have a model repeat CODE_INPUT (on stdin), verbosely."""
    args = ["run", model, "Repeat this code exactly, renaming total to count_all:", "--verbose"]
    for param in ("num_predict=80", *params):
        args += ["--param", param]
    return args


def verbose_drafts(stderr: str) -> tuple[int, int]:
    """(drafted, accepted) as `--verbose` prints them."""
    shown = dict(line.split(":", 1) for line in stderr.splitlines() if line.startswith("draft "))
    return int(shown["draft count"].split()[0]), int(shown["draft accepted"].split()[0])
