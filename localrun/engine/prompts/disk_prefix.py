"""The engine's side of the disk prompt cache (engine.prompts.disk_cache).

It picks which prefix of a request is read from disk, puts it into the slot, and saves it once
evaluated. A closing engine leaves its slots' conversations there for the next process.

Two kinds of prefix go to disk. The model's own turns (SYSTEM, MESSAGEs, a client's system prompt)
are saved once evaluated and restored by the next process. And when an engine closes (a server
stopped or restarted, a `localrun run` chat ended, a model unloaded), what each slot holds is saved.
The next process finds the longest entry a prompt continues and reads only what is new. This holds
for every memory: a recurrent state is saved at the prefix's end (engine.checkpoints).
"""

from __future__ import annotations

import contextlib
from typing import Any

from localrun.engine import checkpoints
from localrun.engine.media import MediaPrompt
from localrun.engine.prompts import disk_cache as prompt_cache
from localrun.engine.slots import Job, Slot, Slots
from localrun.engine.types import reusable
from localrun.engine.weights import Weights


class DiskPrefixes:
    """The disk prompt cache of one engine's context (`cache` None: turned off)."""

    def __init__(self, weights: Weights, cache: prompt_cache.PromptCache | None) -> None:
        self.weights = weights
        self.cache = cache

    def prepare(self, job: Job, slots: Slots, cache_prefix: int, media: MediaPrompt | None) -> None:
        """Read the prefix `job` may restore now, off the loop.

        The loop decides whether to use it: a slot may hold it by then.
        """
        disk = self.cache
        if disk is None:
            return
        prompt = job.prompt
        if media is not None and media.spans:  # a prefix with media is not kept on disk
            cache_prefix = min(cache_prefix, min(media.spans))
        bound = self.weights.state_bound
        if prompt_cache.MIN_TOKENS <= cache_prefix < len(prompt):
            job.prefix = prompt[:cache_prefix]
            if not slots.holds(job.prefix):
                job.state = disk.load(job.prefix, bound(len(job.prefix)))
        if media is not None:
            return
        # A conversation an earlier process held when it closed: worth a file when it holds
        # more than any slot does and more than the model's turns.
        # Copies: the loop thread cuts the lists meanwhile.
        held = max((reusable(s.cache[:], prompt) for s in slots.all), default=0)
        if job.state is not None:
            held = max(held, len(job.prefix))
        if len(prompt) - held <= prompt_cache.MIN_TOKENS:
            return  # reading the rest costs less than a file
        found = disk.longest(prompt, bound)
        if found is not None and found[0] > held:
            job.prefix = prompt[: found[0]]
            job.state = found[1]
            job.resumed = True

    def restore(self, ctx: Any, slot: Slot, job: Job, keep: int) -> int:
        """Put the job's prefix into `slot` from disk, or mark it to be saved once evaluated.

        Returns the tokens the slot now holds.
        """
        disk = self.cache
        assert disk is not None
        if job.state is not None and self.weights.restore_state(
            ctx, slot.seq, disk, job.prefix, job.state
        ):
            slot.cache = list(job.prefix)
            slot.marks = checkpoints.trimmed(slot.marks, keep)  # the same tokens before
            job.timings.disk_tokens = len(job.prefix)
            return len(job.prefix)
        if job.state is not None:  # refused: the sequence was emptied
            slot.cache = []
            slot.marks = []
            keep = 0
        job.save = True
        return keep

    def saved(self, ctx: Any, slot: Slot, job: Job) -> None:
        """After a prompt chunk: the prefix to save is in, saved (once)."""
        if job.save and len(slot.cache) == len(job.prefix):
            job.save = False
            assert self.cache is not None
            self.weights.save_state(ctx, slot.seq, self.cache, job.prefix)

    @staticmethod
    def mark(slot: Slot, job: Job, keep: int) -> None:
        """Mark whether `slot`, taking `job` with `keep` tokens in place, continues a conversation.

        It does when it holds more of the job than the model's turns, or resumed from disk. What
        such a slot holds is kept on disk at close; a one-shot prompt is not.
        """
        turns = 0 if job.resumed else len(job.prefix)
        slot.continued = job.resumed or keep >= max(turns + 1, prompt_cache.MIN_TOKENS)

    def keep_all(self, ctx: Any, slots: Slots) -> None:
        """At close, save each idle slot that continued a conversation, for the next process."""
        if self.cache is None or ctx is None:
            return
        for slot in slots.all:
            if slot.continued and slot.job is None and len(slot.cache) >= prompt_cache.MIN_TOKENS:
                with contextlib.suppress(Exception):  # a failed save costs the next read only
                    self.weights.save_state(ctx, slot.seq, self.cache, list(slot.cache))

    def flush(self) -> None:
        if self.cache is not None:
            self.cache.flush()
