"""Constrained sampling with llguidance: the tokens a grammar allows next, as a mask.

A request that constrains its answer (a JSON schema's `format`, `response_format`,
`text.format`, a forced tool call) carries an llguidance grammar (`SamplingOptions.constraint`:
Lark text, JSON schemas inside it as `%json {...}`), compiled here against the model's
vocabulary as the GGUF gives it, special tokens included. llguidance walks the grammar with
a lazy lexer and an Earley parser over the token trie: a mask costs tens of microseconds, and
recursive schemas (trees, JSON itself) are grammars like any other.

The vocabulary's tokenizer (`tokenizer`) is built once a model, on its first constrained
request: every token's bytes (control tokens marked as llguidance wants them), its ends of
generation as the grammar's end.

Sampling stays llama.cpp's common sampler's way (engine.sampling): the token the chain
chooses is checked alone (`allows`, no mask), and only a rejected one costs the mask over the
whole vocabulary (`restrict`), after which the chain chooses again among the allowed tokens.
"""

from __future__ import annotations

from typing import Any

import llguidance
import llguidance.llamacpp

from localrun.engine.native import lc
from localrun.errors import BadRequestError

# What one grammar may cost: its size when compiled, and the work of one mask (llguidance's
# fuel: the lexer's and the Earley parser's steps). A grammar past them is refused when it is
# compiled, or stops the answer where a step runs out (an error the request is told of).
LIMITS = llguidance.LLParserLimits(
    max_grammar_size=500_000,
    step_lexer_fuel=200_000,
    step_max_items=50_000,
    max_lexer_states=250_000,
    verbose_errors=False,
)


def tokenizer(vocab: Any) -> Any:
    """llguidance's tokenizer for a llama.cpp vocabulary (about a second for a 150k one: the
    weights build it once, engine.weights.Weights.guide): its ends of generation end the
    grammar's answer."""
    n_vocab = int(lc.llama_vocab_n_tokens(vocab))
    ends = [t for t in range(n_vocab) if lc.llama_vocab_is_eog(vocab, t)]
    return llguidance.llamacpp.lltokenizer_from_vocab(vocab, eos_token=ends or None)


def check(grammar: str) -> None:
    """Raise BadRequestError when llguidance will not take the grammar (without a vocabulary:
    the server side checks a request's before it reaches a runner)."""
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, limits=LIMITS)
    if failed:
        raise BadRequestError(_message(messages[0]), hint=_HINT)


_HINT = "simplify the schema or grammar; README: Structured outputs lists what is enforced"


def _message(error: str) -> str:
    text = " ".join(error.split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"the output's schema or grammar cannot be enforced: {text}"


class Constraint:
    """One answer's grammar, as llguidance follows it token by token."""

    def __init__(self, tokens: Any, grammar: str, n_vocab: int) -> None:
        import numpy as np

        self.np: Any = np
        self.n_vocab = n_vocab
        self.matcher = llguidance.LLMatcher(tokens, grammar, log_level=0, limits=LIMITS)
        if self.matcher.is_error():
            raise BadRequestError(_message(self.matcher.get_error()), hint=_HINT)
        words = (n_vocab + 31) // 32
        self.mask = np.zeros(words, dtype=np.int32)

    def allows(self, token: int) -> bool:
        """Whether the grammar takes `token` next (its state unchanged)."""
        return bool(self.matcher.validate_tokens([token]) == 1)

    def restrict(self, logits: Any) -> None:
        """Set the logits of every token the grammar does not take next to -inf (`logits`:
        the candidates' array over the whole vocabulary, in vocabulary order)."""
        np = self.np
        self.matcher.unsafe_compute_mask_ptr(self.mask.ctypes.data, self.mask.nbytes)
        allowed = np.unpackbits(self.mask.view(np.uint8), bitorder="little", count=self.n_vocab)
        logits[allowed == 0] = -np.inf

    def accept(self, token: int) -> None:
        """`token` was chosen: the grammar moves past it."""
        self.matcher.consume_token(token)

    def forced(self) -> list[int]:
        """The tokens the grammar forces next, as the tokenizer spells the forced text (none
        where the grammar leaves the model the spelling)."""
        return list(self.matcher.compute_ff_tokens())

    def failed(self) -> str | None:
        """Why the grammar can go no further (a step past its limits), if it cannot."""
        return self.matcher.get_error() if self.matcher.is_error() else None
