"""A chat's prompt tokenized again only past what an earlier prompt shared with it.

A chat's next request (a new turn, a regenerate, an edit of the last message) renders to a prompt
that starts as an earlier one did. Tokenizing the whole of it again took a runner 10 ms of every
request on a 2,000-token Gemma 3 chat, as long as the decode (issue 93). llama_tokenize parts a text
at its special tokens first and tokenizes each piece between them on its own. (A SentencePiece piece
gets its space prefix from the special token before it, there either way.) So the tokens of a text
cut right before a special token are those of the part before, then those of the part from there.
The cache keeps a few recent prompts' tokens and finds the one sharing the longest beginning with a
new text. It cuts both at the last special token inside that beginning, checks that the cached
tokens hold that token where the count before it says, and tokenizes only the rest. Anything it is
not sure of (a cut it cannot place for certain) is tokenized whole.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Tokenize = Callable[[str], list[int]]  # the whole text, special tokens parsed

KEPT = 8  # recent prompts whose tokens are kept
KEPT_CHARS = 4 << 20  # and at most this much of their text in all
LEAST = 2048  # a text shorter than this is tokenized whole (it costs less than the search)


@dataclass
class _Entry:
    text: str
    tokens: list[int]
    places: dict[int, list[int]]  # each special token the tokens hold: its indexes


class PrefixTokens:
    """The tokens of texts, from a cache of recent ones where a text starts as one of them did.

    Special tokens are parsed, and nothing is added at either end. Thread-safe.
    """

    def __init__(self, tokenize: Tokenize, specials: Mapping[int, str]) -> None:
        self._tokenize = tokenize
        self._specials = specials  # special token id -> its text
        self._texts = tuple(t for t in specials.values() if t)
        self._text_set = frozenset(self._texts)
        self._lengths = sorted({len(t) for t in self._texts})
        self._longest = max(self._lengths, default=1)
        self._clean_ids: dict[int, bool] = {}
        self._kept: list[_Entry] = []
        self._lock = threading.Lock()

    def tokens(self, text: str) -> list[int]:
        if len(text) < LEAST:
            return self._tokenize(text)
        entry = self._from_kept(text)
        if entry is None:
            tokens = self._tokenize(text)
            entry = _Entry(text, tokens, self._places(tokens))
        self._keep(entry)
        return entry.tokens

    def _places(self, tokens: list[int], offset: int = 0) -> dict[int, list[int]]:
        """Each special token in `tokens`: its indexes, plus `offset`."""
        places: dict[int, list[int]] = {}
        specials = self._specials
        for i, token in enumerate(tokens):
            if token in specials:
                places.setdefault(token, []).append(i + offset)
        return places

    def _from_kept(self, text: str) -> _Entry | None:
        with self._lock:
            kept = list(self._kept)
        best, shared = None, 0
        for entry in kept:
            n = _common(text, entry.text)
            if n > shared:
                best, shared = entry, n
        if best is None or shared < LEAST // 2:
            return None
        cut = self._cut(text, best, shared)
        if cut is None:
            return None
        at, index = cut
        rest = self._tokenize(text[at:])
        places = {t: [p for p in ps if p < index] for t, ps in best.places.items() if ps[0] < index}
        for token, more in self._places(rest, index).items():
            places.setdefault(token, []).extend(more)
        return _Entry(text, best.tokens[:index] + rest, places)

    def _cut(self, text: str, entry: _Entry, shared: int) -> tuple[int, int] | None:
        r"""Where the last clean special token in the shared beginning starts, or None.

        It returns (where in `text`, where in the entry's tokens), or None where it cannot be placed
        for certain. llama.cpp parts a text at special tokens longest first, user-defined ones
        (SentencePiece vocabularies have "\n", "\n\n", two spaces ...) whatever `parse_special`
        says. A cut goes at a special token no other special token's text holds, so each of its
        texts in the text is that token. No special token's text may run across the cut, and the
        token's count in the cached text must be its count in the cached tokens.
        """
        best = (-1, -1)
        for token in entry.places:
            if not self._clean(token):
                continue
            at = text.rfind(self._specials[token], 0, shared - len(self._specials[token]) + 1)
            if at > best[0]:
                best = (at, token)
        at, token = best
        if at <= 0 or self._crossed(text, at):
            return None
        special = self._specials[token]
        places = entry.places[token]
        if len(places) != entry.text.count(special):
            return None  # some text of it was not that token: not the partition assumed
        before = text.count(special, 0, at)
        if before >= len(places):
            return None
        return at, places[before]

    def _clean(self, token: int) -> bool:
        """Whether no other special token's text holds this one's."""
        known = self._clean_ids.get(token)
        if known is None:
            special = self._specials[token]
            known = bool(special) and not any(
                special in other for other in self._texts if len(other) > len(special)
            )
            self._clean_ids[token] = known
        return known

    def _crossed(self, text: str, at: int) -> bool:
        """Whether a special token's text starts before `at` and runs past it."""
        texts = self._text_set
        for length in self._lengths:
            for start in range(max(0, at - length + 1), at):
                if text[start : start + length] in texts:
                    return True
        return False

    def _keep(self, entry: _Entry) -> None:
        with self._lock:
            kept = [e for e in self._kept if e.text != entry.text]
            kept.append(entry)
            while len(kept) > KEPT or sum(len(e.text) for e in kept) > KEPT_CHARS:
                kept.pop(0)
            self._kept = kept


def _common(a: str, b: str) -> int:
    """The length of the longest beginning `a` and `b` share.

    It is a binary search of slices: each comparison is C's.
    """
    if a.startswith(b):
        return len(b)
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
