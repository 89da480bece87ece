"""The sequences' memory of one context, and checkpoints of the part that cannot be cut.

A per-position KV cache (most models) cuts a sequence back to any prefix of it. A recurrent state
holds the last position only: Mamba, RWKV, and the one a hybrid model keeps beside its attention KV
(LFM2, Granite 4, Qwen3.5, Qwen3-Next, Falcon-H1, Nemotron-H, Jamba). A sliding-window model's local
layers (Gemma 2 and 3, gpt-oss, Cohere 2) keep the last window of positions only. Cut back past what
they hold, those would read the sequence again from the start. So a slot keeps checkpoints of that
part alone (LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY); the per-position rest is cut as usual. They are
taken before the chat template's tail at a prompt's end (SeqMemory.closing), every `every` tokens of
a long prompt, and before a recurrent state's draft is verified (engine.answering). A cut restores
the checkpoint that keeps the most of the prefix. A slot's checkpoints are bounded by
LOCALRUN_CHECKPOINTS and LOCALRUN_CHECKPOINT_MAX_BYTES. A checkpoint llama.cpp refuses (a size
mismatch, a damaged copy) is dropped with a log line. The sequence is then read from the start: the
answer is the same, only later.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from localrun.engine.library import native
from localrun.engine.library.native import lc
from localrun.gguf import memory

log = logging.getLogger("localrun.engine")

PARTIAL = 1  # LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY: the recurrent (or window) part of the memory
# PARTIAL as llama_cpp types the flags argument (ctypes passes either alike).
_PARTIAL = lc.llama_state_seq_flags(PARTIAL)
# The prompt's last tokens where a chat template's tail (the end of the last message and the
# opening of the answer) is looked for.
TAIL = 16


class Holder(Protocol):
    """A slot, as far as its memory goes (engine.slots.Slot)."""

    seq: int
    cache: list[int]
    marks: list[Checkpoint]


@dataclass(frozen=True)
class Policy:
    """Where and how many checkpoints a slot keeps (settings/limits: LOCALRUN_CHECKPOINT_*)."""

    every: int = memory.EVERY  # tokens between two checkpoints of one prompt
    count: int = memory.COUNT  # at most this many a slot
    max_bytes: int = memory.MAX_BYTES  # at most this many bytes a slot

    def describe(self, kind: str, window: int = 0) -> str:
        """What the prompt cache does for a model whose memory is `kind` (`run --verbose`)."""
        return memory.describe(kind, window, self.every, self.count, self.max_bytes)


class Checkpoint:
    """The recurrent state (or window cache) of a sequence holding its first `n` tokens.

    It restores the sequence to any length from `low` to `upto`: a recurrent state to `n`
    alone, a window's cache to n - 1 too (its window before that is there: the last token is
    cut). `upto` is less than `n` once the sequence it was taken from was cut and went on with
    other tokens: those past `upto` are not the slot's any more."""

    __slots__ = ("data", "last", "low", "n", "upto")

    def __init__(
        self,
        n: int,
        data: Any,
        low: int | None = None,
        upto: int | None = None,
        last: int = -1,
    ) -> None:
        self.n = n
        self.data = data  # a ctypes byte array, handed to llama.cpp as it is
        self.low = n if low is None else low
        self.upto = n if upto is None else upto
        self.last = last  # the token at n - 1 when it was taken (-1: not known)

    @property
    def size(self) -> int:
        return len(self.data)

    def serves(self, keep: int) -> int:
        """The most of the first `keep` tokens it restores (0: none)."""
        at = min(keep, self.upto)
        return at if at >= self.low else 0


def trimmed(marks: list[Checkpoint], keep: int) -> list[Checkpoint]:
    """Return `marks` for a sequence that keeps its first `keep` tokens and goes on with others.

    Each restores no further than `keep`; one that cannot restore that far back is dropped.
    """
    kept = []
    for mark in marks:
        if mark.upto <= keep:
            kept.append(mark)
        elif mark.low <= keep:
            kept.append(Checkpoint(mark.n, mark.data, mark.low, keep, mark.last))
    return kept


class SeqMemory:
    """The memory of a context's sequences: cut, copied and checkpointed as the model allows.

    `kind` is "positions", "window", "recurrent" or "hybrid" (engine.weights.Weights.memory).
    """

    def __init__(self, ctx: Any, kind: str, policy: Policy, window: int = 0) -> None:
        self.ctx = ctx
        self.handle = native.memory(ctx)
        self.kind = kind
        self.policy = policy
        self.window = window  # a sliding window's tokens ("window")
        self.checkpointed = kind != "positions"
        # A recurrent state cannot drop a rejected draft: it rewinds to a checkpoint taken
        # before the draft's batch. A window's cache drops it as a per-position one does.
        self.rewinds = kind in ("recurrent", "hybrid")
        # Checkpoints taken, restored (a prompt), rewound to (a draft) and refused.
        self.taken = 0
        self.restored = 0
        self.refused = 0
        self.rewound = 0

    # -- what a slot can keep ------------------------------------------------------------------

    def usable(self, slot: Holder, keep: int) -> int:
        """How many of the `keep` leading tokens `slot` holds can stay without reading them."""
        if not self.checkpointed or keep >= len(slot.cache) or self._covers(slot.seq, keep):
            return keep
        return max((m.serves(keep) for m in slot.marks), default=0)

    def _covers(self, seq: int, keep: int) -> bool:
        """Whether a sliding window's cache still holds the window before position `keep`.

        It keeps the last positions only: cut further back, the tokens before are gone.
        """
        if self.kind != "window":
            return False
        return int(lc.llama_memory_seq_pos_min(self.handle, seq)) <= max(0, keep - self.window)

    def cut(self, slot: Holder, keep: int) -> None:
        """Cut `slot`'s sequence to its first `keep` tokens, or to the latest checkpoint before.

        The slot's cache says which; the rest is read again.
        """
        cache = slot.cache
        if keep <= 0:
            # Always: a failed batch may have left positions that the cache does not list.
            lc.llama_memory_seq_rm(self.handle, slot.seq, -1, -1)
            cache.clear()
            slot.marks = []
            return
        if keep >= len(cache):
            return
        if not self.checkpointed or self._covers(slot.seq, keep):
            if lc.llama_memory_seq_rm(self.handle, slot.seq, keep, -1):
                del cache[keep:]
                slot.marks = trimmed(slot.marks, keep)
                return
            keep = 0  # not expected of a per-position cache: read it all again
        else:
            keep = self._restore(slot, slot, keep)
        if keep == 0:
            self.cut(slot, 0)
        del cache[keep:]

    def copy(self, source: Holder, target: Holder, keep: int) -> int:
        """Copy the first `keep` tokens of `source`'s sequence into `target`'s; return its count.

        The whole KV stream is copied at the next decode, then cut: cheaper than reading a long
        prefix again. Where that needs a checkpoint, `target` keeps as many tokens as one holds.

        A window's cache cut further back than it holds would need a checkpoint written into the
        target, and the stream copy still to come would overwrite it: that prefix is read again.
        """
        restores = (
            self.checkpointed and keep < len(source.cache) and not self._covers(source.seq, keep)
        )
        if restores and self.window > 0:
            self.cut(target, 0)
            return 0
        lc.llama_memory_seq_cp(self.handle, source.seq, target.seq, -1, -1)
        target.cache = list(source.cache)
        target.marks = list(source.marks)  # read only: restored, never changed
        if not restores:
            self.cut(target, keep)
            return len(target.cache)
        # A recurrent state is copied at once, and a hybrid's pending attention copy is cut
        # at the checkpoint: the state restored there stays.
        kept = self._restore(source, target, keep)
        if kept == 0:
            self.cut(target, 0)
        del target.cache[kept:]
        return kept

    def _restore(self, source: Holder, target: Holder, keep: int) -> int:
        """Restore into `target` the `source` checkpoint that keeps most of the first `keep` tokens.

        `target`'s sequence is cut there, and checkpoints past it are trimmed: from then on they
        hold other tokens. Returns the tokens it holds (0: none could be used).
        """
        while True:
            mark = max(source.marks, key=lambda m: m.serves(keep), default=None)
            at = mark.serves(keep) if mark is not None else 0
            if mark is None or at == 0:
                return 0
            if self._load(target.seq, mark, at):
                target.marks = trimmed(source.marks, at)
                self.restored += 1
                return at
            source.marks.remove(mark)

    def _load(self, seq: int, mark: Checkpoint, at: int | None = None) -> bool:
        """Put `mark` into sequence `seq`, holding its first `at` tokens then (`mark.n`)."""
        at = mark.n if at is None else at
        seq_id = lc.llama_seq_id(seq)
        n = int(lc.llama_state_seq_set_data_ext(self.ctx, mark.data, mark.size, seq_id, _PARTIAL))
        ok = n == mark.size
        # The rest of the memory (a hybrid's attention KV, a window model's global layers) is
        # per position: cut there (a recurrent state at position n - 1, and a window's cache
        # restored up to it, take the cut from `at` on: a window's, before n too).
        ok = ok and bool(lc.llama_memory_seq_rm(self.handle, seq, at, -1))
        ok = ok and int(lc.llama_memory_seq_pos_max(self.handle, seq)) == at - 1
        if not ok:
            self.refused += 1
            log.warning(
                "a checkpoint of %d tokens (%d bytes) was refused; the prompt is read again",
                mark.n,
                mark.size,
            )
        return ok

    # -- taking checkpoints --------------------------------------------------------------------

    def snapshot(self, seq: int, n: int, last: int = -1) -> Checkpoint | None:
        """A checkpoint of sequence `seq`, which holds `n` tokens; None if llama.cpp gives none."""
        seq_id = lc.llama_seq_id(seq)
        size = int(lc.llama_state_seq_get_size_ext(self.ctx, seq_id, _PARTIAL))
        if size <= 0:
            return None
        data = (ctypes.c_uint8 * size)()
        if int(lc.llama_state_seq_get_data_ext(self.ctx, data, size, seq_id, _PARTIAL)) != size:
            return None
        self.taken += 1
        # A recurrent state holds n tokens and no other number. llama.cpp writes a window's
        # cells within the window of the last position only (a standard window's last
        # `window`, a chunked one's chunk): enough to read the last token again, no more.
        return Checkpoint(n, data, n - 1 if self.kind == "window" else n, last=last)

    def length(self, seq: int) -> int:
        """The positions sequence `seq` holds (a recurrent state: the tokens it has read)."""
        return int(lc.llama_memory_seq_pos_max(self.handle, seq)) + 1

    def drop_after(self, seq: int, n: int) -> None:
        """Drop the positions of a per-position sequence from `n` on (a draft's)."""
        lc.llama_memory_seq_rm(self.handle, seq, n, -1)

    def rewind(self, slot: Holder, mark: Checkpoint) -> bool:
        """Put `slot`'s sequence back to `mark`, for a rejected draft.

        False when that failed; the sequence is then empty.
        """
        if self._load(slot.seq, mark):
            self.rewound += 1
            return True
        self.cut(slot, 0)
        return False

    def closing(self, prompt: Sequence[int], control: Callable[[int], bool]) -> int:
        r"""Return where the checkpoint a prompt ends with is taken.

        It goes before the chat template's tail: the first control token among the prompt's last
        TAIL tokens (`<|im_end|>\n<|im_start|>assistant\n`). Without a tail, a recurrent state takes
        it one token before the end: the last token is read again for its logits. A window's cache
        takes it at the end and restores one token less (Checkpoint.low).
        """
        # Before the tail, as llama-server's checkpoints a few tokens before the end: the same
        # prompt again (a regenerated answer, OpenAI's `n`, a client's retry) reads from there.
        # So do the last message edited near its end, a last answer the template renders
        # otherwise (reasoning dropped, white space trimmed), and an earlier message edited at
        # its end.
        end = len(prompt)
        if not self.checkpointed:
            return end
        for at in range(max(1, end - TAIL), end):
            if control(prompt[at]):
                return at
        return end if self.kind == "window" else end - 1

    def wants(self, slot: Holder, n: int, end: int, closing: int) -> bool:
        """Whether a sequence holding `n` of a prompt's `end` tokens keeps a checkpoint now.

        It does at `closing` (see `closing`), unless one already restores there (the same prompt
        again). It does too `every` tokens past the last one, so an edit further back reads from the
        checkpoint before it.
        """
        if not self.checkpointed or self.policy.count == 0 or n <= 0 or n > end:
            return False
        if n == closing:
            marks = slot.marks
            for i, m in enumerate(marks):  # cut one token back, and the same token read again
                if m.n == n and m.upto == n - 1 and m.last == slot.cache[n - 1]:
                    marks[i] = Checkpoint(m.n, m.data, m.low, n, m.last)
            return all(m.serves(n) < n for m in marks)
        last = max((m.n for m in slot.marks), default=0)
        return n < end and n - last >= self.policy.every

    def next_stop(self, slot: Holder, n: int, end: int, closing: int) -> int:
        """Where a prompt chunk from `n` must stop so that a checkpoint is taken there."""
        if not self.checkpointed or self.policy.count == 0 or end - n <= 1:
            return end
        stop = closing if closing > n else end
        last = max((m.n for m in slot.marks if m.n <= n), default=0)
        spaced = last + self.policy.every
        return min(stop, spaced) if spaced > n else stop

    def keep(self, slot: Holder) -> None:
        """Take a checkpoint of `slot`'s sequence as it is now, within the slot's bounds."""
        n = len(slot.cache)
        mark = self.snapshot(slot.seq, n, slot.cache[-1] if n else -1)
        if mark is None:
            return
        marks = [m for m in slot.marks if m.n != n]
        marks.append(mark)
        marks.sort(key=_by_n)
        policy = self.policy
        while len(marks) > 1 and (
            len(marks) > policy.count or sum(m.size for m in marks) > policy.max_bytes
        ):
            marks.remove(_least_missed(marks))
        # The newest is kept whatever its size, even alone past max_bytes: the next turn starts
        # there, and a model's window or state may be larger than the bound.
        slot.marks = marks


def _by_n(mark: Checkpoint) -> int:
    return mark.n


def _least_missed(marks: list[Checkpoint]) -> Checkpoint:
    """The checkpoint whose loss leaves its neighbours the smallest gap, never the newest.

    The next turn continues from the newest.
    """
    if len(marks) < 3:
        return marks[0]
    inner = range(1, len(marks) - 1)
    best = min(inner, key=lambda i: marks[i + 1].n - marks[i - 1].n)
    return marks[best]
