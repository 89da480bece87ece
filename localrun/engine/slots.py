"""The engine's slots and the requests they serve, and which slot a new request takes.

A slot is one KV sequence of the context, with the tokens it holds. A new request goes to the free
slot sharing the longest prefix with its prompt, so the turns of one conversation re-read only what
is new. A long prefix another slot holds is copied rather than read again. A request whose prompt
another slot is reading right now waits for it and copies its KV (OpenAI's `n`, or clients sharing a
long system prompt at once).
"""

from __future__ import annotations

import codecs
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

from localrun.engine.checkpoints import Checkpoint, SeqMemory
from localrun.engine.media import MediaPrompt, Projector
from localrun.engine.sampling.sampler import Sampler
from localrun.engine.speculation import speculator as speculate
from localrun.engine.types import Sink, Timings, reusable
from localrun.errors import EngineError

# A prompt may drop this many tokens of a cache and still continue its conversation (a
# re-rendered template may tokenize the end of the last answer differently).
LOSS_TOLERATED = 16
# A shared prefix at least this long is copied into another slot rather than re-read.
COPY_MIN = 64
# A slot's `row` when it samples from the logits it kept of its prompt's last token (`held`).
HELD = -2


class Job:
    """A submitted generation: its prompt, sampler, budget, sink and what it has made."""

    __slots__ = (
        "budget",
        "cancelled",
        "candidates",
        "closing",
        "decoder",
        "ends",
        "forcing",
        "limit",
        "logprobs",
        "logprobs_end",
        "media",
        "memory",
        "pending",
        "prefix",
        "prompt",
        "resumed",
        "sampler",
        "save",
        "scores",
        "sink",
        "spec",
        "special",
        "spell",
        "start",
        "state",
        "stop_tokens",
        "submitted",
        "timings",
        "tokens",
    )

    def __init__(
        self, prompt: list[int], stop_tokens: frozenset[int], sink: Sink, budget: int, limit: int
    ) -> None:
        self.prompt = prompt
        self.stop_tokens = stop_tokens
        self.sink = sink
        self.limit = limit  # the request's context, where its answer ends (SamplingOptions.within)
        # Whether a token ends the answer (end of generation, or a stop token).
        self.ends: Callable[[int], bool] = lambda token: token in stop_tokens
        # Where the prompt's last checkpoint is taken (checkpoints.SeqMemory.closing).
        self.closing = len(prompt)
        self.sampler: Sampler | None = None
        self.media: MediaPrompt | None = None  # the prompt's images and audio
        self.budget = budget
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.timings = Timings()
        self.tokens: list[int] = []
        self.memory: str | None = (
            None  # whom the answer is remembered for (engine.speculation.answers)
        )
        self.submitted = time.perf_counter()
        self.start = 0.0
        self.cancelled = False
        self.logprobs = -1  # alternatives per token asked for (-1: no log-probabilities)
        self.logprobs_end = False  # the entry of the token that ends the answer, too
        self.candidates: tuple[int, ...] = ()  # tokens each entry also carries (SamplingOptions)
        self.scores = -1  # alternatives per prompt token (-1: the prompt is not scored)
        self.special = False  # special tokens are spelled out in the answer
        self.spell: frozenset[int] = frozenset()  # these special tokens spelled out
        self.pending: list[dict[str, Any]] = []  # entries whose text is not out yet
        self.spec: speculate.Speculator | None = None
        self.forcing = 0  # the draft's first tokens that its grammar forces (not guesses)
        # The model's own turns at the start of the prompt (for the disk prompt cache), their
        # saved KV state read from disk, and whether to save it once they are evaluated.
        self.prefix: list[int] = []
        self.state: bytearray | None = None
        self.save = False
        self.resumed = False  # the prefix is a conversation an earlier process left on disk

    def free(self) -> None:
        if self.spec is not None:
            self.timings.draft_tokens = self.spec.drafted
            self.timings.draft_accepted = self.spec.accepted
        if self.sampler is not None:
            self.sampler.free()
        if self.media is not None:
            self.media.free()


class Slot:
    __slots__ = (
        "added",
        "cache",
        "continued",
        "draft",
        "first",
        "held",
        "job",
        "leader",
        "logits",
        "logits_of",
        "marks",
        "replay",
        "rewind",
        "row",
        "seq",
        "token",
        "used",
    )

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.cache: list[int] = []  # the tokens at positions 0.. of this slot's KV sequence
        self.job: Job | None = None
        self.token = -1  # the sampled token still to be decoded (-1: reading the prompt)
        self.draft: list[int] = []  # tokens guessed to follow `token`, decoded with it
        # The batch row whose logits this slot samples from (-1: none; HELD: `logits`).
        self.row = -1
        self.added = 0  # prompt tokens put into the current batch
        self.first = -1  # the batch row of the first of them
        self.used = 0  # when it last took a request, for least-recently-used reuse
        # A slot reading the same prompt right now: this one waits and copies its KV (n > 1).
        self.leader: Slot | None = None
        # A recurrent state's checkpoints (engine.checkpoints), the one taken before the draft
        # in the batch, and the answer's tokens to read again after a rejected draft rewound it.
        self.marks: list[Checkpoint] = []
        # Its last request continued a conversation it held: kept on disk at close.
        self.continued = False
        self.rewind: Checkpoint | None = None
        self.replay: list[int] = []
        # The logits of the last token of the last prompt it read whole (`logits_of`): a
        # request for the same prompt again (a regenerate, a retry) samples its first token
        # from them and reads nothing (`held`, until it has; engine.batch).
        self.logits: Any = None
        self.logits_of: list[int] | None = None
        self.held = False


def _longest_then_lru(item: tuple[Slot, int]) -> tuple[int, int]:
    slot, keep = item
    return keep, -slot.used


def _from_disk(job: Job) -> int:
    """The prefix `job` restores from the disk prompt cache, read already (0: none)."""
    return len(job.prefix) if job.state is not None else 0


def _least_wanted(slot: Slot) -> tuple[bool, int]:
    """Free slots in the order their caches matter least: empty ones, then the oldest."""
    return bool(slot.cache), slot.used


class Slots:
    """The slots of one context, used on the engine's loop thread alone.

    `active` holds those with a job, in sequence order: llama.cpp splits a batch by ascending
    sequence ids.
    """

    def __init__(self, memory: SeqMemory, n: int) -> None:
        self.memory = memory
        self.all = [Slot(seq) for seq in range(n)]
        self.active: list[Slot] = []
        self._uses = itertools.count(1)

    def free(self) -> list[Slot]:
        return [slot for slot in self.all if slot.job is None]

    def place(self, job: Job) -> Slot:
        """The free slot `job` takes, its KV cut (or copied) to what the job can reuse.

        The free slot whose cache shares the longest prefix with the prompt is reused when the
        prompt continues or repeats that cache, or drops only a little of it (a re-rendered
        template may tokenize the end of the last answer differently). When the two part ways
        (another conversation that starts alike, e.g. with the same system prompt) that cache
        is left for its own next turn: the request takes the least recently used free slot,
        copying the shared prefix there first when it is long enough to be worth a copy.
        """
        prompt = job.prompt
        free = self.free()
        if job.scores >= 0 or job.candidates:
            # Its prompt is read whole, for every row's logits (engine.scoring), or read over
            # candidates, whose numbers must not depend on what the cache held (the same rows
            # read in other batches sum in another order): on the slot whose cache matters
            # least, emptied; no other slot's cache is touched.
            slot = min(free, key=_least_wanted)
            self.memory.cut(slot, 0)
            return slot
        held = self._held(job, free)
        if held is not None:
            return held
        usable = self.memory.usable
        # Ties go to the least recently used slot.
        best, keep = max(
            ((s, usable(s, reusable(s.cache, prompt))) for s in free), key=_longest_then_lru
        )
        shared = self._share(job, free, keep)
        if shared is not None:
            return shared
        slot = best
        lost = len(best.cache) - keep
        if lost > LOSS_TOLERATED and keep < len(prompt) - 1 and len(free) > 1:
            spare = min((s for s in free if s is not best), key=_least_wanted)
            # Not when a longer prefix comes from disk: the copy, made at the next decode,
            # would overwrite the state restored before it.
            if keep >= max(COPY_MIN, _from_disk(job)):
                # A whole KV stream is copied (at the next decode): cheaper than re-reading
                # a long prefix.
                self.memory.copy(best, spare, keep)
            else:
                keep = reusable(spare.cache, prompt)
            slot = spare
        self.memory.cut(slot, keep)
        return slot

    def _held(self, job: Job, free: list[Slot]) -> Slot | None:
        """A free slot holding `job`'s whole prompt and its last token's logits, or None.

        The slot is cut to the prompt, its answer dropped. llama-server reads a prompt's last token
        again for its logits; a kept copy of them spares that decode. They are the logits the slot's
        last answer began from, so the first token is that answer's where the sampling is the same.
        (With the installed library, a one-token decode's logits may differ from a prompt batch's in
        their last bits.)
        """
        prompt = job.prompt
        n = len(prompt)
        if job.media is not None or n == 0:
            return None
        for slot in free:
            if slot.logits_of != prompt or len(slot.cache) < n or slot.cache[:n] != prompt:
                continue
            if self.memory.usable(slot, n) != n:
                continue  # the memory cannot go back to exactly the prompt's end
            self.memory.cut(slot, n)
            if len(slot.cache) == n:
                slot.held = True
                return slot
        return None

    def _share(self, job: Job, free: list[Slot], keep: int) -> Slot | None:
        """A free slot reusing the prompt KV of a busy slot, or None: one prompt is read once.

        A busy slot that holds more of the prompt than any free one is copied into the free
        slot whose cache matters least; one that is reading the same prompt now is waited for
        (`leader`: this slot reads nothing until that prompt is in, then copies it).
        """
        prompt = job.prompt
        last = len(prompt) - 1
        spare = min(free, key=_least_wanted)
        for busy in self.active:
            other = busy.job
            if other is None or busy.leader is not None or busy.token >= 0:
                continue
            if other.prompt == prompt and len(busy.cache) < last and last >= 1:
                self.memory.cut(spare, 0)
                spare.leader = busy
                return spare
        usable = self.memory.usable
        donor, shared = max(
            ((s, usable(s, reusable(s.cache, prompt))) for s in self.active if s.leader is None),
            key=_longest_then_lru,
            default=(None, 0),
        )
        if donor is None or shared <= max(keep, _from_disk(job)):
            return None
        if shared < COPY_MIN and shared < last:
            return None
        self.copy(donor, spare, shared)
        return spare

    def copy(self, source: Slot, target: Slot, keep: int) -> int:
        """Copy the first `keep` tokens of `source`'s KV into `target`; return what it holds.

        A whole KV stream is copied at the next decode, then trimmed: cheaper than reading a long
        prefix again. `target` holds fewer where a window cannot be copied so far back.
        """
        return self.memory.copy(source, target, keep)

    def follow(self, slot: Slot) -> bool:
        """Whether a slot waiting for its leader's prompt can read on.

        It can once the prompt is in and copied, or once the leader gave up on it: this slot then
        reads it alone.
        """
        leader, job = slot.leader, slot.job
        assert leader is not None and job is not None
        last = len(job.prompt) - 1
        reading = leader.job is not None and leader.token < 0 and len(leader.cache) < last
        if reading and leader.job is not None and leader.job.prompt == job.prompt:
            return False
        slot.leader = None
        if leader.cache[:last] == job.prompt[:last]:
            kept = self.copy(leader, slot, last)
            job.timings.cached_tokens = kept
            job.timings.prompt_tokens = len(job.prompt) - kept
        return True

    def activate(self, slot: Slot, job: Job) -> None:
        slot.job = job
        slot.token = -1
        slot.used = next(self._uses)
        self.active.append(slot)
        self.active.sort(key=lambda s: s.seq)

    def drop_draft(self, slot: Slot) -> None:
        """Forget the draft tokens the KV sequence holds past the slot's cache.

        A recurrent state cannot drop them: it goes back to the checkpoint taken before the batch.
        The answer's tokens since are read again with the next one (`replay`).
        """
        mark, slot.rewind = slot.rewind, None
        draft, slot.draft = slot.draft, []
        if not draft:
            return
        if mark is None:
            self.memory.drop_after(slot.seq, len(slot.cache))
        elif self.memory.length(slot.seq) > len(slot.cache):  # not every guess was kept
            self._rewind(slot, mark)

    def _rewind(self, slot: Slot, mark: Checkpoint) -> None:
        """Go back to `mark`; the answer's tokens since are to be read again.

        It raises EngineError, with the slot emptied, if llama.cpp refused it.
        """
        if not self.memory.rewind(slot, mark):
            slot.replay = []
            raise EngineError("llama.cpp refused the state taken before a draft")
        slot.replay = slot.cache[mark.n :]
        del slot.cache[mark.n :]

    def release(self, slot: Slot, *, forget: bool = False) -> Job:
        """Take the job off `slot`; with `forget`, its KV too (it may be half-written)."""
        job = slot.job
        assert job is not None
        if forget:
            self.memory.cut(slot, 0)
            slot.draft = []
            slot.rewind = None
        else:
            try:
                self.drop_draft(slot)
            except EngineError:  # the answer is whole: only the slot's state is lost
                self.memory.cut(slot, 0)
        slot.replay = []  # the state holds the cache: what was to be read again is not kept
        slot.held = False
        slot.job = None
        slot.token = -1
        slot.leader = None
        self.active.remove(slot)
        return job

    def forget_idle(self) -> None:
        """Empty the KV of every slot without a job."""
        for slot in self.all:
            if slot.job is None:
                self.memory.cut(slot, 0)

    def holds(self, prefix: Sequence[int]) -> bool:
        """Whether a slot holds `prefix` already (read off the loop thread: only a guess)."""
        n = len(prefix)
        return any(s.cache[:n] == prefix for s in self.all)


def read_media(
    slots: Slots,
    projector: Projector,
    ctx: Any,
    n_batch: int,
    fail: Callable[[list[Slot], EngineError], None],
) -> None:
    """Evaluate the medium of each slot whose prompt has come to an image or audio.

    It goes into the slot's sequence in a llama_decode of its own (embeddings, not tokens).
    `fail` ends a slot it failed for.
    """
    for slot in list(slots.active):
        job = slot.job
        if job is None or job.media is None or slot.token >= 0 or slot.leader is not None:
            continue
        span = job.media.spans.get(len(slot.cache))
        while span is not None:
            done = len(slot.cache)
            try:
                projector.evaluate(ctx, span, done, slot.seq, n_batch)
            except EngineError as exc:
                fail([slot], exc)
                break
            slot.cache.extend(job.prompt[done : done + span.length])
            span = job.media.spans.get(len(slot.cache))


class Ticket:
    """A submitted request."""

    __slots__ = ("_cancel",)

    def __init__(self, cancel: Callable[[], None]) -> None:
        self._cancel = cancel

    def cancel(self) -> None:
        """Stop the request within a token; its sink gets done("cancelled"). Idempotent."""
        self._cancel()


def unbound(history: Sequence[int], limit: int) -> list[int]:
    """A draft model's drafter before the request has a slot (and so a sequence)."""
    return []
