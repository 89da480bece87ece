"""A runner loaded with a larger context answers a request of a smaller one, exactly as a
runner loaded with the request's own context would; a request that must load rounds its num_ctx
up to a power of two.

Clients send options.num_ctx on every request: Aider (litellm's `ollama_chat`) sends the prompt's
tokens * 1.25 + 8192, growing each time; Zed sends 16384 and Open WebUI none. Before, each new
num_ctx reloaded the model (5 loads for Aider's 5 requests; a reload on every turn of Zed and
Open WebUI sharing a model). The server tests run on the scripted engine (the "fake" backend:
one character per token); where llama.cpp's own answer is under test, a scripted model (a real
GGUF whose greedy answer is a given text) runs on the real engine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from testmodels.scripted import write_scripted_model
from testmodels.text import write_tiny_model

from localrun.errors import ContextOverflowError, InvalidParameterError
from localrun.hardware import fit
from localrun.model import stored as model_mod
from localrun.scheduler import Scheduler
from localrun.store import names
from localrun.store.local import Store

from support import PATIENCE_S
from support.server import LiveServer, add_model

pytestmark = pytest.mark.server

REPLY = "Sunny in Paris."
TINY = "tiny:latest"  # trained on 131072 tokens, as the model Aider's requests were measured on
SHORT = "short:latest"  # trained on 12000 tokens


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("context-reuse")
    store = Store(folder / "models")
    add_model(store, "tiny", write_tiny_model(folder / "tiny.gguf", n_ctx=131072))
    add_model(store, "short", write_tiny_model(folder / "short.gguf", n_ctx=12000, seed=1))
    scheduler = Scheduler(
        store, num_parallel=2, max_loaded=2, backend="fake", backend_options={"replies": [REPLY]}
    )
    server = LiveServer(store, scheduler)
    yield server
    server.close()


def post(live: LiveServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{live.url}{path}", json=body, timeout=PATIENCE_S)


def chat(live: LiveServer, model: str, content: str, **options: Any) -> dict[str, Any]:
    """One streamed /api/chat request; its last line."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if options:
        body["options"] = options
    reply = post(live, "/api/chat", body)
    assert reply.status_code == 200, reply.text
    lines = [json.loads(line) for line in reply.text.splitlines() if line.strip()]
    assert lines[-1]["done"], lines[-1]
    return dict(lines[-1])


def loaded(live: LiveServer, model: str) -> tuple[int, int]:
    """The loaded runner of `model`: its process id and the context it was loaded with."""
    running = live.running()[model]
    return running.pid, running.context_length


def unload(live: LiveServer, model: str) -> None:
    assert post(live, "/api/generate", {"model": model, "keep_alive": 0}).status_code == 200
    live.wait_for(lambda: model not in live.running(), f"{model} to unload")


def test_aider_growing_num_ctx_loads_once(live: LiveServer) -> None:
    """Aider's num_ctx (prompt tokens * 1.25 + 8192: 9034, 9317, 9817, 10317, 10817) made five
    loads; rounded up to 16384 on the first, one runner answers all five."""
    unload(live, TINY)
    pids, contexts = set(), []
    for tokens in (674, 900, 1300, 1700, 2100):
        final = chat(live, TINY, "x" * tokens, num_ctx=int(tokens * 1.25) + 8192, temperature=0)
        assert final["done_reason"] == "stop" and final["eval_count"] == len(REPLY)
        pid, context = loaded(live, TINY)
        pids.add(pid)
        contexts.append(context)
    assert len(pids) == 1 and contexts == [16384] * 5


def test_zed_and_a_client_without_num_ctx_share_a_runner(live: LiveServer) -> None:
    """Zed's 16384 and Open WebUI's none, taking turns, reloaded on every request (16384 /
    4096); the runner Zed loaded answers both, each held to its own context."""
    unload(live, TINY)
    pids = set()
    for _ in range(3):
        chat(live, TINY, "Zed asks.", num_ctx=16384)  # crates/ollama: max_tokens from settings
        pids.add(loaded(live, TINY)[0])
        chat(live, TINY, "Open WebUI asks.")  # no options at all
        pids.add(loaded(live, TINY)[0])
    assert len(pids) == 1 and loaded(live, TINY)[1] == 16384


def test_a_prompt_past_its_own_context_is_refused_with_its_numbers(live: LiveServer) -> None:
    """A prompt that fits the runner but not the request's context is refused as a runner of
    that context refuses it: its num_ctx (or the model's default, 4096) is the limit, in
    Ollama's words and in OpenAI's, and the runner stays."""
    unload(live, TINY)
    chat(live, TINY, "Zed asks.", num_ctx=16384)
    pid = loaded(live, TINY)[0]

    body = {"model": TINY, "messages": [{"role": "user", "content": "y" * 3000}]}
    own = post(live, "/api/chat", {**body, "options": {"num_ctx": 2048}, "stream": False})
    assert own.status_code == 400, own.text
    assert own.json()["code"] == "context_length_exceeded"
    assert "context length of 2048 tokens" in own.json()["error"]

    long = {"model": TINY, "messages": [{"role": "user", "content": "y" * 5000}]}
    default = post(live, "/api/chat", {**long, "stream": False})
    assert default.status_code == 400 and "context length of 4096 tokens" in default.text
    openai = post(live, "/v1/chat/completions", long)
    assert openai.status_code == 400, openai.text
    error = openai.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert error["message"].startswith("This model's maximum context length is 4096 tokens.")
    # What fits the request's own context is answered, by the same runner throughout.
    assert chat(live, TINY, "y" * 3000)["done_reason"] == "stop"
    assert loaded(live, TINY) == (pid, 16384)


def test_rounding_up_is_held_to_the_trained_context(live: LiveServer) -> None:
    unload(live, SHORT)
    chat(live, SHORT, "hello", num_ctx=9000)
    pid, context = loaded(live, SHORT)
    assert context == 12000  # not 16384: the model was trained on 12000
    chat(live, SHORT, "hello", num_ctx=1 << 20)  # held to 12000 too: the same runner
    assert loaded(live, SHORT) == (pid, 12000)
    unload(live, SHORT)
    chat(live, SHORT, "hello", num_ctx=4096)  # a power of two already
    assert loaded(live, SHORT)[1] == 4096


def _planned(store: Store, name: str, num_ctx: int) -> int:
    parsed = names.parse(name)
    found = model_mod.load(store, parsed, store.read_manifest(parsed))
    return fit.footprint(found).bytes({"num_ctx": num_ctx}, 1)


def test_rounding_up_is_held_to_memory_and_shares_a_load(tmp_path: Path) -> None:
    """A num_ctx whose rounded-up context would not fit the memory budget (but its own does)
    loads its own; requests arriving while a rounded-up load is under way wait for it when it
    may hold them, rather than loading again."""
    store = Store(tmp_path / "models")
    add_model(store, "tiny", write_tiny_model(tmp_path / "tiny.gguf", n_ctx=131072))
    exact, rounded = _planned(store, "tiny", 9034), _planned(store, "tiny", 16384)
    assert rounded > exact

    async def main() -> None:
        budget = (exact + rounded) // 2
        sched = Scheduler(store, num_parallel=1, backend="fake", memory_budget=budget)
        try:
            held = await sched.load("tiny", options={"num_ctx": 9034})
            assert held.context_length == 9034
            with pytest.raises(InvalidParameterError):
                await sched.load("tiny", options={"num_ctx": 16384})
        finally:
            await sched.close()
        sched = Scheduler(store, num_parallel=1, backend="fake")
        try:
            first, second = await asyncio.gather(
                sched.load("tiny", options={"num_ctx": 9034}),
                sched.load("tiny", options={"num_ctx": 12000}),
            )
            assert first.pid == second.pid and second.context_length == 16384
        finally:
            await sched.close()

    asyncio.run(asyncio.wait_for(main(), 120))


def test_the_worker_loads_the_asked_context_when_the_rounded_one_does_not_fit(
    tmp_path: Path,
) -> None:
    """The runner's own memory check (check_memory, at the load) has the last word: where the
    rounded-up context does not fit the memory it finds, it loads the one asked for."""
    from localrun.worker.load import fitted

    store = Store(tmp_path / "models")
    add_model(store, "tiny", write_tiny_model(tmp_path / "tiny.gguf", n_ctx=131072))
    parsed = names.parse("tiny")
    found = model_mod.load(store, parsed, store.read_manifest(parsed))
    small = fit.plan_fit(found, {"num_ctx": 9034}).plan.ram_bytes
    large = fit.plan_fit(found, {"num_ctx": 16384}).plan.ram_bytes
    grown = {**found.parameters, "num_ctx": 16384}
    parameters, plan = fitted(found, grown, 16384, 1, None, (small + large) // 2, 9034)
    assert plan.num_ctx == parameters["num_ctx"] == 9034
    parameters, plan = fitted(found, grown, 16384, 1, None, large * 2, 9034)
    assert plan.num_ctx == parameters["num_ctx"] == 16384
    with pytest.raises(InvalidParameterError):
        fitted(found, grown, 16384, 1, None, small // 2, 9034)


# -- the real engine: the answer is the one a runner of the request's context gives ----------

SAYS = "one two three four five six seven eight nine ten " * 8  # ~400 tokens: past 128


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("context-scripted")
    store = Store(folder / "models")
    add_model(store, "says", write_scripted_model(folder / "says.gguf", SAYS, n_ctx=4096))
    server = LiveServer(store, Scheduler(store, num_parallel=1, max_loaded=1, max_queue=8))
    yield server
    server.close()


def generate(live: LiveServer, prompt: str, num_ctx: int) -> dict[str, Any]:
    body = {
        "model": "says",
        "prompt": prompt,
        "raw": True,
        "stream": False,
        "options": {"num_ctx": num_ctx, "temperature": 0, "seed": 1},
    }
    reply = post(live, "/api/generate", body)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


@pytest.mark.model
def test_an_answer_ends_where_its_own_context_ends(scripted: LiveServer) -> None:
    """Greedy answers capped by the context: from a runner loaded with 1024 for a request of
    128, the same text, count and done_reason "length" as from a runner loaded with 128."""
    prompt = "Count for me, please."
    unload(scripted, "says:latest")
    generate(scripted, prompt, 1024)
    pid = loaded(scripted, "says:latest")[0]
    shared = generate(scripted, prompt, 128)
    big = generate(scripted, "Count again, please, slowly.", 1024)
    assert loaded(scripted, "says:latest") == (pid, 1024)  # one runner answered all three
    unload(scripted, "says:latest")
    own = generate(scripted, prompt, 128)
    assert loaded(scripted, "says:latest")[1] == 128
    assert own["done_reason"] == shared["done_reason"] == "length"
    assert own["response"] == shared["response"] and SAYS.startswith(own["response"])
    assert own["eval_count"] == shared["eval_count"] < big["eval_count"]
    assert own["prompt_eval_count"] + own["eval_count"] == 128


@pytest.mark.model
def test_the_engine_holds_a_request_to_its_own_context(tmp_path: Path) -> None:
    """engine.batch: a request's `context` is its whole context within the slot's, for the
    prompt it refuses and for where its answer ends."""
    from localrun.engine.batch import BatchEngine
    from localrun.engine.types import LoadOptions, SamplingOptions

    path = str(write_scripted_model(tmp_path / "says.gguf", SAYS, n_ctx=4096))
    greedy = SamplingOptions(temperature=0.0, seed=1)
    answers = []
    for loaded_ctx, context in ((1024, 64), (64, 0)):
        engine = BatchEngine(path, LoadOptions(num_ctx=loaded_ctx, num_thread=2), 1)
        try:
            sampling = SamplingOptions(temperature=0.0, seed=1, context=context)
            prompt = engine.tokenize("Count for me.", add_special=True, parse_special=False)
            gen = engine.generate(prompt, sampling)
            text = "".join(gen)
            answers.append((text, gen.done_reason, gen.timings.eval_tokens))
            assert len(prompt) + gen.timings.eval_tokens == 64
            with pytest.raises(ContextOverflowError) as refused:
                engine.generate([prompt[-1]] * 70, sampling)
            assert (refused.value.tokens, refused.value.limit) == (70, 64)
            if context:
                assert "".join(engine.generate([prompt[-1]] * 70, greedy))  # the slot's holds it
        finally:
            engine.close()
    assert answers[0] == answers[1] and answers[0][1] == "length"
