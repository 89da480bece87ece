"""Sampling: native sampler chains from the sampling PARAMETERs, grammar-constrained sampling the
way llama.cpp's common sampler does it, and the GBNF grammars for JSON output."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from localrun.engine.native import lc
from localrun.engine.types import SamplingOptions
from localrun.errors import BadRequestError


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
    if s.logit_bias:  # first: the samplers after it see the biased logits
        biases = (lc.llama_logit_bias * len(s.logit_bias))(
            *(lc.llama_logit_bias(token, bias) for token, bias in s.logit_bias)
        )
        add(chain, lc.llama_sampler_init_logit_bias(n_vocab, len(s.logit_bias), biases))
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


def logprob_entry(
    logits_row: Any,
    n_vocab: int,
    token: int,
    raw: bytes,
    top: int,
    piece_bytes: Callable[[int], bytes],
) -> dict[str, Any]:
    """The log-probability of `token` and of the `top` likeliest tokens at a row of logits:
    the log-softmax of the model's raw logits (before any sampler), as OpenAI reports them."""
    import numpy as np

    logits = np.ctypeslib.as_array(logits_row, (n_vocab,))
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
            piece = piece_bytes(int(t))
            entry["top"].append(
                {
                    "token": piece.decode("utf-8", errors="replace"),
                    "logprob": float(logits[t]) - total,
                    "bytes": list(piece),
                }
            )
    return entry
