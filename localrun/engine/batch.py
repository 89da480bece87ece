"""Continuous batching: one llama.cpp context serving several sequences, as llama-server does.

A loop thread owns the context. Each step builds one llama_batch holding the next token of every
slot that is generating plus prompt chunks of slots still reading their prompt, runs one
llama_decode, and samples each slot that needs a token with that slot's own sampler chain (at
the slot's row of the batch's logits). Requests beyond the slots wait FIFO. Every slot keeps
the tokens its KV sequence holds, and a new request goes to the free slot sharing the longest
prefix with its prompt, so the turns of one conversation re-read only what is new.

The per-token work for one active slot is what engine.llama.LlamaModel does (one decode, one
native sample, one token_to_piece) plus a few writes into a preallocated batch: single-stream
decode keeps llama.cpp's speed.

A generating slot may carry a draft (engine.speculate, or the DRAFT model of engine.draft): the
guessed tokens go into the batch after its sampled token, each with logits, and are kept up to
the first one the slot's sampler does not choose; the rest leave its KV sequence.

Results go to a Sink, called on the loop thread; each request gets exactly one done() or
error(). Embeddings (engine.embed) use a second context made on first use, on the caller's
thread.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import functools
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from localrun import prompt_cache
from localrun.engine import speculate
from localrun.engine.embed import Embedder
from localrun.engine.native import lc

if TYPE_CHECKING:
    from localrun.engine.draft import DraftModel
from localrun.engine.llama import (
    GrammarFirst,
    Weights,
    answer_ends,
    grammar_sampler,
    overflow_error,
    sampler_chain,
    trim,
)
from localrun.engine.types import (
    EmbedInput,
    LoadOptions,
    SamplingOptions,
    Sink,
    Timings,
    reusable,
)
from localrun.errors import EngineError, InvalidParameterError, LocalrunError


class Ticket:
    """A submitted request."""

    __slots__ = ("_cancel",)

    def __init__(self, cancel: Callable[[], None]) -> None:
        self._cancel = cancel

    def cancel(self) -> None:
        """Stop the request within a token; its sink gets done("cancelled"). Idempotent."""
        self._cancel()


class _Request:
    __slots__ = (
        "budget",
        "cancelled",
        "chain",
        "decoder",
        "grammar",
        "logprobs",
        "pending",
        "prefix",
        "prompt",
        "sample",
        "save",
        "sink",
        "spec",
        "special",
        "start",
        "state",
        "stop_tokens",
        "submitted",
        "timings",
        "tokens",
    )

    def __init__(
        self, prompt: list[int], stop_tokens: frozenset[int], sink: Sink, budget: int
    ) -> None:
        self.prompt = prompt
        self.stop_tokens = stop_tokens
        self.sink = sink
        self.chain: Any = None
        self.grammar: Any = None
        self.sample: Callable[[Any, Any, int], int] = lc.llama_sampler_sample
        self.budget = budget
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.timings = Timings()
        self.tokens: list[int] = []
        self.submitted = time.perf_counter()
        self.start = 0.0
        self.cancelled = False
        self.logprobs = -1  # alternatives per token asked for (-1: no log-probabilities)
        self.special = False  # special tokens are spelled out in the answer
        self.pending: list[dict[str, Any]] = []  # entries whose text is not out yet
        self.spec: speculate.Speculator | None = None
        # The model's own turns at the start of the prompt (for the disk prompt cache), their
        # saved KV state read from disk, and whether to save it once they are evaluated.
        self.prefix: list[int] = []
        self.state: bytearray | None = None
        self.save = False

    def free(self) -> None:
        if self.spec is not None:
            self.timings.draft_tokens = self.spec.drafted
            self.timings.draft_accepted = self.spec.accepted
        if self.chain is not None:
            lc.llama_sampler_free(self.chain)
            self.chain = None
        if self.grammar is not None:
            lc.llama_sampler_free(self.grammar)
            self.grammar = None


class _Slot:
    __slots__ = ("added", "cache", "draft", "leader", "req", "row", "seq", "token", "used")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.cache: list[int] = []  # the tokens at positions 0.. of this slot's KV sequence
        self.req: _Request | None = None
        self.token = -1  # the sampled token still to be decoded (-1: reading the prompt)
        self.draft: list[int] = []  # tokens guessed to follow `token`, decoded with it
        self.row = -1  # the batch row whose logits this slot samples from (-1: none)
        self.added = 0  # prompt tokens put into the current batch
        self.used = 0  # when it last took a request, for least-recently-used reuse
        # A slot reading the same prompt right now: this one waits and copies its KV (n > 1).
        self.leader: _Slot | None = None


# OpenAI's bound on top_logprobs; it also bounds the work per token.
MAX_TOP_LOGPROBS = 20

# A prompt may drop this many tokens of a cache and still continue its conversation (a
# re-rendered template may tokenize the end of the last answer differently).
_LOSS_TOLERATED = 16
# A shared prefix at least this long is copied into another slot rather than re-read.
_COPY_MIN = 64


def _unbound(history: Sequence[int], limit: int) -> list[int]:
    """A draft model's drafter before the request has a slot (and so a sequence)."""
    return []


def _longest_then_lru(item: tuple[_Slot, int]) -> tuple[int, int]:
    slot, keep = item
    return keep, -slot.used


class BatchEngine:
    """One llama.cpp model and one context serving `slots` sequences, decoded in one batch."""

    def __init__(self, path: str, options: LoadOptions, slots: int) -> None:
        if slots < 1:
            raise InvalidParameterError(f"a batch engine needs at least one slot, not {slots}")
        start = time.perf_counter()
        self.path = path
        self.options = options
        self.n_slots = slots
        self._ctx: Any = None
        self._batch: Any = None
        self._thread: threading.Thread | None = None
        self._released = False
        self._cond = threading.Condition()
        self._closing = False
        self._wake = False  # cancel() or close() wants the loop to take the lock
        self._embed_lock = threading.Lock()
        self._prompt_cache: prompt_cache.PromptCache | None = None
        self._draft: DraftModel | None = None
        weights = self._weights = Weights(path, options)
        self._embedder = Embedder(weights, options)
        try:
            cparams = weights.context_params(options, options.num_ctx * slots)
            cparams.n_seq_max = slots
            # One KV stream per slot: each sequence has its own num_ctx, and a long one cannot
            # crowd out the others.
            cparams.kv_unified = False
            cparams.n_batch = max(options.num_batch, slots)
            self._ctx = weights.context(cparams)
            self.n_ctx = int(lc.llama_n_ctx_seq(self._ctx))  # per slot (padded by llama.cpp)
            self._n_batch = int(lc.llama_n_batch(self._ctx))
            self._memory = lc.llama_get_memory(self._ctx)
            self._batch = lc.llama_batch_init(self._n_batch, 0, 1)
        except BaseException:
            self._release()
            raise
        self.n_ctx_train = weights.n_ctx_train
        self.n_vocab = weights.n_vocab
        self.bos_text = weights.bos_text
        self.eos_text = weights.eos_text
        self.chat_template = weights.chat_template
        self.fim = weights.fim
        batch = self._batch
        # Pointer objects made once: the loop only writes through them.
        self._tokens = batch.token
        self._pos = batch.pos
        self._logits = batch.logits
        self._seq_ids = [batch.seq_id[i] for i in range(self._n_batch)]
        for i in range(self._n_batch):
            batch.n_seq_id[i] = 1
        self._slots = [_Slot(seq) for seq in range(slots)]
        self._active: list[_Slot] = []  # slots with a request, in sequence order
        self._queue: collections.deque[_Request] = collections.deque()
        self._uses = itertools.count(1)
        self._cost = speculate.DecodeCost.for_device(options.num_gpu)
        self._prompt_cache, note = weights.disk_cache(self._ctx, "batch")
        self.prompt_cache_note = note
        from localrun.engine import draft  # it builds on Weights, as this module does

        try:
            self._draft = draft.load(options.draft, options, self.n_ctx, slots)
        except BaseException:
            self._release()
            raise
        self.load_s = time.perf_counter() - start
        self._thread = threading.Thread(target=self._loop, name="localrun-batch", daemon=True)
        self._thread.start()

    # -- tokens -------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return self._weights.tokenize(text, add_special=add_special, parse_special=parse_special)

    def token_ids(self, text: str) -> list[int]:
        """The ids of `text` when it is one special token (e.g. '<|im_end|>'), else []."""
        return self._weights.token_ids(text)

    def token_bytes(self, token: int) -> bytes:
        """One token's bytes, special tokens spelled out; the caller checks the id."""
        return self._weights.token_bytes(token)

    # -- requests -----------------------------------------------------------------------------

    def submit(
        self,
        prompt: Sequence[int],
        sampling: SamplingOptions,
        *,
        stop_tokens: frozenset[int] = frozenset(),
        sink: Sink,
        cache_prefix: int = 0,
    ) -> Ticket:
        """Queue a generation; its output goes to `sink`. Thread-safe.

        Raises at once for an empty prompt, one that does not fit a slot's context
        (ContextOverflowError), a token the vocabulary lacks or a grammar that does not compile.
        """
        if not prompt:
            raise EngineError("the prompt is empty")
        if len(prompt) >= self.n_ctx:
            raise overflow_error(len(prompt), self.n_ctx, self.n_ctx_train)
        if min(prompt) < 0 or max(prompt) >= self.n_vocab:
            # llama.cpp would refuse the whole batch, failing the other slots' requests too.
            raise EngineError("the prompt holds a token id outside the model's vocabulary")
        budget = sampling.num_predict
        if budget < 0:
            budget = self.n_ctx
        req = _Request(list(prompt), stop_tokens, sink, budget)
        req.logprobs = min(sampling.logprobs, MAX_TOP_LOGPROBS)
        req.special = sampling.special
        # The draft model's sequence is the slot's: bound when the request takes one (_take).
        drafter = _unbound if self._draft is not None else None
        req.spec = speculate.speculator(
            sampling.speculate if self._weights.trims else "off",
            req.prompt,
            sampling.draft_num_predict,
            self._cost,
            drafter,
            answer_ends(self._weights.vocab, stop_tokens),
        )
        disk = self._prompt_cache
        if disk is not None and prompt_cache.MIN_TOKENS <= cache_prefix < len(req.prompt):
            req.prefix = req.prompt[:cache_prefix]
            # Read here, off the loop, unless a slot holds the prefix already (racy, but only
            # a guess: the loop decides).
            if not any(s.cache[:cache_prefix] == req.prefix for s in self._slots):
                req.state = disk.load(req.prefix)
        # Samplers are made here, off the loop thread, so a bad grammar fails the caller.
        req.chain = sampler_chain(sampling, self.n_vocab, self.n_ctx)
        try:
            if sampling.grammar:
                req.grammar = grammar_sampler(self._weights.vocab, sampling.grammar)
                req.sample = GrammarFirst(self.n_vocab, req.grammar, req.chain).sample
            with self._cond:
                if self._closing:
                    raise EngineError("the model is being unloaded")
                self._queue.append(req)
                self._cond.notify()
        except BaseException:
            req.free()
            raise
        return Ticket(functools.partial(self._cancel, req))

    def _cancel(self, req: _Request) -> None:
        req.cancelled = True  # read by the loop at every step
        with self._cond:
            self._wake = True
            self._cond.notify()

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while self._next():
                try:
                    self._step()
                except Exception as exc:  # a bug here must fail requests, not hang them
                    self._fail(list(self._active), EngineError(f"the engine failed: {exc!r}"))
        finally:
            with self._cond:
                waiting = list(self._queue)
                self._queue.clear()
            for slot in list(self._active):
                self._finish(slot, "cancelled")
            for req in waiting:
                self._end(req, "cancelled")
            self._release()

    def _next(self) -> bool:
        """Take new requests into free slots (sleeping while there is nothing to do)."""
        if self._active and not self._queue and not self._wake:
            return True  # the common step: no lock taken
        with self._cond:
            while not (self._closing or self._queue or self._active or self._wake):
                self._cond.wait()
            if self._closing:
                return False
            self._wake = False
            dropped = [req for req in self._queue if req.cancelled]
            for req in dropped:
                self._queue.remove(req)
            free = self.n_slots - len(self._active)
            taken = [self._queue.popleft() for _ in range(min(free, len(self._queue)))]
        for req in dropped:
            self._end(req, "cancelled")
        for slot in [s for s in self._active if s.req is not None and s.req.cancelled]:
            self._finish(slot, "cancelled")
        for req in taken:
            self._assign(req)
        return True

    def _assign(self, req: _Request) -> None:
        """Give `req` a free slot, reusing the KV cache of the one that shares most with it.

        The free slot whose cache shares the longest prefix with the prompt is reused when the
        prompt continues or repeats that cache, or drops only a little of it (a re-rendered
        template may tokenize the end of the last answer differently). When the two part ways
        (another conversation that starts alike, e.g. with the same system prompt) that cache
        is left for its own next turn: the request takes the least recently used free slot,
        copying the shared prefix there first when it is long enough to be worth a copy.
        """
        prompt = req.prompt
        free = [slot for slot in self._slots if slot.req is None]
        # Ties go to the least recently used slot.
        best, keep = max(((s, reusable(s.cache, prompt)) for s in free), key=_longest_then_lru)
        if self._share(req, free, keep):
            return
        slot = best
        lost = len(best.cache) - keep
        if lost > _LOSS_TOLERATED and keep < len(prompt) - 1 and len(free) > 1:
            spare = min((s for s in free if s is not best), key=lambda s: (bool(s.cache), s.used))
            if keep >= _COPY_MIN:
                # A whole KV stream is copied (at the next decode): cheaper than re-reading
                # a long prefix.
                lc.llama_memory_seq_cp(self._memory, best.seq, spare.seq, -1, -1)
                spare.cache = list(best.cache)
            else:
                keep = reusable(spare.cache, prompt)
            slot = spare
        trim(self._memory, slot.seq, slot.cache, keep)
        self._take(slot, req)

    def _take(self, slot: _Slot, req: _Request) -> None:
        if req.spec is not None and req.spec.model is not None and self._draft is not None:
            req.spec.model = functools.partial(self._draft.draft, slot.seq)
        keep = len(slot.cache)
        prefix = req.prefix
        if prefix and keep < len(prefix) and slot.leader is None:
            disk = self._prompt_cache
            assert disk is not None
            if req.state is not None and self._weights.restore_state(
                self._ctx, slot.seq, disk, prefix, req.state
            ):
                slot.cache = list(prefix)
                keep = req.timings.disk_tokens = len(prefix)
            else:
                if req.state is not None:  # refused: the sequence was emptied
                    slot.cache = []
                    keep = 0
                req.save = True
        req.state = None
        req.timings.cached_tokens = keep
        req.timings.prompt_tokens = len(req.prompt) - keep
        req.start = time.perf_counter()
        slot.req = req
        slot.token = -1
        slot.used = next(self._uses)
        self._active.append(slot)
        self._active.sort(key=lambda s: s.seq)  # llama.cpp splits by ascending sequence ids

    def _share(self, req: _Request, free: list[_Slot], keep: int) -> bool:
        """Reuse the prompt KV of a slot that is busy: requests with one prompt at once (`n`
        choices, or clients sharing a long system prompt) read it once.

        A busy slot that holds more of the prompt than any free one is copied into the free
        slot whose cache matters least; one that is reading the same prompt now is waited for
        (`leader`: this slot reads nothing until that prompt is in, then copies it).
        """
        prompt = req.prompt
        last = len(prompt) - 1
        spare = min(free, key=lambda s: (bool(s.cache), s.used))
        for busy in self._active:
            other = busy.req
            if other is None or busy.leader is not None or busy.token >= 0:
                continue
            if other.prompt == prompt and len(busy.cache) < last and last >= 1:
                trim(self._memory, spare.seq, spare.cache, 0)
                spare.leader = busy
                self._take(spare, req)
                return True
        donor, shared = max(
            ((s, reusable(s.cache, prompt)) for s in self._active if s.leader is None),
            key=_longest_then_lru,
            default=(None, 0),
        )
        if donor is None or shared <= keep or (shared < _COPY_MIN and shared < last):
            return False
        self._copy(donor, spare, shared)
        self._take(spare, req)
        return True

    def _copy(self, source: _Slot, target: _Slot, keep: int) -> None:
        """Copy the first `keep` tokens of `source`'s KV into `target` (a whole KV stream is
        copied at the next decode, then trimmed: cheaper than reading a long prefix again)."""
        lc.llama_memory_seq_cp(self._memory, source.seq, target.seq, -1, -1)
        target.cache = list(source.cache)
        trim(self._memory, target.seq, target.cache, keep)

    def _step(self) -> None:
        """One llama_decode for every active slot, then a token for each that needs one."""
        active = self._active
        tokens, pos, logits, seq_ids = self._tokens, self._pos, self._logits, self._seq_ids
        generating = [slot for slot in active if slot.token >= 0]
        room = self._n_batch - len(generating)
        for slot in generating:  # drafts take what room the batch has, first come
            if slot.draft:
                del slot.draft[max(0, room) :]
                room -= len(slot.draft)
        n = 0
        for slot in active:
            if slot.leader is not None and not self._follow(slot):
                slot.added, slot.row = 0, -1
                continue  # its leader is still reading the prompt
            token = slot.token
            if token >= 0:
                seq = slot.seq
                slot.row = n
                at = len(slot.cache)
                for t in (token, *slot.draft) if slot.draft else (token,):
                    tokens[n] = t
                    pos[n] = at
                    seq_ids[n][0] = seq
                    logits[n] = 1
                    n += 1
                    at += 1
                continue
            req = slot.req
            assert req is not None
            prompt = req.prompt
            done = len(slot.cache)
            take = min(len(prompt) - done, room)
            if req.save and done < len(req.prefix):
                take = min(take, len(req.prefix) - done)  # saved once it is in
            slot.added = take
            slot.row = -1
            if take <= 0:
                continue
            seq = slot.seq
            for p in range(done, done + take):
                tokens[n] = prompt[p]
                pos[n] = p
                seq_ids[n][0] = seq
                logits[n] = 0
                n += 1
            room -= take
            if done + take == len(prompt):
                logits[n - 1] = 1
                slot.row = n - 1
        if n == 0:
            return
        batch = self._batch
        batch.n_tokens = n
        rc = lc.llama_decode(self._ctx, batch)
        if rc != 0:
            self._fail(
                [s for s in active if s.token >= 0 or s.added > 0],
                EngineError(f"llama.cpp failed to evaluate a batch (code {rc})"),
            )
            return
        ctx, vocab, is_eog, n_ctx = (
            self._ctx,
            self._weights.vocab,
            lc.llama_vocab_is_eog,
            self.n_ctx,
        )
        for slot in list(active):
            req = slot.req
            assert req is not None
            token = slot.token
            if token >= 0:
                slot.cache.append(token)
            elif slot.added > 0:
                done = len(slot.cache)
                slot.cache.extend(req.prompt[done : done + slot.added])
                if req.save and len(slot.cache) == len(req.prefix):
                    req.save = False
                    assert self._prompt_cache is not None
                    self._weights.save_state(self._ctx, slot.seq, self._prompt_cache, req.prefix)
                if slot.row >= 0:
                    req.timings.prompt_s = time.perf_counter() - req.start
                    if req.budget <= 0:  # num_predict 0: only read (and cache) the prompt
                        self._finish(slot, "length")
                        continue
            if slot.row < 0:
                continue  # more of the prompt to read
            if req.cancelled:
                self._finish(slot, "cancelled")
                continue
            row = slot.row
            token = req.sample(req.chain, ctx, row)
            draft = slot.draft
            if draft:
                # Keep the draft up to the first token the sampler does not choose; that
                # token (sampled at the row after the last one kept) is the next one.
                kept = 0
                for guess in draft:
                    if token != guess or is_eog(vocab, token) or token in req.stop_tokens:
                        break
                    kept += 1
                    slot.cache.append(token)
                    self._emit(req, token, row)
                    if req.timings.eval_tokens >= req.budget:
                        break
                    row += 1
                    token = req.sample(req.chain, ctx, row)
                self._drop_draft(slot)
                req.spec.settle(draft, kept)  # type: ignore[union-attr]
                if req.timings.eval_tokens >= req.budget:
                    self._finish(slot, "length")
                    continue
            if is_eog(vocab, token) or token in req.stop_tokens:
                self._finish(slot, "stop")
                continue
            self._emit(req, token, row)
            if req.timings.eval_tokens >= req.budget or len(slot.cache) >= n_ctx:
                # No next token is needed (or there is no room for one): skip its decode.
                self._finish(slot, "length")
                continue
            slot.token = token
            if req.spec is not None:
                room = min(req.budget - req.timings.eval_tokens, n_ctx - len(slot.cache) - 1)
                slot.draft = req.spec.propose(token, room)

    def _drop_draft(self, slot: _Slot) -> None:
        """Forget the draft tokens the KV sequence holds past the slot's cache."""
        if slot.draft:
            slot.draft = []
            lc.llama_memory_seq_rm(self._memory, slot.seq, len(slot.cache), -1)

    def _emit(self, req: _Request, token: int, row: int) -> None:
        """A generated token: counted, its log-probabilities (from `row`) and text sent."""
        req.timings.eval_tokens += 1
        req.tokens.append(token)
        raw = self._weights.token_bytes(token) if req.special else self._weights.piece_bytes(token)
        if req.logprobs >= 0:
            req.pending.append(self._logprobs(row, token, raw, req.logprobs))
        text = req.decoder.decode(raw)
        if text:
            # Before the decode of this token: the reader sees it a decode sooner.
            try:
                if req.pending:
                    req.sink.piece(text, req.pending)
                    req.pending = []
                else:
                    req.sink.piece(text)
            except Exception:
                req.cancelled = True  # a sink that fails has no reader left

    def _follow(self, slot: _Slot) -> bool:
        """Whether a slot waiting for its leader's prompt can read on (the prompt is in, and
        copied; or the leader gave up on it, and this slot reads it alone)."""
        leader, req = slot.leader, slot.req
        assert leader is not None and req is not None
        last = len(req.prompt) - 1
        reading = leader.req is not None and leader.token < 0 and len(leader.cache) < last
        if reading and leader.req is not None and leader.req.prompt == req.prompt:
            return False
        slot.leader = None
        if leader.cache[:last] == req.prompt[:last]:
            self._copy(leader, slot, last)
            req.timings.cached_tokens = last
            req.timings.prompt_tokens = 1
        return True

    def _finish(self, slot: _Slot, reason: str) -> None:
        req = slot.req
        assert req is not None
        slot.req = None
        slot.token = -1
        self._drop_draft(slot)
        slot.leader = None
        self._active.remove(slot)
        tail = req.decoder.decode(b"", final=True)
        if tail or req.pending:
            with contextlib.suppress(Exception):
                if req.pending:
                    req.sink.piece(tail, req.pending)
                else:
                    req.sink.piece(tail)
        self._end(req, reason)

    def _logprobs(self, row: int, token: int, raw: bytes, top: int) -> dict[str, Any]:
        """The log-probability of `token` and of the `top` likeliest tokens at a logits row:
        the log-softmax of the model's raw logits (before any sampler), as OpenAI reports them.
        """
        import numpy as np

        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(self._ctx, row), (self.n_vocab,))
        peak = float(logits.max())
        total = peak + float(np.log(np.exp(logits - peak).sum()))
        entry: dict[str, Any] = {
            "token": raw.decode("utf-8", errors="replace"),
            "logprob": float(logits[token]) - total,
            "bytes": list(raw),
            "top": [],
        }
        if top > 0:
            best = np.argpartition(-logits, top - 1)[:top]
            for t in best[np.argsort(-logits[best], kind="stable")]:
                piece = self._weights.piece_bytes(int(t))
                entry["top"].append(
                    {
                        "token": piece.decode("utf-8", errors="replace"),
                        "logprob": float(logits[t]) - total,
                        "bytes": list(piece),
                    }
                )
        return entry

    def _end(self, req: _Request, reason: str, exc: LocalrunError | None = None) -> None:
        """Fill in the timings, free the samplers and tell the sink (exactly once)."""
        now = time.perf_counter()
        timings = req.timings
        if req.start:
            if timings.prompt_s == 0.0:
                timings.prompt_s = now - req.start
            else:
                timings.eval_s = now - req.start - timings.prompt_s
        timings.total_s = now - req.submitted  # includes the wait for a slot
        req.free()
        with contextlib.suppress(Exception):
            if exc is not None:
                req.sink.error(exc)
            else:
                req.sink.done(reason, timings, req.tokens)

    def _fail(self, slots: list[_Slot], exc: LocalrunError) -> None:
        """End the requests of `slots` with `exc` and forget their KV, which may be half-written."""
        for slot in slots:
            if slot.req is None:
                continue
            lc.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
            slot.cache.clear()
            req = slot.req
            slot.req = None
            slot.token = -1
            slot.leader = None
            self._active.remove(slot)
            self._end(req, "error", exc)

    # -- embeddings ---------------------------------------------------------------------------

    def embed(
        self, texts: Sequence[EmbedInput], *, truncate: bool = True
    ) -> tuple[list[list[float]], int]:
        """L2-normalized embeddings of `texts` and the tokens read (engine.embed.Embedder): on
        the caller's thread, in a second context, while generation goes on."""
        with self._embed_lock:  # the contexts are not freed meanwhile
            if self._closing or self._released:
                raise EngineError("the model is being unloaded")
            return self._embedder.embed(texts, truncate=truncate)

    # -- shutdown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the loop (waiting and running requests get done("cancelled")) and free it all."""
        with self._cond:
            self._closing = True
            self._wake = True
            self._cond.notify_all()
        thread = self._thread
        if thread is None:
            self._release()
        elif thread is not threading.current_thread():
            thread.join()  # the loop releases everything as it ends
        if self._prompt_cache is not None:
            self._prompt_cache.flush()

    def _release(self) -> None:
        with self._embed_lock:
            if self._released:
                return
            self._released = True
            if self._batch is not None:
                lc.llama_batch_free(self._batch)
                self._batch = None
            self._ctx = None
            if self._draft is not None:
                self._draft.close()
                self._draft = None
            self._weights.close()  # both contexts first

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
