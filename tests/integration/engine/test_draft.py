"""Speculative decoding with a draft model (Modelfile DRAFT): the tiny generated model and
SmolLM2 drafting for themselves, in both engines, through the real llama.cpp. A model drafting
for itself guesses right nearly always, so acceptance is checked high; the answer is the one
without speculation (or leaves it at a near tie, as test_speculate checks it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localrun.engine.batch import BatchEngine
from localrun.engine.types import LoadOptions
from localrun.errors import BadRequestError

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

pytestmark = [pytest.mark.model]


@pytest.fixture(scope="module")
def drafted(smollm2_path: str) -> Iterator[BatchEngine]:
    model = BatchEngine(
        smollm2_path, LoadOptions(num_ctx=1024, num_thread=2, draft=smollm2_path), 1
    )
    yield model
    model.close()


@pytest.fixture(scope="module")
def plain(smollm2_path: str) -> Iterator[BatchEngine]:
    model = BatchEngine(smollm2_path, LoadOptions(num_ctx=1024, num_thread=2), 1)
    yield model
    model.close()


def test_a_model_drafting_for_itself_is_nearly_always_right(
    drafted: BatchEngine, plain: BatchEngine
) -> None:
    prompt = plain.tokenize(edit_prompt(), add_special=True, parse_special=True)
    base, _ = run(plain, prompt, greedy(speculate="off", num_predict=80))
    tokens, t = run(drafted, prompt, greedy(speculate="draft", num_predict=80))
    assert t.draft_tokens > 20, t
    assert t.draft_accepted >= 0.9 * t.draft_tokens, t
    assert kv_end(drafted) == len(cached(drafted))
    assert_same_or_near_tie(plain, prompt, base, tokens)
    # auto uses the draft model where prompt lookup has no long match.
    tokens, t = run(drafted, prompt, greedy(speculate="auto", num_predict=80))
    assert t.draft_accepted > 0
    assert_same_or_near_tie(plain, prompt, base, tokens)


def test_draft_mode_needs_a_draft_model(plain: BatchEngine) -> None:
    prompt = plain.tokenize("hello", add_special=True, parse_special=False)
    with pytest.raises(BadRequestError, match="no draft model"):
        plain.generate(prompt, greedy(speculate="draft"))


def test_every_slot_drafts_with_its_own_sequence(
    smollm2_path: str, tiny_model: Path, plain: BatchEngine
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


@pytest.mark.slow
def test_a_drafted_model_speculates_in_run_and_in_the_server(cli: Any, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    # Greedy without the default repeat penalty: the draft model drafts its greedy choices, so
    # only then is a model drafting for itself right but for near ties. With the penalty the
    # main model's sampler turns down recent tokens the draft proposes (seen: 34 of 38 kept).
    modelfile.write_text(
        "FROM smollm2:135m\nDRAFT smollm2:135m\nPARAMETER temperature 0\n"
        "PARAMETER repeat_penalty 1\n"
    )
    made = cli("create", "drafted", "-f", str(modelfile))
    assert made.code == 0, made.stderr
    result = cli(*repeat_code("drafted", "speculate=draft"), input=CODE_INPUT)
    assert result.code == 0, result.stderr
    drafted, accepted = verbose_drafts(result.stderr)
    assert drafted > 10 and accepted >= 0.9 * drafted, result.stderr
    # The server's runner loads the draft model too.
    from localrun.scheduler import Scheduler
    from localrun.store.local import Store

    from support.server import LiveServer

    store = Store(Path(os.environ["LOCALRUN_HOME"]) / "models")
    server = LiveServer(store, Scheduler(store, num_parallel=2, max_queue=8))
    try:
        body = {
            "model": "drafted",
            "prompt": f"Repeat this code exactly:\n```python\n{CODE}```\n",
            "stream": False,
            "options": {"num_predict": 60, "speculate": "draft"},
        }
        answer = httpx.post(f"{server.url}/api/generate", json=body, timeout=PATIENCE_S).json()
        assert answer["draft_count"] > 10, answer
        assert answer["draft_accepted_count"] >= 0.9 * answer["draft_count"], answer
        refused = httpx.post(
            f"{server.url}/api/generate",
            json={**body, "model": "smollm2:135m"},
            timeout=PATIENCE_S,
        )
        assert refused.status_code == 400 and "draft" in refused.json()["error"]
    finally:
        server.close()


def test_the_draft_model_counts_in_the_memory_plan(cli: Any, tmp_path: Path) -> None:
    from localrun.hardware import fit
    from localrun.model import stored as model_mod
    from localrun.store import names
    from localrun.store.local import Store
    from localrun.worker import load

    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM smollm2:135m\nDRAFT smollm2:135m\n")
    assert cli("create", "drafted", "-f", str(modelfile)).code == 0
    store = Store(Path(os.environ["LOCALRUN_HOME"]) / "models")
    drafted = model_mod.load(store, names.parse("drafted"))
    alone = model_mod.load(store, names.parse("smollm2:135m"))
    params = {"num_ctx": 2048}
    planned = fit.plan_fit(drafted, params, slots=2)
    with_draft = planned.plan
    without = fit.plan_fit(alone, params, slots=2).plan
    assert drafted.draft_path is not None
    weights = drafted.draft_path.stat().st_size
    assert with_draft.ram_bytes - without.ram_bytes > weights
    assert with_draft.kv_bytes == 2 * without.kv_bytes
    options = load.options_for(drafted, params, [], lambda _: None, planned)
    assert options.draft == str(drafted.draft_path) and options.draft_num_gpu == 0
