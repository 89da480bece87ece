"""Speculative decoding on the real llama.cpp with SmolLM2, with one slot and with several: drafts
are accepted on an edit prompt, and the output is the one without speculation (or parts at a
near tie, where a batch's logits differ from one token's in the last bits), with budgets, stop
tokens and grammars holding; what clients see of it through the server and `run --verbose`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp as lc
import pytest

from localrun.engine.batch import BatchEngine
from localrun.engine.types import LoadOptions
from localrun.sources import obtain
from localrun.store import reference
from localrun.worker.grammars.format import constraint_for

from support import PATIENCE_S
from support.speculation import (
    CODE,
    CODE_INPUT,
    Sink,
    assert_same_or_near_tie,
    cached,
    edit_prompt,
    greedy,
    kv_end,
    repeat_code,
    run,
    verbose_drafts,
)


@pytest.fixture(scope="module")
def smol(smollm2_path: str) -> Iterator[BatchEngine]:
    model = BatchEngine(smollm2_path, LoadOptions(num_ctx=2048, num_thread=2), 1)
    yield model
    model.close()


@pytest.mark.model
def test_an_edit_is_faster_by_accepted_drafts_and_the_same_answer(smol: BatchEngine) -> None:
    prompt = smol.tokenize(edit_prompt(), add_special=True, parse_special=True)
    plain, t_plain = run(smol, prompt, greedy(speculate="off"))
    fast, t_fast = run(smol, prompt, greedy(speculate="ngram"))
    assert t_plain.draft_tokens == 0
    assert t_fast.draft_accepted > 0.2 * t_fast.eval_tokens, t_fast
    assert t_fast.draft_tokens >= t_fast.draft_accepted
    assert kv_end(smol) == len(cached(smol))  # rejected drafts left nothing in the KV cache
    assert_same_or_near_tie(smol, prompt, plain, fast)


@pytest.mark.model
@pytest.mark.parametrize("budget", [1, 2, 7, 33])
def test_the_budget_is_exact_with_drafts(smol: BatchEngine, budget: int) -> None:
    prompt = smol.tokenize(edit_prompt(), add_special=True, parse_special=True)
    tokens, timings = run(smol, prompt, greedy(speculate="ngram", num_predict=budget))
    assert len(tokens) == timings.eval_tokens == budget
    assert kv_end(smol) == len(cached(smol))


@pytest.mark.model
def test_a_stop_token_ends_the_answer_inside_a_draft(smol: BatchEngine) -> None:
    prompt = smol.tokenize(edit_prompt(), add_special=True, parse_special=True)
    plain, _ = run(smol, prompt, greedy(speculate="off"))
    stop = plain[40]  # a token the answer reaches, very likely inside an accepted draft
    gen = smol.generate(prompt, greedy(speculate="ngram"), stop_tokens=frozenset([stop]))
    for _ in gen.pieces:
        pass
    assert gen.done_reason == "stop"
    assert stop not in gen.tokens
    assert gen.tokens == plain[: len(gen.tokens)] or len(gen.tokens) < 40
    assert kv_end(smol) == len(cached(smol))


@pytest.mark.model
def test_forced_text_is_spelled_as_the_tokenizer_spells_it_on_every_path(smol: BatchEngine) -> None:
    """Where the grammar forces text (a key, a long `const` past one forced draft), the answer
    spells it as the tokenizer does, whether it came as a forced draft, a speculator's guess
    verified or a row sampled for its log-probabilities. The model would spell `track` as
    `tra` + `ck` here (its logit_bias), and did on those two paths: the same greedy request
    then gave other tokens with speculation or log-probabilities than without."""
    record = {"size": 12, "track_wPuncture": 3, "track_seedVoxelOffset_1": 789}
    note = "a long note the grammar forces whole, " * 4 + "kept on-track"  # over 32 tokens
    schema = {
        "type": "object",
        "properties": {
            "size": {"type": "integer"},
            "track_wPuncture": {"type": "integer"},
            "track_seedVoxelOffset_1": {"type": "integer"},
            "note": {"const": note},
        },
        "required": [*record, "note"],
        "additionalProperties": False,
    }
    text = (
        "<|im_start|>user\nRepeat this JSON exactly:\n"
        f"{json.dumps({**record, 'note': note})}<|im_end|>\n<|im_start|>assistant\n"
    )
    prompt = smol.tokenize(text, add_special=True, parse_special=True)
    tra, track = (
        smol.tokenize(t, add_special=False, parse_special=False) for t in ("tra", "track")
    )
    assert len(tra) == 1 and len(track) == 1
    grammar = constraint_for(schema)
    answers = {}
    for mode, logprobs in (("off", -1), ("off", 1), ("ngram", -1), ("ngram", 1)):
        options = greedy(
            speculate=mode, logprobs=logprobs, constraint=grammar, logit_bias=((tra[0], 30.0),)
        )
        tokens, timings = run(smol, prompt, options)
        answers[mode, logprobs] = tokens
        if mode == "ngram":
            assert timings.draft_accepted > 0, timings
    plain = answers["off", -1]
    assert json.loads(b"".join(map(smol.token_bytes, plain))) == {**record, "note": note}
    assert plain.count(track[0]) == 3 and tra[0] not in plain
    assert all(tokens == plain for tokens in answers.values()), answers


@pytest.mark.model
def test_a_grammar_holds_for_every_accepted_token(
    smol: BatchEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value copied from the prompt after text the grammar forces (a key's name) is guessed
    in the same batch as the forced text, and the answer is the one without guesses."""
    from localrun.engine.answering import Answerer

    guessed_after_forced: list[int] = []
    take_forced = Answerer._take_forced

    def watched(self: Answerer, slot: Any, job: Any) -> bool:
        taken = take_forced(self, slot, job)
        guessed_after_forced.append(len(slot.draft) if taken else 0)
        return taken

    monkeypatch.setattr(Answerer, "_take_forced", watched)
    record = {"name": "Ada Lovelace", "born": 1815, "languages": ["English", "French"]}
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "born": {"type": "integer"},
            "languages": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "born", "languages"],
    }
    text = (
        "<|im_start|>user\nRepeat this JSON exactly:\n"
        f"{json.dumps(record)}<|im_end|>\n<|im_start|>assistant\n"
    )
    prompt = smol.tokenize(text, add_special=True, parse_special=True)
    grammar = constraint_for(schema)
    answers = []
    for mode in ("off", "ngram"):
        guessed_after_forced.clear()
        gen = smol.generate(prompt, greedy(speculate=mode, num_predict=120, constraint=grammar))
        answer = "".join(gen.pieces)
        answers.append(answer)
        value = json.loads(answer)
        assert set(value) == {"name", "born", "languages"}, answer
        assert isinstance(value["born"], int)
        assert guessed_after_forced, "the grammar forced text"
        if mode == "ngram":
            assert gen.timings.draft_accepted > 0, gen.timings
            assert max(guessed_after_forced) > 0, "no guess followed the forced text"
        else:
            assert max(guessed_after_forced) == 0
    assert answers[0] == answers[1]


@pytest.mark.model
def test_sampling_with_temperature_speculates_too(smol: BatchEngine) -> None:
    prompt = smol.tokenize(edit_prompt(), add_special=True, parse_special=True)
    tokens, t = run(smol, prompt, greedy(speculate="ngram", temperature=0.3, seed=7))
    assert t.eval_tokens == len(tokens) > 0
    assert t.draft_accepted > 0
    assert kv_end(smol) == len(cached(smol))


@pytest.mark.model
def test_every_slot_speculates_at_once_with_the_same_answers(
    smollm2_path: str, smol: BatchEngine
) -> None:
    codes = [CODE, CODE.replace("Inventory", "Stock"), CODE.replace("items", "goods")]
    prompts = [smol.tokenize(edit_prompt(c), add_special=True, parse_special=True) for c in codes]
    engine = BatchEngine(smollm2_path, LoadOptions(num_ctx=1024, num_thread=2), 3)
    try:
        results: dict[str, list[Sink]] = {}
        for mode in ("off", "ngram"):
            sinks = [Sink() for _ in prompts]
            for prompt, sink in zip(prompts, sinks, strict=True):
                engine.submit(prompt, greedy(speculate=mode, num_predict=120), sink=sink)
            for sink in sinks:
                assert sink.finished.wait(120) and sink.failure is None
            results[mode] = sinks
        for sink in results["ngram"]:
            assert sink.timings.draft_accepted > 0, sink.timings
            assert len(sink.tokens) == sink.timings.eval_tokens
        memory = engine._slots.memory.handle
        for slot in engine._slots.all:  # no rejected draft left in any KV sequence
            assert int(lc.llama_memory_seq_pos_max(memory, slot.seq)) + 1 == len(slot.cache)
        for prompt, plain, fast in zip(prompts, results["off"], results["ngram"], strict=True):
            assert_same_or_near_tie(smol, prompt, plain.tokens, fast.tokens)
        # A budget that ends inside a draft, and logprobs for drafted tokens.
        sink = Sink()
        engine.submit(prompts[0], greedy(speculate="ngram", num_predict=37, logprobs=2), sink=sink)
        assert sink.finished.wait(120) and sink.failure is None
        assert sink.timings.eval_tokens == len(sink.tokens) == len(sink.logprobs) == 37
        assert sink.timings.draft_accepted > 0
        assert all(entry["logprob"] <= 0 and len(entry["top"]) == 2 for entry in sink.logprobs)
    finally:
        engine.close()


@pytest.mark.model
def test_slots_keep_grammars_and_stop_tokens_while_speculating(
    smollm2_path: str, smol: BatchEngine
) -> None:
    record = {"name": "Ada Lovelace", "born": 1815, "languages": ["English", "French"]}
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "born": {"type": "integer"}},
        "required": ["name", "born"],
        "additionalProperties": False,  # the record's "languages", which drafts copy, refused
    }
    text = (
        "<|im_start|>user\nRepeat this JSON exactly:\n"
        f"{json.dumps(record)}<|im_end|>\n<|im_start|>assistant\n"
    )
    json_prompt = smol.tokenize(text, add_special=True, parse_special=True)
    edit = smol.tokenize(edit_prompt(), add_special=True, parse_special=True)
    plain, _ = run(smol, edit, greedy(speculate="off"))
    stop = plain[40]
    engine = BatchEngine(smollm2_path, LoadOptions(num_ctx=1024, num_thread=2), 3)
    try:
        grammar = constraint_for(schema)
        shaped, stopped, free = Sink(), Sink(), Sink()
        engine.submit(json_prompt, greedy(speculate="ngram", constraint=grammar), sink=shaped)
        engine.submit(edit, greedy(speculate="ngram"), stop_tokens=frozenset([stop]), sink=stopped)
        engine.submit(edit, greedy(speculate="ngram"), sink=free)
        for sink in (shaped, stopped, free):
            assert sink.finished.wait(120) and sink.failure is None
        answer = json.loads(b"".join(smol._weights.piece_bytes(t) for t in shaped.tokens))
        assert set(answer) == {"name", "born"} and isinstance(answer["born"], int)
        assert shaped.timings.draft_accepted > 0, shaped.timings
        assert stop not in stopped.tokens and len(stopped.tokens) < len(free.tokens)
        assert free.timings.draft_accepted > 0
    finally:
        engine.close()


@pytest.mark.model
def test_the_tiny_model_speculates_the_same_answer(tiny_model: Path) -> None:
    model = BatchEngine(str(tiny_model), LoadOptions(num_ctx=256), 1)
    try:
        words = "alpha beta gamma delta epsilon zeta eta theta " * 6
        prompt = model.tokenize(words, add_special=True, parse_special=False)
        plain, _ = run(model, prompt, greedy(speculate="off", num_predict=60))
        fast, t = run(model, prompt, greedy(speculate="ngram", num_predict=60))
        assert t.draft_tokens > 0, t
        assert_same_or_near_tie(model, prompt, plain, fast)
    finally:
        model.close()
    engine = BatchEngine(str(tiny_model), LoadOptions(num_ctx=256), 2)
    try:
        sinks = [Sink(), Sink()]
        for sink in sinks:
            engine.submit(prompt, greedy(speculate="ngram", num_predict=60), sink=sink)
        for sink in sinks:
            assert sink.finished.wait(60) and sink.failure is None
            assert 0 < len(sink.tokens) <= 60 and sink.timings.draft_tokens > 0
        assert sinks[0].tokens == sinks[1].tokens  # one prompt, one answer, slot for slot
    finally:
        engine.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from localrun.scheduler import Scheduler
    from localrun.store.local import Store

    from support.server import SMOL, LiveServer

    store = Store(tmp_path_factory.mktemp("speculate") / "models")
    obtain.find(store, reference.parse(SMOL))
    server = LiveServer(store, Scheduler(store, num_parallel=2, max_loaded=1, max_queue=8))
    yield server
    server.close()


def _messages() -> list[dict[str, str]]:
    system, rest = edit_prompt().split("<|im_end|>\n", 1)
    user = rest.split("<|im_start|>user\n", 1)[1].split("<|im_end|>")[0]
    return [
        {"role": "system", "content": system.removeprefix("<|im_start|>system\n")},
        {"role": "user", "content": user},
    ]


@pytest.mark.server
@pytest.mark.model
def test_clients_see_drafted_and_accepted_tokens(live: Any, ai: Any) -> None:
    import httpx

    native = httpx.post(
        f"{live.url}/api/chat",
        json={
            "model": "smollm2:135m",
            "messages": _messages(),
            "stream": False,
            "options": {
                "temperature": 0,
                "num_predict": 120,
                "speculate": "ngram",
                "repeat_penalty": 1.0,  # a copy, not kept from repeating its prompt
            },
        },
        timeout=PATIENCE_S,
    ).json()
    assert 0 < native["draft_accepted_count"] <= native["draft_count"], native
    # A stop string inside what drafts bring in (the class's first lines, copied from the
    # prompt): the answer ends right before it. Taken where the copy starts (what comes before
    # it differs from one CPU to another), early, which every answer shares: past it a greedy
    # answer may still differ with how its drafts were verified (verification batches and
    # one-token decodes differ in the last bits without the exact runtime; issue 60).
    content = native["message"]["content"]
    at = content.find("class Inventory:")
    assert at >= 0, content
    stop = content[at + 24 : at + 36]
    assert len(stop) == 12 and content.index(stop) == at + 24, content
    cut = httpx.post(
        f"{live.url}/api/chat",
        json={
            "model": "smollm2:135m",
            "messages": _messages(),
            "stream": False,
            "options": {
                "temperature": 0,
                "num_predict": 120,
                "speculate": "ngram",
                "repeat_penalty": 1.0,
                "stop": [stop],
            },
        },
        timeout=PATIENCE_S,
    ).json()
    assert cut["done_reason"] == "stop", cut
    assert cut["message"]["content"] == content[: content.index(stop)]
    # The OpenAI route after: each request for this prompt drafts from the answer before it
    # (engine.speculation.answers), whose verification batches the first answer never read (without
    # the exact runtime a near tie may then fall the other way): `native` comes first.
    answer = ai.chat.completions.create(
        model="smollm2:135m",
        messages=_messages(),
        temperature=0,
        max_tokens=120,
        extra_body={"speculate": "ngram", "repeat_penalty": 1.0},
    )
    details = answer.usage.completion_tokens_details
    assert details is not None and details.accepted_prediction_tokens > 0, answer.usage
    assert details.rejected_prediction_tokens >= 0
    off = ai.chat.completions.create(
        model="smollm2:135m",
        messages=_messages(),
        temperature=0,
        max_tokens=20,
        extra_body={"speculate": "off"},
    )
    assert off.usage.completion_tokens_details.accepted_prediction_tokens == 0
    metrics = httpx.get(f"{live.url}/metrics", timeout=30).text
    accepted = [
        line
        for line in metrics.splitlines()
        if line.startswith("localrun_draft_accepted_tokens_total{")
    ]
    assert accepted and float(accepted[0].split()[-1]) >= native["draft_accepted_count"]
    bad = httpx.post(
        f"{live.url}/api/chat",
        json={"model": "smollm2:135m", "messages": _messages(), "options": {"speculate": "x"}},
        timeout=30,
    )
    assert bad.status_code == 400 and "speculate" in bad.json()["error"]


@pytest.mark.model
def test_run_verbose_reports_drafts(cli: Any) -> None:
    result = cli(*repeat_code("smollm2:135m", "speculate=ngram", "temperature=0"), input=CODE_INPUT)
    assert result.code == 0, result.stderr
    drafted, accepted = verbose_drafts(result.stderr)
    assert 0 < accepted <= drafted, result.stderr
    env_result = cli("env")
    assert "LOCALRUN_SPECULATE" in env_result.stdout
    refused = cli("run", "smollm2:135m", "hi", env={"LOCALRUN_SPECULATE": "sometimes"})
    assert refused.code != 0 and "LOCALRUN_SPECULATE" in refused.stderr


@pytest.mark.model
def test_a_stop_string_inside_a_draft_ends_the_decoding_there(cli: Any, smol: BatchEngine) -> None:
    """The tokens decoded are those of the text shown up to the stop string (and the one the
    stop string ends in), not the rest of the draft it fell in and a decode more."""
    args = repeat_code("smollm2:135m", "speculate=ngram", "temperature=0", "repeat_penalty=1")
    result = cli(*args, "--param", "num_predict=120", "--param", "stop=remove", input=CODE_INPUT)
    assert result.code == 0, result.stderr
    assert "remove" not in result.stdout and result.stdout.strip()
    evaluated = next(
        int(line.split(":", 1)[1].split()[0])
        for line in result.stderr.splitlines()
        if line.startswith("eval count")
    )
    shown = len(smol.tokenize(result.stdout.rstrip("\n"), add_special=False, parse_special=False))
    assert evaluated <= shown + 3, (evaluated, shown, result.stderr)


@pytest.mark.model
def test_a_repeated_request_is_drafted_from_its_earlier_answer(smol: BatchEngine) -> None:
    """The same story asked twice under one memory: the second answer is the first (greedy),
    drafted from it; without the memory, or under another, prose finds little to copy. How
    long the two answers agree is measured, not assumed: on a busy machine the drafts'
    lengths change, and a greedy answer can part from the first where a verification batch
    and a one-token decode differ in the last bits (issue 60); the memory must draft at least
    half of what they share."""
    prompt = smol.tokenize(
        "<|im_start|>user\nWrite a story about a lighthouse.<|im_end|>\n<|im_start|>assistant\n",
        add_special=True,
        parse_special=True,
    )
    first, t1 = run(smol, prompt, greedy(speculate="auto", memory="key:one"))
    again, t2 = run(smol, prompt, greedy(speculate="auto", memory="key:one"))
    _, t3 = run(smol, prompt, greedy(speculate="auto", memory="key:two"))
    pairs = enumerate(zip(first, again, strict=False))
    shared = next((i for i, (a, b) in pairs if a != b), min(len(first), len(again)))
    assert shared >= 40, (shared, first, again)
    assert t2.draft_accepted > shared // 2, (t2, shared)
    assert t2.draft_accepted > t1.draft_accepted, (t1, t2)
    # Another memory drafts nothing of it: what it accepts is the story's own repeats (a quarter
    # of its tokens on a busy machine, as the costs of the moment let prose guesses pay).
    assert t3.draft_accepted < t2.draft_accepted // 2, (t2, t3)
    assert kv_end(smol) == len(cached(smol))
