"""Draftless speculative decoding (prompt lookup): guess the next tokens from what came before.

Answers that edit code or quote text repeat long runs of their input. When the last few tokens
generated also occur earlier in the prompt or the answer, the tokens that followed them there
are a cheap guess of what comes next. The engine evaluates the sampled token and the guessed
ones in one llama_decode (on a CPU or a GPU a batch of a few tokens costs little more than one),
samples at each row in turn and keeps the guesses up to the first one the model's own sampler
does not pick; that sampled token is the next token, as without speculation.

Lossless: every kept token is one the sampler chain chose, from logits computed after exactly
the tokens before it. With temperature > 0 this is speculative sampling's acceptance rule for a
draft that proposes one token with certainty (accept with probability p(draft), else sample
from p without the draft): the output distribution is unchanged. Grammars and penalties see
the same accepted tokens in the same order. (llama.cpp's logits for a batch of tokens may
differ from one-token decoding in the last bits, which can flip a near tie.)

Adaptive: the draft length grows while whole drafts are accepted and shrinks on a rejection,
and a run of drafts rejected at their first token backs off for a growing number of tokens, so
prose that rarely repeats itself pays almost nothing. This module is pure Python: the engines
(engine.llama for one conversation, engine.batch for every slot of the server) call it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from localrun import config
from localrun.errors import BadRequestError

# A draft model's guesses: (history, most tokens) -> tokens.
ModelDrafter = Callable[[Sequence[int], int], list[int]]

# Lengths of the suffix matched against the history, longest first: a long match is a sure
# guess, a short one recovers quickly after an edit (a renamed identifier breaks every longer
# n-gram that spans it for as many tokens).
NGRAM_SIZES = (24, 12, 6, 3)
# Before any draft of a size is judged: the chance a drafted token is kept, as kept : rejected
# counts. A 24-token match is a copy under way; three tokens are a hunch.
_PRIOR = {24: (49.0, 1.0), 12: (9.0, 1.0), 6: (4.0, 1.0), 3: (2.0, 1.0)}
MODES = config.SPECULATE_MODES  # the speculate PARAMETER's values
DEFAULT_DRAFT_MAX = 64  # the draft_num_predict PARAMETER's default
_BACKOFF_MAX = 64  # tokens decoded without drafting after repeated misses, at most
_DECAY = 0.9  # weight of the past in the running estimates
_PROBE_EVERY = 32  # tokens between one-token probes where drafting does not pay
_PROBE_MIN = 12  # shortest match worth a probe (shorter ones in prose are mostly chance)
_SURE = 12  # with a draft model too, a match this long is drafted by lookup (it costs nothing)
_RESYNC = 3  # tokens that find where a copy resumes after an edit, near where it broke off
_RESYNC_TOKENS = 16  # how long after the break to look


class NgramDrafter:
    """Prompt lookup over one sequence's tokens (prompt and answer so far).

    Keeps, for every n-gram of each size in NGRAM_SIZES, the position right after its latest
    occurrence, updated as tokens are added: a lookup costs a few dictionary reads, whatever
    the length of the history.
    """

    def __init__(self, history: Iterable[int] = ()) -> None:
        self.tokens: list[int] = []
        self._index: dict[tuple[int, ...], int] = {}
        self.extend(history)

    def extend(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            self.add(token)

    def add(self, token: int) -> None:
        tokens = self.tokens
        tokens.append(token)
        end = len(tokens)
        # The n-grams ending just before `token` now point at it.
        index = self._index
        for n in NGRAM_SIZES:
            if end > n:
                index[tuple(tokens[end - 1 - n : end - 1])] = end - 1

    def match(self) -> tuple[int, int]:
        """(n, position): the longest suffix of the history seen before (n tokens), and where
        the tokens that followed its latest earlier occurrence begin; (0, -1) for none."""
        tokens = self.tokens
        end = len(tokens)
        for n in NGRAM_SIZES:
            if end >= n:
                at = self._index.get(tuple(tokens[end - n :]))
                if at is not None:
                    return n, at
        return 0, -1

    def near(self, source: int, n: int, before: int = 8, after: int = 24) -> int:
        """Where the text resumes around `source` after an edit: the position right after an
        occurrence of the last `n` tokens within [source - before, source + after], the one
        closest to `source`; -1 if none."""
        tokens = self.tokens
        end = len(tokens)
        if end <= n:
            return -1
        suffix = tokens[end - n :]
        best = -1
        for q in range(max(n, source - before), min(end - 1, source + after) + 1):
            if tokens[q - n : q] == suffix and (best < 0 or abs(q - source) < abs(best - source)):
                best = q
        return best

    def draft(self, at: int, limit: int) -> list[int]:
        """`limit` tokens from position `at` on; past the end of the history the text is taken
        to repeat with the period it showed (a loop goes on as it went)."""
        tokens = self.tokens
        period = len(tokens) - at
        if period <= 0 or limit <= 0:
            return []
        if limit <= period:
            return tokens[at : at + limit]
        cycle = tokens[at:]
        return [cycle[i % period] for i in range(limit)]


@dataclass(frozen=True)
class DecodeCost:
    """What decodes cost, in decodes of one token: a batch of n > 1 tokens costs about
    `base + extra * n`. Fixed per device kind rather than timed, so that the drafts (and so
    the batches, whose logits may differ from one token's in the last bits) depend on the
    request alone: the same request gets the same answer, whatever else the engine runs.

    Measured with llama.cpp on SmolLM2 135M (Q4_1) on two CPU cores, every row with logits as a
    verification has them (scripts/spec_bound.py prints the table): 2, 3, 5, 9, 17, 33 and 65
    tokens cost 1.9, 2.4, 3.4, 5.2, 8.8, 15.8 and 28.6 one-token decodes, about 1 + 0.43 n (a
    small model is compute bound there). On a GPU a batch of a few dozen tokens costs little
    more than one token.
    """

    base: float
    extra: float

    @classmethod
    def for_device(cls, gpu_layers: int) -> DecodeCost:
        return cls(base=0.9, extra=0.08) if gpu_layers > 0 else cls(base=1.0, extra=0.43)


class Speculator:
    """Draft proposals for one generation, their length chosen by expected gain, and the
    counts reported.

    The engine calls `propose(token, limit)` with the token it is about to decode, then
    `settle(draft, accepted)` once it knows how many draft tokens the sampler kept. A draft's
    length is the one with the largest expected gain, from p, the estimated chance that a
    drafted token is kept (tracked per n-gram size), and what batches cost here (DecodeCost).
    Where no length gains, one token is drafted now and then to keep the estimate current, and
    rejected drafts back off for a growing number of tokens, so prose that rarely repeats
    itself pays almost nothing.
    """

    def __init__(
        self,
        history: Sequence[int],
        draft_max: int,
        cost: DecodeCost,
        *,
        always: bool = False,
        lookup: bool = True,
        model: ModelDrafter | None = None,
        ends: Callable[[int], bool] | None = None,
    ) -> None:
        self.drafter = NgramDrafter(history)
        # Tokens that end the answer (end of generation, stop tokens): a draft stops before
        # one, as the answer would; the row before it samples the end itself.
        self.ends = ends
        self.lookup = lookup  # draft by prompt lookup (modes auto and ngram)
        # A draft model's guesses (engine.draft, bound to a sequence by the engine), for what
        # prompt lookup does not find with certainty.
        self.model = model
        self.draft_max = max(0, draft_max)
        self.cost = cost
        self.always = always  # mode "ngram": draft even where the estimate says it won't pay
        self.drafted = 0  # tokens proposed, over the generation
        self.accepted = 0  # of those, kept
        # Per n-gram size: discounted counts of drafted tokens kept and rejected.
        self._kept = {n: _PRIOR[n][0] for n in NGRAM_SIZES}
        self._lost = {n: _PRIOR[n][1] for n in NGRAM_SIZES}
        self._size = 0  # the n-gram size of the last draft
        self._at = -1  # where the last lookup draft was copied from
        # Where a copy under way (a long match) reads its source next: after an edit breaks
        # the long matches, the copy resumes near there, found from a short match (_RESYNC).
        self._source = -1
        self._resync = 0  # tokens left to look for it
        self._skip = 0  # tokens still to decode without drafting (back-off)
        self._misses = 0  # drafts rejected at their first token in a row
        # A lookup that was not drafted: (its n-gram size, the token it guessed next). The
        # token sampled next tells whether it was right, evidence for that size at no cost,
        # so that short matches start drafting once a copy is under way.
        self._shadow: tuple[int, int] | None = None

    def propose(self, token: int, limit: int) -> list[int]:
        """`token` (sampled, about to be decoded) joins the history; returns the draft to
        decode after it, at most `limit` tokens (room left in the budget and the context)."""
        if self._shadow is not None:
            size, guess = self._shadow
            self._shadow = None
            self._kept[size] = self._kept[size] * _DECAY + (token == guess)
            self._lost[size] = self._lost[size] * _DECAY + (token != guess)
        self.drafter.add(token)
        if limit <= 0:
            return []
        if self.lookup:
            draft = self._lookup(limit)
            if draft:
                return draft
        if self.model is not None:
            self._size = 0
            return self._until_end(self.model(self.drafter.tokens, min(self.draft_max, limit)))
        return []

    def _lookup(self, limit: int) -> list[int]:
        size, at = self.drafter.match()
        if self._skip > 0:
            self._skip -= 1
            self._guess(size, at)
            return []
        if size < _SURE and self._resync > 0:
            # An edit inside a copy: the text resumes where the source goes on.
            self._resync -= 1
            self._source += 1
            resumed = self.drafter.near(self._source, _RESYNC)
            if resumed >= 0:
                size, at = _SURE, resumed
        if size == 0 or (self.model is not None and size < _SURE):
            return []  # a draft model guesses better than a short match
        length = min(self.length(size), limit)
        if length <= 0:
            self._guess(size, at)
            return []
        self._size, self._at = size, at
        return self._until_end(self.drafter.draft(at, length))

    def _until_end(self, draft: list[int]) -> list[int]:
        """`draft` up to the first token that would end the answer: the row before it samples
        that end as well, and tokens after it could never be kept."""
        ends = self.ends
        if ends is not None:
            for i, token in enumerate(draft):
                if ends(token):
                    return draft[:i]
        return draft

    def _guess(self, size: int, at: int) -> None:
        """Remember what a lookup not drafted guesses next, judged by the next token."""
        if size > 0 and at < len(self.drafter.tokens):
            self._shadow = (size, self.drafter.tokens[at])

    def length(self, size: int) -> int:
        """The draft length worth decoding after a match of `size` tokens: the k that
        maximises the decodes expected to be saved, single * (p + p^2 + ... + p^k), less what
        the batch costs beyond a one-token decode, base + extra * (k + 1) - single."""
        kept, lost = self._kept[size], self._lost[size]
        p = kept / (kept + lost)
        single, base, extra = 1.0, self.cost.base, self.cost.extra
        best, gain, saved, chance = 0, 0.0, 0.0, 1.0
        for k in range(1, self.draft_max + 1):
            chance *= p
            saved += chance * single
            net = saved - (base + extra * (k + 1) - single)
            if net > gain:
                best, gain = k, net
            elif chance * single < extra:
                break  # each further token costs more than it is expected to save
        if best == 0:
            if self.always:
                return 1
            if size < _PROBE_MIN:
                return 0
            # Not worth it: probe with one token now and then, or the estimate would never
            # learn that the text has started to repeat.
            self._skip = _PROBE_EVERY
            return 1
        return best

    def settle(self, draft: Sequence[int], accepted: int) -> None:
        """The first `accepted` tokens of `draft` were kept: they join the history, and the
        estimates follow how this draft did."""
        if not draft:
            return
        self.drafted += len(draft)
        self.accepted += accepted
        self.drafter.extend(draft[:accepted])
        size = self._size
        if size == 0:
            return  # the draft model's: its own confidence decides its length
        if size >= _SURE:  # a copy under way: if it broke off, look for where it resumes
            self._source = self._at + accepted
            self._resync = _RESYNC_TOKENS if accepted < len(draft) else 0
        self._kept[size] = self._kept[size] * _DECAY + accepted
        self._lost[size] = self._lost[size] * _DECAY + (accepted < len(draft))
        if accepted == 0:
            self._misses += 1
            self._skip = max(self._skip, min(_BACKOFF_MAX, 2 ** (self._misses - 1)))
        else:
            self._misses = 0
            self._skip = 0  # a probe was kept: the text repeats, look again at once


def speculator(
    mode: str,
    history: Sequence[int],
    draft_max: int,
    cost: DecodeCost,
    model: ModelDrafter | None = None,
    ends: Callable[[int], bool] | None = None,
) -> Speculator | None:
    """The speculator a generation with these settings uses, or None (speculation off).
    `model` drafts with the model's DRAFT model (modes auto and draft); `ends` tells the
    tokens that end the answer (drafts stop before them)."""
    if mode == "off" or draft_max <= 0:
        return None
    if mode == "draft" and model is None:
        raise BadRequestError(
            "speculate is draft, but this model has no draft model",
            hint="add DRAFT <model> to its Modelfile, or use speculate auto or ngram",
        )
    return Speculator(
        history,
        draft_max,
        cost,
        always=mode == "ngram",
        lookup=mode != "draft",
        model=model if mode in ("auto", "draft") else None,
        ends=ends,
    )
