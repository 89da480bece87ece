"""Greedy decoding on the tokens that can win (engine.sampling.sampler.Sampler) chooses what the
native chain chooses on the whole vocabulary, on SmolLM2 with every kind of logit change."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from localrun.engine.batch import BatchEngine
from localrun.engine.sampling.sampler import Sampler
from localrun.engine.types import LoadOptions, SamplingOptions

pytestmark = pytest.mark.model

# Plain text to continue: no end of turn comes within the answers' 64 tokens.
PROMPT = "The planets of the solar system, from the Sun outwards, are"


@pytest.fixture(scope="module")
def smollm2(smollm2_path: str) -> Iterator[BatchEngine]:
    model = BatchEngine(smollm2_path, LoadOptions(num_ctx=1024, num_thread=2), 1)
    yield model
    model.close()


def _prompt(model: BatchEngine) -> list[int]:
    return model.tokenize(PROMPT, add_special=True, parse_special=False)


def _tokens(model: BatchEngine, options: SamplingOptions) -> list[int]:
    model.reset()
    answer = model.generate(_prompt(model), options)
    "".join(answer)
    return answer.tokens


def _whole_vocabulary(self: Sampler, logits: Any) -> tuple[int, bool]:
    return self._apply(logits), False  # llama_sampler_sample's way: every token


def _biased(model: BatchEngine, options: SamplingOptions) -> SamplingOptions:
    """`options` with the answer's first token banned and its third favoured, and its ends
    banned (so that the answer runs to num_predict however the bias turns it)."""
    import llama_cpp as lc

    plain = _tokens(model, options)
    vocab = model._weights.vocab
    ends = [t for t in range(lc.llama_vocab_n_tokens(vocab)) if lc.llama_vocab_is_eog(vocab, t)]
    bias = ((plain[0], -100.0), (plain[2], 3.0), *((end, -100.0) for end in ends))
    return replace(options, logit_bias=bias)


GREEDY = SamplingOptions(temperature=0, num_predict=64)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(replace(GREEDY, repeat_penalty=1.0), id="no-penalties"),
        pytest.param(GREEDY, id="default-penalties"),
        pytest.param(replace(GREEDY, repeat_penalty=1.6, repeat_last_n=12), id="short-window"),
        pytest.param(
            replace(GREEDY, repeat_penalty=1.0, presence_penalty=-1.5, frequency_penalty=0.4),
            id="raising-penalties",
        ),
        pytest.param(None, id="logit-bias"),
        pytest.param(replace(GREEDY, repeat_penalty=0.8), id="repeat-penalty-below-one"),
    ],
)
def test_greedy_on_the_tokens_that_can_win_equals_the_whole_vocabulary(
    smollm2: BatchEngine, options: SamplingOptions | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if options is None:
        options = _biased(smollm2, GREEDY)
    calls = {"greedy": 0, "put": 0, "set-aside": 0}

    def counting(name: str, method: Any) -> Any:
        def counted(self: Sampler, *args: Any) -> Any:
            calls[name] += 1
            return method(self, *args)

        return counted

    monkeypatch.setattr(Sampler, "_greedy", counting("greedy", Sampler._greedy))
    monkeypatch.setattr(Sampler, "_put", counting("put", Sampler._put))
    monkeypatch.setattr(Sampler, "_best_untouched", counting("set-aside", Sampler._best_untouched))
    fast = _tokens(smollm2, options)
    monkeypatch.setattr(Sampler, "_greedy", _whole_vocabulary)
    whole = _tokens(smollm2, options)
    assert fast == whole
    assert len(fast) >= 32
    # The short paths ran, not only the reference's: the best logit alone where the chain can
    # only lower logits, the few tokens that can win otherwise.
    lowers_only = not options.logit_bias and options.repeat_penalty >= 1.0
    lowers_only = lowers_only and options.presence_penalty >= 0
    direct = calls["greedy"] - calls["put"]
    assert direct > 0 if lowers_only else calls["put"] == calls["greedy"] >= len(fast)
    if options.repeat_penalty > 1.0:
        # The model's favourite is often a token it just wrote: set aside, the next one wins.
        assert calls["set-aside"] > 0


def test_the_window_forgets_what_left_the_chains(smollm2: BatchEngine) -> None:
    """The mirror of the penalties' window counts what the chain's window holds."""
    sampler = Sampler(replace(GREEDY, repeat_last_n=3), smollm2._weights.vocab, 49152, 1024)
    try:
        for token in (5, 6, 5, 7, 8):
            sampler._remember(token)
        assert sampler.counts == {5: 1, 7: 1, 8: 1}
        assert list(sampler.window) == [5, 7, 8]
    finally:
        sampler.free()


def test_sampling_with_temperature_is_unchanged_by_the_greedy_path(smollm2: BatchEngine) -> None:
    """Seeded sampling stays llama_sampler_sample's: the same seed, the same answer."""
    options = SamplingOptions(temperature=0.9, top_k=40, top_p=0.95, seed=7, num_predict=40)
    assert _tokens(smollm2, options) == _tokens(smollm2, options)
