"""The loop's llama_batch: the rows one step decodes, written for every active slot.

A generating slot writes its sampled token and its draft, each with logits; forced text has
logits at its last row alone. Before them come the tokens a rewound recurrent state reads again
(engine.checkpoints). A slot reading its prompt writes the next chunk of it, with logits for the
prompt's last token only. The chunk stops at the room the batch has, the end of the cached prefix
(saved once it is in), a recurrent state's next checkpoint, or the next image or audio (which the
engine evaluates on its own). A prompt being scored (engine.scoring) has logits at every row, a
bounded number of rows a step. Each slot's `row` says where its logits are, `first` where its prompt
chunk starts.
"""

from __future__ import annotations

from collections.abc import Callable

from localrun.engine.library.native import lc
from localrun.engine.scoring import score_rows, scored_chunk
from localrun.engine.slots import Slot, Slots


class StepBatch:
    """One llama_batch of `n_batch` rows, made once; each step rewrites it."""

    def __init__(self, n_batch: int, n_vocab: int) -> None:
        self.n_batch = n_batch
        self.score_rows = score_rows(n_batch, n_vocab)  # a scored prompt's rows a step
        self.batch = batch = lc.llama_batch_init(n_batch, 0, 1)
        # Pointer objects made once: the loop only writes through them.
        self._tokens = batch.token
        self._pos = batch.pos
        self._logits = batch.logits
        self._seq_ids = [batch.seq_id[i] for i in range(n_batch)]
        self.prompt_rows = 0  # of the last fill: rows of prompts (without logits, but the last)
        for i in range(n_batch):
            batch.n_seq_id[i] = 1

    def free(self) -> None:
        lc.llama_batch_free(self.batch)

    def fill(self, slots: Slots) -> int:
        """Write the batch for every active slot and return the rows written.

        Each generating slot writes its token (and its draft, as room allows); then the slots
        reading their prompt write chunks of it.
        """
        active = slots.active
        # A recurrent state keeps a row for what a rewind may read again next step.
        extra = 2 if slots.memory.rewinds else 1
        room = self.n_batch - sum(extra + len(s.replay) for s in active if s.token >= 0)
        # A prompt being read comes before guesses: its rows are never wasted and a guess's row
        # costs as much, so while one is read (a request arriving among busy streams) the
        # generating slots decode their token alone and the prompt's first token comes sooner.
        guesses = 0 if any(s.token < 0 for s in active) else room
        for slot in active:  # drafts take what room the batch has, first come
            if slot.token >= 0 and slot.draft:
                del slot.draft[max(0, guesses) :]
                guesses -= len(slot.draft)
                room -= len(slot.draft)
        n = 0
        self.prompt_rows = 0
        for slot in active:
            if slot.leader is not None and not slots.follow(slot):
                slot.added, slot.row = 0, -1
                continue  # its leader is still reading the prompt
            if slot.token >= 0:
                n = self.put_token(slot, n)
            else:
                n, room = self.put_prompt(slot, n, room, slots.memory.next_stop)
        return n

    def put_token(self, slot: Slot, n: int) -> int:
        """Write a generating slot's rows: its token and its draft, each with logits.

        The text its grammar forces (engine.answering) is taken without sampling, so only its last
        row has logits, unless the request asked for each token's log-probabilities. The guesses
        after it have theirs.
        """
        tokens, pos, logits, seq_ids = self._tokens, self._pos, self._logits, self._seq_ids
        seq = slot.seq
        rows = (slot.token, *slot.draft) if slot.draft else (slot.token,)
        job = slot.job
        forced = job.forcing if job is not None and job.logprobs < 0 else 0
        blind = min(forced, len(rows) - 1)  # a guess after the forced text has its logits
        if slot.replay:  # read again, before the token, without logits
            rows = (*slot.replay, *rows)
            blind += len(slot.replay)
        slot.row = n + blind
        at = len(slot.cache)
        for i, t in enumerate(rows):
            tokens[n] = t
            pos[n] = at
            seq_ids[n][0] = seq
            logits[n] = 0 if i < blind else 1
            n += 1
            at += 1
        return n

    def put_prompt(
        self, slot: Slot, n: int, room: int, stop: Callable[[Slot, int, int, int], int]
    ) -> tuple[int, int]:
        job = slot.job
        assert job is not None
        prompt = job.prompt
        done = len(slot.cache)
        scored = int(job.scores >= 0)  # every row has logits: a bounded chunk
        # A scored prompt, or one read over candidates, is read in chunks as long as it may (no
        # stop for a checkpoint): the installed llama.cpp computes a short batch unlike a long
        # one (engine.scoring), and the numbers read must not depend on where it stopped.
        whole = scored or bool(job.candidates)
        end = len(prompt) if whole else stop(slot, done, len(prompt), job.closing)
        take = min(end - done, room)
        if job.media is not None:  # up to the next medium (the engine evaluates it)
            take = min(take, job.media.next_span(done) - done)
        if job.save and done < len(job.prefix):
            take = min(take, len(job.prefix) - done)  # saved once it is in
        if scored:
            take = scored_chunk(take, self.score_rows, len(prompt) - done)
        slot.added = take
        slot.first = n
        slot.row = -1
        if take <= 0:
            return n, room
        self.prompt_rows += take
        tokens, pos, logits, seq_ids = self._tokens, self._pos, self._logits, self._seq_ids
        seq = slot.seq
        for p in range(done, done + take):
            tokens[n] = prompt[p]
            pos[n] = p
            seq_ids[n][0] = seq
            logits[n] = scored
            n += 1
        if done + take == len(prompt):
            logits[n - 1] = 1
            slot.row = n - 1
        return n, room - take
