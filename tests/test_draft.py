"""Speculative decoding with a draft model (Modelfile DRAFT): the tiny generated model and
SmolLM2 drafting for themselves, in both engines, through the real llama.cpp. A model drafting
for itself guesses right nearly always, so acceptance is checked high; the answer is the one
without speculation (or leaves it at a near tie, as test_speculate checks it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp as lc
import pytest
from test_speculate import CODE, Sink, assert_same_or_near_tie, edit_prompt, greedy, run

from localrun.engine.batch import BatchEngine
from localrun.engine.llama import LlamaModel
from localrun.engine.types import LoadOptions
from localrun.errors import BadRequestError

pytestmark = [pytest.mark.model]


@pytest.fixture(scope="module")
def drafted(smollm2_path: str) -> Iterator[LlamaModel]:
    model = LlamaModel(smollm2_path, LoadOptions(num_ctx=1024, num_thread=2, draft=smollm2_path))
    yield model
    model.close()


@pytest.fixture(scope="module")
def plain(smollm2_path: str) -> Iterator[LlamaModel]:
    model = LlamaModel(smollm2_path, LoadOptions(num_ctx=1024, num_thread=2))
    yield model
    model.close()


def test_a_model_drafting_for_itself_is_nearly_always_right(
    drafted: LlamaModel, plain: LlamaModel
) -> None:
    prompt = plain.tokenize(edit_prompt(), add_special=True, parse_special=True)
    base, _ = run(plain, prompt, greedy(speculate="off", num_predict=80))
    tokens, t = run(drafted, prompt, greedy(speculate="draft", num_predict=80))
    assert t.draft_tokens > 20, t
    assert t.draft_accepted >= 0.9 * t.draft_tokens, t
    assert int(lc.llama_memory_seq_pos_max(drafted._memory, 0)) + 1 == len(drafted._cache)
    assert_same_or_near_tie(plain, prompt, base, tokens)
    # auto uses the draft model where prompt lookup has no long match.
    tokens, t = run(drafted, prompt, greedy(speculate="auto", num_predict=80))
    assert t.draft_accepted > 0
    assert_same_or_near_tie(plain, prompt, base, tokens)


def test_draft_mode_needs_a_draft_model(plain: LlamaModel) -> None:
    prompt = plain.tokenize("hello", add_special=True, parse_special=False)
    with pytest.raises(BadRequestError, match="no draft model"):
        plain.generate(prompt, greedy(speculate="draft"))


def test_every_slot_drafts_with_its_own_sequence(
    smollm2_path: str, tiny_model: Path, plain: LlamaModel
) -> None:
    codes = [CODE, CODE.replace("Inventory", "Stock")]
    prompts = [plain.tokenize(edit_prompt(c), add_special=True, parse_special=True) for c in codes]
    engine = BatchEngine(
        smollm2_path, LoadOptions(num_ctx=1024, num_thread=2, draft=smollm2_path), 2
    )
    try:
        sinks = [Sink() for _ in prompts]
        for prompt, sink in zip(prompts, sinks, strict=True):
            engine.submit(prompt, greedy(speculate="draft", num_predict=60), sink=sink)
        for sink in sinks:
            assert sink.finished.wait(180) and sink.failure is None
            assert sink.timings.draft_accepted >= 0.9 * sink.timings.draft_tokens > 10
        for prompt, sink in zip(prompts, sinks, strict=True):
            base, _ = run(plain, prompt, greedy(speculate="off", num_predict=60))
            assert_same_or_near_tie(plain, prompt, base, sink.tokens)
    finally:
        engine.close()
    # The tiny model drafting for itself loads and answers too.
    tiny = LlamaModel(str(tiny_model), LoadOptions(num_ctx=256, draft=str(tiny_model)))
    try:
        prompt = tiny.tokenize("hello world", add_special=True, parse_special=False)
        tokens, t = run(tiny, prompt, greedy(speculate="draft", num_predict=30))
        assert len(tokens) == 30 and t.draft_accepted == t.draft_tokens
    finally:
        tiny.close()
