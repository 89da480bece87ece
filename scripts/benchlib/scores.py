"""llama.cpp's own log-probabilities of a prompt's tokens, read through llama-cpp-python with
`logits_all` (every row's logits kept): the oracle prompt scoring (engine.scoring, OpenAI's
`echo`, vLLM's `prompt_logprobs`) is held to, by tests and by scripts/measure/eval_harness.py.

The model is loaded as the engine loads it (localrun.engine.library.machine) with flash attention
on, which is what llama.cpp's default (auto) chooses on a CPU and which the engine keeps: with it
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

__all__ = ["Reference", "continuation_logprob", "in_child"]


class Reference:
    """One model loaded with logits at every row; `logprobs(ids)` scores a prompt from cold."""

    def __init__(self, path: str, n_ctx: int = 512) -> None:
        from localrun.engine.library.machine import machine_params

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

    def ranks(self, ids: Sequence[int]) -> list[int]:
        """Of the prompt `logprobs` last read: each token's rank among the logits of the row
        before it (1: the likeliest; 0 for the first token)."""
        import numpy as np

        rows = np.asarray(self.llm.scores[: len(ids)], dtype=np.float32)
        return [0] + [
            int((rows[i - 1] > rows[i - 1][ids[i]]).sum()) + 1 for i in range(1, len(ids))
        ]

    def close(self) -> None:
        self.llm.close()


def continuation_logprob(scores: Sequence[float | None], ctxlen: int) -> float:
    """The log-likelihood of the tokens after the first `ctxlen` (an answer after its
    question), as evaluation harnesses sum it."""
    return math.fsum(float(s) for s in scores[ctxlen:] if s is not None)


_CHILD = """
import json, sys
from benchlib.scores import Reference
path, prompts = json.loads(sys.stdin.read())
model = Reference(path, n_ctx=max(64, max(len(p) for p in prompts) + 1))
print(json.dumps([[model.logprobs(p), model.ranks(p)] for p in prompts]))
"""


def in_child(path: str, prompts: list[list[int]]) -> list[tuple[list[float | None], list[int]]]:
    """Each prompt's log-probabilities and ranks, computed in a child process with this one's
    environment: as a runner started with it loads llama.cpp (the exact runtime of its
    LOCALRUN_HOME, or the installed library), whatever this process loaded before."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    scripts = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([scripts, *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps([path, prompts]),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the reference failed: {done.stderr[-2000:]}")
    return [(scores, ranks) for scores, ranks in json.loads(done.stdout.splitlines()[-1])]
