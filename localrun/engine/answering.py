"""The engine's path from a sampled token to the request's text and to the slot's next decode.

Each token is checked against the slot's draft, the answer's ends and its budgets. Then its
log-probabilities and text are sent.

What follows a token in the slot's batch row is a draft. First comes the text the request's grammar
forces next (engine.sampling.constraint's fast-forward: a key's name, `": "`, closing brackets),
taken without sampling. Then comes a speculator's guess (engine.speculation.speculator), kept up to
the first token the sampler does not choose. Forced text costs no decode of its own: it is read in
the batch with the token before it, as a prompt is. So a constrained answer takes fewer decodes than
the same text unconstrained. Every path spells forced text as the tokenizer does
(`Answerer._choose`), so a greedy answer is the same with or without speculation or
log-probabilities. A recurrent state takes a rejected draft back by going to the checkpoint taken
before its batch (engine.checkpoints).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from localrun.engine.library.native import lc
from localrun.engine.sampling.sampler import logits_address, logprob_entry
from localrun.engine.slots import HELD, Job, Slot, Slots
from localrun.engine.weights import Weights
from localrun.errors import BadRequestError, LocalrunError

# Forced text is drafted at most this many tokens at once: a long `const` or enum value takes
# a few steps instead of a whole batch's rows (each with logits) ahead of the other slots.
FORCED_MAX = 32
_FAILED = "the answer could not follow its schema or grammar: "
_HINT = "simplify the schema or grammar (localrun help structured-outputs)"


class Answerer:
    """engine.batch.BatchEngine's token path: its loop calls `sample` for each slot with logits.

    `finish(slot, reason)` and `fail(slots, error)` are the engine's ends of a job.
    """

    def __init__(
        self,
        ctx: Any,
        weights: Weights,
        slots: Slots,
        finish: Callable[[Slot, str], None],
        fail: Callable[[list[Slot], LocalrunError], None],
    ) -> None:
        self._ctx = ctx
        self._weights = weights
        self._slots = slots
        self._finish = finish
        self._fail = fail
        self.n_vocab = weights.n_vocab
        self._held: Any = None  # the kept logits a slot samples from now (row HELD)

    def keep(self, slot: Slot, job: Job) -> None:
        """Keep the logits of the prompt's last token for a request with the same prompt again.

        They are a copy of the vocabulary's floats at the slot's row (engine.slots `_held`).
        """
        if job.media is not None or job.scores >= 0 or job.candidates:
            return
        address = logits_address(self._ctx, slot.row)
        if not address:
            return
        if slot.logits is None:
            import numpy as np

            slot.logits = np.empty(self.n_vocab, dtype=np.float32)
        ctypes.memmove(slot.logits.ctypes.data, address, 4 * self.n_vocab)
        slot.logits_of = job.prompt

    def start_held(self, slot: Slot, job: Job) -> None:
        """Sample the first token of a job whose whole prompt the slot holds, reading nothing.

        It is sampled from the kept logits of the prompt's last token (engine.slots `_held`).
        """
        slot.held = False
        slot.row = HELD
        job.timings.prompt_s = time.perf_counter() - job.start
        if job.budget <= 0:  # num_predict 0: the prompt is in already
            self._finish(slot, "length")
        elif job.cancelled:
            self._finish(slot, "cancelled")
        else:
            self._held = slot.logits
            try:
                self.sample(slot, job)
            finally:
                self._held = None

    def _logits(self, row: int) -> Any:
        """The logits at the batch's row `row` (HELD: the slot's kept ones)."""
        return self._held if row == HELD else lc.llama_get_logits_ith(self._ctx, row)

    def sample(self, slot: Slot, job: Job) -> None:
        """Take the slot's next token: check its draft, ends and budgets, send it, draft again."""
        assert job.sampler is not None
        forcing = job.forcing > 0  # the grammar forced text last step (it may force more)
        if slot.draft and forcing and not self._take_forced(slot, job):
            return
        row = slot.row  # past the forced draft, if one was taken
        token = self._choose(job, row, forcing)
        if slot.draft:
            token, row = self._verify(slot, job, token, row)
            if token < 0:
                return
        failure = job.sampler.failed()
        if failure is not None:  # the grammar could go no further: never a cut-off "stop"
            self._fail([slot], BadRequestError(_FAILED + failure, hint=_HINT))
            return
        if job.ends(token):
            if job.logprobs_end and job.logprobs >= 0:
                self._emit_end(job, token, row)
            self._finish(slot, "stop")
            return
        self._emit(job, token, row)
        if job.cancelled:  # its reader has what it wants (a stop string): no further decode
            self._finish(slot, "cancelled")
            return
        if job.timings.eval_tokens >= job.budget or len(slot.cache) >= job.limit:
            # No next token is needed (or there is no room for one): skip its decode.
            self._finish(slot, "length")
            return
        slot.token = token
        room = min(job.budget - job.timings.eval_tokens, job.limit - len(slot.cache) - 1)
        forced = job.sampler.forced(min(room, FORCED_MAX))
        job.forcing = len(forced)
        if forced:
            slot.draft = forced  # the grammar's text: decoded at once, never a guess
            spec = job.spec
            if spec is not None and job.logprobs < 0 and not slot.replay:
                # What follows the forced text (a value the model copies from its prompt) is
                # guessed as any other text: verified in the same batch, after the forced
                # rows, by the sampler under the grammar's mask.
                spec.known([token, *forced[:-1]])
                slot.draft = forced + spec.propose(forced[-1], room - len(forced))
            elif spec is not None:
                spec.known([token, *forced])  # rows with logits (log-probabilities): no guess
        elif job.spec is not None and slot.replay:
            # A state just rewound reads its kept tokens again first: no guess on top of them
            # (the next rejection would rewind to the same place, with more to read again).
            job.spec.known([token])
        elif job.spec is not None:
            slot.draft = job.spec.propose(token, room)

    def ahead(self, pool: Executor) -> None:
        """Compute each constrained slot's next mask on `pool`'s thread while the batch decodes.

        A slot that takes a forced draft without sampling is skipped (engine.sampling.constraint).
        """
        for slot in self._slots.active:
            job = slot.job
            if job is not None and job.sampler is not None and slot.row >= 0 and not job.forcing:
                job.sampler.ahead(pool)

    def _choose(self, job: Job, row: int, forcing: bool) -> int:
        """Return the token at the batch's row `row`: forced text's first, else the sampler's.

        Where the grammar forces text now (`forcing` says it may), the token is the first of that
        text as the tokenizer spells it, taken without sampling. Every path spells forced text so:
        a forced draft (whole, or cut by the batch's room or FORCED_MAX) and a verified guess. The
        model, sampled under the mask, may prefer another spelling of the same text (`tra` + `ck`
        for `track`). The answer would then depend on whether a speculator guessed across it.
        """
        sampler = job.sampler
        assert sampler is not None
        forced = sampler.forced(1) if forcing else []
        if forced:
            sampler.take(forced[0])
            return forced[0]
        return sampler.sample(self._ctx, row, self._held if row == HELD else None)

    def _take_forced(self, slot: Slot, job: Job) -> bool:
        """Take the draft's forced head into the answer without sampling; False if the answer ends.

        Its rows need no sampling: they have logits only for log-probabilities (engine.rows). Each
        token is sent and kept in the slot's cache. What follows it in the draft is a guess, left to
        verify. False means a cancel or the budget ended the answer inside the forced text.
        """
        draft = slot.draft
        count = min(job.forcing, len(draft))  # the batch may have had room for fewer
        job.forcing = 0
        assert job.sampler is not None
        # With log-probabilities every forced row has logits (engine.rows): the row of the
        # token before each forced token holds what the model made of it.
        first = slot.row if job.logprobs >= 0 else -1
        for index in range(count):
            token = draft[index]
            job.sampler.take(token)
            slot.cache.append(token)
            self._emit(job, token, first + index if first >= 0 else -1)
            ended = "cancelled" if job.cancelled else None
            if ended is None and job.timings.eval_tokens >= job.budget:
                ended = "length"
            if ended:
                slot.draft = draft[index + 1 :]  # what the KV holds past the cache: dropped
                self._finish(slot, ended)
                return False
        slot.draft = draft[count:]
        if first >= 0:
            slot.row = first + count  # where the token after the forced text is sampled
        return True

    def _verify(self, slot: Slot, job: Job, token: int, row: int) -> tuple[int, int]:
        """Keep the draft up to the first token the sampler does not choose, and return that token.

        That token is sampled at the row after the last one kept. Returns it and its row. The token
        is -1 when the budget or a cancel ended the answer inside the draft.
        """
        draft = slot.draft
        kept = 0
        for guess in draft:
            if token != guess or job.ends(token):
                break
            kept += 1
            slot.cache.append(token)
            self._emit(job, token, row)
            if job.timings.eval_tokens >= job.budget or job.cancelled:
                break
            row += 1
            token = self._choose(job, row, True)
        try:
            self._slots.drop_draft(slot)
        except LocalrunError as exc:
            self._fail([slot], exc)
            return -1, row
        if job.spec is not None:
            job.spec.settle(draft, kept)
        if job.cancelled:
            self._finish(slot, "cancelled")
            return -1, row
        if job.timings.eval_tokens >= job.budget:
            self._finish(slot, "length")
            return -1, row
        return token, row

    def _emit_end(self, job: Job, token: int, row: int) -> None:
        """Count the token that ends the answer and send its asked-for entry, with no text."""
        job.timings.eval_tokens += 1
        row_logits = self._logits(row)
        entry = logprob_entry(row_logits, self.n_vocab, token, b"", job.logprobs,
                              self._weights.piece_bytes, job.candidates)  # fmt: skip
        try:
            job.sink.piece("", [*job.pending, entry])
            job.pending = []
        except Exception:
            job.cancelled = True

    def _emit(self, job: Job, token: int, row: int) -> None:
        """A generated token: counted, its log-probabilities (from `row`) and text sent."""
        job.timings.eval_tokens += 1
        job.tokens.append(token)
        weights = self._weights
        spelled = job.special or token in job.spell
        raw = weights.token_bytes(token) if spelled else weights.piece_bytes(token)
        if job.logprobs >= 0:
            row_logits = self._logits(row)
            job.pending.append(
                logprob_entry(
                    row_logits,
                    self.n_vocab,
                    token,
                    raw,
                    job.logprobs,
                    weights.piece_bytes,
                    job.candidates,
                )
            )
        text = job.decoder.decode(raw)
        if text:
            # Before the decode of this token: the reader sees it a decode sooner.
            try:
                if job.pending:
                    job.sink.piece(text, job.pending)
                    job.pending = []
                else:
                    job.sink.piece(text)
            except Exception:
                job.cancelled = True  # a sink that fails has no reader left
