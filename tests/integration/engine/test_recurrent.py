"""Models whose memory cannot drop its last positions keep their prompt cache: a tiny random
Mamba and RWKV-7 (recurrent: one state per sequence) and LFM2 (hybrid: a short-convolution
state beside attention KV). Checkpoints of the state (engine.checkpoints) let a prompt that
shares only a prefix with what a slot holds continue from the latest one before it, a draft be
taken back, and a prefix be copied to another slot. The oracle everywhere: the answer equals the
cold one, token for token."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localrun.engine.batch import BatchEngine
from localrun.engine.checkpoints import TAIL, Checkpoint
from localrun.engine.prompts import disk_cache as prompt_cache
from localrun.engine.speculation.costs import DecodeCost
from localrun.engine.types import LoadOptions, SamplingOptions
from localrun.errors import EngineError

from support.batch import greedy, run

pytestmark = pytest.mark.model

TEXT = "the cat and the dog " * 30
MORE = " and the cat"
KINDS = {"tiny_mamba": "recurrent", "tiny_rwkv": "recurrent", "tiny_lfm2": "hybrid"}


@pytest.fixture(scope="module", params=sorted(KINDS))
def model(request: pytest.FixtureRequest) -> Iterator[tuple[str, BatchEngine]]:
    path: Path = request.getfixturevalue(request.param)
    engine = BatchEngine(str(path), LoadOptions(num_ctx=1024, num_thread=1), 1)
    yield request.param, engine
    engine.close()


def answer(engine: BatchEngine, prompt: list[int], **options: Any) -> tuple[list[int], Any]:
    options = {"temperature": 0, "num_predict": 120, **options}
    gen = engine.generate(prompt, SamplingOptions(**options))
    for _ in gen.pieces:
        pass
    return list(gen.tokens), gen.timings


def tokens(engine: BatchEngine, text: str) -> list[int]:
    return engine.tokenize(text, add_special=True, parse_special=True)


def cold(engine: BatchEngine, prompt: list[int], **options: Any) -> list[int]:
    engine.reset()
    return answer(engine, prompt, speculate="off", **options)[0]


def test_the_memory_is_known_and_said(model: tuple[str, BatchEngine]) -> None:
    name, engine = model
    assert engine._weights.memory == KINDS[name]
    assert engine._slots.memory.checkpointed


def test_a_prompt_sharing_a_prefix_continues_from_a_checkpoint(
    model: tuple[str, BatchEngine],
) -> None:
    _, engine = model
    prompt, longer = tokens(engine, TEXT), tokens(engine, TEXT + MORE)
    expected = cold(engine, longer)
    cold(engine, prompt)  # the sequence holds the prompt and its answer: shares `prompt` only
    marks = [m.n for m in engine._slots.all[0].marks]
    assert marks == [len(prompt) - 1]  # a token before the prompt's end
    got, timings = answer(engine, longer, speculate="off")
    assert got == expected
    assert timings.cached_tokens == len(prompt) - 1
    again, timings = answer(engine, longer, speculate="off")  # the same prompt again
    assert again == expected
    assert timings.cached_tokens == len(longer) - 1 and timings.prompt_tokens == 1


def test_a_long_prompt_keeps_checkpoints_at_a_spacing(
    model: tuple[str, BatchEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, engine = model
    memory = engine._slots.memory
    monkeypatch.setattr(memory, "policy", type(memory.policy)(every=100, count=3))
    prompt = tokens(engine, TEXT * 2)
    edited = prompt[:320] + tokens(engine, " a bird")[1:] + prompt[320:360]
    expected = cold(engine, edited)
    cold(engine, prompt)
    marks = [m.n for m in engine._slots.all[0].marks]
    # Every 100 tokens and one before the end, at most 3: the one whose loss leaves the
    # smallest gap goes first, never the newest.
    assert marks == [100, 300, len(prompt) - 1]
    got, timings = answer(engine, edited, speculate="off")
    assert got == expected and timings.cached_tokens == 300


def _tail_case(engine: BatchEngine, **long: Any) -> None:
    """A chat's prompt keeps its last checkpoint before the template's tail (`<|im_end|>` and
    the assistant's opening), so its last message edited at the end, and the same prompt again,
    read from there; each answers as a cold prompt does."""

    def chat(text: str) -> list[int]:
        return tokens(engine, f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")

    prompt, edited = chat(TEXT.strip()), chat(TEXT.strip() + " and a bird")
    assert not engine._weights.is_control(-1)  # a medium's placeholder: no vocabulary id
    (end,) = engine.token_ids("<|im_end|>")
    closing = max(i for i, t in enumerate(prompt) if t == end)
    assert closing >= len(prompt) - TAIL
    assert prompt[:closing] == edited[:closing] and prompt[closing] != edited[closing]
    memory = engine._slots.memory
    expected = {"edited": cold(engine, edited), "again": cold(engine, prompt)}
    answer(engine, prompt, speculate="off", **long)
    assert [m.n for m in engine._slots.all[0].marks] == [closing]
    got, timings = answer(engine, edited, speculate="off")  # the last message edited
    assert got == expected["edited"] and timings.cached_tokens == closing
    answer(engine, prompt, speculate="off", **long)
    taken = memory.taken
    got, timings = answer(engine, prompt, speculate="off")  # the same prompt again
    assert got == expected["again"] and timings.cached_tokens == closing
    assert memory.taken == taken  # its checkpoint restored, none taken


def test_the_last_checkpoint_is_before_the_templates_tail(model: tuple[str, BatchEngine]) -> None:
    _tail_case(model[1])


def test_a_windows_last_checkpoint_is_before_the_templates_tail(tiny_swa: Path) -> None:
    engine = BatchEngine(str(tiny_swa), LoadOptions(num_ctx=4096, num_thread=1), 1)
    try:
        _tail_case(engine, num_predict=900)  # past what the window's cache holds
    finally:
        engine.close()


def test_speculation_takes_rejected_drafts_back(model: tuple[str, BatchEngine]) -> None:
    _, engine = model
    prompt = tokens(engine, TEXT)
    plain = cold(engine, prompt, num_predict=300)
    engine.reset()
    got, timings = answer(engine, prompt, speculate="ngram", num_predict=300)
    assert got == plain
    # The earlier answer, remembered for the same client, is drafted whole: every guess kept.
    engine.reset()
    answer(engine, prompt, speculate="off", memory="m")
    engine.reset()
    got, timings = answer(engine, prompt, speculate="ngram", memory="m")
    assert got == plain[:120]
    assert timings.draft_tokens > 0 and timings.draft_accepted > 0


def test_drafts_rejected_are_rewound_to_the_same_answer(
    model: tuple[str, BatchEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drafts from an earlier answer remembered for this client that parts from this one
    (engine.speculation.answers): the guesses past the parting are wrong, each rewinds the state to
    the checkpoint before its batch and the kept tokens are read again. (A batch is priced as a
    GPU's, so that the drafts are made whatever this machine's load.)"""
    _, engine = model
    monkeypatch.setattr(engine, "_batch_cost", lambda: DecodeCost(base=0.9, extra=0.01))
    prompt = tokens(engine, TEXT)
    plain = cold(engine, prompt)
    memory = engine._slots.memory
    before, rejected = memory.rewound, 0
    for cut in (10, 40, 70):
        parted = plain[:cut] + plain[cut:][::-1]
        engine._answers.remember(f"p{cut}", prompt, parted)
        engine.reset()
        got, timings = answer(engine, prompt, speculate="ngram", memory=f"p{cut}")
        assert got == plain, cut
        rejected += timings.draft_tokens - timings.draft_accepted
    assert rejected > 0 and memory.rewound > before


def test_forced_text_is_taken_and_a_budget_inside_it_rewinds(
    model: tuple[str, BatchEngine],
) -> None:
    """A grammar's forced text is decoded as a draft (engine.answering): a budget that ends
    inside it leaves the state rewound to what the answer holds, and the next request that
    continues it answers as a cold one does."""
    _, engine = model
    grammar = 'start: "the lighthouse keeper wrote in the logbook every night " /[a-z ]{1,40}/'
    prompt = tokens(engine, TEXT)
    full = cold(engine, prompt, constraint=grammar, num_predict=60)
    engine.reset()
    cut, _ = answer(engine, prompt, constraint=grammar, num_predict=7)  # inside the forced text
    assert cut == full[:7]
    slot = engine._slots.all[0]
    assert engine._slots.memory.length(slot.seq) == len(slot.cache)
    longer = prompt + cut + tokens(engine, MORE)[1:]
    expected = cold(engine, longer)
    engine.reset()
    answer(engine, prompt, constraint=grammar, num_predict=7)
    got, timings = answer(engine, longer, speculate="off")
    assert got == expected and timings.cached_tokens > len(prompt)


def test_a_refused_checkpoint_is_dropped_and_the_answer_stays(
    model: tuple[str, BatchEngine], caplog: pytest.LogCaptureFixture
) -> None:
    _, engine = model
    prompt, longer = tokens(engine, TEXT), tokens(engine, TEXT + MORE)
    expected = cold(engine, longer)
    cold(engine, prompt)
    slot = engine._slots.all[0]
    (mark,) = slot.marks
    half = bytes(mark.data)[: mark.size // 2]
    slot.marks = [Checkpoint(mark.n, (ctypes.c_uint8 * len(half)).from_buffer_copy(half))]
    with caplog.at_level(logging.WARNING, logger="localrun.engine"):
        got, timings = answer(engine, longer, speculate="off")
    assert got == expected
    assert timings.cached_tokens == 0
    assert "checkpoint" in caplog.text and "refused" in caplog.text


def test_every_slot_of_the_batch_engine_alike(request: pytest.FixtureRequest) -> None:
    """Slots copy a shared prefix through a checkpoint (n > 1 and clients sharing a prompt);
    two slots answer at once."""
    name = "tiny_lfm2"
    engine = BatchEngine(str(request.getfixturevalue(name)), LoadOptions(num_ctx=512), 2)
    try:
        prompt, longer = tokens(engine, TEXT), tokens(engine, TEXT + MORE)
        expected = {}
        for p in (prompt, longer):
            engine.reset()
            expected[len(p)] = run(engine, p, greedy(100)).wait(120).tokens
        for p in (prompt, longer, prompt, longer):  # later ones find their prefix in a slot
            options = SamplingOptions(temperature=0, num_predict=100, speculate="ngram")
            sink = run(engine, p, options).wait(120)
            assert sink.exc is None, sink.exc
            assert sink.tokens == expected[len(p)]
        both = [run(engine, p, greedy(100)) for p in (prompt, prompt)]  # one prompt, read once
        for sink in both:
            assert sink.wait(120).exc is None and sink.tokens == expected[len(prompt)]
    finally:
        engine.close()


@pytest.mark.parametrize("name", [*sorted(KINDS), "tiny_model"])
def test_a_conversation_continues_in_the_next_process(
    request: pytest.FixtureRequest, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a slot that continued a conversation holds is kept on disk when its engine closes:
    the next process reads only the new turn, and answers as a cold one does."""
    monkeypatch.setattr(prompt_cache, "folder", lambda: tmp_path)
    path = str(request.getfixturevalue(name))
    options = LoadOptions(num_ctx=1024, num_thread=1)
    engine = BatchEngine(path, options, 1)
    try:
        first = tokens(engine, TEXT)
        second = first + answer(engine, first)[0] + tokens(engine, MORE)[1:]
        third = second + answer(engine, second)[0] + tokens(engine, " and the bird")[1:]
        expected = cold(engine, third)
        cold(engine, first)  # a one-shot prompt last: not kept
    finally:
        engine.close()
    assert list(tmp_path.iterdir()) == []
    engine = BatchEngine(path, options, 1)
    try:
        answer(engine, first)
        answer(engine, second)  # continues the first: kept at close
    finally:
        engine.close()
    engine = BatchEngine(path, options, 1)
    try:
        got, timings = answer(engine, third)
    finally:
        engine.close()
    assert got == expected
    assert timings.disk_tokens == timings.cached_tokens > len(second)
    assert timings.prompt_tokens == len(third) - timings.disk_tokens


def test_a_sliding_window_cut_past_what_it_holds_restores_a_checkpoint(tiny_swa: Path) -> None:
    """A window model's cache keeps its last positions only (about 768 cells here): a prompt
    parting from what a slot holds further back than that continues from a checkpoint, one
    parting within it from the cache itself; both answer as a cold prompt does. A prompt
    without a chat template's tail is read in one piece, its checkpoint taken after its last
    token; the same prompt again restores it and takes none."""
    engine = BatchEngine(str(tiny_swa), LoadOptions(num_ctx=4096, num_thread=1), 1)
    try:
        memory = engine._slots.memory
        assert engine._weights.memory == "window" and memory.window == 8
        memory.policy = type(memory.policy)(every=400)
        long = tokens(engine, TEXT * 6)  # about 1600 tokens
        far = long[:700] + tokens(engine, " a bird")[1:]
        near = long[:1500] + tokens(engine, " a bird")[1:]
        expected = {len(far): cold(engine, far), len(near): cold(engine, near)}
        cold(engine, long)
        # The prompt's last checkpoint is taken with its last token: no piece of one token.
        assert [m.n for m in engine._slots.all[0].marks] == [400, 800, 1200, 1600, len(long)]
        before = memory.restored
        got, timings = answer(engine, near, speculate="off")  # within the window's cache
        assert got == expected[len(near)] and timings.cached_tokens >= 1500
        assert memory.restored == before
        cold(engine, long)
        got, timings = answer(engine, far, speculate="off")  # past it: the checkpoint at 400
        assert got == expected[len(far)] and timings.cached_tokens == 400
        assert memory.restored == before + 1
        got, timings = answer(engine, far, speculate="ngram")  # drafts dropped as usual
        assert got == expected[len(far)]
        # The same long prompt after a long answer: its end restored, and nothing read (the
        # slot kept the logits of its last token: engine.slots `_held`).
        whole = cold(engine, long)
        taken = memory.taken
        got, timings = answer(engine, long, speculate="off", num_predict=900)
        restored = memory.restored
        got, timings = answer(engine, long, speculate="off")
        assert got == whole and timings.cached_tokens == len(long)
        assert timings.prompt_tokens == 0 and memory.restored == restored + 1
        assert memory.taken == taken
    finally:
        engine.close()


def test_a_window_copied_further_back_than_it_holds_is_read_again(tiny_swa: Path) -> None:
    """Another slot takes a prompt parting from a long one further back than its window's
    cache holds: the checkpoint cannot be written into a stream whose copy is still to come
    (it would be overwritten), so the prompt is read, and answers as a cold one does."""
    engine = BatchEngine(str(tiny_swa), LoadOptions(num_ctx=4096, num_thread=1), 2)
    try:
        engine._slots.memory.policy = type(engine._slots.memory.policy)(every=400)
        long = tokens(engine, TEXT * 6)
        far = long[:700] + tokens(engine, " a bird")[1:]
        expected = cold(engine, far)
        cold(engine, long)
        assert answer(engine, far, speculate="off")[0] == expected
    finally:
        engine.close()


def test_a_resumed_conversation_is_not_overwritten_by_a_copy(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot shares the system prompt with a conversation the next process resumes from
    disk: the state read from disk is not copied over by that slot's stream."""
    monkeypatch.setattr(prompt_cache, "folder", lambda: tmp_path)
    options = LoadOptions(num_ctx=1024, num_thread=1)
    system = "the cat and the dog " * 10
    engine = BatchEngine(str(tiny_model), options, 2)
    try:
        first = tokens(engine, system + " one two three four five six seven " * 6)
        second = first + answer(engine, first)[0] + tokens(engine, " and the bird " * 5)[1:]
        third = second + answer(engine, second)[0] + tokens(engine, " and the fish")[1:]
        other = tokens(engine, system + " red green blue yellow " * 10)
        expected = cold(engine, third)
    finally:
        engine.close()
    engine = BatchEngine(str(tiny_model), options, 2)
    try:
        answer(engine, first)
        answer(engine, second)  # kept at close
    finally:
        engine.close()
    engine = BatchEngine(str(tiny_model), options, 2)
    try:
        answer(engine, other)  # a slot holds the same system prompt, then parts
        got, timings = answer(engine, third)
    finally:
        engine.close()
    assert got == expected and timings.disk_tokens > len(second)


def test_a_slot_a_failed_step_left_half_read_is_emptied(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that fails after its decode leaves positions the slot's cache does not list:
    forgetting the slot empties its sequence, and the next request is answered."""
    read = BatchEngine._read
    calls = iter(range(10**6))

    def fails_once(self: BatchEngine, slot: Any, job: Any) -> bool:
        if next(calls) == 0:
            raise RuntimeError("a bug after the decode")
        return read(self, slot, job)

    monkeypatch.setattr(BatchEngine, "_read", fails_once)
    engine = BatchEngine(str(tiny_model), LoadOptions(num_ctx=512, num_thread=1), 1)
    try:
        prompt = tokens(engine, TEXT[:100])
        with pytest.raises(EngineError):
            answer(engine, prompt)
        got, _ = answer(engine, prompt)
        assert got == cold(engine, prompt)
    finally:
        engine.close()


def test_the_disk_prompt_cache_holds_the_state(
    tiny_rwkv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second process (here a second engine) restores the state of the model's own turns."""
    monkeypatch.setattr(prompt_cache, "folder", lambda: tmp_path)
    options = LoadOptions(num_ctx=512, num_thread=1)
    results = []
    for _ in range(2):
        engine = BatchEngine(str(tiny_rwkv), options, 1)
        try:
            prompt = tokens(engine, TEXT + MORE)
            gen = engine.generate(prompt, greedy(60), cache_prefix=len(prompt) - 4)
            for _ in gen.pieces:
                pass
            results.append((list(gen.tokens), gen.timings.disk_tokens))
        finally:
            engine.close()
    (first, none), (second, restored) = results
    assert second == first and none == 0 and restored == len(prompt) - 4
