"""Log-probabilities of a prompt's own tokens: what the model made of each, given those before.

Evaluation harnesses score a text so; OpenAI's legacy `echo` and vLLM's `prompt_logprobs` ask for
it.

The logits a prompt row leaves score the prompt's next token. So a request that asks reads its whole
prompt with logits at every row (engine.rows), from position 0: a cached prefix has no logits left
to read (engine.slots places it on a slot of its own, emptied). Each chunk's rows are turned into
entries right after its decode and sent at once, since the rows are gone by the next one. So no
request holds a vocabulary of floats per prompt token. The rows one chunk may have are bounded by
what their logits take (SCORE_BYTES): llama.cpp keeps an output buffer as large as the most rows
with logits one batch had.
"""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Callable
from typing import Any

from localrun.engine.library.native import lc
from localrun.engine.slots import Job
from localrun.engine.types import SamplingOptions
from localrun.errors import BadRequestError
from localrun.settings import limits

Spell = Callable[[int], bytes]  # a token's bytes, special tokens spelled out

# The logits one step's scored rows may take (llama.cpp's output buffer keeps the largest).
SCORE_BYTES = 64 * 1024 * 1024
# The fewest rows a scored chunk leaves for the last one (scored_chunk).
TILE = 64
# Rows turned into entries at once: bounds the temporary arrays to a few vocabularies each.
_BLOCK = 16
# OpenAI's bound on top_logprobs; it also bounds the work per token.
MAX_TOP_LOGPROBS = 20
# vLLM's floor for a log-probability JSON cannot carry (minus infinity).
FLOOR = -9999.0


def ask(job: Job, sampling: SamplingOptions, media: object | None) -> None:
    """The log-probabilities `job` answers with and scores its prompt with, within bounds."""
    job.logprobs = min(sampling.logprobs, MAX_TOP_LOGPROBS)
    job.logprobs_end = sampling.logprobs_end
    job.candidates = sampling.candidates
    job.scores = min(sampling.prompt_logprobs, MAX_TOP_LOGPROBS)
    if job.scores < 0:
        return
    if media is not None:
        raise BadRequestError("a prompt with images or audio cannot be scored")
    most = limits.max_prompt_logprobs()
    if len(job.prompt) * (1 + job.scores) > most:
        raise BadRequestError(
            f"scoring this prompt of {len(job.prompt)} tokens with {job.scores} alternatives "
            f"each takes over {most} log-probabilities, the most "
            "LOCALRUN_MAX_PROMPT_LOGPROBS allows",
            hint="score a shorter prompt, ask for fewer alternatives, or raise "
            "LOCALRUN_MAX_PROMPT_LOGPROBS on the server",
        )


def score_rows(n_batch: int, n_vocab: int) -> int:
    """The prompt rows, each with logits, one step reads for a scoring request."""
    return max(1, min(n_batch, SCORE_BYTES // (4 * max(1, n_vocab))))


def scored_chunk(take: int, most: int, rest: int) -> int:
    """The rows of a scored prompt one step reads, of the `take` it has room for.

    It reads at most `most`, but never leaves a last chunk of fewer than TILE rows (so up to
    TILE - 1 past `most`). The installed llama.cpp's CPU flash attention computes 64 or more rows
    of a sequence with another kernel than fewer (runtimes/exact.py), which sums in another order.
    A prompt read in one batch, as llama.cpp's own programs read it, and the same prompt read in
    chunks with a short last one differ in the log-probabilities' third decimal on Gemma 3 270M.
    Chunks of TILE rows or more are computed as the whole batch is (the exact runtime needs none
    of it).
    """
    if take < rest:
        return min(take, most)  # the batch's room, or the next checkpoint, ends it anyway
    if rest <= most or rest - most >= TILE:
        return min(rest, most)
    return rest


def _address(ctx: Any, row: int) -> int:
    pointer = lc.llama_get_logits_ith(ctx, row)
    return ctypes.cast(pointer, ctypes.c_void_p).value or 0


def _rows(ctx: Any, first: int, count: int, n_vocab: int) -> Any:
    """The logits of `count` batch rows from `first`, as one (count, n_vocab) float32 array.

    They are read in place where llama.cpp holds them one after another (as it does for one
    slot's rows), else copied.
    """
    import numpy as np

    addresses = [_address(ctx, first + i) for i in range(count)]
    if not all(addresses):
        raise RuntimeError(f"llama.cpp has no logits at rows {first}..{first + count - 1}")
    stride = 4 * n_vocab
    if all(b - a == stride for a, b in itertools.pairwise(addresses)):
        whole: Any = (ctypes.c_float * (count * n_vocab)).from_address(addresses[0])
        return np.frombuffer(whole, np.float32).reshape(count, n_vocab)
    row_type = ctypes.c_float * n_vocab
    views: list[Any] = [row_type.from_address(a) for a in addresses]
    return np.stack([np.frombuffer(view, np.float32) for view in views])


def first_entry(token: int, spell: Spell) -> dict[str, Any]:
    """The entry of a prompt's first token, with no log-probability and no alternatives.

    Nothing comes before it to score it.
    """
    raw = spell(token)
    return {
        "id": token,
        "token": raw.decode("utf-8", errors="replace"),
        "bytes": list(raw),
        "logprob": None,
        "rank": None,
        "top": [],
    }


def entries(
    ctx: Any,
    first: int,
    tokens: list[int],
    n_vocab: int,
    top: int,
    spell: Spell,
) -> list[dict[str, Any]]:
    """The entries of `tokens`, the i-th scored by the logits at batch row `first + i`.

    Each has its log-probability (log-softmax of the raw logits, as llama.cpp computes it), its rank
    among the vocabulary (1: the likeliest) and the `top` likeliest tokens, each with its id.
    """
    import numpy as np

    out: list[dict[str, Any]] = []
    for start in range(0, len(tokens), _BLOCK):
        chunk = tokens[start : start + _BLOCK]
        logits = _rows(ctx, first + start, len(chunk), n_vocab)
        peak = logits.max(axis=1)
        total = peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1))
        ids = np.asarray(chunk)
        chosen = logits[np.arange(len(chunk)), ids]
        ranks = (logits > chosen[:, None]).sum(axis=1) + 1
        best = None
        if top > 0:
            best = np.argpartition(-logits, top - 1, axis=1)[:, :top]
        for i, token in enumerate(chunk):
            raw = spell(token)
            entry: dict[str, Any] = {
                "id": token,
                "token": raw.decode("utf-8", errors="replace"),
                "bytes": list(raw),
                "logprob": max(FLOOR, float(chosen[i] - total[i])),
                "rank": int(ranks[i]),
                "top": [],
            }
            if best is not None:
                row = logits[i]
                for t in best[i][np.argsort(-row[best[i]], kind="stable")]:
                    piece = spell(int(t))
                    entry["top"].append(
                        {
                            "id": int(t),
                            "token": piece.decode("utf-8", errors="replace"),
                            "bytes": list(piece),
                            "logprob": max(FLOOR, float(row[t] - total[i])),
                        }
                    )
            out.append(entry)
    return out


def send(ctx: Any, job: Job, first: int, done: int, added: int, spell: Spell) -> None:
    """After a decode, send the job's sink the entries of the prompt tokens its rows score.

    The `added` rows from batch row `first` hold prompt positions from `done` on. Each row scores
    the token after its own, and the prompt's first token comes with the first chunk.
    """
    prompt = job.prompt
    out = [first_entry(prompt[0], spell)] if done == 0 else []
    scored = prompt[done + 1 : done + added + 1]
    assert job.sampler is not None
    out += entries(ctx, first, scored, job.sampler.n_vocab, job.scores, spell)
    try:
        job.sink.scored(out)
    except Exception:
        job.cancelled = True  # a sink that fails has no reader left
