"""Sequences of a llama.cpp context: tokens into a batch, cuts to a prefix, what ends an answer.

The engine, its draft model and its embedder share them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from localrun.engine.library.native import lc
from localrun.engine.media import MediaPrompt
from localrun.errors import ContextOverflowError, EngineError
from localrun.request import overflow


def answer_ends(vocab: Any, stop_tokens: frozenset[int]) -> Callable[[int], bool]:
    """Whether a token ends the answer: the model's end of generation, or a stop token."""
    is_eog = lc.llama_vocab_is_eog
    return lambda token: bool(is_eog(vocab, token)) or token in stop_tokens


def trim(memory: Any, seq: int, cache: list[int], keep: int) -> None:
    """Cut sequence `seq` (holding `cache`) to its first `keep` tokens.

    A recurrent state (recurrent and hybrid models) cannot drop its last positions: it is emptied
    instead, and the tokens are evaluated again.
    """
    if keep < len(cache) and not lc.llama_memory_seq_rm(memory, seq, keep, -1):
        lc.llama_memory_seq_rm(memory, seq, -1, -1)
        keep = 0
    del cache[keep:]


def put(batch: Any, row: int, ids: Sequence[int], pos: int, seq: int, logits: bool) -> int:
    """Write `ids` into a llama_batch from `row` on, at positions `pos`.. of sequence `seq`.

    Each has logits or none, as `logits` says. Returns the next free row; the caller sets
    n_tokens.
    """
    tokens, positions, seq_ids, n_seq, wanted = (
        batch.token,
        batch.pos,
        batch.seq_id,
        batch.n_seq_id,
        batch.logits,
    )
    for i, token in enumerate(ids):
        tokens[row] = token
        positions[row] = pos + i
        n_seq[row] = 1
        seq_ids[row][0] = seq
        wanted[row] = logits
        row += 1
    return row


def overflow_error(n_prompt: int, n_ctx: int, n_ctx_train: int) -> ContextOverflowError:
    """The error for a prompt of `n_prompt` tokens that does not fit a context of `n_ctx`."""
    return overflow.error(n_prompt, n_ctx, n_ctx_train or None)


def check_prompt(
    prompt: Sequence[int], media: MediaPrompt | None, n_ctx: int, n_ctx_train: int, n_vocab: int
) -> None:
    """Refuse a prompt that cannot be decoded: empty, past the context, or with unknown ids.

    The context `n_ctx` is the request's (SamplingOptions.within). An id outside the vocabulary
    would make llama.cpp refuse the whole batch, failing the other slots' requests too.
    """
    if not prompt:
        raise EngineError("the prompt is empty")
    if len(prompt) >= n_ctx:
        raise overflow_error(len(prompt), n_ctx, n_ctx_train)
    text: Sequence[int] = prompt
    if media is not None:  # its placeholders are no vocabulary ids
        if media.tokens != list(prompt):
            raise EngineError("the prompt is not its media prompt's")
        spans = media.spans.values()
        covered = {i for span in spans for i in range(span.start, span.start + span.length)}
        text = [t for i, t in enumerate(prompt) if i not in covered]
    if min(text) < 0 or max(text) >= n_vocab:
        raise EngineError("the prompt holds a token id outside the model's vocabulary")
