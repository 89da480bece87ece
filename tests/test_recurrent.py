"""A recurrent model (a tiny random Mamba): its memory is one state per sequence, which cannot
drop its last positions. A prompt that shares only a prefix with what a sequence holds is
evaluated again from the start, and such a model does not speculate (a rejected draft could
not be taken back), in the single engine and in every slot of the batch engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_batch import greedy, run

from localrun.engine.batch import BatchEngine
from localrun.engine.types import LoadOptions, SamplingOptions

TEXT = "the cat and the dog " * 10
MORE = " and the cat"


@pytest.fixture(scope="module")
def single(tiny_mamba: Path) -> Iterator[BatchEngine]:
    model = BatchEngine(str(tiny_mamba), LoadOptions(num_ctx=512, num_thread=1), 1)
    yield model
    model.close()


def answer(model: BatchEngine, prompt: list[int], **options: Any) -> list[int]:
    gen = model.generate(prompt, SamplingOptions(temperature=0, num_predict=200, **options))
    for _ in gen.pieces:
        pass
    assert gen.timings.draft_tokens == 0  # nothing drafted, whatever the mode asked
    return list(gen.tokens)


def tokens(model: BatchEngine, text: str) -> list[int]:
    return model.tokenize(text, add_special=True, parse_special=True)


def test_the_model_is_recurrent_and_its_sequences_cannot_be_cut(single: BatchEngine) -> None:
    assert single._weights.trims is False
    assert "recurrent" in (single._weights.unrestorable() or "")


def test_a_prompt_sharing_a_prefix_is_evaluated_again(single: BatchEngine) -> None:
    prompt, longer = tokens(single, TEXT), tokens(single, TEXT + MORE)
    single.reset()
    fresh = answer(single, longer)
    single.reset()
    answer(single, prompt)  # the sequence now holds the prompt and its answer
    assert answer(single, longer) == fresh


@pytest.mark.parametrize("mode", ["ngram", "auto"])
def test_speculation_is_off_and_the_answer_is_the_plain_one(single: BatchEngine, mode: str) -> None:
    prompt = tokens(single, TEXT)
    single.reset()
    plain = answer(single, prompt, speculate="off")
    single.reset()
    assert answer(single, prompt, speculate=mode) == plain


def test_every_slot_of_the_batch_engine_alike(tiny_mamba: Path, single: BatchEngine) -> None:
    prompt, longer = tokens(single, TEXT), tokens(single, TEXT + MORE)
    expected = {}
    for p in (prompt, longer):
        single.reset()
        expected[len(p)] = answer(single, p)
    engine = BatchEngine(str(tiny_mamba), LoadOptions(num_ctx=512, num_thread=1), 2)
    try:
        for p in (prompt, longer, prompt, longer):  # later ones find their prefix in a slot
            options = SamplingOptions(temperature=0, num_predict=200, speculate="ngram")
            sink = run(engine, p, options).wait(120)
            assert sink.exc is None, sink.exc
            assert sink.timings.draft_tokens == 0
            assert sink.tokens == expected[len(p)]
        both = [run(engine, p, greedy(200)) for p in (prompt, longer)]  # two slots at once
        for p, sink in zip((prompt, longer), both, strict=True):
            assert sink.wait(120).exc is None and sink.tokens == expected[len(p)]
    finally:
        engine.close()
