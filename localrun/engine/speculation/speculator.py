"""Draftless speculative decoding (prompt lookup): guess the next tokens from what came before.

Answers that edit code or quote text repeat long runs of their input. Where the last few tokens
occurred before, in the prompt or the answer, what followed them there is a cheap guess. The engine
(engine.batch) decodes the sampled token and the guesses in one batch, which costs little more than
one token. It keeps the guesses up to the first one its sampler does not pick, and that pick is the
next token. Where a copy breaks off and resumes, the change between is learnt (Edits). Draft lengths
follow expected gain and misses back off (Speculator), so prose that rarely repeats itself pays
almost nothing.

Lossless: every kept token is one the sampler chain chose, from logits computed after exactly the
tokens before it. With temperature > 0 this is speculative sampling's rule for a draft sure of one
token: accept with probability p(draft), else sample from p without it. Grammars and penalties see
the same tokens in the same order. (llama.cpp's logits for a batch may differ from one-token
decoding, on a CPU by up to about 1, which can flip a near tie.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from localrun.engine.speculation.costs import DecodeCost
from localrun.engine.speculation.lookup import NGRAM_SIZES, Edit, Edits, NgramDrafter, Snapshots
from localrun.errors import BadRequestError
from localrun.settings import config

# What a batch costs: fixed (a DecodeCost), or measured now (a callable the engine's CostMeter
# answers for the current thread count).
Cost = DecodeCost | Callable[[], DecodeCost]

# A draft model's guesses: (history, most tokens) -> tokens.
ModelDrafter = Callable[[Sequence[int], int], list[int]]

# Before any draft of a size is judged: the chance a drafted token is kept, as kept : rejected
# counts. A 24-token match is a copy under way; three tokens are a hunch. A copy that has just
# reached 24 tokens breaks soon as often as not (a median of 19 more tokens over 61 answers of
# scripts/bench/speculative.py's workloads and measure/lookup_bound.py's corpus): 19 : 1 drafts it
# some 16 tokens at first on two cores, and the answer's own evidence lengthens the drafts as the
# copy goes on.
_PRIOR = {24: (19.0, 1.0), 12: (9.0, 1.0), 6: (4.0, 1.0), 3: (2.0, 1.0)}
MODES = config.SPECULATE_MODES  # the speculate PARAMETER's values
DEFAULT_DRAFT_MAX = 64  # the draft_num_predict PARAMETER's default
_BACKOFF_MAX = 64  # tokens decoded without drafting after repeated misses, at most
_DECAY = 0.9  # weight of the past in the running estimates
_SURE = 12  # with a draft model too, a match this long is drafted by lookup (it costs nothing)
_RESYNC = 3  # tokens that find where a copy resumes after an edit, near where it broke off
_RESYNC_TOKENS = 16  # how long after the break to look


class Speculator:
    """Draft proposals for one generation, their length chosen by expected gain, with counts.

    The engine calls `propose(token, limit)` with the token it is about to decode, then
    `settle(draft, accepted)` once it knows how many draft tokens the sampler kept. A draft's length
    has the largest expected gain (`length`). That weighs p, the estimated chance that a drafted
    token is kept (per n-gram size), against what batches cost here now (engine.speculation.costs).
    Where no length gains, nothing is drafted, and rejected drafts back off for a growing number of
    tokens.
    """

    def __init__(
        self,
        history: Sequence[int],
        draft_max: int,
        cost: Cost,
        *,
        always: bool = False,
        lookup: bool = True,
        model: ModelDrafter | None = None,
        ends: Callable[[int], bool] | None = None,
        known: Snapshots | None = None,
        before: Sequence[int] = (),
    ) -> None:
        self.drafter = NgramDrafter(history, known, before)
        # Tokens that end the answer (end of generation, stop tokens): a draft stops before
        # one, as the answer would; the row before it samples the end itself.
        self.ends = ends
        self.lookup = lookup  # draft by prompt lookup (modes auto and ngram)
        # A draft model's guesses (engine.speculation.draft, bound to a sequence by the engine),
        # for what prompt lookup does not find with certainty.
        self.model = model
        self.draft_max = max(0, draft_max)
        # What a batch costs now: asked at every draft (a fixed cost answers the same each time).
        self.cost: Callable[[], DecodeCost] = cost if callable(cost) else lambda: cost
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
        # Where the copy broke off: (the source's position, the answer's) of the first token
        # that differs; what lies between there and where it resumes is an edit (Edits).
        self._break: tuple[int, int] | None = None
        self.edits = Edits()
        # Where the copy the last draft made (all of it kept) reads its next token: the token
        # sampled next goes on with it, makes an edit there, or breaks it off.
        self._cursor = -1
        self._skip = 0  # tokens still to decode without drafting (back-off)
        self._misses = 0  # drafts rejected at their first token in a row
        # A lookup that was not drafted: (its n-gram size, the token it guessed next). The
        # token sampled next tells whether it was right, evidence for that size at no cost,
        # so that short matches start drafting once a copy is under way.
        self._shadow: tuple[int, int] | None = None

    def propose(self, token: int, limit: int) -> list[int]:
        """Add `token` (sampled, about to be decoded) to the history; return the draft after it.

        The draft has at most `limit` tokens: the room left in the budget and the context.
        """
        self._judge_shadow(token)
        self.drafter.add(token)
        cursor, self._cursor = self._cursor, -1
        if limit <= 0:
            return []
        if self.lookup:
            draft = self._follow(cursor, token, limit) if cursor >= 0 else []
            if not draft:
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
                self._learn(resumed)
        if size == 0 or (self.model is not None and size < _SURE):
            return []  # a draft model guesses better than a short match
        length = min(self.length(size), limit)
        if length <= 0:
            self._guess(size, at)
            return []
        return self._copy(size, at, length)

    def _copy(
        self,
        size: int,
        at: int,
        length: int,
        prefix: Sequence[int] = (),
        edit: Edit | None = None,
    ) -> list[int]:
        """A draft of `length` tokens copied from position `at` on.

        It comes after `prefix`, the rest of `edit` under way.
        """
        self._size, self._at = size, at
        drafter = self.drafter
        draft = self._until_end(drafter.draft(at, length, self.edits, prefix, edit))
        del drafter.origins[len(draft) :]
        if not draft and not prefix:
            self._cursor = at  # an edit made once comes right away: see if it is made again
        return draft

    def _follow(self, cursor: int, token: int, limit: int) -> list[int]:
        """Go on from the last draft, which was all kept and copied the history up to `cursor`.

        If `token` makes an edit the answer made there before, draft the rest of it and what
        follows. If the draft ended in an edit and `token` goes on with the copy, go on drafting it.
        Else return []: the lookup decides.
        """
        tokens = self.drafter.tokens
        size = self._size
        edit = self.edits.at(tokens, cursor) if self.edits else None
        if edit is not None:
            old, new = edit
            after = cursor + len(old)
            # A dropped text (no `new`) is made when the token is the one after it, if any yet.
            made = (bool(new) and token == new[0]) or (
                not new and after < len(tokens) and token == tokens[after]
            )
            if made or token == old[0]:
                self.edits.judge(edit, made)
            if made:
                rest = new[1:] if new else ()
                at = after if new else after + 1
                length = min(self.length(_SURE) + len(rest), limit)
                return self._copy(_SURE, at, length, rest, edit) if length > 0 else []
        origins = self.drafter.origins  # the last lookup draft's
        ended_in_edit = bool(origins) and origins[-1][1] is not None
        if token == tokens[cursor] and (edit is not None or ended_in_edit):
            # Past an edit the history's n-grams do not lead back to the source: follow it.
            length = min(self.length(size), limit)
            return self._copy(size, cursor + 1, length) if length > 0 else []
        return []

    def _learn(self, resumed: int) -> None:
        """Remember the edit between self._break, where the copy broke off, and `resumed`."""
        if self._break is None:
            return
        source, answer = self._break
        self._break = None
        tokens = self.drafter.tokens
        old_end, new_end = resumed - _RESYNC, len(tokens) - _RESYNC
        if source < old_end and answer <= new_end:
            self.edits.learn(tokens[source:old_end], tokens[answer:new_end])

    def _until_end(self, draft: list[int]) -> list[int]:
        """`draft` up to the first token that would end the answer.

        The row before it samples that end as well, and tokens after it could never be kept.
        """
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
        """The draft length worth decoding after a match of `size` tokens.

        It is the k that maximises the decodes expected to be saved,
        worth * (p + p^2 + ... + p^k), less what the guess adds to the batch. Alone, a saved token
        is worth a one-token decode, and a guess of k adds batch(k + 1) - 1. Beside other
        generating slots, a guess adds batch(streams + k) - batch(streams), and a saved token is
        worth what a token costs in that batch, batch(streams) / streams. After a short match (a
        hunch, under _SURE tokens) p is taken one standard error below its estimate.
        """
        # A hunch's estimate rests on some ten recent guesses, and a length chosen when it
        # happens to read high drafts where guesses are not that good. On prose, 3-token matches
        # were right 2 times in 3, and drafts were made when the estimate read 0.72 or more; two
        # guessed rows kept 1.07 tokens and cost 1.29 decodes (scripts/bench/speculative.py,
        # prose at 0.94x the speed without speculation). Long matches are copies under way,
        # right 97 times in 100 at the estimates they are drafted at: they keep it.
        kept, lost = self._kept[size], self._lost[size]
        p = kept / (kept + lost)
        if size < _SURE:
            p = max(0.0, p - math.sqrt(p * (1.0 - p) / (kept + lost)))
        cost = self.cost()
        # Beside other slots the batch is decoded for them anyway. On a CPU, where each row
        # costs about as much as a one-token decode's share, 8 streams draft only where a guess
        # is kept more than 3 times in 4: a busy server's tokens are not spent on one client's
        # unlikely guesses.
        streams = max(1, cost.streams)
        before = cost.batch(streams)
        worth = before / streams
        best, gain, saved, chance = 0, 0.0, 0.0, 1.0
        for k in range(1, self.draft_max + 1):
            chance *= p
            saved += chance * worth
            net = saved - (cost.batch(streams + k) - before)
            if net > gain:
                best, gain = k, net
            elif p < 1.0 and net + chance * worth * p / (1.0 - p) <= gain:
                break  # a batch never costs less for more rows: no longer draft can gain more
        if best == 0 and self.always:
            return 1
        # Where no length gains, nothing is drafted, not even one token now and then to keep
        # the estimate current: the lookup not drafted is judged by the next token at no cost
        # (_guess), which is the evidence a one-token draft would give, without its batch (on
        # one thread of a busy CPU two rows cost two decodes: each such probe lost a decode
        # when its token was wrong and gained nothing when it was right).
        return best

    def known(self, tokens: Sequence[int]) -> None:
        """Add tokens the answer took without a guess (text a grammar forced) to the history.

        The next lookup starts afresh.
        """
        if tokens:
            self._judge_shadow(tokens[0])
        self.drafter.extend(tokens)
        self._cursor = -1

    def _judge_shadow(self, token: int) -> None:
        """The lookup not drafted (_guess) judged by the token that came after all."""
        if self._shadow is not None:
            size, guess = self._shadow
            self._shadow = None
            self._kept[size] = self._kept[size] * _DECAY + (token == guess)
            self._lost[size] = self._lost[size] * _DECAY + (token != guess)

    def settle(self, draft: Sequence[int], accepted: int) -> None:
        """Add the first `accepted` tokens of `draft` to the history; the estimates follow it."""
        if not draft:
            return
        self.drafted += len(draft)
        self.accepted += accepted
        self.drafter.extend(draft[:accepted])
        size = self._size
        if size == 0:
            return  # the draft model's: its own confidence decides its length
        origins = self.drafter.origins
        broke = accepted < len(draft)
        edit = origins[accepted][1] if broke else None
        if edit is not None:
            self.edits.judge(edit, False)  # the answer did not make it here
        if not broke:
            self._cursor = origins[len(draft) - 1][0]
        if size >= _SURE:  # a copy under way: if it broke off, look for where it resumes
            self._source = origins[accepted - 1][0] if accepted else self._at
            self._resync = _RESYNC_TOKENS if broke else 0
            # Broken off by an edit of the answer's own (not one drafted): learnt where the
            # copy resumes.
            own = broke and edit is None
            self._break = (origins[accepted][0] - 1, len(self.drafter.tokens)) if own else None
        self._kept[size] = self._kept[size] * _DECAY + accepted
        self._lost[size] = self._lost[size] * _DECAY + broke
        if accepted == 0:
            self._misses += 1
            self._skip = max(self._skip, min(_BACKOFF_MAX, 2 ** (self._misses - 1)))
        else:
            self._misses = 0
            self._skip = 0  # a token was kept: the text repeats, look again at once


def speculator(
    mode: str,
    history: Sequence[int],
    draft_max: int,
    cost: Cost,
    model: ModelDrafter | None = None,
    ends: Callable[[int], bool] | None = None,
    known: Snapshots | None = None,
    before: Sequence[int] = (),
) -> Speculator | None:
    """The speculator a generation with these settings uses, or None when speculation is off.

    `model` drafts with the model's DRAFT model (modes auto and draft). `ends` tells the tokens that
    end the answer; drafts stop before them. `known`, the engine's recent histories, spares indexing
    again what a history shares with one of them. `before` goes ahead of the history (an earlier
    answer to look up).
    """
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
        known=known,
        before=before,
    )
