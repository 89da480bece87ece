"""A scripted stand-in for the llama.cpp engine, for tests of the layers above it.

It "tokenizes" text into characters and answers with the scripted replies in order, one
character per token, honouring num_predict, stop tokens, cancellation and prefix caching the way
the real engine does, so the runner, the CLI and the scheduler can be tested without a model.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from localrun.engine.types import Generation, LoadOptions, SamplingOptions
from localrun.errors import ContextOverflowError

END = 0  # the end-of-turn token


class FakeBackend:
    """Loads FakeModels that answer with `replies`, in order (repeating the last)."""

    def __init__(self, replies: Sequence[str] = ("Hello!",)) -> None:
        self.replies = list(replies)
        self.loaded: list[FakeModel] = []

    def load(self, path: str, options: LoadOptions) -> FakeModel:
        model = FakeModel(self.replies, options)
        self.loaded.append(model)
        return model


class FakeModel:
    bos_text = ""
    eos_text = "<|im_end|>"
    chat_template: str | None = None

    def __init__(self, replies: list[str], options: LoadOptions) -> None:
        self.replies = replies
        self.options = options
        self.n_ctx = options.num_ctx
        self.n_ctx_train = options.num_ctx
        self.load_s = 0.0
        self.prompts: list[list[int]] = []
        self._cache: list[int] = []
        self._turn = 0
        self.closed = False

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return [ord(ch) for ch in text]

    def token_ids(self, text: str) -> list[int]:
        return [END] if text == self.eos_text else []

    def reset(self) -> None:
        self._cache = []

    def generate(
        self,
        prompt: Sequence[int],
        sampling: SamplingOptions,
        *,
        stop_tokens: frozenset[int] = frozenset(),
        cancel: threading.Event | None = None,
    ) -> Generation:
        if len(prompt) >= self.n_ctx:
            raise ContextOverflowError(f"the prompt is {len(prompt)} tokens")
        self.prompts.append(list(prompt))
        reply = self.replies[min(self._turn, len(self.replies) - 1)]
        self._turn += 1
        gen = Generation(iter(()))
        gen.pieces = self._run(list(prompt), reply, sampling, cancel, gen)
        return gen

    def _run(
        self,
        prompt: list[int],
        reply: str,
        sampling: SamplingOptions,
        cancel: threading.Event | None,
        gen: Generation,
    ) -> Iterator[str]:
        keep = 0
        while keep < min(len(self._cache), len(prompt) - 1) and self._cache[keep] == prompt[keep]:
            keep += 1
        gen.timings.cached_tokens = keep
        gen.timings.prompt_tokens = len(prompt) - keep
        self._cache = list(prompt)
        budget = sampling.num_predict if sampling.num_predict >= 0 else len(reply) + 1
        gen.done_reason = "stop"
        for index, ch in enumerate(reply):
            if index >= budget:
                gen.done_reason = "length"
                return
            if cancel is not None and cancel.is_set():
                gen.done_reason = "cancelled"
                return
            gen.timings.eval_tokens += 1
            gen.tokens.append(ord(ch))
            self._cache.append(ord(ch))
            yield ch

    def close(self) -> None:
        self.closed = True
