"""The engine: one llama.cpp context serving one or several sequences in one loop, as llama-server.

`localrun run` runs it with one slot, a server's runner with num_parallel.

A loop thread owns the context. Each step builds one llama_batch (engine.rows) of every generating
slot's next token and the prompt chunks of slots still reading theirs. It runs one llama_decode,
then samples each slot that needs a token with that slot's own sampler. Requests beyond the slots
wait FIFO; engine.slots picks a request's slot and how much of its KV it reuses. A generating slot
may carry a draft (engine.speculation), kept up to the first guess its sampler does not choose.

Results go to a Sink, called on the loop thread; each request gets exactly one done() or error().
`generate` reads one answer as an iterator instead. Embeddings (engine.embed) use a second context,
and the loop runs their decodes between two steps (engine.calls).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from localrun.engine import calls, checkpoints, scoring
from localrun.engine.answering import Answerer
from localrun.engine.embed import Embedder
from localrun.engine.library.native import lc
from localrun.engine.media import MediaPrompt, Projector
from localrun.engine.prompts.disk_prefix import DiskPrefixes
from localrun.engine.rows import StepBatch
from localrun.engine.sampling import grammar_guard
from localrun.engine.sampling.sampler import Sampler
from localrun.engine.sequence import answer_ends, check_prompt
from localrun.engine.slots import Job, Slot, Slots, Ticket, read_media, unbound
from localrun.engine.speculation import draft, lookup
from localrun.engine.speculation import speculator as speculate
from localrun.engine.speculation.answers import AnswerMemory
from localrun.engine.speculation.costs import CostMeter, DecodeCost
from localrun.engine.threads import Governor
from localrun.engine.types import (
    EmbedInput,
    Generation,
    LoadOptions,
    QueueSink,
    SamplingOptions,
    Sink,
)
from localrun.engine.weights import Weights
from localrun.errors import (
    BadRequestError,
    ConfigError,
    EngineError,
    InvalidParameterError,
    LocalrunError,
)
from localrun.settings import config, limits


def _checkpoint_policy() -> checkpoints.Policy:
    """LOCALRUN_CHECKPOINT_*, or the defaults where one is bad (`localrun env` says so)."""
    try:
        return checkpoints.Policy(*limits.checkpoints())
    except ConfigError:
        return checkpoints.Policy()


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
        self._rows: StepBatch | None = None
        self._thread: threading.Thread | None = None
        self._released = False
        # The n-gram indexes of recent prompts, which the next request of a chat starts with.
        self._histories = lookup.Snapshots()
        # A client's grammar is compiled first in a child of its own
        # (engine.sampling.grammar_guard).
        self._guard = grammar_guard.Guard()
        self._cond = threading.Condition()
        self._closing = False
        self._wake = False  # cancel(), reset() or close() wants the loop to take the lock
        self._forget = False  # reset(): empty the idle slots' KV before the next request
        self._embed_lock = threading.Lock()
        self._calls = calls.LoopCalls()  # for the loop's thread (embeddings' decodes)
        self._draft: draft.DraftModel | None = None
        self.projector: Projector | None = None
        self.prompt_cache_note: str | None = None
        self._queue: collections.deque[Job] = collections.deque()
        weights = self._weights = Weights(path, options)
        self._disk = DiskPrefixes(weights, None)  # engine.prompts.disk_prefix
        self._embedder = Embedder(weights, options, self.on_loop)
        self._threads = Governor(options.num_thread, adaptive=options.adapt_threads)
        try:
            self._open(slots)
            self._disk.cache = weights.disk_cache(self._ctx)
            self._draft = draft.load(options.draft, options, self.n_ctx, slots)
            if options.projector:
                self.projector = Projector(
                    options.projector,
                    weights.model,
                    n_threads=options.num_thread,
                    # With workers, a GPU device may be a worker's: the projector stays here.
                    use_gpu=options.num_gpu != 0 and not options.workers,
                )
        except BaseException:
            self._release()
            raise
        self.n_ctx_train = weights.n_ctx_train
        self.n_vocab = weights.n_vocab
        self.bos_text = weights.bos_text
        self.eos_text = weights.eos_text
        self.chat_template = weights.chat_template
        self.fim = weights.fim
        # What a batch costs now, timed by the loop (engine.speculation.costs): speculation weighs
        # it.
        self._costs = CostMeter(DecodeCost.for_device(options.num_gpu))
        self._answers = AnswerMemory()  # earlier answers, drafted from for the same memory
        # Constrained slots' masks computed while the batch decodes (engine.sampling.constraint):
        # None does so when a CPU is idle meanwhile (a GPU decodes, or fewer threads than CPUs).
        ahead = config.masks_ahead()
        self.masks_ahead: bool | None = None if ahead == "auto" else ahead == "on"
        layers = int(lc.llama_model_n_layer(weights.model))
        self._on_gpu = options.num_gpu < 0 or (options.num_gpu > 0 and options.num_gpu >= layers)
        self._masks: ThreadPoolExecutor | None = None  # made on first use
        self.load_s = time.perf_counter() - start
        self._thread = threading.Thread(target=self._loop, name="localrun-batch", daemon=True)
        self._thread.start()

    def _open(self, slots: int) -> None:
        """The context, its batch and its slots."""
        options = self.options
        cparams = self._weights.context_params(options, options.num_ctx * slots)
        cparams.n_seq_max = slots
        # One KV stream per slot: each sequence has its own num_ctx, and a long one cannot
        # crowd out the others.
        cparams.kv_unified = False
        cparams.n_batch = max(options.num_batch, slots)
        self._ctx = self._weights.context(cparams)
        # Per slot: the num_ctx asked for, though llama.cpp pads its context to a multiple of
        # 256 (a client that asks for 100 tokens gets a limit of 100, as Ollama gives it).
        self.n_ctx = min(int(lc.llama_n_ctx_seq(self._ctx)), options.num_ctx)
        self._n_batch = int(lc.llama_n_batch(self._ctx))
        self._rows = StepBatch(self._n_batch, self._weights.n_vocab)
        policy = _checkpoint_policy()
        weights = self._weights
        memory = checkpoints.SeqMemory(self._ctx, weights.memory, policy, weights.window)
        self._slots = Slots(memory, slots)
        self.prompt_cache_note = policy.describe(self._weights.memory, self._weights.window)
        self._answerer = Answerer(self._ctx, self._weights, self._slots, self._finish, self._fail)

    # -- tokens -------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return self._weights.tokenize(text, add_special=add_special, parse_special=parse_special)

    def token_ids(self, text: str) -> list[int]:
        """The ids of `text` when it is one special token (e.g. '<|im_end|>'), else []."""
        return self._weights.token_ids(text)

    def token_bytes(self, token: int) -> bytes:
        """One token's bytes, special tokens spelled out; the caller checks the id."""
        return self._weights.token_bytes(token)

    def _spell(self, token: int) -> bytes:
        """A token's bytes as a prompt holds it: special tokens spelled out."""
        return self._weights.piece_bytes(token) or self._weights.token_bytes(token)

    def media_prompt(self, text: str, media: Sequence[Any], *, add_special: bool) -> MediaPrompt:
        """A prompt with images or audio (one localrun.request.media.MARKER in `text` for each)."""
        if self.projector is None:
            kinds = sorted({m.kind for m in media})
            raise BadRequestError(
                f"this model cannot take {' or '.join(kinds)}: it has no projector",
                hint="use a vision model, or create one with a PROJECTOR line "
                "(localrun help images-and-audio)",
            )
        return self.projector.tokenize(text, media, add_special=add_special)

    # -- requests -----------------------------------------------------------------------------

    def submit(
        self,
        prompt: Sequence[int],
        sampling: SamplingOptions,
        *,
        stop_tokens: frozenset[int] = frozenset(),
        sink: Sink,
        cache_prefix: int = 0,
        media: MediaPrompt | None = None,
    ) -> Ticket:
        """Queue a generation; its output goes to `sink`. Thread-safe.

        Raises at once for an empty prompt, one that does not fit the request's context (its
        `sampling.context` within a slot's: ContextOverflowError, with the request's numbers),
        a token the vocabulary lacks or a grammar that does not compile.
        The first `cache_prefix` tokens (the model's SYSTEM prompt and MESSAGE turns) are
        restored from the disk prompt cache when they are there, and saved there when evaluated.
        With `media` (from media_prompt, then the job's), `prompt` is its tokens.
        """
        try:
            n_ctx = sampling.within(self.n_ctx)
            check_prompt(prompt, media, n_ctx, self.n_ctx_train, self.n_vocab)
            job = self._job(list(prompt), sampling, n_ctx, stop_tokens, sink, cache_prefix, media)
        except BaseException:
            if media is not None:
                media.free()
            raise
        with self._cond:
            if self._closing:
                job.free()
                raise EngineError("the model is being unloaded")
            # Once queued the job is the loop's to free, whatever is raised here after.
            self._queue.append(job)
            self._cond.notify()
        return Ticket(functools.partial(self._cancel, job))

    def generate(
        self,
        prompt: Sequence[int],
        sampling: SamplingOptions,
        *,
        stop_tokens: frozenset[int] = frozenset(),
        cancel: threading.Event | None = None,
        cache_prefix: int = 0,
        media: MediaPrompt | None = None,
    ) -> Generation:
        """Run `submit`, reading its text as an iterator; closing it or setting `cancel` cancels."""
        sink = QueueSink(cancel)
        ticket = self.submit(
            prompt,
            sampling,
            stop_tokens=stop_tokens,
            sink=sink,
            cache_prefix=cache_prefix,
            media=media,
        )
        return sink.generation(ticket.cancel)

    def reset(self) -> None:
        """Forget the KV cache of every slot without a request, before the next one starts."""
        with self._cond:
            self._forget = True
            self._wake = True
            self._cond.notify()

    def _job(
        self,
        prompt: list[int],
        sampling: SamplingOptions,
        n_ctx: int,
        stop_tokens: frozenset[int],
        sink: Sink,
        cache_prefix: int,
        media: MediaPrompt | None = None,
    ) -> Job:
        """Make the loop's job; its samplers are made here, so a bad grammar fails the caller."""
        # The prompt and the answer fit the request's context `n_ctx` (so a returned `context`
        # can be continued), which may be less than the slot's: it ends where that context would.
        room = n_ctx - len(prompt)
        budget = min(sampling.num_predict, room) if sampling.num_predict >= 0 else room
        job = Job(prompt, stop_tokens, sink, budget, n_ctx)
        scoring.ask(job, sampling, media)
        job.special = sampling.special
        job.spell = sampling.spell
        job.ends = answer_ends(self._weights.vocab, stop_tokens)
        job.closing = self._slots.memory.closing(prompt, self._weights.is_control)
        # The draft model's sequence is the slot's: bound when the job takes one (_take).
        job.media = media
        # Drafts come from the text before (or a draft model without the projector): a prompt
        # with media is answered without them.
        job.memory = sampling.memory
        # A draft model reads the history as its own context: earlier answers are for lookup.
        earlier = self._answers.history(sampling.memory if self._draft is None else None, prompt)
        job.spec = speculate.speculator(
            sampling.speculate if media is None else "off",
            prompt,
            sampling.draft_num_predict,
            self._batch_cost,
            unbound if self._draft is not None else None,
            job.ends,
            self._histories,
            earlier,
        )
        if job.scores < 0 and not job.candidates:  # those are read whole (Slots.place)
            self._disk.prepare(job, self._slots, cache_prefix, media)
        weights = self._weights
        job.sampler = Sampler(
            sampling,
            weights.vocab,
            self.n_vocab,
            n_ctx,
            weights.guide,
            weights.token_bytes,
            self._guard.check,
        )
        return job

    def _cancel(self, job: Job) -> None:
        job.cancelled = True  # read by the loop at every step
        with self._cond:
            self._wake = True
            self._cond.notify()

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                try:
                    if not self._next():
                        break
                    self._step()
                except Exception as exc:  # a bug here must fail requests, not hang them
                    failure = EngineError(f"the engine failed: {exc!r}")
                    self._fail(list(self._slots.active), failure)
        finally:
            with self._cond:
                waiting = list(self._queue)
                self._queue.clear()
                pending = self._calls.close()
            calls.fail(pending)
            for slot in list(self._slots.active):
                self._finish(slot, "cancelled")
            for job in waiting:
                self._end(job, "cancelled")
            self._disk.keep_all(self._ctx, self._slots)
            self._release()

    def _next(self) -> bool:
        """Take new requests into free slots (sleeping while there is nothing to do)."""
        slots = self._slots
        if slots.active and not self._queue and not self._wake:
            return True  # the common step: no lock taken
        with self._cond:
            while not (self._closing or self._queue or slots.active or self._wake):
                self._threads.pause()  # what others use while this one sleeps says little
                self._cond.wait()
            if self._closing:
                return False
            self._wake = False
            forget, self._forget = self._forget, False
            dropped = [job for job in self._queue if job.cancelled]
            for job in dropped:
                self._queue.remove(job)
            free = self.n_slots - len(slots.active)
            taken = [self._queue.popleft() for _ in range(min(free, len(self._queue)))]
            waiting = self._calls.take()
        calls.run(waiting)
        for job in dropped:
            self._end(job, "cancelled")
        for slot in [s for s in slots.active if s.job is not None and s.job.cancelled]:
            self._finish(slot, "cancelled")
        if forget:
            slots.forget_idle()
        for job in taken:
            try:
                self._take(job)
            except Exception as exc:  # it never reached a slot: it alone fails
                self._end(job, "error", EngineError(f"the engine failed: {exc!r}"))
        return True

    def _take(self, job: Job) -> None:
        """Start `job` on the slot that suits it best (engine.slots)."""
        slot = self._slots.place(job)
        if job.spec is not None and job.spec.model is not None and self._draft is not None:
            job.spec.model = functools.partial(self._draft.draft, slot.seq)
        keep = len(slot.cache)
        if job.prefix and keep < len(job.prefix) and slot.leader is None:
            keep = self._disk.restore(self._ctx, slot, job, keep)
        self._disk.mark(slot, job, keep)
        job.state = None
        job.timings.cached_tokens = keep
        job.timings.prompt_tokens = len(job.prompt) - keep
        job.start = time.perf_counter()
        self._slots.activate(slot, job)

    def _batch_cost(self) -> DecodeCost:
        """What a batch costs now at the loop's thread count, with how many slots generate in it."""
        cost = self._costs.cost(self._threads.threads)
        streams = sum(1 for s in self._slots.active if s.token >= 0)
        return dataclasses.replace(cost, streams=streams) if streams > 1 else cost

    def _step(self) -> None:
        """One llama_decode for every active slot, then a token for each that needs one."""
        # Per token, one active slot costs one decode, one sample (greedy reads the best logit in
        # place), the token's text (spelled once per model) and a few writes into a preallocated
        # batch: single-stream decode keeps llama.cpp's speed.
        # An image or audio in a prompt is evaluated on its own first (engine.media).
        if self.projector is not None:
            read_media(self._slots, self.projector, self._ctx, self._n_batch, self._fail)
        rows = self._rows
        assert rows is not None
        for slot in [s for s in self._slots.active if s.held]:  # its prompt read already
            self._answerer.start_held(slot, slot.job)  # type: ignore[arg-type]
        saved = self._before_drafts() if self._slots.memory.rewinds else 0.0
        n = rows.fill(self._slots)
        if n == 0:
            return
        rows.batch.n_tokens = n
        self._threads.apply(self._ctx, self._draft.ctx if self._draft is not None else None)
        pool = self._mask_thread()
        if pool is not None:
            self._answerer.ahead(pool)
        start = time.perf_counter()
        rc = lc.llama_decode(self._ctx, rows.batch)
        if rc == 0 and rows.prompt_rows == 0:  # a verification's rows: all with logits
            # With the checkpoints its drafts took: what speculation weighs is what it costs.
            spent = time.perf_counter() - start + saved
            self._costs.record(n, spent, self._threads.threads)
        if rc != 0:
            self._fail(
                [s for s in self._slots.active if s.token >= 0 or s.added > 0],
                EngineError(f"llama.cpp failed to evaluate a batch (code {rc})"),
            )
            return
        for slot in list(self._slots.active):
            self._advance(slot)

    def _before_drafts(self) -> float:
        """Checkpoint each slot about to decode a draft; return the seconds that took.

        A recurrent state cannot drop a rejected guess: it goes back to this checkpoint instead
        (engine.checkpoints).
        """
        memory = self._slots.memory
        start = time.perf_counter()
        for slot in self._slots.active:
            if slot.token >= 0 and slot.draft:
                slot.rewind = memory.snapshot(slot.seq, len(slot.cache))
                if slot.rewind is None:  # no way back: the draft is not decoded
                    slot.draft = []
        return time.perf_counter() - start

    def _mask_thread(self) -> ThreadPoolExecutor | None:
        """The thread that computes masks while the batch decodes, when one may now."""
        ahead = self.masks_ahead
        if ahead is None:
            ahead = self._on_gpu or self._threads.idle()  # every layer there, or a CPU idle
        if ahead and self._masks is None:
            self._masks = ThreadPoolExecutor(1, thread_name_prefix="localrun-masks")
        return self._masks if ahead else None

    def _advance(self, slot: Slot) -> None:
        """After a decode, take in the slot's rows, then sample its next token if it has logits."""
        job = slot.job
        assert job is not None
        if slot.token >= 0:
            if slot.replay:  # read again after a rewind (engine.checkpoints)
                slot.cache.extend(slot.replay)
                slot.replay = []
            slot.cache.append(slot.token)
        elif slot.added > 0 and not self._read(slot, job):
            return
        if slot.row < 0:
            return  # more of the prompt to read
        if job.cancelled:
            self._finish(slot, "cancelled")
            return
        self._answerer.sample(slot, job)

    def _read(self, slot: Slot, job: Job) -> bool:
        """A prompt chunk is in (the prefix saved once whole); False when that ended the job."""
        done = len(slot.cache)
        slot.cache.extend(job.prompt[done : done + slot.added])
        if job.scores >= 0:
            scoring.send(self._ctx, job, slot.first, done, slot.added, self._spell)
        memory = self._slots.memory
        if memory.wants(slot, len(slot.cache), len(job.prompt), job.closing):
            memory.keep(slot)
        self._disk.saved(self._ctx, slot, job)
        if slot.row >= 0:
            # A GPU or a worker may still be computing what llama_decode queued: the prompt is
            # read once its logits are (not in the first token's time).
            lc.llama_synchronize(self._ctx)
            job.timings.prompt_s = time.perf_counter() - job.start
            self._answerer.keep(slot, job)
            if job.budget <= 0:  # num_predict 0: only read (and cache) the prompt
                self._finish(slot, "length")
                return False
        return True

    def _finish(self, slot: Slot, reason: str) -> None:
        job = self._slots.release(slot)
        job.timings.checkpoint_bytes = sum(m.size for m in slot.marks)
        self._answers.remember(job.memory, job.prompt, job.tokens)
        tail = job.decoder.decode(b"", final=True)
        if tail or job.pending:
            with contextlib.suppress(Exception):
                if job.pending:
                    job.sink.piece(tail, job.pending)
                else:
                    job.sink.piece(tail)
        self._end(job, reason)

    def _end(self, job: Job, reason: str, exc: LocalrunError | None = None) -> None:
        """Fill in the timings, free the samplers and tell the sink (exactly once)."""
        now = time.perf_counter()
        timings = job.timings
        if job.start:
            if timings.prompt_s == 0.0:
                timings.prompt_s = now - job.start
            else:
                timings.eval_s = now - job.start - timings.prompt_s
        timings.total_s = now - job.submitted  # includes the wait for a slot
        job.free()
        with contextlib.suppress(Exception):
            if exc is not None:
                job.sink.error(exc)
            else:
                job.sink.done(reason, timings, job.tokens)

    def _fail(self, slots: list[Slot], exc: LocalrunError) -> None:
        """End the requests of `slots` with `exc` and forget their KV, which may be half-written."""
        for slot in slots:
            if slot.job is not None:
                self._end(self._slots.release(slot, forget=True), "error", exc)

    # -- embeddings ---------------------------------------------------------------------------

    def embed(
        self, texts: Sequence[EmbedInput], *, truncate: bool = True, query: str | None = None
    ) -> tuple[list[list[float]], int]:
        """Return L2-normalized embeddings of `texts` and the tokens read (engine.embed.Embedder).

        They use a second context, on the caller's thread; the loop runs each decode between two
        steps.
        """
        with self._embed_lock:  # the contexts are not freed meanwhile
            if self._closing or self._released:
                raise EngineError("the model is being unloaded")
            return self._embedder.embed(texts, truncate=truncate, query=query)

    def on_loop(self, fn: Callable[[], calls.T]) -> calls.T:
        """Run `fn()` on the loop's thread between two steps; return its result or raise its error.

        llama.cpp compute of this process stays on one thread (engine.calls).
        """
        if threading.current_thread() is self._thread:
            return fn()
        with self._cond:
            future = self._calls.add(fn)
            self._wake = True
            self._cond.notify()
        return future.result()

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
        self._disk.flush()

    def _release(self) -> None:
        with self._embed_lock:
            if self._released:
                return
            self._released = True
            if self._masks is not None:
                self._masks.shutdown()
                self._masks = None
            self._guard.close()
            if self._rows is not None:
                self._rows.free()
                self._rows = None
            self._ctx = None
            if self._draft is not None:
                self._draft.close()
                self._draft = None
            if self.projector is not None:
                self.projector.close()
                self.projector = None
            self._weights.close()  # both contexts first

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
