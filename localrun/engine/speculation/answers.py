"""Earlier answers to the same prompt, for speculation to draft a repeated request from.

Regenerating an answer, or an agent asking the same thing again, is common. The answer then often
repeats the one before, and prompt lookup finds nothing of it in the prompt. llama-server's
ngram-mod keeps one n-gram table for every client and drafts from whatever anyone was answered. Here
an answer is remembered under the `memory` its request carries, and drafted from only for a request
that carries the same one. The server sets it from the request's API key. With no key it is "local"
when the server listens on loopback alone (one person's machine), else unset. A client can learn
from timing whether a request like its own was answered before, and how; with this rule only from
answers it could have asked for itself.

It keeps MOST_ANSWERS answers and MOST_TOKENS tokens in all, the least recently used going first.
Drafts from a memory are checked like any other (every kept token is one the sampler chose). An
earlier answer that the new one does not repeat costs one rejected draft, and the expected-gain rule
then stops drafting from it.
"""

from __future__ import annotations

import array
import collections
import hashlib
import threading
from collections.abc import Sequence

MOST_ANSWERS = 256
MOST_TOKENS = 1 << 20
# Prompt tokens put before a remembered answer in a draft's history: a lookup of the prompt's
# end then finds the answer after it (the longest n-gram the drafter matches).
LEAD = 24


class AnswerMemory:
    """The last answer to each (memory, prompt), least recently used first out."""

    def __init__(self, most_answers: int = MOST_ANSWERS, most_tokens: int = MOST_TOKENS) -> None:
        self._answers: collections.OrderedDict[tuple[str, bytes], list[int]] = (
            collections.OrderedDict()
        )
        self._tokens = 0
        self._most_answers = most_answers
        self._most_tokens = most_tokens
        self._lock = threading.Lock()

    @staticmethod
    def _key(memory: str, prompt: Sequence[int]) -> tuple[str, bytes]:
        digest = hashlib.blake2b(array.array("q", prompt).tobytes(), digest_size=16)
        return memory, digest.digest()

    def history(self, memory: str | None, prompt: Sequence[int]) -> list[int]:
        """What a draft may look up before the prompt: its end, then its last answer remembered.

        The answer is the one remembered under `memory`; [] if there is none, or no memory.
        """
        if not memory:
            return []
        key = self._key(memory, prompt)
        with self._lock:
            answer = self._answers.get(key)
            if answer is None:
                return []
            self._answers.move_to_end(key)
            return [*prompt[-LEAD:], *answer]

    def remember(self, memory: str | None, prompt: Sequence[int], answer: Sequence[int]) -> None:
        if not memory or not answer or len(answer) > self._most_tokens:
            return
        key = self._key(memory, prompt)
        with self._lock:
            old = self._answers.pop(key, None)
            if old is not None:
                self._tokens -= len(old)
            self._answers[key] = list(answer)
            self._tokens += len(answer)
            while len(self._answers) > self._most_answers or self._tokens > self._most_tokens:
                _, dropped = self._answers.popitem(last=False)
                self._tokens -= len(dropped)
