"""Prompt lookup's memory of a sequence: its n-gram index, recent histories' indexes, its edits.

NgramDrafter is the n-gram index a draft is looked up in. Snapshots keeps the indexes of recent
histories a chat's next request starts from. Edits holds the edits an answer makes to the text it
copies. engine.speculation.speculator decides when and how much to draft from them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Lengths of the suffix matched against the history, longest first: a long match is a sure
# guess, a short one recovers quickly after an edit (a renamed identifier breaks every longer
# n-gram that spans it for as many tokens).
NGRAM_SIZES = (24, 12, 6, 3)
SNAPSHOTS = 4  # histories whose n-gram indexes are kept for the next request (Snapshots)
SNAPSHOT_LEAST = 256  # the shortest history worth keeping one of


@dataclass(frozen=True)
class _Snapshot:
    tokens: tuple[int, ...]
    index: dict[tuple[int, ...], int]


class Snapshots:
    """The n-gram indexes of the last few histories drafters were made from. Thread-safe.

    A chat's next request (a new turn, a regenerate, an edit of the last message) starts with one of
    them. Only the rest is indexed, instead of the whole history each request: thousands of tokens
    in a long chat, milliseconds of every request. A kept index is never changed: a drafter that
    holds one copies it before its first change.
    """

    def __init__(self, most: int = SNAPSHOTS, least: int = SNAPSHOT_LEAST) -> None:
        self.most, self.least = most, least
        self._kept: list[_Snapshot] = []
        self._lock = threading.Lock()

    def longest(self, history: Sequence[int]) -> _Snapshot | None:
        """The kept history that `history` starts with, the longest (None: none)."""
        with self._lock:
            kept = list(self._kept)
        best = None
        for snap in kept:
            n = len(snap.tokens)
            longer = best is None or n > len(best.tokens)
            if n <= len(history) and longer and tuple(history[:n]) == snap.tokens:
                best = snap
        return best

    def keep(self, tokens: Sequence[int], index: dict[tuple[int, ...], int]) -> bool:
        """Keep `index`, a drafter's over `tokens`, which the drafter then leaves as it is.

        Returns True when it is kept; a short history is not worth it (False). The same history kept
        already is used again.
        """
        if len(tokens) < self.least:
            return False
        snap = _Snapshot(tuple(tokens), index)
        with self._lock:
            same = [k for k in self._kept if k.tokens == snap.tokens]
            others = [k for k in self._kept if k.tokens != snap.tokens]
            self._kept = [*others[-(self.most - 1) :], *(same or [snap])]
        return True


class NgramDrafter:
    """Prompt lookup over one sequence's tokens (prompt and answer so far).

    Keeps, for every n-gram of each size in NGRAM_SIZES, the position right after its latest
    occurrence, updated as tokens are added: a lookup costs a few dictionary reads, whatever
    the length of the history.
    """

    def __init__(
        self,
        history: Iterable[int] = (),
        known: Snapshots | None = None,
        before: Sequence[int] = (),
    ) -> None:
        """Build the index over `before` followed by `history`.

        `known` spares indexing what `history` shares with a recent one. `before` (an earlier
        answer) is not kept there.
        """
        self.tokens: list[int] = []
        # n-gram -> the position after its latest occurrence, less _shift: positions count from
        # the start of `history`, so a kept index serves whatever comes before it. A kept one
        # (_shared) is copied before it changes: a request that adds nothing to its history
        # (a regenerate) copies nothing before its first token.
        self._index: dict[tuple[int, ...], int] = {}
        self._shared = False
        # `before`'s n-grams, read where the history has none (the history's are the later).
        self._earlier: dict[tuple[int, ...], int] = {}
        self._shift = 0
        self.origins: list[tuple[int, Edit | None]] = []  # the last draft's (see draft)
        if known is not None:
            history = list(history)
            start = known.longest(history)
            if start is not None:
                self.tokens, self._index = list(start.tokens), start.index
                self._shared = True
                history = history[len(start.tokens) :]
        self.extend(history)
        if known is not None:
            self._shared = known.keep(self.tokens, self._index) or self._shared
        if before:
            self._put_before(before)

    def _put_before(self, before: Sequence[int]) -> None:
        """Index `before` ahead of the history, each n-gram where it occurs last.

        Its n-grams include those that run into the history.
        """
        whole = [*before, *self.tokens]
        shift = len(before)
        earlier = self._earlier
        for n in NGRAM_SIZES:
            for start in range(min(shift, len(whole) - 1 - n + 1)):
                earlier[tuple(whole[start : start + n])] = start + n - shift
        self.tokens, self._shift = whole, shift

    def extend(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            self.add(token)

    def add(self, token: int) -> None:
        tokens = self.tokens
        tokens.append(token)
        end = len(tokens)
        # The n-grams ending just before `token` now point at it.
        if self._shared:
            self._index, self._shared = dict(self._index), False
        index = self._index
        at = end - 1 - self._shift
        for n in NGRAM_SIZES:
            if end > n:
                index[tuple(tokens[end - 1 - n : end - 1])] = at

    def match(self) -> tuple[int, int]:
        """The longest suffix of the history seen before, as (n, position); (0, -1) for none.

        n is its length in tokens. position is where the tokens that followed its latest earlier
        occurrence begin.
        """
        tokens = self.tokens
        end = len(tokens)
        for n in NGRAM_SIZES:
            if end >= n:
                key = tuple(tokens[end - n :])
                at = self._index.get(key)
                if at is None and self._earlier:
                    at = self._earlier.get(key)
                if at is not None:
                    return n, at + self._shift
        return 0, -1

    def near(self, source: int, n: int, before: int = 8, after: int = 24) -> int:
        """Where the text resumes around `source` after an edit; -1 if nowhere.

        It is the position right after an occurrence of the last `n` tokens within
        [source - before, source + after], the one closest to `source`.
        """
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

    def draft(
        self,
        at: int,
        limit: int,
        edits: Edits | None = None,
        prefix: Sequence[int] = (),
        prefix_edit: Edit | None = None,
    ) -> list[int]:
        """Draft `limit` tokens: `prefix`, then the history from position `at` on, edits made.

        `prefix` is the rest of `prefix_edit`, under way. The `edits` the answer made before are
        made again. Past the end of the history the text is taken to repeat with the period it
        showed: a loop goes on as it went.

        An edit not made twice yet ends the draft: the token sampled next shows whether the answer
        makes it again. Sets `origins`: per drafted token, the position of the history that follows
        it, and the edit that wrote it (None for a copied token).
        """
        tokens = self.tokens
        end = len(tokens)
        out = list(prefix[:limit])
        origins: list[tuple[int, Edit | None]] = [(at, prefix_edit)] * len(out)
        self.origins = origins
        if at >= end or len(out) >= limit:
            return out
        if edits:
            p = at
            while p < end and len(out) < limit:
                edit = edits.at(tokens, p)
                if edit is None:
                    out.append(tokens[p])
                    p += 1
                    origins.append((p, None))
                elif not edits.sure(edit):
                    return out
                else:
                    p += len(edit[0])
                    out.extend(edit[1])
                    origins.extend([(p, edit)] * len(edit[1]))
            if p < end or len(out) >= limit:
                del out[limit:], origins[limit:]
                return out
            del out[len(prefix) :], origins[len(prefix) :]  # it loops: no edits
        rest = limit - len(out)
        period = end - at
        if rest <= period:  # within the history
            out += tokens[at : at + rest]
            origins += [(p, None) for p in range(at + 1, at + rest + 1)]
        else:
            out.extend(tokens[at + i % period] for i in range(rest))
            origins.extend((at + i % period + 1, None) for i in range(rest))
        return out


Edit = tuple[tuple[int, ...], tuple[int, ...]]  # tokens of the source, what the answer wrote


class Edits:
    """The edits an answer made to the text it copies, learnt where a copy broke off and resumed.

    An edit is a renamed identifier, or a word spelled with other tokens. One the answer made twice
    is made again inside drafts. One made once stops a draft before it; if the answer goes on making
    it, the next draft finishes it. So a rename costs one missed draft, not one per occurrence, and
    a one-off change costs little.
    """

    LONGEST = 8  # tokens on either side of an edit, at most
    MOST = 32  # edits remembered

    def __init__(self) -> None:
        self._by_first: dict[int, list[Edit]] = {}
        self._made: dict[Edit, int] = {}  # times the answer made it, less times it did not

    def __bool__(self) -> bool:
        return bool(self._made)

    def learn(self, old: Sequence[int], new: Sequence[int]) -> None:
        if not 0 < len(old) <= self.LONGEST or len(new) > self.LONGEST or old == new:
            return
        if len(self._made) >= self.MOST:
            return
        edit = (tuple(old), tuple(new))
        same = self._by_first.setdefault(edit[0][0], [])
        for other in [e for e in same if e[0] == edit[0]]:  # the latest edit of a text wins
            self.forget(other)
        same.append(edit)
        same.sort(key=lambda e: -len(e[0]))  # the longest source text first
        self._made[edit] = 1

    def sure(self, edit: Edit) -> bool:
        return self._made.get(edit, 0) >= 2

    def judge(self, edit: Edit, made: bool) -> None:
        """The answer made `edit` again, or copied its source text instead."""
        if edit in self._made:
            self._made[edit] += 1 if made else -1
            if self._made[edit] <= 0:
                self.forget(edit)

    def forget(self, edit: Edit) -> None:
        same = self._by_first.get(edit[0][0], [])
        if edit in same:
            same.remove(edit)
        self._made.pop(edit, None)

    def at(self, tokens: Sequence[int], p: int) -> Edit | None:
        """The edit whose source text starts at position `p` of `tokens`, if any."""
        same = self._by_first.get(tokens[p])
        if same:
            for edit in same:
                old = edit[0]
                if tuple(tokens[p : p + len(old)]) == old:
                    return edit
        return None
