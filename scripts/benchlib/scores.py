"""llama.cpp's own log-probabilities of a prompt's tokens, read through llama-cpp-python with
`logits_all` (every row's logits kept): the oracle prompt scoring (engine.scoring, OpenAI's
`echo`, vLLM's `prompt_logprobs`) is held to, by tests and by scripts/eval_harness.py.

The model is loaded as the engine loads it (localrun.engine.machine) with flash attention on,
which is what llama.cpp's default (auto) chooses on a CPU and which the engine keeps: with it
off, SmolLM2's log-probabilities move by up to 0.3 (a different attention kernel), so the two
would not be the same computation. The installed llama.cpp also picks its attention kernel by
a batch's rows, so a long prompt the engine reads in several chunks (engine.scoring) may differ
from one read in one batch in the second decimal; on the exact runtime it does not
(localrun.runtimes.exact).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["Reference", "continuation_logprob"]


class Reference:
    """One model loaded with logits at every row; `logprobs(ids)` scores a prompt from cold."""

    def __init__(self, path: str, n_ctx: int = 512) -> None:
        from localrun.engine.machine import machine_params

        self.llm: Any = machine_params().llama(
            path, n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, flash_attn=True, verbose=False
        )

    def logprobs(self, ids: Sequence[int]) -> list[float | None]:
        """Each token's log-probability given those before it (None for the first): the
        log-softmax of the logits the row before it left, in double precision, the prompt
        read in one batch."""
        import numpy as np

        self.llm.reset()
        self.llm.eval(list(ids))
        rows = np.asarray(self.llm.scores[: len(ids)], dtype=np.float64)
        peak = rows.max(axis=1, keepdims=True)
        norm = rows - (peak + np.log(np.exp(rows - peak).sum(axis=1, keepdims=True)))
        return [None] + [float(norm[i - 1, ids[i]]) for i in range(1, len(ids))]

    def close(self) -> None:
        self.llm.close()


def continuation_logprob(scores: Sequence[float | None], ctxlen: int) -> float:
    """The log-likelihood of the tokens after the first `ctxlen` (an answer after its
    question), as evaluation harnesses sum it."""
    return math.fsum(float(s) for s in scores[ctxlen:] if s is not None)
