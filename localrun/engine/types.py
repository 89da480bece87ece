"""What the layers above see of an inference engine: options, timings, Engine and Sink protocols.

QueueSink reads a Sink as an iterator.

No llama_cpp here: the runner, the scheduler and the server import this module, and tests of
those layers swap in `engine.fake`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from localrun.errors import BadRequestError, EngineError, LocalrunError


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model: the load-time PARAMETERs, resolved (no 'auto' values left)."""

    num_ctx: int
    num_batch: int = 512
    num_thread: int = 1
    # Decode with fewer threads while other processes keep cores busy (engine.threads); off
    # when the user set num_thread.
    adapt_threads: bool = False
    num_gpu: int = 0
    main_gpu: int = 0
    use_mmap: bool = True
    adapters: tuple[tuple[str, float], ...] = ()  # (path, scale)
    splits: tuple[str, ...] = ()  # the further parts of a split model, in order
    draft: str | None = None  # a draft model of the same vocabulary (Modelfile DRAFT)
    draft_num_gpu: int = 0  # its layers on the GPU (all of them or none: fit.plan_fit)
    projector: str | None = None  # the model's multimodal projector (Modelfile PROJECTOR)
    # RPC workers (host:port) holding the offloaded layers, and llama.cpp's tensor_split over its
    # devices (hardware.split): the workers' first, then this machine's GPUs.
    workers: tuple[str, ...] = ()
    tensor_split: tuple[float, ...] = ()


@dataclass(frozen=True)
class SamplingOptions:
    """The sampling PARAMETERs, one to one; defaults are Ollama's."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1
    num_predict: int = -1
    stop: tuple[str, ...] = ()
    # The answer's grammar, llguidance's (engine.sampling.constraint: Lark, JSON schemas as %json):
    # format, response_format, forced calls. Set by the runner per request, never a PARAMETER.
    constraint: str | None = None
    # Where the constraint starts, when it is lazy (a strict tool's call under tool_choice
    # "auto"): the markers that open a call. It applies from the first byte of one until its
    # call is whole, then waits for the next. Empty: it applies from the answer's first token.
    triggers: tuple[str, ...] = ()
    # A reasoning section's open and close tags, and whether the answer starts inside one: a
    # trigger written while the model reasons opens no call.
    reasoning: tuple[str, str, bool] | None = None
    # The answer's JSON schema (its text) where its items depend on each other (uniqueItems,
    # contains), held while it is written (engine.sampling.schema_items). Set by the runner, never
    # a PARAMETER.
    watch: str | None = None
    speculate: str = "auto"  # engine.speculation.speculator.MODES
    draft_num_predict: int = (
        64  # the longest draft (engine.speculation.speculator.DEFAULT_DRAFT_MAX)
    )
    # Log-probabilities of each generated token and of its `logprobs` likeliest alternatives
    # (-1: none asked for; 0: the chosen token's alone). Not a PARAMETER: set per request.
    logprobs: int = -1
    # With `logprobs`: the entry of the token that ends the answer too (GenRequest's).
    logprobs_end: bool = False
    # Log-probabilities of the prompt's own tokens, each with its `prompt_logprobs` likeliest
    # alternatives (-1: none asked for): the whole prompt is read again, with logits at every
    # row (engine.scoring). Not a PARAMETER: set per request.
    prompt_logprobs: int = -1
    # Added to the logits of these tokens before sampling (-inf: never). Set per request.
    logit_bias: tuple[tuple[int, float], ...] = ()
    # Tokens whose log-probabilities (raw, as `logprobs`') each generated token's entry also
    # carries, as "candidates" (GenRequest.candidates' first tokens). Set per request.
    candidates: tuple[int, ...] = ()
    # Spell special tokens in the answer (gpt-oss's channel markers, which the answer is split
    # by); set by the runner from the template, never a PARAMETER.
    special: bool = False
    # These special tokens alone spelled out (a family's call and reasoning markers, as
    # llama-server's preserved tokens); set by the runner, never a PARAMETER.
    spell: frozenset[int] = frozenset()
    # Whom this answer is remembered for, and whose earlier answers to the same prompt drafts
    # may copy (engine.speculation.answers); None: neither. Set by the server per request, never a
    # PARAMETER.
    memory: str | None = None
    # The request's own context (its num_ctx; 0: the slot's whole context): a prompt past it is
    # refused and the answer stops at its end, as in a slot of that context, whatever the slot's
    # is. Set by the runner per request from the num_ctx the scheduler wrote, never a PARAMETER.
    context: int = 0

    def within(self, n_ctx: int) -> int:
        """The context this request is held to: its own within the slot's `n_ctx`.

        A runner answers a request of a smaller context than it was loaded with exactly as a runner
        loaded with that context would (scheduler.runners.Runner.matches).
        """
        return min(self.context, n_ctx) if self.context > 0 else n_ctx

    @classmethod
    def from_params(cls, params: dict[str, Any], **extra: Any) -> SamplingOptions:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in params.items() if k in names}
        if "stop" in values:
            stop = values["stop"]
            values["stop"] = tuple(stop if isinstance(stop, list | tuple) else [stop])
        values.update(extra)
        return cls(**values)


# What is embedded: a text, or token ids (OpenAI's clients may send those, e.g. langchain's).
EmbedInput = str | list[int]


@dataclass(frozen=True)
class FimTokens:
    """A model's fill-in-the-middle tokens; -1 where absent.

    llama.cpp finds them from the GGUF's tokenizer.ggml.fim_*_token_id keys, or from the
    well-known FIM token texts.
    """

    pre: int
    suf: int
    mid: int
    pad: int = -1
    rep: int = -1  # repository name (repo-level FIM), as llama-server uses it
    sep: int = -1  # file separator
    bos: int = -1  # put first when the model adds a BOS token


@dataclass
class Timings:
    """Counts and durations of one generation, as Ollama reports them."""

    load_s: float = 0.0
    prompt_tokens: int = 0  # tokens of the prompt evaluated now
    cached_tokens: int = 0  # tokens of the prompt reused from the KV cache
    prompt_s: float = 0.0
    eval_tokens: int = 0
    eval_s: float = 0.0
    total_s: float = 0.0
    disk_tokens: int = 0  # of cached_tokens, those restored from the disk prompt cache
    draft_tokens: int = 0  # tokens proposed by speculative decoding
    draft_accepted: int = 0  # of those, kept (each one a decode saved)
    checkpoint_bytes: int = 0  # what its slot's checkpoints take after it (engine.checkpoints)

    @property
    def prompt_rate(self) -> float:
        return self.prompt_tokens / self.prompt_s if self.prompt_s > 0 else 0.0

    @property
    def eval_rate(self) -> float:
        return self.eval_tokens / self.eval_s if self.eval_s > 0 else 0.0


@dataclass
class Generation:
    """A stream of text pieces; `done_reason` and `timings` are final once it is exhausted.

    done_reason: "stop" (end of turn or a stop sequence), "length" (num_predict or the context
    is full) or "cancelled". Closing the iterator early ends the generation cleanly.
    """

    pieces: Iterator[str]
    timings: Timings = field(default_factory=Timings)
    done_reason: str | None = None
    tokens: list[int] = field(default_factory=list)  # the generated token ids

    def __iter__(self) -> Iterator[str]:
        return self.pieces

    def close(self) -> None:
        close = getattr(self.pieces, "close", None)
        if close is not None:
            close()


class Sink(Protocol):
    """Receives one request's output from a batch engine, on its thread: it must return quickly.

    A sink whose piece() raises is taken to have no reader left: its request is cancelled.
    """

    def piece(self, text: str, logprobs: list[dict[str, Any]] | None = None) -> None:
        """Text of the answer, with the entries of the tokens it ends where logprobs are asked.

        Entries are in protocol.Chunk's format; a token inside a character comes with the next
        text.
        """
        ...

    def scored(self, entries: list[dict[str, Any]]) -> None:
        """Entries of the prompt's own tokens, in order, a chunk at a time (engine.scoring).

        They come only when SamplingOptions.prompt_logprobs asked, the first without a
        log-probability. They all come before the answer's first piece.
        """
        ...

    def done(self, reason: str, timings: Timings, tokens: list[int]) -> None:
        """The end: reason is "stop", "length" or "cancelled"."""
        ...

    def error(self, exc: LocalrunError) -> None:
        """The request failed (instead of done)."""
        ...


def reusable(cache: Sequence[int], prompt: Sequence[int]) -> int:
    """How many leading tokens of `prompt` a KV cache holding `cache` can keep.

    That is their common prefix, never the last prompt token: it is always run, for its logits.
    """
    n = min(len(cache), len(prompt) - 1)
    if n <= 0:
        return 0
    a, b = list(cache[:n]), list(prompt[:n])
    if a == b:  # a chat's next request holds the whole cache: one comparison in C
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]: halved with slices compared in C
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class Ticket(Protocol):
    def cancel(self) -> None:
        """Stop the request within a token; its sink gets done("cancelled"). Idempotent."""
        ...


class Engine(Protocol):
    """A loaded model serving `n_slots` sequences (engine.batch.BatchEngine).

    engine.fake's FakeBatchEngine stands in for it in tests of the layers above.
    """

    n_ctx: int  # per slot
    n_ctx_train: int
    n_slots: int
    n_vocab: int
    bos_text: str
    eos_text: str
    chat_template: str | None  # the GGUF's tokenizer.chat_template
    fim: FimTokens | None  # None: the model cannot fill in the middle
    load_s: float
    # Why the disk prompt cache is off for this model (None: it is on, or turned off).
    prompt_cache_note: str | None

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]: ...

    def token_ids(self, text: str) -> list[int]:
        """The ids of `text` when it is one special token (e.g. '<|im_end|>'), else []."""
        ...

    def token_bytes(self, token: int) -> bytes: ...

    def media_prompt(self, text: str, media: Sequence[Any], *, add_special: bool) -> Any:
        """Text with images or audio (localrun.request.media) as a prompt for submit's `media`."""
        ...

    def submit(
        self,
        prompt: Sequence[int],
        sampling: SamplingOptions,
        *,
        stop_tokens: frozenset[int] = frozenset(),
        sink: Sink,
        cache_prefix: int = 0,
        media: Any = None,
    ) -> Ticket: ...

    def embed(
        self, texts: Sequence[EmbedInput], *, truncate: bool = True, query: str | None = None
    ) -> tuple[list[list[float]], int]: ...

    def close(self) -> None: ...


class QueueSink:
    """A Sink whose output another thread reads as a Generation (BatchEngine.generate).

    Once `stop` is set, the engine is told at its next piece: a sink that raises has no reader left.
    So the request ends within a token, however far behind the reader is.
    """

    def __init__(self, stop: threading.Event | None = None) -> None:
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stop = stop

    def piece(self, text: str, logprobs: list[dict[str, Any]] | None = None) -> None:
        self._items.put(text)
        if self._stop is not None and self._stop.is_set():
            raise EngineError("the reader stopped the answer")

    def scored(self, entries: list[dict[str, Any]]) -> None:
        """Prompt entries: a reader of text alone has no use for them."""

    def done(self, reason: str, timings: Timings, tokens: list[int]) -> None:
        self._items.put((reason, timings, tokens))

    def error(self, exc: LocalrunError) -> None:
        self._items.put(exc)

    def generation(self, cancel: Callable[[], None]) -> Generation:
        """The output as a Generation; closing it early calls `cancel` and awaits the end."""
        gen = Generation(iter(()))
        gen.pieces = self._pieces(gen, cancel)
        return gen

    def _pieces(self, gen: Generation, cancel: Callable[[], None]) -> Iterator[str]:
        ended = False
        try:
            while True:
                item = self._items.get()
                if isinstance(item, str):
                    if item:
                        yield item
                    continue
                ended = True
                if isinstance(item, LocalrunError):
                    raise item
                gen.done_reason, gen.timings, gen.tokens = item
                return
        finally:
            if not ended:  # closed early: the request is cancelled, and its end awaited
                cancel()
                self._drain(gen)

    def _drain(self, gen: Generation) -> None:
        while True:
            item = self._items.get()
            if isinstance(item, LocalrunError):
                return
            if isinstance(item, tuple):
                gen.done_reason, gen.timings, gen.tokens = item
                gen.done_reason = "cancelled"
                return


def rank_mismatch(rank: bool) -> BadRequestError:
    """The error for a reranker asked to embed or generate, or a non-reranker asked to rerank.

    The real engine and the fake word it alike.
    """
    if rank:
        return BadRequestError(
            "this model is a reranker: it scores documents against a query and makes no "
            "embeddings or text",
            hint="send it to /v1/rerank with a query and documents",
        )
    return BadRequestError(
        "this model cannot rerank: its GGUF names no rank pooling",
        hint="rerank with a reranker model; `localrun search rerank` lists some",
    )
