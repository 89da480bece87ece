"""engine.batch.BatchEngine on real models: continuous batching, slots, cancel, embeddings."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
from benchlib.scores import Reference

from localrun.engine.batch import BatchEngine
from localrun.engine.library.native import lc
from localrun.engine.scoring import score_rows, scored_chunk
from localrun.engine.types import LoadOptions, SamplingOptions
from localrun.errors import BadRequestError, ContextOverflowError, EngineError
from localrun.formats import template
from localrun.runtimes import exact

from support.batch import Collect, greedy, run

pytestmark = pytest.mark.model

IM_END = frozenset({2})  # SmolLM2's <|im_end|>


@pytest.fixture(scope="module")
def smol(smollm2_path: str) -> Iterator[BatchEngine]:
    engine = BatchEngine(smollm2_path, LoadOptions(num_ctx=512, num_thread=1), 4)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> Iterator[BatchEngine]:
    engine = BatchEngine(str(tiny_model), LoadOptions(num_ctx=256, num_thread=1), 2)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def tiny_chunked(tiny_model: Path) -> Iterator[BatchEngine]:
    """Batches of 64 tokens: long prompts (and texts to embed) take several decodes."""
    options = LoadOptions(num_ctx=256, num_batch=64, num_thread=1)
    engine = BatchEngine(str(tiny_model), options, 3)
    yield engine
    engine.close()


@pytest.fixture
def tiny1(tiny_model: Path) -> Iterator[BatchEngine]:
    """One slot: what waits, waits until that slot is free."""
    engine = BatchEngine(str(tiny_model), LoadOptions(num_ctx=256, num_thread=1), 1)
    yield engine
    engine.close()


def chat(engine: BatchEngine, *turns: str, system: str | None = None) -> list[int]:
    messages = [{"role": "system", "content": system}] if system else []
    roles = ["user", "assistant"]
    messages += [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]
    text = template.render(engine.chat_template, messages, bos_token=engine.bos_text)
    return engine.tokenize(text, add_special=False, parse_special=True)


def words(engine: BatchEngine, text: str) -> list[int]:
    return engine.tokenize(text, add_special=True, parse_special=False)


# -- batching ---------------------------------------------------------------------------------


def test_concurrent_greedy_equals_each_alone_smollm2(smol: BatchEngine, smollm2_path: str) -> None:
    questions = ["What is the capital of Spain?", "Name three fruits.", "What is 3+5?", "Hi!"]
    prompts = [chat(smol, q) for q in questions]
    together = [run(smol, p, greedy(24), IM_END) for p in prompts]
    for sink in together:
        assert sink.wait().calls == 1 and sink.reason in ("stop", "length")
    alone = [run(smol, p, greedy(24), IM_END).wait() for p in prompts]  # one at a time
    assert [s.tokens for s in together] == [s.tokens for s in alone]
    assert all(sink.text for sink in together)
    # And the same tokens as an engine of one slot.
    model = BatchEngine(smollm2_path, LoadOptions(num_ctx=512, num_thread=1), 1)
    try:
        for prompt, sink in zip(prompts, together, strict=True):
            gen = model.generate(prompt, greedy(24), stop_tokens=IM_END)
            assert "".join(gen) == sink.text
            assert gen.tokens == sink.tokens and gen.done_reason == sink.reason
            model.reset()
    finally:
        model.close()


def test_concurrent_greedy_equals_each_alone_tiny(tiny: BatchEngine) -> None:
    prompts = [words(tiny, t) for t in ("the a b", "hello world", "one two three", "x y")]
    together = [run(tiny, p, greedy(20)) for p in prompts]  # 4 requests on 2 slots
    alone = []
    for prompt in prompts:
        alone.append(run(tiny, prompt, greedy(20)).wait())
    for a, b in zip(together, alone, strict=True):
        assert a.wait().reason == "length" and len(a.tokens) == 20
        assert a.tokens == b.tokens


def test_long_prompts_are_read_in_chunks_beside_generation(
    tiny_chunked: BatchEngine, tiny_model: Path
) -> None:
    base = words(tiny_chunked, "the a b c d e f g h i j k l m n o p " * 5)  # 137 tokens
    prompts = [words(tiny_chunked, "x y"), base, base[:1] + base[1:][::-1]]
    budgets = [240, 12, 12]
    first = run(tiny_chunked, prompts[0], greedy(budgets[0]))
    assert first.first_piece.wait(10)  # generating while the long prompts are read
    together = [first] + [run(tiny_chunked, p, greedy(12)) for p in prompts[1:]]
    assert not first.finished.is_set()
    for sink in together:
        assert sink.wait().reason == "length"
    assert together[1].timings.prompt_tokens > 64
    model = BatchEngine(str(tiny_model), LoadOptions(num_ctx=256, num_batch=64, num_thread=1), 1)
    try:
        for prompt, budget, sink in zip(prompts, budgets, together, strict=True):
            gen = model.generate(prompt, greedy(budget))
            list(gen)
            assert gen.tokens == sink.tokens
            model.reset()
    finally:
        model.close()


def test_more_requests_than_slots_complete_in_order(tiny1: BatchEngine) -> None:
    sinks = [run(tiny1, words(tiny1, f"request {i}"), greedy(5)) for i in range(6)]
    for sink in sinks:
        assert sink.wait().calls == 1
        assert sink.reason == "length" and sink.timings.eval_tokens == 5
    ends = [sink.ended_at for sink in sinks]
    assert ends == sorted(ends)  # one slot: first in, first out
    assert sinks[-1].timings.total_s > sinks[-1].timings.prompt_s + sinks[-1].timings.eval_s


# -- cancel, limits, errors -------------------------------------------------------------------


def cancel_at(n: int) -> Callable[[Collect], None]:
    def on_piece(sink: Collect) -> None:
        if len(sink.pieces) == n:
            assert sink.ticket is not None
            sink.ticket.cancel()  # from the engine thread, inside the sink

    return on_piece


def test_cancel_frees_the_slot_mid_generation(tiny1: BatchEngine) -> None:
    queued: list[Collect] = []
    submitted = threading.Event()

    def on_piece(sink: Collect) -> None:
        if len(sink.pieces) == 1:
            assert submitted.wait(10)
            assert queued[0].ticket is not None
            queued[0].ticket.cancel()  # still waiting: `first` holds the only slot
        cancel_at(3)(sink)

    first = run(tiny1, words(tiny1, "the a b"), greedy(-1), on_piece=on_piece)
    queued.append(run(tiny1, words(tiny1, "hello"), greedy(-1)))
    second = run(tiny1, words(tiny1, "hello world"), greedy(4))
    submitted.set()
    assert first.wait().reason == "cancelled"
    # Pieces are whole characters: a few tokens may make none (bytes of one character).
    assert len(first.pieces) <= 4 and first.timings.eval_tokens < 20
    assert queued[0].wait().reason == "cancelled" and queued[0].tokens == []
    assert second.wait().reason == "length" and len(second.tokens) == 4
    for sink in (first, queued[0], second):
        assert sink.calls == 1
    assert first.ticket is not None
    first.ticket.cancel()  # after the end: nothing happens


def test_cancel_on_smollm2(smol: BatchEngine) -> None:
    prompt = smol.tokenize("Once upon a time", add_special=False, parse_special=False)
    sink = run(smol, prompt, greedy(500), on_piece=cancel_at(3)).wait()
    assert sink.reason == "cancelled" and 3 <= sink.timings.eval_tokens <= 4


def test_num_predict(smol: BatchEngine) -> None:
    prompt = smol.tokenize("Once upon a time", add_special=False, parse_special=False)
    sink = run(smol, prompt, greedy(7)).wait()
    assert sink.reason == "length" and sink.timings.eval_tokens == len(sink.tokens) == 7
    assert sink.timings.eval_s > 0 and sink.timings.prompt_s > 0
    assert sink.timings.total_s >= sink.timings.prompt_s + sink.timings.eval_s
    nothing = run(smol, [*prompt, 13], greedy(0)).wait()  # reads the prompt, says nothing
    assert nothing.reason == "length" and nothing.tokens == [] and nothing.pieces == []
    assert nothing.timings.cached_tokens == len(prompt)


def test_prompt_longer_than_a_slot(smol: BatchEngine) -> None:
    with pytest.raises(ContextOverflowError) as info:
        smol.submit(list(range(100, 100 + smol.n_ctx)), greedy(4), sink=Collect())
    assert "num_ctx" in (info.value.hint or "")
    with pytest.raises(EngineError):
        smol.submit([], greedy(4), sink=Collect())
    with pytest.raises(EngineError):
        smol.submit([1, smol.n_vocab], greedy(4), sink=Collect())


def test_a_full_slot_ends_with_length(tiny: BatchEngine) -> None:
    assert tiny.n_ctx == 256
    prompt = (words(tiny, "the a b c d e f g h i j k l m n o p") * 20)[:250]
    sink = run(tiny, prompt, greedy(-1)).wait()
    assert sink.reason == "length"
    # The prompt and the answer fill the context, no more (as llama-server stops).
    assert sink.timings.eval_tokens == tiny.n_ctx - len(prompt)


def test_a_bad_grammar_fails_at_submit(tiny: BatchEngine) -> None:
    with pytest.raises(BadRequestError):  # grammars come from requests: the client's error
        tiny.submit([1, 5], SamplingOptions(constraint="start: nonsense("), sink=Collect())


def test_a_grammar_that_crashes_the_compiler_fails_at_submit_and_the_engine_lives(
    smol: BatchEngine,
) -> None:
    # 5,000 Lark rules each naming the next: llguidance's compiler recurses through them past
    # its stack and the process dies (issue 76). The engine compiles a grammar first in a
    # child of its own (engine.sampling.grammar_guard): the child dies, the request is a 400, and
    # this process, with a stream under way on the engine, goes on.
    prompt = chat(smol, "Tell me a story.")
    other = run(smol, prompt, greedy(48), IM_END)
    rules = [f'r{i}: r{i + 1} "x"' for i in range(5_000)]
    chain = "\n".join([*rules, 'r5000: "a"', "start: r0"])
    with pytest.raises(BadRequestError, match="crashed the grammar compiler"):
        smol.submit(prompt, SamplingOptions(constraint=chain), sink=Collect())
    assert other.wait().reason in ("stop", "length")
    yes = SamplingOptions(temperature=0, num_predict=16, constraint='start: "yes"')
    assert run(smol, prompt, yes, IM_END).wait().text == "yes"  # a new child compiled it


def test_grammar_constrains_each_slot(smol: BatchEngine) -> None:
    prompt = chat(smol, "Say something.")
    yes = SamplingOptions(temperature=0, num_predict=16, constraint='start: "yes"')
    no = SamplingOptions(temperature=0, num_predict=16, constraint='start: "no" | "nope"')
    a, b = run(smol, prompt, yes, IM_END), run(smol, prompt, no, IM_END)
    assert a.wait().text == "yes" and b.wait().text in ("no", "nope")


def test_a_decode_failure_fails_its_requests_only(
    tiny: BatchEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = llama_cpp.llama_decode
    calls = {"n": 0}

    def failing_once(ctx: Any, batch: Any) -> int:
        calls["n"] += 1
        return -3 if calls["n"] == 1 else int(real(ctx, batch))

    prompt = words(tiny, "a failing request")
    monkeypatch.setattr(llama_cpp, "llama_decode", failing_once)  # the engine looks it up per call
    failed = run(tiny, prompt, greedy(4)).wait()
    assert failed.calls == 1 and isinstance(failed.exc, EngineError) and failed.reason is None
    again = run(tiny, prompt, greedy(4)).wait()
    assert again.reason == "length" and again.timings.cached_tokens == 0  # its KV was dropped


# -- KV reuse ---------------------------------------------------------------------------------


def test_a_follow_up_turn_reuses_its_slot(smol: BatchEngine) -> None:
    first_prompt = chat(smol, "Name a colour.")
    first = run(smol, first_prompt, greedy(16), IM_END).wait()
    # Another conversation with the same (default) system prompt comes in between.
    run(smol, chat(smol, "What is the tallest mountain?"), greedy(8), IM_END).wait()
    follow = chat(smol, "Name a colour.", first.text, "Another one?")
    second = run(smol, follow, greedy(8), IM_END).wait()
    assert second.timings.cached_tokens >= len(first_prompt)
    assert second.timings.prompt_tokens == len(follow) - second.timings.cached_tokens
    assert second.timings.prompt_tokens < 20


def test_a_prompt_sent_again_reads_nothing_and_answers_as_before(smol: BatchEngine) -> None:
    """A regenerate: the slot kept the logits of the prompt's last token, so the same prompt
    again samples its first token from them (llama-server reads that token again). The answer,
    its log-probabilities and a seeded sample are the first request's, bit for bit."""
    prompt = chat(smol, "Name three fruits.")
    options = SamplingOptions(temperature=0, num_predict=10, logprobs=2)
    first = run(smol, prompt, options, IM_END).wait()
    again = run(smol, prompt, options, IM_END).wait()
    assert (again.timings.prompt_tokens, again.timings.cached_tokens) == (0, len(prompt))
    assert again.tokens == first.tokens and again.text == first.text
    assert again.logprobs[0] == first.logprobs[0] and len(again.logprobs) == len(first.tokens)
    seeded = SamplingOptions(temperature=1.5, seed=7, num_predict=10)
    cold = run(smol, chat(smol, "Name three fruits!"), seeded, IM_END).wait()
    warm = run(smol, chat(smol, "Name three fruits!"), seeded, IM_END).wait()
    assert warm.timings.prompt_tokens == 0 and warm.tokens == cold.tokens
    nothing = run(smol, prompt, greedy(0)).wait()  # num_predict 0 on a prompt held whole
    assert nothing.reason == "length" and nothing.tokens == []


def test_kept_logits_follow_what_the_slot_read_last(tiny1: BatchEngine) -> None:
    """One slot: a prompt that differs in its last token reads that token, and the first
    prompt again reads it once more (the logits kept are the other prompt's)."""
    prompt = words(tiny1, "the quick brown fox jumps over")
    first = run(tiny1, prompt, greedy(6)).wait()
    other = run(tiny1, [*prompt[:-1], prompt[-1] + 1], greedy(6)).wait()
    assert (other.timings.prompt_tokens, other.timings.cached_tokens) == (1, len(prompt) - 1)
    back = run(tiny1, prompt, greedy(6)).wait()
    assert back.timings.prompt_tokens == 1 and back.tokens == first.tokens
    again = run(tiny1, prompt, greedy(6)).wait()
    assert again.timings.prompt_tokens == 0 and again.tokens == first.tokens


def test_a_long_shared_system_prompt_is_copied_not_evicted(smol: BatchEngine) -> None:
    system = "You answer questions about the solar system. " * 12  # well over 64 tokens
    a_prompt = chat(smol, "How many planets are there?", system=system)
    a = run(smol, a_prompt, greedy(12), IM_END).wait()
    b = run(smol, chat(smol, "Which planet is red?", system=system), greedy(8), IM_END).wait()
    assert b.timings.cached_tokens >= 64  # the system prompt, copied from A's slot
    follow = chat(smol, "How many planets are there?", a.text, "And moons?", system=system)
    again = run(smol, follow, greedy(8), IM_END).wait()
    assert again.timings.cached_tokens >= len(a_prompt)  # A's slot kept its conversation


def test_one_prompt_at_once_is_read_once(smol: BatchEngine) -> None:
    """n choices of one prompt: the first slot reads it, the others copy its KV."""
    prompt = chat(smol, "Write a short poem about the sea, please, with waves and gulls.")
    together = [run(smol, prompt, greedy(12), IM_END) for _ in range(3)]
    for sink in together:
        assert sink.wait().calls == 1
    read = sorted(sink.timings.prompt_tokens for sink in together)
    # One read the prompt (all but the shared system prompt another cache held), the two
    # others only its last token: the rest was copied.
    assert read[:2] == [1, 1] and read[2] > 10
    alone = run(smol, prompt, greedy(12), IM_END).wait()
    assert all(sink.tokens == alone.tokens for sink in together)


def test_a_busy_slot_lends_its_prompt(smol: BatchEngine) -> None:
    system = "You are a careful assistant who knows astronomy well. " * 8  # over 64 tokens
    a_prompt = chat(smol, "How many planets are there?", system=system)
    b_prompt = chat(smol, "Which planet is red?", system=system)
    b_alone = run(smol, b_prompt, greedy(8), IM_END).wait()
    run(smol, chat(smol, "Forget it."), greedy(2), IM_END).wait()
    started: list[Collect] = []

    def then_b(sink: Collect) -> None:
        if not started:  # while A generates, B comes in with the same system prompt
            started.append(run(smol, b_prompt, greedy(8), IM_END))

    a = run(smol, a_prompt, greedy(24), IM_END, on_piece=then_b).wait()
    b = started[0].wait()
    assert a.calls == 1 and b.tokens == b_alone.tokens
    assert b.timings.cached_tokens >= 64  # copied from A's slot while A was busy


# -- prompt log-probabilities ---------------------------------------------------------------

STORY = (
    "The keeper of the lighthouse wrote down every ship that passed the rocks, and in the "
    "winter of that year he counted more than forty of them. Paris is the capital of"
)


def check_scored(
    engine: BatchEngine, reference: Reference, prompt: list[int], top: int, close: float = 1e-4
) -> Collect:
    """Score `prompt` (nothing generated) and hold each entry to llama.cpp's own computation of
    the same ids (to `close`); its alternatives sorted, its rank where they place it."""
    sink = run(engine, prompt, SamplingOptions(temperature=0, num_predict=0, prompt_logprobs=top))
    sink.wait()
    assert sink.exc is None and sink.reason == "length" and not sink.tokens
    assert [e["id"] for e in sink.entries] == prompt
    assert sink.entries[0]["logprob"] is None and sink.entries[0]["top"] == []
    oracle = reference.logprobs(prompt)
    for entry, expected in zip(sink.entries[1:], oracle[1:], strict=True):
        assert expected is not None
        assert math.isclose(entry["logprob"], expected, abs_tol=close), (entry, expected)
        best = [t["logprob"] for t in entry["top"]]
        assert len(best) == top and best == sorted(best, reverse=True)
        assert best[0] >= entry["logprob"] - 1e-6
        assert (entry["rank"] == 1) == (entry["top"][0]["id"] == entry["id"])
        assert entry["rank"] > top or entry["id"] in [t["id"] for t in entry["top"]]
    return sink


def test_a_scored_prompt_is_llama_cpps_own_computation(
    smol: BatchEngine, smollm2_path: str
) -> None:
    """Every prompt token's log-probability equals llama.cpp's with logits at every row; the
    slots' caches and other answers are as they would be without it."""
    reference = Reference(smollm2_path)
    try:
        prompt = words(smol, STORY)
        check_scored(smol, reference, prompt, 3)
        asked = chat(smol, "Name a colour.")
        first = run(smol, asked, greedy(12), IM_END).wait()
        # Scored beside a generation, and again with its prefix in a slot's cache: re-read
        # whole each time, the same numbers.
        beside = run(smol, chat(smol, "What is the tallest mountain?"), greedy(16), IM_END)
        again = check_scored(smol, reference, prompt, 2)
        assert again.timings.cached_tokens == 0 and again.timings.prompt_tokens == len(prompt)
        check_scored(smol, reference, asked, 1)
        alone = run(smol, chat(smol, "What is the tallest mountain?"), greedy(16), IM_END)
        assert beside.wait().tokens == alone.wait().tokens
        # The conversation's slot was left alone: its next turn reads only what is new.
        follow = run(smol, chat(smol, "Name a colour.", first.text, "Another?"), greedy(4))
        assert follow.wait().timings.cached_tokens >= len(asked) - 1
    finally:
        reference.close()


def test_a_long_scored_prompt_on_gemma_is_read_in_bounded_chunks(gemma3_path: str) -> None:
    """Gemma 3's 262k vocabulary: 64 rows of logits a step (and a last chunk of no fewer), so a
    longer prompt is scored over several decodes, each chunk's first token by the row before
    it, in the chunk before. A prompt read in one chunk is llama.cpp's own computation; one read
    in several is too on the exact runtime, and to the second decimal on the installed one,
    whose attention kernel depends on the batch's rows (localrun.runtimes.exact)."""
    engine = BatchEngine(gemma3_path, LoadOptions(num_ctx=512, num_thread=2), 2)
    reference = Reference(gemma3_path)
    most = score_rows(512, engine.n_vocab)
    try:
        short = engine.tokenize(STORY * 3, add_special=True, parse_special=False)
        assert most == 64 and scored_chunk(len(short), most, len(short)) == len(short) > most
        check_scored(engine, reference, short, 2)
        long = engine.tokenize(STORY * 5, add_special=True, parse_special=False)
        assert scored_chunk(len(long), most, len(long)) == most
        exact_here = exact.current().runtime is not None
        check_scored(engine, reference, long, 2, 1e-4 if exact_here else 0.1)
    finally:
        reference.close()
        engine.close()


# -- embeddings -------------------------------------------------------------------------------


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_are_normalized_and_meaningful(smol: BatchEngine) -> None:
    texts = ["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock prices fell 8%."]
    vectors, count = smol.embed(texts)
    assert len(vectors) == 3 and count == sum(len(words(smol, t)) for t in texts)
    for v in vectors:
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-5)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])


def test_every_decode_runs_on_the_loop_thread(
    smol: BatchEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """engine.calls: a second thread that decodes gets an OpenMP team of its own, after which
    every barrier of the loop's decodes sleeps (generation at ~0.6x for good on two cores). An
    embedding asked beside a generation under way has each decode run by the loop between two
    steps; one asked from the loop's own thread (a sink) runs at once instead of waiting for
    itself."""
    threads: list[str] = []
    real = lc.llama_decode

    def spy(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(lc, "llama_decode", spy)
    prompt = chat(smol, "Tell me a story about a lighthouse keeper.")
    beside = run(smol, prompt, greedy(48))
    assert beside.first_piece.wait(60)
    long_text = " ".join(["the keeper climbed the stairs"] * 60)  # several decodes
    vectors, count = smol.embed(["computed between two steps", long_text])
    assert len(vectors) == 2 and count > 300
    assert beside.wait().reason in ("length", "stop") and beside.tokens
    got: list[tuple[list[list[float]], int]] = []
    run(smol, prompt, greedy(1), on_piece=lambda c: got.append(smol.embed(["x"]))).wait()
    assert len(got) == 1 and len(got[0][0]) == 1
    assert len(threads) > 48 and set(threads) == {"localrun-batch"}


def test_a_failed_call_reaches_its_caller_and_the_loop_goes_on(smol: BatchEngine) -> None:
    def bad() -> None:
        raise BadRequestError("refused on the loop")

    with pytest.raises(BadRequestError, match="refused on the loop"):
        smol.on_loop(bad)
    assert smol.on_loop(lambda: threading.current_thread().name) == "localrun-batch"
    prompt = chat(smol, "Say hi.")
    assert run(smol, prompt, greedy(4)).wait().reason in ("length", "stop")


def test_embeddings_do_not_depend_on_batching(tiny_chunked: BatchEngine) -> None:
    engine = tiny_chunked
    long_text = "the a b c d e f g h i j k l m n o p " * 8  # 218 tokens: 4 decodes of 64
    texts = [f"short text {i}" for i in range(20)] + [long_text]  # more than 16 sequences
    together, count = engine.embed(texts)
    assert count == sum(len(words(engine, t)) for t in texts)
    alone = [engine.embed([t])[0][0] for t in (texts[0], texts[19], long_text)]
    for a, b in zip(alone, (together[0], together[19], together[20]), strict=True):
        assert cosine(a, b) > 0.9999


@pytest.mark.parametrize("num_batch", [1, 2, 8])
def test_embeddings_with_a_small_num_batch_are_the_defaults(
    tiny: BatchEngine, tiny_model: Path, num_batch: int
) -> None:
    """Issue 57: num_batch 1, 2 or 8 (fewer tokens a decode than the embedding context's 16
    sequences) aborted the runner in GGML_ASSERT(n_outputs_max <= cparams.n_outputs_max)."""
    texts = ["hello world hello", "the a b c d e f g h i j k l m n o p q r s"]
    options = LoadOptions(num_ctx=256, num_batch=num_batch, num_thread=1)
    engine = BatchEngine(str(tiny_model), options, 1)
    try:
        small, count = engine.embed(texts)
    finally:
        engine.close()
    default, expected = tiny.embed(texts)
    assert count == expected
    for a, b in zip(small, default, strict=True):
        assert cosine(a, b) > 0.9999


def test_a_model_that_names_its_pooling_is_pooled_by_llama_cpp(
    tiny: BatchEngine, tiny_model: Path, tmp_path: Path
) -> None:
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    pooled_path = tmp_path / "tiny-mean-pooled.gguf"
    reader = gguf.GGUFReader(str(tiny_model))
    writer = gguf.GGUFWriter(str(pooled_path), "llama")
    mean = MetadataDetails(gguf.GGUFValueType.UINT32, int(gguf.PoolingType.MEAN))
    copy_with_new_metadata(reader, writer, {"llama.pooling_type": mean}, [])
    texts = ["the a b", "hello world", "one two three four five"]
    engine = BatchEngine(str(pooled_path), LoadOptions(num_ctx=256, num_thread=1), 1)
    try:
        pooled, count = engine.embed(texts)
        assert engine._embedder.pooled  # the path under test
    finally:
        engine.close()
    averaged, expected = tiny.embed(texts)  # the same weights, averaged by the engine
    assert count == expected
    for a, b in zip(pooled, averaged, strict=True):
        assert cosine(a, b) > 0.9999


def test_embedding_overflow_and_truncation(tiny: BatchEngine) -> None:
    text = "word " * 300
    with pytest.raises(ContextOverflowError):
        tiny.embed([text], truncate=False)
    vectors, count = tiny.embed([text, "x"])
    assert count == 256 + len(words(tiny, "x")) and len(vectors) == 2


# -- shutdown ---------------------------------------------------------------------------------


def test_close_cancels_running_and_waiting_requests(smollm2_path: str) -> None:
    engine = BatchEngine(smollm2_path, LoadOptions(num_ctx=512, num_thread=1), 1)
    prompt = engine.tokenize("Once upon a time", add_special=False, parse_special=False)
    running = run(engine, prompt, greedy(400))
    waiting = run(engine, prompt, greedy(400))
    assert running.first_piece.wait(60)
    engine.close()
    assert running.wait(5).reason == "cancelled" and running.tokens
    assert waiting.wait(5).reason == "cancelled" and waiting.tokens == []
    assert running.calls == waiting.calls == 1
    with pytest.raises(EngineError):
        engine.submit(prompt, greedy(4), sink=Collect())
    with pytest.raises(EngineError):
        engine.embed(["hi"])
    engine.close()  # twice is fine


def test_close_from_a_sink(tiny_model: Path) -> None:
    engine = BatchEngine(str(tiny_model), LoadOptions(num_ctx=256, num_thread=1), 2)
    sink = run(engine, words(engine, "the a b"), greedy(-1), on_piece=lambda s: engine.close())
    assert sink.wait(10).reason == "cancelled" and sink.calls == 1
    assert engine._thread is not None
    engine._thread.join(10)
    assert not engine._thread.is_alive()
