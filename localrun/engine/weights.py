"""A llama.cpp model in memory: its weights, vocabulary and LoRA adapters, and its contexts.

llama.cpp's log is kept for the errors it explains. Every file is structure-checked by
`localrun.gguf.scan.scan` before llama.cpp opens it. Every failure is translated into a typed
error here, where llama_cpp is called.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import threading
from typing import Any

from localrun.engine.library import native
from localrun.engine.library.machine import machine_params
from localrun.engine.library.native import lc
from localrun.engine.prompts import disk_cache as prompt_cache
from localrun.engine.prompts import prefix_tokens
from localrun.engine.sampling import constraint
from localrun.engine.types import FimTokens, LoadOptions
from localrun.errors import BadRequestError, EngineError, ModelLoadError
from localrun.gguf import scan
from localrun.settings import config, limits

# Texts shorter than this hold too few special tokens to matter: they are not counted.
_SPECIALS_CHECKED_PAST = 64 * 1024

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


def native_log() -> Any:
    """The log callback llama.cpp's libraries get (libmtmd's too): kept, shown when debugging."""
    return _log


_debug = False


def ready() -> None:
    """llama.cpp's backend initialised and its log kept (not printed unless debugging)."""
    global _initialised, _debug
    with _init_lock:
        if _initialised:
            return
        _debug = config.debug()
        lc.llama_log_set(_log, ctypes.c_void_p(0))
        lc.llama_backend_init()
        _initialised = True


def last_log_error() -> str:
    """The line of llama.cpp's recent log that says what failed."""
    lines = [line.strip() for line in "".join(_log_tail).splitlines() if line.strip()]
    # "error loading model: <reason>" says why; "failed to load model" only that it did.
    errors = [line for line in lines if "error" in line.lower()]
    failures = [line for line in lines if "failed" in line.lower()]
    return (errors or failures or lines or ["no details"])[-1][:300]


def _join_workers(options: LoadOptions, mparams: Any) -> Any:
    """Register the load's RPC workers with ggml, name its devices and set its tensor_split.

    Once a process has joined workers, every load names its devices: the workers it asked for,
    then this machine's GPUs (none of another load's workers). Returns the arrays to keep.
    """
    from localrun.runtimes import rpc

    if not options.workers and not rpc.joined():
        return None
    from localrun.runtimes import ggml

    lib = ggml.library(native.libllama_path())
    if options.workers:
        reg = rpc.registry(lib, lc.__version__)
        for endpoint in options.workers:
            rpc.join(lib, reg, endpoint)
    handles = rpc.devices(lib, options.workers)
    devices = (ctypes.c_void_p * (len(handles) + 1))(*handles, None)  # NULL-terminated
    mparams.devices = ctypes.addressof(devices)
    if not options.tensor_split:
        return devices
    split = (ctypes.c_float * lc.llama_max_devices())()
    for index, share in enumerate(options.tensor_split[: len(split)]):
        split[index] = share
    mparams.tensor_split = split
    return devices, split


class Weights:
    """A llama.cpp model in memory (weights, vocabulary, LoRA adapters) that contexts are made from.

    The engine (engine.batch), its draft model (engine.speculation.draft) and its embedder
    (engine.embed) each call `context` for theirs, and the adapters are applied to every context
    made. The contexts belong to the weights: `close` frees them before the model, the order
    llama.cpp needs.
    """

    def __init__(self, path: str, options: LoadOptions) -> None:
        ready()
        header = scan.scan(path)  # raises InvalidGGUFError before llama.cpp sees the file
        for other in (*options.splits, *(adapter for adapter, _ in options.adapters)):
            scan.scan(other)
        self.path = path
        self.header = header
        self.model: Any = None
        self.adapters: list[Any] = []
        self._contexts: list[Any] = []
        self.scales = [scale for _, scale in options.adapters]
        _log_tail.clear()
        mparams = machine_params().apply(lc.llama_model_default_params())
        mparams.n_gpu_layers = options.num_gpu
        mparams.main_gpu = options.main_gpu
        mparams.use_mmap = options.use_mmap
        self._split = _join_workers(options, mparams)
        if options.splits:
            paths = [p.encode() for p in (path, *options.splits)]
            array = (ctypes.c_char_p * len(paths))(*paths)
            self.model = lc.llama_model_load_from_splits(array, len(paths), mparams)
        else:
            self.model = lc.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise ModelLoadError(
                f"llama.cpp could not load {path}: {last_log_error()}",
                hint="the file may be for an architecture this llama.cpp does not support; "
                "run with LOCALRUN_DEBUG=1 for its log",
            )
        try:
            for adapter_path, _ in options.adapters:
                adapter = lc.llama_adapter_lora_init(self.model, adapter_path.encode())
                if not adapter:
                    raise ModelLoadError(
                        f"llama.cpp could not load the LoRA adapter {adapter_path}: "
                        f"{last_log_error()}",
                        hint="the adapter must be made for this base model",
                    )
                self.adapters.append(adapter)
        except BaseException:
            self.close()
            raise
        vocab = lc.llama_model_get_vocab(self.model)
        assert vocab is not None  # the loaded model's own vocabulary: never NULL
        self.vocab = vocab
        self.n_ctx_train = int(lc.llama_model_n_ctx_train(self.model))
        self.n_vocab = int(lc.llama_vocab_n_tokens(vocab))
        self.bos_text = self._special_text(int(lc.llama_vocab_bos(vocab)))
        self.eos_text = self._special_text(int(lc.llama_vocab_eos(vocab)))
        template = header.metadata.get("tokenizer.chat_template")
        self.chat_template: str | None = template if isinstance(template, str) else None
        self.fim = self._fim_tokens()
        self._piece = ctypes.create_string_buffer(256)
        # Each token's bytes, spelled once: a lookup costs a fiftieth of llama_token_to_piece
        # after a decode has pushed the vocabulary out of the caches.
        self._pieces: list[bytes | None] = [None] * self.n_vocab
        self._guide: Any = None
        self._guide_lock = threading.Lock()
        self.identity = {
            "model": [prompt_cache.file_identity(p) for p in (path, *options.splits)],
            "adapters": [[prompt_cache.file_identity(a), s] for a, s in options.adapters],
            "llama_cpp": str(getattr(lc, "__version__", "")),
            "num_gpu": options.num_gpu,
            "kv": "f16",
        }

    @functools.cached_property
    def memory(self) -> str:
        """What the model's memory of a sequence is (engine.checkpoints).

        "positions" is a KV entry per position, cut anywhere. "window" is a sliding window's last
        positions beside global layers (Gemma 2 and 3, gpt-oss). "recurrent" is one state (Mamba and
        RWKV). "hybrid" is a recurrent state beside attention KV (LFM2, Granite 4, Qwen3.5, Jamba).
        """
        if lc.llama_model_is_recurrent(self.model):
            return "recurrent"
        if lc.llama_model_is_hybrid(self.model):
            return "hybrid"
        if self.window > 0 and not self.full_window:
            return "window"
        return "positions"

    @functools.cached_property
    def full_window(self) -> bool:
        """Whether a sliding window's cache is kept full-size: on the exact runtime alone.

        A window checkpoint restored puts its cells at other indices of the cache than a cold read
        did. The exact runtime's attention sums a row's cells in segments of the cache's indices, so
        the same tokens would differ in their last bits (seen on Gemma 3: -0.01270 against -0.01489
        for one log-probability). A full-size cache, per position, is cut and never restored. It
        keeps the answer exact, for as much memory as the global layers take.
        """
        from localrun.runtimes import exact

        return self.window > 0 and exact.current().runtime is not None

    @functools.cached_property
    def window(self) -> int:
        """The sliding window of the model's local attention layers, in tokens (0: none)."""
        return max(0, int(lc.llama_model_n_swa(self.model)))

    def disk_cache(self, ctx: Any) -> prompt_cache.PromptCache | None:
        """The disk prompt cache for a context of these weights, or None.

        None means it is turned off, or the model has a sliding window on the exact runtime. A saved
        state there leaves out the positions its window no longer sees. Restored, the rest lands on
        other cells of the cache, which the exact attention would sum in another order.
        """
        if self.full_window:
            return None
        identity = {
            **self.identity,
            "n_ctx": int(lc.llama_n_ctx_seq(ctx)),
            # A context has one KV stream per slot (engine.batch), and llama.cpp restores a
            # sequence's state only into a context of as many streams: `localrun run` (one
            # slot) and servers of other num_parallel keep entries apart rather than replace
            # each other's.
            "streams": int(lc.llama_n_seq_max(ctx)),
        }
        return prompt_cache.PromptCache.from_config(identity)

    def state_bound(self, n_tokens: int) -> int:
        """The most bytes a saved state of `n_tokens` can take.

        That is K and V of every layer at 8 bytes an element of the model's width, and 16 MiB for
        the rest (1 GiB where the memory is not per position). llama.cpp keeps K and V at 2 bytes by
        default, and heads wider than the model's width stay within that. A cache entry past the
        bound is damaged or hostile (a sparse 1.9 GB file cost 2.16 GB to read).
        """
        rest = 16 << 20 if self.memory == "positions" else 1 << 30  # and a recurrent state
        return n_tokens * self._state_per_token + rest

    @functools.cached_property
    def _state_per_token(self) -> int:
        return (
            int(lc.llama_model_n_layer(self.model)) * 2 * int(lc.llama_model_n_embd(self.model)) * 8
        )

    def save_state(
        self, ctx: Any, seq: int, cache: prompt_cache.PromptCache, prefix: list[int]
    ) -> None:
        """Hand the KV state of sequence `seq` (holding exactly `prefix`) to the cache."""
        seq_id = lc.llama_seq_id(seq)
        size = int(lc.llama_state_seq_get_size(ctx, seq_id))
        if size <= 0:
            return
        buf = (ctypes.c_uint8 * size)()
        written = int(lc.llama_state_seq_get_data(ctx, buf, size, seq_id))
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
        """Put a saved state into sequence `seq`, emptied first.

        False when llama.cpp refuses it; the cache entry is then removed.
        """
        memory = native.memory(ctx)
        lc.llama_memory_seq_rm(memory, seq, -1, -1)
        buf = (ctypes.c_uint8 * len(state)).from_buffer(state)  # no copy
        restored = int(lc.llama_state_seq_set_data(ctx, buf, len(state), lc.llama_seq_id(seq))) > 0
        if restored and int(lc.llama_memory_seq_pos_max(memory, seq)) + 1 == len(prefix):
            return True
        lc.llama_memory_seq_rm(memory, seq, -1, -1)
        cache.discard(prefix)
        return False

    def _fim_tokens(self) -> FimTokens | None:
        v = self.vocab
        pre, suf = int(lc.llama_vocab_fim_pre(v)), int(lc.llama_vocab_fim_suf(v))
        mid = int(lc.llama_vocab_fim_mid(v))
        if min(pre, suf, mid) < 0:
            return None
        bos = int(lc.llama_vocab_bos(v)) if lc.llama_vocab_get_add_bos(v) else -1
        return FimTokens(
            pre=pre,
            suf=suf,
            mid=mid,
            pad=int(lc.llama_vocab_fim_pad(v)),
            rep=int(lc.llama_vocab_fim_rep(v)),
            sep=int(lc.llama_vocab_fim_sep(v)),
            bos=bos,
        )

    def context_params(self, options: LoadOptions, n_ctx: int) -> Any:
        """llama_context_params for `options`, with `n_ctx` tokens in all.

        Flash attention stays at llama.cpp's auto (on where the backend has it, as in
        llama-server). On a CPU it makes a small verification batch dearer once the context
        is long (llama-bench, SmolLM2 on two cores: 16 rows at depth 600 cost 1.18x, at 1000
        1.47x what they cost without it), but one-token decodes at a short depth (1.05-1.10x)
        and prompts (1.1-1.25x) are faster with it, and a context is built with one or the
        other: turning it off would slow every answer to speed up some drafts.
        """
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = options.num_batch
        cparams.n_ubatch = min(options.num_batch, 512)
        cparams.n_threads = options.num_thread
        cparams.n_threads_batch = options.num_thread
        cparams.no_perf = True
        # A sliding window's cache holds the window alone, as llama-server's does (checkpoints
        # stand in for the positions it drops: engine.checkpoints); full-size on the exact
        # runtime (`full_window`). A full-size one costs as much memory as the global layers:
        # 13 GB more for Gemma 3 27B at 32k.
        cparams.swa_full = self.full_window
        return cparams

    def context(self, cparams: Any) -> Any:
        """A new llama.cpp context with the adapters applied; `free` or `close` frees it."""
        ctx = lc.llama_init_from_model(self.model, cparams)
        if not ctx:
            raise ModelLoadError(
                f"llama.cpp could not create a context of {cparams.n_ctx} tokens: "
                f"{last_log_error()}",
                hint="lower num_ctx (--param num_ctx=2048) or free some memory",
            )
        if self.adapters:
            n = len(self.adapters)
            handles = (lc.llama_adapter_lora_p_ctypes * n)(*self.adapters)
            scales = (ctypes.c_float * n)(*self.scales)
            if lc.llama_set_adapters_lora(ctx, handles, n, scales) != 0:
                lc.llama_free(ctx)
                raise ModelLoadError(
                    f"llama.cpp could not apply the LoRA adapters: {last_log_error()}"
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
        """The tokens of `text`.

        `add_special` adds the BOS and EOS the vocabulary adds. With `parse_special`, special
        tokens' texts are read as them. A long prompt with special tokens parsed is tokenized again
        only past what a recent one shared with it (engine.prompts.prefix_tokens).
        """
        prefix = self._prefix if parse_special else None
        if prefix is None or len(text) < prefix_tokens.LEAST:
            return self._tokenize(text, add_special=add_special, parse_special=parse_special)
        middle = prefix.tokens(text)
        if not add_special:
            return middle
        v = self.vocab  # what llama_tokenize adds with add_special (SentencePiece, BPE)
        lead = [int(lc.llama_vocab_bos(v))] if lc.llama_vocab_get_add_bos(v) else []
        trail = [int(lc.llama_vocab_eos(v))] if lc.llama_vocab_get_add_eos(v) else []
        return lead + middle + trail

    @functools.cached_property
    def _prefix(self) -> prefix_tokens.PrefixTokens | None:
        """The cache of recent prompts' tokens, or None for a vocabulary it cannot serve.

        It serves the vocabularies whose special tokens part a text as engine.prompts.prefix_tokens
        needs: SentencePiece's and BPE's.
        """
        kind = int(lc.llama_vocab_type(self.vocab))
        if kind not in (lc.LLAMA_VOCAB_TYPE_SPM, lc.LLAMA_VOCAB_TYPE_BPE):
            return None
        specials = dict(zip(self._special_ids, self._special_texts, strict=True))

        def whole(text: str) -> list[int]:
            return self._tokenize(text, add_special=False, parse_special=True)

        return prefix_tokens.PrefixTokens(whole, specials)

    def _tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        if len(data) > _SPECIALS_CHECKED_PAST:
            if parse_special:
                self._check_specials(text)
            self._check_fallback(text)
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

    def _check_specials(self, text: str) -> None:
        """Refuse a text with more special tokens than LOCALRUN_MAX_SPECIAL_TOKENS.

        llama.cpp reads them in time quadratic in their number: 100k took minutes, holding the
        runner.
        """
        most = limits.max_special_tokens()
        found = 0
        for special in self._special_texts:
            found += text.count(special)
            if found > most:
                raise BadRequestError(
                    f"the text holds more than {most} special tokens",
                    hint="send less text, tokenize it with parse_special false, or raise "
                    "LOCALRUN_MAX_SPECIAL_TOKENS",
                )

    def _check_fallback(self, text: str) -> None:
        """Refuse a text with more unknown characters than LOCALRUN_MAX_BYTE_FALLBACK.

        They are the characters a SentencePiece vocabulary lacks. llama.cpp spells each byte by
        byte, in time quadratic in their number (on the tiny test vocabulary: 100k of them 2 s, 200k
        7.8 s, 2 MB of CJK minutes).
        """
        known = self._single_chars
        if known is None:
            return
        most = limits.max_byte_fallback()
        lacking = len(text.translate(known))
        if lacking > most:
            raise BadRequestError(
                f"the text holds {lacking} characters that the model's vocabulary spells byte "
                f"by byte, more than {most}",
                hint="send less text, or raise LOCALRUN_MAX_BYTE_FALLBACK",
            )

    @functools.cached_property
    def _single_chars(self) -> dict[int, None] | None:
        """A str.translate table deleting the characters the vocabulary has as tokens of their own.

        SentencePiece's "▁" counts as the space it stands for. None unless the vocabulary is
        SentencePiece's, whose byte fallback is quadratic.
        """
        if int(lc.llama_vocab_type(self.vocab)) != lc.LLAMA_VOCAB_TYPE_SPM:
            return None
        table: dict[int, None] = {}
        for token in range(self.n_vocab):
            piece = lc.llama_vocab_get_text(self.vocab, token) or b""
            text = piece.decode("utf-8", errors="replace").replace("\u2581", " ")
            if len(text) == 1:
                table[ord(text)] = None
        return table

    @functools.cached_property
    def _specials(self) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """The tokens llama.cpp reads as special (control, user-defined, unknown), with texts."""
        wanted = (
            lc.LLAMA_TOKEN_ATTR_CONTROL
            | lc.LLAMA_TOKEN_ATTR_USER_DEFINED
            | lc.LLAMA_TOKEN_ATTR_UNKNOWN
        )
        ids, texts = [], []
        for token in range(self.n_vocab):
            if int(lc.llama_vocab_get_attr(self.vocab, token)) & wanted:
                piece = lc.llama_vocab_get_text(self.vocab, token)
                if piece:
                    ids.append(token)
                    texts.append(piece.decode("utf-8", errors="replace"))
        return tuple(ids), tuple(texts)

    @property
    def _special_texts(self) -> tuple[str, ...]:
        return self._specials[1]

    @property
    def _special_ids(self) -> tuple[int, ...]:
        return self._specials[0]

    def is_control(self, token: int) -> bool:
        """Whether `token` is a control token (a chat template's `<|im_end|>`).

        An id outside the vocabulary (a medium's placeholder) is not.
        """
        return 0 <= token < self.n_vocab and bool(lc.llama_vocab_is_control(self.vocab, token))

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
        piece = self._pieces[token] if 0 <= token < self.n_vocab else None
        if piece is not None:
            return piece
        n = lc.llama_token_to_piece(self.vocab, token, self._piece, 256, 0, False)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, big, -n, 0, False)
            piece = big.raw[:n]
        else:
            piece = self._piece.raw[:n]
        if 0 <= token < self.n_vocab:
            self._pieces[token] = piece
        return piece

    def guide(self) -> Any:
        """llguidance's tokenizer of this vocabulary, for constrained answers.

        It is built on the first constrained request (engine.sampling.constraint) and kept while
        the weights are.
        """
        with self._guide_lock:
            if self._guide is None:
                self._guide = constraint.tokenizer(self.vocab)
            return self._guide

    def token_bytes(self, token: int) -> bytes:
        """The bytes of one token, special tokens spelled out. Safe from any thread.

        They are as llama-server's /detokenize and /tokenize's pieces show them. Its buffer is
        its own.
        """
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
