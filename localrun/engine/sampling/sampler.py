"""Native sampler chains from the sampling PARAMETERs, run on the tokens that can win (Sampler).

Constrained sampling goes the way llama.cpp's common sampler does it, with llguidance's masks
(engine.sampling.constraint). `logprob_entry` gives the log-probabilities OpenAI reports.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import json
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from localrun.engine.library.native import lc
from localrun.engine.sampling.constraint import Constraint, Lazy
from localrun.engine.sampling.schema_items import ItemWatch
from localrun.engine.types import SamplingOptions
from localrun.errors import EngineError

MAX_VETOES = 16  # tokens the watch may refuse at one step before the first is taken


def native_seed(seed: int) -> int:
    """A seed as llama.cpp's sampler takes it; -1 is llama.cpp's random seed.

    Any 64-bit seed (Ollama's clients send such) is reduced to 32 bits, as Go's uint32() does.
    """
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
    last_n = _penalty_window(s, n_ctx)
    if last_n:
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


@functools.cache
def _token_data_dtype() -> Any:
    """llama_token_data's layout as numpy's dtype, from the bindings' own fields."""
    import numpy as np

    t = lc.llama_token_data
    names = ["id", "logit", "p"]
    layout: Any = {
        "names": names,
        "formats": ["<i4", "<f4", "<f4"],
        "offsets": [getattr(t, name).offset for name in names],  # ctypes' field descriptors
        "itemsize": ctypes.sizeof(t),
    }
    return np.dtype(layout)


def _logits_function() -> Any:
    """llama_get_logits_ith, returning the address as a number: no pointer object to convert.

    It is a new function object, so the bindings' own keeps its types.
    """
    function = lc.llama_cpp._lib["llama_get_logits_ith"]
    function.argtypes = [ctypes.c_void_p, ctypes.c_int32]
    function.restype = ctypes.c_void_p
    return function


logits_address = _logits_function()


def _penalty_window(s: SamplingOptions, n_ctx: int) -> int:
    """How many of the last tokens the penalties look back at; 0 when there are none."""
    if s.repeat_penalty == 1.0 and s.presence_penalty == 0.0 and s.frequency_penalty == 0.0:
        return 0
    # The penalty sampler allocates its window up front: never more than the context.
    return n_ctx if s.repeat_last_n < 0 else min(s.repeat_last_n, n_ctx)


class Sampler:
    """One answer's sampling: its native chain and grammar, greedy run on the tokens that can win.

    Greedy's winner is the best logit, unless the chain changes that token's logit (the penalties'
    window, logit_bias). Then it is among the changed tokens and the best of the others, and the
    chain runs on those alone, in vocabulary order. The chain takes the token llama_sampler_sample
    would, up to the order of exactly equal logits, which neither defines. Sampling with temperature
    stays llama_sampler_sample's: measured, numpy finds the top_k no faster. With a grammar
    (engine.sampling.constraint), sampling is llama.cpp's common sampler's: only the chosen token is
    checked, and every candidate is masked only when it is refused.
    """

    def __init__(
        self,
        s: SamplingOptions,
        vocab: Any,
        n_vocab: int,
        n_ctx: int,
        guide: Callable[[], Any] | None = None,
        spelled: Callable[[int], bytes] | None = None,
        guard: Callable[[str], None] | None = None,
    ) -> None:
        """Make the chain, the grammar if there is one, and greedy's bookkeeping.

        `guard` checks a grammar before it is compiled here (the engine's grammar_guard.Guard): a
        grammar that would crash the compiler crashes its child.
        """
        import numpy as np

        self.np: Any = np
        self.n_vocab = n_vocab
        self.constraint: Constraint | None = None
        self.lazy: Lazy | None = None
        self.spelled = spelled
        self.chain: Any = sampler_chain(s, n_vocab, n_ctx)
        try:
            if s.constraint:
                if guide is None or (s.triggers and spelled is None):
                    raise EngineError("a constrained answer needs the vocabulary's tokenizer")
                if guard is not None:
                    guard(s.constraint)
                constraint = Constraint(guide(), s.constraint, n_vocab)
                if s.triggers:
                    self.lazy = Lazy(constraint, s.triggers, s.reasoning)
                else:
                    self.constraint = constraint
        except BaseException:
            self.free()
            raise
        # Items that depend on each other, held beside the grammar (engine.sampling.schema_items).
        self.watch = (
            ItemWatch(json.loads(s.watch))
            if s.watch and self.constraint is not None and spelled is not None
            else None
        )
        self.greedy = s.temperature <= 0
        # The tokens whose logits greedy's chain changes: the last accepted ones, counted (the
        # penalties' window), and the biased ones.
        last_n = _penalty_window(s, n_ctx) if self.greedy else 0
        self.window: collections.deque[int] = collections.deque(maxlen=last_n or 1)
        self.counts: dict[int, int] = {}
        self.last_n = last_n
        self.biased = frozenset(token for token, _ in s.logit_bias)
        # Whether the changes can only lower a logit: then greedy's winner is the best logit
        # whenever the chain leaves that one alone.
        self.lowers_only = not self.biased and (
            s.repeat_penalty >= 1.0 and s.presence_penalty >= 0 and s.frequency_penalty >= 0
        )
        # llama_token_data[n_vocab], left unfilled: a ctypes array is zeroed as it is made
        # (some 2 ms for a 262k vocabulary, in every request's way).
        self.data: Any = np.empty(n_vocab, dtype=_token_data_dtype())
        self.ids, self.logits, self.ps = self.data["id"], self.data["logit"], self.data["p"]
        self.cur = lc.llama_token_data_array()
        self.cur.data = self.data.ctypes.data_as(lc.llama_token_data_p)  # type: ignore[assignment]
        self.cur_p = ctypes.byref(self.cur)
        self.every: Any = None  # 0..n_vocab-1, made on the first whole-vocabulary fill
        self.row_type = ctypes.c_float * n_vocab
        self.rows: dict[int, Any] = {}  # the logits' addresses, seen as numpy arrays
        # Tokens greedy chose from the best logit alone, not yet accepted by the chain: only
        # its penalties keep state, so they are accepted when the chain next runs.
        self.unaccepted: list[int] = []

    def free(self) -> None:
        if self.chain is not None:
            lc.llama_sampler_free(self.chain)
            self.chain = None

    def sample(self, ctx: Any, row: int, held: Any = None) -> int:
        """Choose and accept the token at the batch's row `row`, under the chain and grammar.

        `held` stands for the row: logits kept of an earlier batch, as a float32 array.
        """
        constraint, lazy = self.constraint, self.lazy
        if held is not None:
            logits = held
        elif constraint is None and lazy is None and not self.greedy:
            # It accepts the token (the penalties' own window is greedy's alone: last_n 0).
            return int(lc.llama_sampler_sample(self.chain, ctx, row))
        else:
            logits = self._row(ctx, row)
        token, alone = self._greedy(logits) if self.greedy else (self._apply(logits), False)
        if constraint is None and lazy is not None:
            assert self.spelled is not None
            constraint = self.constraint = lazy.see(self.spelled(token))
            if constraint is not None and lazy.fed:  # the call began inside this token
                self._took(token, alone, held=False)
                return token
        if constraint is not None and not constraint.allows(token):
            self._fill(logits)
            constraint.restrict(self.logits)
            token, alone = self._apply(None), False
        if self.watch is not None and not self.watch.allows(self._spell(token)):
            token, alone = self._veto(logits, token), False
        self._took(token, alone)
        return token

    def _spell(self, token: int) -> bytes:
        assert self.spelled is not None
        return self.spelled(token)

    def _veto(self, logits: Any, token: int) -> int:
        """Draw another token than `token`, which the watch refuses.

        `token` would finish an item that breaks uniqueItems or contains. The other is drawn as
        after the grammar's refusal: from every token under the grammar's mask, less each refused so
        far. Where every one is refused (or MAX_VETOES were), it returns `token` itself: the check
        on the finished answer stands behind it.
        """
        assert self.watch is not None and self.constraint is not None
        banned = [token]
        for _ in range(MAX_VETOES):
            self._fill(logits)
            self.constraint.restrict(self.logits)
            self.logits[banned] = -self.np.inf
            if not self.np.isfinite(self.logits).any():
                break
            choice = self._apply(None)
            if self.watch.allows(self._spell(choice)):
                return choice
            banned.append(choice)
        return token

    def ahead(self, pool: Executor) -> None:
        """Compute the grammar's next mask on `pool`'s thread while the batch decodes.

        It does so only if the answer is constrained now (engine.sampling.constraint).
        """
        if self.constraint is not None:
            self.constraint.ahead(pool)

    def take(self, token: int) -> None:
        """Take a token the grammar forces, without sampling it.

        The grammar and the chain's penalties move past it as if it had been sampled.
        """
        self._took(token, alone=self.greedy)

    def _took(self, token: int, alone: bool, *, held: bool = True) -> None:
        """Move the grammar and the chain past `token`, which is the answer's.

        A lazy grammar's call, once whole, leaves the answer free until the next marker. `alone`
        means greedy chose it without the chain, which catches up on its next run. With `held` False
        the grammar was given its bytes already (a lazy call that began inside it).
        """
        constraint = self.constraint
        if self.watch is not None:
            self.watch.accept(self._spell(token))
        if constraint is not None:
            if held:
                constraint.accept(token)
            if self.lazy is not None and constraint.whole():
                self.lazy.done()
                self.constraint = None
        if not alone:
            lc.llama_sampler_accept(self.chain, token)
        elif self.last_n:
            self.unaccepted.append(token)
            del self.unaccepted[: -self.last_n]  # the window holds no more
        if self.last_n:
            self._remember(token)

    def failed(self) -> str | None:
        """Why the answer's grammar can go no further (a step past its limits), if so."""
        return self.constraint.failed() if self.constraint is not None else None

    def forced(self, limit: int) -> list[int]:
        """The tokens the grammar forces next, at most `limit`.

        There are none without a grammar, or where it forces nothing.
        """
        if self.constraint is None or limit <= 0:
            return []
        return self.constraint.forced()[:limit]

    def _row(self, ctx: Any, row: int) -> Any:
        """The logits at the batch's row `row`, in place."""
        address = logits_address(ctx, row)
        logits = self.rows.get(address)
        if logits is None:
            if not address:
                raise EngineError(f"llama.cpp has no logits at row {row} of the batch")
            if len(self.rows) > 16:
                self.rows.clear()
            view = self.row_type.from_address(address)
            logits = self.rows[address] = self.np.frombuffer(view, self.np.float32)
        return logits

    def _greedy(self, logits: Any) -> tuple[int, bool]:
        """Greedy's choice, from the tokens that can win; True: the best logit alone chose."""
        # llama_sampler_sample copies every logit into a candidate array and walks it: 60 us a
        # token for a 49k vocabulary with warm caches, 170 us after a CPU decode has streamed
        # the weights through them.
        best = int(logits.argmax())
        touched = best in self.counts or best in self.biased
        if not touched and self.lowers_only:
            return best, True
        if touched:
            best = self._best_untouched(logits)
        self._put(sorted({best, *self.counts, *self.biased}), logits)
        return self._apply(None), False

    def _apply(self, logits: Any) -> int:
        """The chain's choice among the candidates (every token, when given the logits)."""
        for token in self.unaccepted:  # the chain catches up first
            lc.llama_sampler_accept(self.chain, token)
        self.unaccepted.clear()
        if logits is not None:
            self._fill(logits)
        # The C function takes a pointer (its argtypes say so); llama_cpp annotates an array.
        lc.llama_sampler_apply(self.chain, self.cur_p)  # pyright: ignore[reportArgumentType]
        return int(self.ids[self.cur.selected])

    def _best_untouched(self, logits: Any) -> int:
        """The best logit the chain leaves alone.

        The others are set aside for a moment, then put back: the logits are the loop's own.
        """
        touched = [*self.counts, *self.biased]
        kept = logits[touched]
        logits[touched] = -self.np.inf
        best = int(logits.argmax())
        logits[touched] = kept
        return best

    def _put(self, ids: list[int], logits: Any) -> None:
        n = len(ids)
        self.ids[:n] = ids
        self.logits[:n] = logits[ids]
        self.ps[:n] = 0.0
        cur = self.cur
        cur.size, cur.selected, cur.sorted = n, -1, False

    def _fill(self, logits: Any) -> None:
        """Every token into the candidate array."""
        if self.every is None:
            self.every = self.np.arange(self.n_vocab, dtype=self.np.int32)
        self.ids[:] = self.every
        self.logits[:] = logits
        self.ps[:] = 0.0
        cur = self.cur
        cur.size, cur.selected, cur.sorted = self.n_vocab, -1, False

    def _remember(self, token: int) -> None:
        """`token` joins the penalties' window (the chain keeps its own; this one is read)."""
        counts, window = self.counts, self.window
        if len(window) == self.last_n:
            gone = window[0]
            if counts[gone] == 1:
                del counts[gone]
            else:
                counts[gone] -= 1
        window.append(token)
        counts[token] = counts.get(token, 0) + 1


def logprob_entry(
    logits_row: Any,
    n_vocab: int,
    token: int,
    raw: bytes,
    top: int,
    piece_bytes: Callable[[int], bytes],
    candidates: tuple[int, ...] = (),
) -> dict[str, Any]:
    """The log-probability of `token` and of the `top` likeliest tokens at a row of logits.

    They are the log-softmax of the model's raw logits (before any sampler), as OpenAI reports them.
    With `candidates`, theirs come too, in their order, whatever their rank.
    """
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
    if candidates:
        entry["candidates"] = [
            {
                "id": t,
                "token": piece_bytes(t).decode("utf-8", errors="replace"),
                "logprob": float(logits[t]) - total,
            }
            for t in candidates
        ]
    return entry
