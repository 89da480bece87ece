"""A draft model: a small model of the same vocabulary that guesses the next tokens greedily.

It is llama.cpp's `-md` for speculative decoding, with one KV sequence per slot of the engine.

The engine asks `draft(seq, history, limit)` before it decodes a token. The draft model catches its
sequence up with the history, keeping what its KV cache shares with it, so only the new tokens are
read. Then it proposes tokens one decode at a time while its own confidence in each stays at or
above P_MIN. The engine verifies the proposal with the main model exactly as it verifies a
prompt-lookup draft (engine.speculation.speculator), so the answer is the main model's alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from localrun.engine.library import native
from localrun.engine.library.native import lc
from localrun.engine.sequence import put, trim
from localrun.engine.types import LoadOptions, reusable
from localrun.engine.weights import Weights
from localrun.errors import ModelLoadError

P_MIN = 0.75  # llama.cpp's default: a less likely guess is not worth a row of the batch


class DraftModel:
    """The draft model's weights and one context with `n_seq` sequences of `n_ctx` tokens."""

    def __init__(self, path: str, options: LoadOptions, n_ctx: int, n_seq: int) -> None:
        own = LoadOptions(
            num_ctx=n_ctx,
            num_batch=options.num_batch,
            num_thread=options.num_thread,
            num_gpu=options.draft_num_gpu,
            main_gpu=options.main_gpu,
            use_mmap=options.use_mmap,
        )
        self.weights = weights = Weights(path, own)
        self._batch: Any = None
        try:
            cparams = weights.context_params(own, n_ctx * n_seq)
            cparams.n_seq_max = n_seq
            cparams.kv_unified = False
            self.ctx = weights.context(cparams)
            self._memory = native.memory(self.ctx)
            self._n_batch = int(lc.llama_n_batch(self.ctx))
            self._batch = lc.llama_batch_init(self._n_batch, 0, 1)
        except BaseException:
            self.close()
            raise
        self.n_ctx = int(lc.llama_n_ctx_seq(self.ctx))
        self.n_vocab = weights.n_vocab
        self._caches: list[list[int]] = [[] for _ in range(n_seq)]

    def draft(self, seq: int, history: Sequence[int], limit: int) -> list[int]:
        """Up to `limit` tokens the draft model expects after `history`, greedily.

        It stops at the first token it is less than P_MIN sure of. It returns [] if anything goes
        wrong; the main model then decodes without a draft.
        """
        limit = min(limit, self.n_ctx - len(history) - 1)
        if limit <= 0 or not history:
            return []
        cache = self._caches[seq]
        trim(self._memory, seq, cache, reusable(cache, history))
        if not self._read(seq, list(history[len(cache) :]), cache):
            return []
        out: list[int] = []
        while True:
            token, p = self._best()
            if p < P_MIN:
                break
            out.append(token)
            if len(out) >= limit or not self._read(seq, [token], cache):
                break
        return out

    def _read(self, seq: int, tokens: list[int], cache: list[int]) -> bool:
        """Decode `tokens` into sequence `seq` after `cache`, logits for the last only."""
        batch = self._batch
        for start in range(0, len(tokens), self._n_batch):
            chunk = tokens[start : start + self._n_batch]
            batch.n_tokens = put(batch, 0, chunk, len(cache), seq, False)
            batch.logits[len(chunk) - 1] = 1
            if lc.llama_decode(self.ctx, batch) != 0:
                lc.llama_memory_seq_rm(self._memory, seq, -1, -1)
                cache.clear()
                return False
            cache.extend(chunk)
        return True

    def _best(self) -> tuple[int, float]:
        row = np.ctypeslib.as_array(lc.llama_get_logits_ith(self.ctx, -1), (self.n_vocab,))
        token = int(row.argmax())
        peak = float(row[token])
        return token, 1.0 / float(np.exp(row - peak).sum())

    def close(self) -> None:
        if self._batch is not None:
            lc.llama_batch_free(self._batch)
            self._batch = None
        self.weights.close()


def load(path: str | None, options: LoadOptions, n_ctx: int, n_seq: int) -> DraftModel | None:
    """The draft model at `path` (None: the model has none)."""
    if not path:
        return None
    try:
        return DraftModel(path, options, n_ctx, n_seq)
    except ModelLoadError as exc:
        raise ModelLoadError(f"the draft model could not be loaded: {exc}", hint=exc.hint) from None
