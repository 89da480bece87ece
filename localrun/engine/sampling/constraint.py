"""Constrained sampling with llguidance: the tokens a grammar allows next, as a mask.

A request that constrains its answer (a JSON schema's `format`, `response_format`, `text.format`,
a forced tool call) carries an llguidance grammar (`SamplingOptions.constraint`). It is Lark text,
with JSON schemas inside it as `%json {...}`. It is compiled here against the model's vocabulary as
the GGUF gives it, special tokens included. llguidance walks the grammar with a lazy lexer and an
Earley parser over the token trie. A mask costs tens of microseconds, and recursive schemas (trees,
JSON itself) are grammars like any other.

Sampling stays llama.cpp's common sampler's way (engine.sampling.sampler). The token the chain
chooses is checked alone (`allows`, no mask). Only a rejected one costs the mask over the whole
vocabulary (`restrict`); the chain then chooses again among the allowed tokens. Where a CPU is idle
while the batch decodes, the whole mask is computed ahead instead (`Constraint.ahead`).
"""

from __future__ import annotations

import ctypes
from concurrent.futures import Executor, Future
from typing import Any

import llguidance

from localrun.engine.library.native import lc
from localrun.engine.sampling.grammar_guard import HINT, LIMITS, message
from localrun.errors import BadRequestError, EngineError


def tokenizer(vocab: Any) -> Any:
    """llguidance's tokenizer for a llama.cpp vocabulary: each token's bytes, and its ends.

    It takes about a second for a 150k vocabulary, so the weights build it once, on the first
    constrained request (engine.weights.Weights.guide). A control token's bytes are marked special
    with a 0xFF byte before them (a grammar names it `<[id]>`). The ends of generation end the
    grammar's answer. A user-defined token (Qwen's `<tool_call>`, `<think>`) is its text, as the
    worker's markers take it (Weights.token_ids). So a grammar's literal `<tool_call>` is that token
    or its spelling alike.
    """
    n_vocab = int(lc.llama_vocab_n_tokens(vocab))
    buffer = ctypes.create_string_buffer(_PIECE + 1)
    tokens: list[bytes] = []
    ends: list[int] = []
    control = lc.LLAMA_TOKEN_ATTR_CONTROL
    for token in range(n_vocab):
        n = lc.llama_token_to_piece(vocab, token, buffer, _PIECE, 0, True)
        if n < 0:
            raise EngineError(f"token {token} of the vocabulary is longer than {_PIECE} bytes")
        piece = buffer.raw[:n]
        attr = lc.llama_vocab_get_attr(vocab, token)
        if attr & control:
            piece = b"\xff" + piece
        tokens.append(piece)
        if lc.llama_vocab_is_eog(vocab, token):
            ends.append(token)
    address = ctypes.cast(lc.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    return llguidance.LLTokenizer.from_llamacpp(  # type: ignore[attr-defined]
        tokens=tokens,
        vocab_ptr=vocab,
        tokenize_fptr=address,
        eos_token=ends or [int(lc.llama_vocab_eos(vocab))],
    )


_PIECE = 16 * 1024  # the longest token's bytes


def check(grammar: str) -> None:
    """Raise BadRequestError when llguidance will not take `grammar`, without a vocabulary.

    It serves the tests and scripts/measure/structured.py. The engine compiles a request's grammar
    with its model's vocabulary.
    """
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, limits=LIMITS)
    if failed:
        raise BadRequestError(message(messages[0]), hint=HINT)


class Constraint:
    """One answer's grammar, as llguidance follows it token by token."""

    def __init__(self, tokens: Any, grammar: str, n_vocab: int) -> None:
        import numpy as np

        self.np: Any = np
        self.n_vocab = n_vocab
        self.tokens = tokens
        self.matcher = llguidance.LLMatcher(tokens, grammar, log_level=0, limits=LIMITS)
        if self.matcher.is_error():
            raise BadRequestError(message(self.matcher.get_error()), hint=HINT)
        words = (n_vocab + 31) // 32
        self.mask = np.zeros(words, dtype=np.int32)
        self._pending: Future[None] | None = None  # the mask being computed ahead
        self._fresh = False  # the mask is the one of the grammar's state now

    def ahead(self, pool: Executor) -> None:
        """Compute the next token's mask on `pool`'s thread while the batch decodes.

        `allows` and `restrict` then read it. The engine asks for it where a CPU is left idle (the
        model on a GPU, or fewer decode threads than CPUs; LOCALRUN_MASKS_AHEAD). llguidance lets go
        of the GIL, as llama_decode does, so the check and the mask are off the path from one token
        to the next. The matcher is the mask thread's until the sampler next needs it (`_settled`:
        every use of the matcher waits for it first).
        """
        if self._pending is None and not self._fresh:
            self._pending = pool.submit(self._compute)

    def allows(self, token: int) -> bool:
        """Whether the grammar takes `token` next, its state unchanged.

        A mask computed ahead answers for the tokens it allows. One it leaves out is asked of the
        matcher: where text is forced, the mask holds its canonical spelling alone, and the matcher
        takes the model's other spellings of it too.
        """
        if self._settled() and (int(self.mask[token >> 5]) >> (token & 31)) & 1:
            return True
        return bool(self.matcher.validate_tokens([token]) == 1)

    def restrict(self, logits: Any) -> None:
        """Set the logits of every token the grammar does not take next to -inf.

        `logits` is the candidates' array over the whole vocabulary, in vocabulary order.
        """
        np = self.np
        if not self._settled():
            self._compute()
            self._fresh = True
        allowed = np.unpackbits(self.mask.view(np.uint8), bitorder="little", count=self.n_vocab)
        logits[allowed == 0] = -np.inf

    def accept(self, token: int) -> None:
        """`token` was chosen: the grammar moves past it."""
        self._moved()
        self.matcher.consume_token(token)

    def feed(self, tokens: list[int]) -> None:
        """Tokens the answer wrote before the grammar held it (a lazy call's trigger)."""
        self._moved()
        self.matcher.consume_tokens(tokens)

    def reset(self) -> None:
        """Back to the grammar's start."""
        self._moved()
        self.matcher.reset()

    def forced(self) -> list[int]:
        """The tokens the grammar forces next, as the tokenizer spells the forced text.

        There are none where the grammar leaves the model the spelling.
        """
        self._settled()
        return list(self.matcher.compute_ff_tokens())

    def failed(self) -> str | None:
        """Why the grammar can go no further (a step past its limits), or None if it can.

        It is the first line of llguidance's reason, which may add lines of its own
        (`<non-verbose/>`).
        """
        self._settled()
        if not self.matcher.is_error():
            return None
        return (self.matcher.get_error() or "an error").strip().splitlines()[0][:300]

    def whole(self) -> bool:
        """Whether what the grammar was given so far is a whole answer of it."""
        self._settled()
        return bool(self.matcher.is_accepting())

    def _compute(self) -> None:
        self.matcher.unsafe_compute_mask_ptr(self.mask.ctypes.data, self.mask.nbytes)

    def _settled(self) -> bool:
        """Take the matcher back from the mask thread, if it was there.

        Returns whether the mask is the one of the grammar's state now.
        """
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()
            self._fresh = True
        return self._fresh

    def _moved(self) -> None:
        """The grammar's state is about to change: the mask is no longer its."""
        self._settled()
        self._fresh = False


class Lazy:
    """A constraint that waits for its trigger, as llama.cpp's lazy grammars do.

    The answer is free until it writes a marker that opens a call (outside its reasoning). The
    call's grammar then holds from the marker's first byte until the call is whole. The answer is
    then free again until the next marker. What is watched is the answer's text, not its tokens: a
    marker the model spells in pieces (`<tool` `_call>`) opens a call as its special token does.
    """

    def __init__(
        self,
        constraint: Constraint,
        triggers: tuple[str, ...],
        reasoning: tuple[str, str, bool] | None,
    ) -> None:
        self.constraint = constraint
        self.triggers = [t.encode() for t in triggers if t]
        self.open, self.close, self.inside = (
            (reasoning[0].encode(), reasoning[1].encode(), reasoning[2])
            if reasoning
            else (b"", b"", False)
        )
        self.markers = [m for m in (*self.triggers, self.open, self.close) if m]
        self.keep = max(len(m) for m in self.markers) - 1
        self.tail = b""  # the answer's last bytes, where a marker may have begun
        # The trigger began inside the token see() was last given (` functools` opening
        # `functools[`): the grammar holds its bytes from the trigger on, and the token itself
        # is free text, as llama.cpp's lazy grammars take it.
        self.fed = False

    def see(self, piece: bytes) -> Constraint | None:
        """Watch a chosen token's bytes; return the call's constraint if they finish a trigger.

        The constraint is given the trigger's bytes the earlier tokens wrote. The token itself is
        the caller's to check, unless `fed`. Returns None when no trigger is finished.
        """
        text = self.tail + piece
        base = len(self.tail)
        at = 0
        while (found := self._next(text, at, base)) is not None:
            index, marker = found
            at = index + len(marker)
            if marker == self.open:
                self.inside = True
            elif marker == self.close:
                self.inside = False
            elif not self.inside:
                self.tail = b""
                self.fed = index > base
                return self._start(text[index:] if self.fed else text[index:base])
        self.tail = text[max(at, len(text) - self.keep) :] if self.keep else b""
        return None

    def done(self) -> None:
        """The call is whole: free text again, until the next trigger."""
        self.constraint.reset()

    def _next(self, text: bytes, at: int, base: int) -> tuple[int, bytes] | None:
        """The first marker in `text` from `at` that ends in the new bytes (past `base`)."""
        best: tuple[int, bytes] | None = None
        for marker in self.markers:
            index = text.find(marker, at)
            while index >= 0 and index + len(marker) <= base:
                index = text.find(marker, index + 1)
            if index < 0:
                continue
            if best is None or index < best[0] or (index == best[0] and len(marker) > len(best[1])):
                best = (index, marker)
        return best

    def _start(self, before: bytes) -> Constraint | None:
        constraint = self.constraint
        if before:
            constraint.feed(constraint.tokens.tokenize_bytes(before))
            if constraint.matcher.is_error():  # the trigger's text goes on outside the grammar
                constraint.reset()
                return None
        return constraint
