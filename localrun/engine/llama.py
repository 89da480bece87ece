"""The llama.cpp engine, over llama-cpp-python's low-level (ctypes) API.

Why not `llama_cpp.Llama`: its generation loop copies the whole logits row into numpy for every
token and samples in Python, which costs about a tenth of the decode speed on a small model. Here
the per-token work is one llama_decode, one sample from a native sampler chain and one
token_to_piece, so decode runs at llama.cpp's own speed.

Every file is structure-checked by `localrun.gguf.scan` before llama.cpp opens it, and every
failure is translated into a typed error here, where llama_cpp is called.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import ctypes
import functools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from localrun import config, gguf, prompt_cache
from localrun.engine import speculate
from localrun.engine.native import lc
from localrun.engine.types import (
    FimTokens,
    Generation,
    LoadOptions,
    SamplingOptions,
    reusable,
)
from localrun.errors import BadRequestError, ContextOverflowError, EngineError, ModelLoadError

if TYPE_CHECKING:
    from localrun.engine.draft import DraftModel

_init_lock = threading.Lock()
_initialised = False
_log_tail: collections.deque[str] = collections.deque(maxlen=40)


@lc.llama_log_callback  # type: ignore[untyped-decorator]
def _log(level: int, text: bytes, _user: Any) -> None:
    # llama.cpp logs a lot at load; keep the tail for error messages, print only when debugging.
    message = text.decode("utf-8", errors="replace")
    _log_tail.append(message)
    if _debug:
        import sys

        sys.stderr.write(message)


_debug = False


def _init() -> None:
    global _initialised, _debug
    with _init_lock:
        if _initialised:
            return
        _debug = config.debug()
        lc.llama_log_set(_log, ctypes.c_void_p(0))
        lc.llama_backend_init()
        _initialised = True


def _last_error() -> str:
    lines = [line.strip() for line in "".join(_log_tail).splitlines() if line.strip()]
    # "error loading model: <reason>" says why; "failed to load model" only that it did.
    errors = [line for line in lines if "error" in line.lower()]
    failures = [line for line in lines if "failed" in line.lower()]
    return (errors or failures or lines or ["no details"])[-1][:300]


class Weights:
    """A llama.cpp model in memory (weights, vocabulary, LoRA adapters) that contexts are made from.

    Shared by LlamaModel (one sequence) and batch.BatchEngine (many); both call `context` for
    theirs, and the adapters are applied to every context made. The contexts belong to the
    weights: `close` frees them before the model, the order llama.cpp needs.
    """

    def __init__(self, path: str, options: LoadOptions) -> None:
        _init()
        header = gguf.scan(path)  # raises InvalidGGUFError before llama.cpp sees the file
        for other in (*options.splits, *(adapter for adapter, _ in options.adapters)):
            gguf.scan(other)
        self.path = path
        self.header = header
        self.model: Any = None
        self.adapters: list[Any] = []
        self._contexts: list[Any] = []
        self.scales = [scale for _, scale in options.adapters]
        _log_tail.clear()
        mparams = lc.llama_model_default_params()
        mparams.n_gpu_layers = options.num_gpu
        mparams.main_gpu = options.main_gpu
        mparams.use_mmap = options.use_mmap
        if options.splits:
            paths = [p.encode() for p in (path, *options.splits)]
            array = (ctypes.c_char_p * len(paths))(*paths)
            self.model = lc.llama_model_load_from_splits(array, len(paths), mparams)
        else:
            self.model = lc.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise ModelLoadError(
                f"llama.cpp could not load {path}: {_last_error()}",
                hint="the file may be for an architecture this llama.cpp does not support; "
                "run with LOCALRUN_DEBUG=1 for its log",
            )
        try:
            for adapter_path, _ in options.adapters:
                adapter = lc.llama_adapter_lora_init(self.model, adapter_path.encode())
                if not adapter:
                    raise ModelLoadError(
                        f"llama.cpp could not load the LoRA adapter {adapter_path}: "
                        f"{_last_error()}",
                        hint="the adapter must be made for this base model",
                    )
                self.adapters.append(adapter)
        except BaseException:
            self.close()
            raise
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_ctx_train = int(lc.llama_model_n_ctx_train(self.model))
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))
        self.bos_text = self._special_text(lc.llama_vocab_bos(self.vocab))
        self.eos_text = self._special_text(lc.llama_vocab_eos(self.vocab))
        template = header.metadata.get("tokenizer.chat_template")
        self.chat_template: str | None = template if isinstance(template, str) else None
        self.fim = self._fim_tokens()
        self._piece = ctypes.create_string_buffer(256)
        self.identity = {
            "model": [prompt_cache.file_identity(p) for p in (path, *options.splits)],
            "adapters": [[prompt_cache.file_identity(a), s] for a, s in options.adapters],
            "llama_cpp": str(getattr(lc, "__version__", "")),
            "num_gpu": options.num_gpu,
            "kv": "f16",
        }

    @functools.cached_property
    def trims(self) -> bool:
        """Whether a sequence can drop its last positions (a draft the model rejected): not
        where the memory is a recurrent state, so those models do not speculate."""
        m = self.model
        return not (lc.llama_model_is_recurrent(m) or lc.llama_model_is_hybrid(m))

    def unrestorable(self) -> str | None:
        """Why llama.cpp cannot restore this model's KV state faithfully from a saved prefix
        (its memory is not a plain KV cache of every position), or None."""
        if lc.llama_model_is_recurrent(self.model):
            return "a recurrent model keeps a state, not a KV cache per position"
        if lc.llama_model_is_hybrid(self.model):
            return "a hybrid model keeps a recurrent state beside its KV cache"
        if int(lc.llama_model_n_swa(self.model)) > 0:
            return "sliding-window attention keeps only the last positions"
        return None

    def disk_cache(
        self, ctx: Any, layout: str
    ) -> tuple[prompt_cache.PromptCache | None, str | None]:
        """The disk prompt cache for a context of these weights, or None and why not."""
        reason = self.unrestorable()
        if reason is not None:
            return None, f"off for this model: {reason}"
        identity = {
            **self.identity,
            "n_ctx": int(lc.llama_n_ctx_seq(ctx)),
            "layout": layout,
        }
        return prompt_cache.PromptCache.from_config(identity), None

    def save_state(
        self, ctx: Any, seq: int, cache: prompt_cache.PromptCache, prefix: list[int]
    ) -> None:
        """Hand the KV state of sequence `seq` (holding exactly `prefix`) to the cache."""
        size = int(lc.llama_state_seq_get_size(ctx, seq))
        if size <= 0:
            return
        buf = (ctypes.c_uint8 * size)()
        written = int(lc.llama_state_seq_get_data(ctx, buf, size, seq))
        if written > 0:
            cache.save(prefix, memoryview(buf)[:written])  # the cache's from now on

    def restore_state(
        self,
        ctx: Any,
        seq: int,
        cache: prompt_cache.PromptCache,
        prefix: list[int],
        state: bytearray,
    ) -> bool:
        """Put a saved state into sequence `seq` (emptied first); False (and the entry gone)
        when llama.cpp refuses it."""
        memory = lc.llama_get_memory(ctx)
        lc.llama_memory_seq_rm(memory, seq, -1, -1)
        buf = (ctypes.c_uint8 * len(state)).from_buffer(state)  # no copy
        restored = int(lc.llama_state_seq_set_data(ctx, buf, len(state), seq)) > 0
        if restored and int(lc.llama_memory_seq_pos_max(memory, seq)) + 1 == len(prefix):
            return True
        lc.llama_memory_seq_rm(memory, seq, -1, -1)
        cache.discard(prefix)
        return False

    def _fim_tokens(self) -> FimTokens | None:
        v = self.vocab
        pre, suf = lc.llama_vocab_fim_pre(v), lc.llama_vocab_fim_suf(v)
        mid = lc.llama_vocab_fim_mid(v)
        if min(pre, suf, mid) < 0:
            return None
        bos = lc.llama_vocab_bos(v) if lc.llama_vocab_get_add_bos(v) else -1
        return FimTokens(
            pre=pre,
            suf=suf,
            mid=mid,
            pad=lc.llama_vocab_fim_pad(v),
            rep=lc.llama_vocab_fim_rep(v),
            sep=lc.llama_vocab_fim_sep(v),
            bos=bos,
        )

    def context_params(self, options: LoadOptions, n_ctx: int) -> Any:
        """llama_context_params for `options`, with `n_ctx` tokens in all."""
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = options.num_batch
        cparams.n_ubatch = min(options.num_batch, 512)
        cparams.n_threads = options.num_thread
        cparams.n_threads_batch = options.num_thread
        cparams.no_perf = True
        return cparams

    def context(self, cparams: Any) -> Any:
        """A new llama.cpp context with the adapters applied; `free` or `close` frees it."""
        ctx = lc.llama_init_from_model(self.model, cparams)
        if not ctx:
            raise ModelLoadError(
                f"llama.cpp could not create a context of {cparams.n_ctx} tokens: {_last_error()}",
                hint="lower num_ctx (--param num_ctx=2048) or free some memory",
            )
        if self.adapters:
            n = len(self.adapters)
            handles = (lc.llama_adapter_lora_p_ctypes * n)(*self.adapters)
            scales = (ctypes.c_float * n)(*self.scales)
            if lc.llama_set_adapters_lora(ctx, handles, n, scales) != 0:
                lc.llama_free(ctx)
                raise ModelLoadError(
                    f"llama.cpp could not apply the LoRA adapters: {_last_error()}"
                )
        self._contexts.append(ctx)
        return ctx

    def free(self, ctx: Any) -> None:
        """Free a context made by `context` before the weights are closed."""
        self._contexts.remove(ctx)
        lc.llama_free(ctx)

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        text = lc.llama_vocab_get_text(self.vocab, token)
        return text.decode("utf-8", errors="replace") if text else ""

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (lc.llama_token * capacity)()
        n = lc.llama_tokenize(
            self.vocab, data, len(data), buf, capacity, add_special, parse_special
        )
        if n < 0:
            capacity = -n
            buf = (lc.llama_token * capacity)()
            n = lc.llama_tokenize(
                self.vocab, data, len(data), buf, capacity, add_special, parse_special
            )
        if n < 0:
            raise EngineError("could not tokenize the prompt")
        return list(buf[:n])

    def token_ids(self, text: str) -> list[int]:
        """The ids of `text` when it is one special token (e.g. '<|im_end|>'), else []."""
        ids = self.tokenize(text, add_special=False, parse_special=True)
        if len(ids) == 1 and lc.llama_vocab_is_control(self.vocab, ids[0]):
            return ids
        if len(ids) == 1 and lc.llama_vocab_is_eog(self.vocab, ids[0]):
            return ids
        return []

    def piece_bytes(self, token: int) -> bytes:
        """The bytes of one token (part of a character, maybe); one thread at a time."""
        n = lc.llama_token_to_piece(self.vocab, token, self._piece, 256, 0, False)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, big, -n, 0, False)
            return big.raw[:n]
        return self._piece.raw[:n]

    def token_bytes(self, token: int) -> bytes:
        """The bytes of one token, special tokens spelled out (as llama-server's /detokenize
        and /tokenize's pieces show them). Safe from any thread: its buffer is its own."""
        buf = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(self.vocab, token, buf, 64, 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, buf, -n, 0, True)
        return buf.raw[: max(0, n)]

    def close(self) -> None:
        """Free the contexts made from these weights, then the weights."""
        while self._contexts:
            lc.llama_free(self._contexts.pop())
        if self.model:
            lc.llama_model_free(self.model)  # frees its LoRA adapters too
            self.model = None
        self.adapters = []


class LlamaBackend:
    """Loads GGUF models with llama.cpp."""

    def load(self, path: str, options: LoadOptions) -> LlamaModel:
        return LlamaModel(path, options)


class LlamaModel:
    """A llama.cpp model and context holding one conversation (sequence 0)."""

    def __init__(self, path: str, options: LoadOptions) -> None:
        start = time.perf_counter()
        self.path = path
        self.options = options
        self._ctx: Any = None
        weights = self._weights = Weights(path, options)
        try:
            self._ctx = weights.context(weights.context_params(options, options.num_ctx))
        except BaseException:
            weights.close()
            raise
        self.n_ctx = int(lc.llama_n_ctx(self._ctx))
        self._memory = lc.llama_get_memory(self._ctx)
        self._vocab = weights.vocab
        self.n_ctx_train = weights.n_ctx_train
        self.n_vocab = weights.n_vocab
        self.bos_text = weights.bos_text
        self.eos_text = weights.eos_text
        self.chat_template = weights.chat_template
        self.fim = weights.fim
        self._piece_bytes = weights.piece_bytes  # bound once: it runs for every token
        self._cache: list[int] = []
        self._one = (lc.llama_token * 1)()
        self._cost = speculate.DecodeCost.for_device(options.num_gpu)
        self._draft: DraftModel | None = None
        self._prompt_cache, self.prompt_cache_note = weights.disk_cache(self._ctx, "single")
        from localrun.engine import draft  # it builds on Weights, from this module

        try:
            self._draft = draft.load(options.draft, options, self.n_ctx, 1)
        except BaseException:
            self.close()
            raise
        self.load_s = time.perf_counter() - start

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return self._weights.tokenize(text, add_special=add_special, parse_special=parse_special)

    def token_ids(self, text: str) -> list[int]:
        return self._weights.token_ids(text)

    # -- generation ---------------------------------------------------------------------------

    def reset(self) -> None:
        lc.llama_memory_clear(self._memory, True)
        self._cache = []

    def _decode(self, tokens: Sequence[int], batch_size: int) -> None:
        for start in range(0, len(tokens), batch_size):
            chunk = tokens[start : start + batch_size]
            arr = (lc.llama_token * len(chunk))(*chunk)
            rc = lc.llama_decode(self._ctx, lc.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                # Drop what may be half-written in the KV cache rather than trust it.
                self.reset()
                raise EngineError(f"llama.cpp failed to evaluate the prompt (code {rc})")
            self._cache.extend(chunk)

    def generate(
        self,
        prompt: Sequence[int],
        sampling: SamplingOptions,
        *,
        stop_tokens: frozenset[int] = frozenset(),
        cancel: threading.Event | None = None,
        cache_prefix: int = 0,
    ) -> Generation:
        if not prompt:
            raise EngineError("the prompt is empty")
        if len(prompt) >= self.n_ctx:
            raise overflow_error(len(prompt), self.n_ctx, self.n_ctx_train)
        drafter = functools.partial(self._draft.draft, 0) if self._draft is not None else None
        spec = speculate.speculator(
            sampling.speculate if self._weights.trims else "off",
            prompt,
            sampling.draft_num_predict,
            self._cost,
            drafter,
            answer_ends(self._vocab, stop_tokens),
        )
        gen = Generation(iter(()))
        gen.pieces = self._run(list(prompt), sampling, stop_tokens, cancel, gen, cache_prefix, spec)
        return gen

    def _run(
        self,
        prompt: list[int],
        sampling: SamplingOptions,
        stop_tokens: frozenset[int],
        cancel: threading.Event | None,
        gen: Generation,
        cache_prefix: int,
        spec: speculate.Speculator | None,
    ) -> Iterator[str]:
        timings = gen.timings
        start = time.perf_counter()
        trim(self._memory, 0, self._cache, reusable(self._cache, prompt))
        keep = len(self._cache)
        # The model's own prefix (SYSTEM, MESSAGEs): from disk if it is there, else saved
        # once evaluated. The last prompt token is always run, for its logits.
        disk = self._prompt_cache
        prefix = prompt[:cache_prefix] if cache_prefix < len(prompt) else []
        save = False
        if disk is not None and len(prefix) >= prompt_cache.MIN_TOKENS and keep < len(prefix):
            state = disk.load(prefix)
            restored = state is not None and self._weights.restore_state(
                self._ctx, 0, disk, prefix, state
            )
            if restored:
                self._cache = list(prefix)
                keep = timings.disk_tokens = len(prefix)
            else:
                if state is not None:  # refused: the sequence was emptied
                    self._cache, keep = [], 0
                save = True
            del state  # llama.cpp holds its own copy now
        timings.cached_tokens = keep
        timings.prompt_tokens = len(prompt) - keep
        chain = sampler_chain(sampling, self.n_vocab, self.n_ctx)
        constrained = None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        batch = lc.llama_batch_init(1 + (spec.draft_max if spec else 0), 0, 1)
        try:
            if sampling.grammar:
                grammar = grammar_sampler(self._vocab, sampling.grammar)
                constrained = GrammarFirst(self.n_vocab, grammar, chain)
            if save and disk is not None:
                self._decode(prompt[keep : len(prefix)], self.options.num_batch)
                self._weights.save_state(self._ctx, 0, disk, prefix)
                keep = len(prefix)
            self._decode(prompt[keep:], self.options.num_batch)
            after_prompt = time.perf_counter()
            timings.prompt_s = after_prompt - start
            budget = sampling.num_predict
            if budget == -2 or budget < 0:
                budget = self.n_ctx
            vocab, ctx, cache = self._vocab, self._ctx, self._cache
            sample = constrained.sample if constrained else lc.llama_sampler_sample
            is_eog = lc.llama_vocab_is_eog
            decode, piece_bytes = lc.llama_decode, self._piece_bytes
            one, get_one = self._one, lc.llama_batch_get_one
            gen.done_reason = "length"
            row = -1  # the logits the next token is sampled from (-1: the prompt's last)
            carried = -1  # a token already sampled (where a draft was rejected)
            while True:
                if cancel is not None and cancel.is_set():
                    gen.done_reason = "cancelled"
                    break
                if carried >= 0:
                    token, carried = carried, -1
                else:
                    token = sample(chain, ctx, row)
                if is_eog(vocab, token) or token in stop_tokens:
                    gen.done_reason = "stop"
                    break
                timings.eval_tokens += 1
                gen.tokens.append(token)
                text = decoder.decode(piece_bytes(token))
                if text:
                    yield text  # before the decode: the reader sees each token a decode sooner
                if timings.eval_tokens >= budget or len(cache) >= self.n_ctx:
                    break  # no next token is needed (or there is no room for one): skip its decode
                # Room for drafts: the budget after this token, and the context after it.
                room = min(budget - timings.eval_tokens, self.n_ctx - len(cache) - 1)
                draft = spec.propose(token, room) if spec is not None else []
                if draft:
                    batch.n_tokens = put(batch, 0, (token, *draft), len(cache), 0, True)
                    rc = decode(ctx, batch)
                else:
                    one[0] = token
                    rc = decode(ctx, get_one(one, 1))
                if rc != 0:
                    self.reset()
                    raise EngineError("llama.cpp failed while generating")
                cache.append(token)
                row = -1
                if not draft:
                    continue
                # Keep the draft up to the first token the sampler does not choose.
                accepted = 0
                stopped = False
                for row, drafted in enumerate(draft):
                    chosen = sample(chain, ctx, row)
                    if chosen != drafted or is_eog(vocab, chosen) or chosen in stop_tokens:
                        carried = chosen
                        break
                    accepted += 1
                    timings.eval_tokens += 1
                    gen.tokens.append(chosen)
                    text = decoder.decode(piece_bytes(chosen))
                    if text:
                        yield text
                    if timings.eval_tokens >= budget:
                        stopped = True
                        break
                else:
                    row = len(draft)  # all kept: the next token comes from the last row
                cache.extend(draft[:accepted])
                lc.llama_memory_seq_rm(self._memory, 0, len(cache), -1)
                spec.settle(draft, accepted)  # type: ignore[union-attr]
                if stopped:
                    break
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            # Runs on exhaustion, on an error and when the consumer closes the stream early.
            now = time.perf_counter()
            if timings.prompt_s == 0.0:
                timings.prompt_s = now - start
            else:
                timings.eval_s = now - start - timings.prompt_s
            timings.total_s = now - start
            if spec is not None:
                timings.draft_tokens, timings.draft_accepted = spec.drafted, spec.accepted
            if gen.done_reason is None:
                gen.done_reason = "cancelled"
            lc.llama_batch_free(batch)
            lc.llama_sampler_free(chain)
            if constrained is not None:
                lc.llama_sampler_free(constrained.grammar)

    def logits(self, prompt: Sequence[int]) -> list[float]:
        """Evaluate `prompt` from scratch and return the logits of its last token."""
        self.reset()
        self._decode(list(prompt), self.options.num_batch)
        row = lc.llama_get_logits_ith(self._ctx, -1)
        if not row:
            raise EngineError("llama.cpp returned no logits")
        return list(row[: self.n_vocab])

    def close(self) -> None:
        if self._prompt_cache is not None:
            self._prompt_cache.flush()
        drafter = getattr(self, "_draft", None)  # None too when __init__ failed before it
        if drafter is not None:
            drafter.close()
            self._draft = None
        self._ctx = None
        self._weights.close()  # its context first

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def answer_ends(vocab: Any, stop_tokens: frozenset[int]) -> Callable[[int], bool]:
    """Whether a token ends the answer: the model's end of generation, or a stop token."""
    is_eog = lc.llama_vocab_is_eog
    return lambda token: bool(is_eog(vocab, token)) or token in stop_tokens


def trim(memory: Any, seq: int, cache: list[int], keep: int) -> None:
    """Cut sequence `seq` (holding `cache`) to its first `keep` tokens. A recurrent state
    (recurrent and hybrid models) cannot drop its last positions: it is emptied instead, and
    the tokens are evaluated again."""
    if keep < len(cache) and not lc.llama_memory_seq_rm(memory, seq, keep, -1):
        lc.llama_memory_seq_rm(memory, seq, -1, -1)
        keep = 0
    del cache[keep:]


def put(batch: Any, row: int, ids: Sequence[int], pos: int, seq: int, logits: bool) -> int:
    """Write `ids` into a llama_batch from `row` on, at positions `pos`.. of sequence `seq`,
    each with logits or none; returns the next free row (the caller sets n_tokens)."""
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
    return ContextOverflowError(
        f"the prompt is {n_prompt} tokens but the context holds {n_ctx}",
        hint=f"raise num_ctx (e.g. --param num_ctx={_next_pow2(n_prompt + 256)}, up "
        f"to the model's {n_ctx_train}) or shorten the prompt",
    )


def native_seed(seed: int) -> int:
    """A seed as llama.cpp's sampler takes it: any 64-bit seed (Ollama's clients send such) is
    reduced to 32 bits as Go's uint32() does; -1 is llama.cpp's random seed."""
    return int(lc.LLAMA_DEFAULT_SEED) if seed == -1 else seed % 2**32


def sampler_chain(s: SamplingOptions, n_vocab: int, n_ctx: int) -> Any:
    """A native sampler chain for `s`; the caller frees it with llama_sampler_free."""
    params = lc.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = lc.llama_sampler_chain_init(params)
    add = lc.llama_sampler_chain_add
    # The penalty sampler allocates its window up front: never more than the context.
    last_n = n_ctx if s.repeat_last_n < 0 else min(s.repeat_last_n, n_ctx)
    if last_n and (
        s.repeat_penalty != 1.0 or s.presence_penalty != 0.0 or s.frequency_penalty != 0.0
    ):
        # The penalty sampler visits every candidate (about 0.1 ms a token for a 49k
        # vocabulary). When penalties can only lower logits, at most last_n tokens move down,
        # so the k best after penalties are among the k + last_n best before: keeping those
        # first gives the same result at a third of the cost.
        lowers_only = (
            s.repeat_penalty >= 1.0 and s.presence_penalty >= 0 and s.frequency_penalty >= 0
        )
        keep = 1 if s.temperature <= 0 else s.top_k
        if lowers_only and keep > 0 and keep + last_n < n_vocab:
            add(chain, lc.llama_sampler_init_top_k(keep + last_n))
        add(
            chain,
            lc.llama_sampler_init_penalties(
                n_vocab,
                last_n,
                s.repeat_penalty,
                s.frequency_penalty,
                s.presence_penalty,
            ),
        )
    if s.temperature <= 0:
        add(chain, lc.llama_sampler_init_greedy())
        return chain
    if s.top_k > 0:
        add(chain, lc.llama_sampler_init_top_k(s.top_k))
    if 0 < s.typical_p < 1:
        add(chain, lc.llama_sampler_init_typical(s.typical_p, 1))
    if 0 < s.top_p < 1:
        add(chain, lc.llama_sampler_init_top_p(s.top_p, 1))
    if s.min_p > 0:
        add(chain, lc.llama_sampler_init_min_p(s.min_p, 1))
    add(chain, lc.llama_sampler_init_temp(s.temperature))
    add(chain, lc.llama_sampler_init_dist(native_seed(s.seed)))
    return chain


def grammar_sampler(vocab: Any, text: str) -> Any:
    """A native GBNF grammar sampler (root rule `root`); the caller frees it."""
    grammar = lc.llama_sampler_init_grammar(vocab, text.encode(), b"root")
    if not grammar:
        # The grammar comes from the request (format, response_format, tools): a client error.
        raise BadRequestError(
            "the output grammar could not be compiled",
            hint="simplify the JSON schema or the grammar",
        )
    return grammar


class GrammarFirst:
    """Grammar-constrained sampling the way llama.cpp's own common sampler does it.

    Applying a grammar to every candidate costs a walk of the grammar per vocabulary entry for
    every token (tens of thousands); instead sample freely, check only the chosen token against
    the grammar, and apply the grammar to all candidates only when that token is rejected.
    `sample` has llama_sampler_sample's signature, so a generation loop takes either.
    """

    def __init__(self, n_vocab: int, grammar: Any, chain: Any) -> None:
        import numpy as np

        self.grammar = grammar
        self.chain = chain
        self.n_vocab = n_vocab
        self.data = (lc.llama_token_data * self.n_vocab)()
        dtype = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        self.view = np.frombuffer(memoryview(self.data), dtype=dtype)
        self.ids = np.arange(self.n_vocab, dtype=np.int32)
        self.cur = lc.llama_token_data_array()
        self.one = (lc.llama_token_data * 1)()
        self.one_array = lc.llama_token_data_array()
        self.np = np

    def _fill(self, ctx: Any, idx: int) -> Any:
        row = lc.llama_get_logits_ith(ctx, idx)
        logits = self.np.ctypeslib.as_array(row, shape=(self.n_vocab,))
        self.view["id"] = self.ids
        self.view["logit"] = logits
        self.view["p"] = 0.0
        cur = self.cur
        cur.data = ctypes.cast(self.data, lc.llama_token_data_p)  # type: ignore[assignment]
        cur.size = self.n_vocab
        cur.selected = -1
        cur.sorted = False
        return ctypes.byref(cur)

    def _chosen(self) -> int:
        return int(self.cur.data[self.cur.selected].id)

    def sample(self, _chain: Any, ctx: Any, idx: int) -> int:
        lc.llama_sampler_apply(self.chain, self._fill(ctx, idx))
        token = self._chosen()
        self.one[0].id, self.one[0].logit, self.one[0].p = token, 1.0, 0.0  # type: ignore[assignment]
        single = self.one_array
        single.data = ctypes.cast(self.one, lc.llama_token_data_p)  # type: ignore[assignment]
        single.size, single.selected, single.sorted = 1, -1, False
        lc.llama_sampler_apply(self.grammar, ctypes.byref(single))
        if self.one[0].logit == float("-inf"):
            cur = self._fill(ctx, idx)
            lc.llama_sampler_apply(self.grammar, cur)
            lc.llama_sampler_apply(self.chain, cur)
            token = self._chosen()
        lc.llama_sampler_accept(self.grammar, token)
        lc.llama_sampler_accept(self.chain, token)
        return token


def _next_pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


# A character inside a JSON string, as llama.cpp's own C++ converter writes it: no raw control
# character (U+0000-U+001F, which JSON forbids unescaped) and no DEL. llama_cpp's Python port
# of the converter allows any character but '"' and '\\', so a schema-constrained answer could
# hold a raw newline in a string and fail to parse.
JSON_CHAR_RULE = r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'


def json_grammar() -> str:
    """llama.cpp's GBNF grammar for any JSON value (used for --format json).

    Its string rule already excludes raw control characters (tests check that it does).
    """
    from llama_cpp.llama_grammar import JSON_GBNF

    return str(JSON_GBNF)


def json_schema_grammar(schema: str) -> str:
    """A GBNF grammar for the JSON values the JSON schema `schema` (JSON text) accepts.

    llama_cpp's converter is pure Python (a port of llama.cpp's json_schema_to_grammar.py) and
    raises anything from KeyError to AssertionError on schemas it cannot handle: callers catch.
    Its `char` rule is replaced by JSON_CHAR_RULE, so every string of the answer is valid JSON.
    """
    from llama_cpp.llama_grammar import PRIMITIVE_RULES, json_schema_to_gbnf

    grammar = str(json_schema_to_gbnf(schema))
    loose = f"char ::= {PRIMITIVE_RULES['char'].content}"
    return "\n".join(
        f"char ::= {JSON_CHAR_RULE}" if line == loose else line for line in grammar.split("\n")
    )
