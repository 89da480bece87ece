"""What other servers' clients and test suites expect of `localrun serve`, on the real server.

Ollama's integration tests and llama.cpp's server tests, run against localrun, found these:
64-bit seeds, load-time options that outlived their request, `context` on /api/generate,
raw control characters in structured output, OpenAI's `context_length_exceeded`, and
llama-server's small routes. Real runners (llama.cpp) on SmolLM2 and the tiny model, with the
official `ollama` and `openai` clients where a client is involved.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import ollama
import openai
import pytest

from localrun.scheduler import Scheduler
from localrun.sources import obtain
from localrun.store import names, reference
from localrun.store.local import Store

from support import PATIENCE_S
from support.server import SMOL, LiveServer, add_model
from support.tools import WEATHER

pytestmark = [pytest.mark.server, pytest.mark.model]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("compat") / "models")
    add_model(store, "tiny", tiny_model)
    obtain.find(store, reference.parse(SMOL))
    server = LiveServer(store, Scheduler(store, num_parallel=2, max_loaded=2, max_queue=64))
    yield server
    server.close()


def sampled(seed: int, n: int = 16) -> dict[str, Any]:
    """Options that sample (not greedy), so the seed decides the answer."""
    return {"temperature": 1.5, "top_k": 0, "seed": seed, "num_predict": n}


# -- seeds ------------------------------------------------------------------------------------


def test_any_64_bit_seed_is_accepted_on_every_route(
    oc: ollama.Client, ai: openai.OpenAI, live: LiveServer
) -> None:
    prompt = "Tell me a story."
    big = 2**32 + 7  # reduced to 7, as Ollama's uint32() conversion does
    small = oc.generate(SMOL, prompt, options=sampled(7)).response
    assert oc.generate(SMOL, prompt, options=sampled(big)).response == small
    assert oc.generate(SMOL, prompt, options=sampled(8)).response != small  # the seed matters
    for seed in (2**63 - 1, 2**64 - 1, -(2**63), -1):
        assert oc.generate(SMOL, prompt, options=sampled(seed, 2)).done
        chat = oc.chat(SMOL, [{"role": "user", "content": prompt}], options=sampled(seed, 2))
        assert chat.done
    messages: Any = [{"role": "user", "content": prompt}]
    chat_small = ai.chat.completions.create(
        model=SMOL, messages=messages, temperature=1.5, seed=7, max_tokens=16
    )
    chat_big = ai.chat.completions.create(
        model=SMOL, messages=messages, temperature=1.5, seed=2**40 * 3 + 7, max_tokens=16
    )
    assert chat_big.choices[0].message.content == chat_small.choices[0].message.content
    completion = ai.completions.create(model=SMOL, prompt=prompt, seed=2**63 - 1, max_tokens=2)
    assert completion.choices[0].text is not None
    # Past 64 bits is still a 400 naming the seed.
    body = {"model": SMOL, "prompt": prompt, "options": {"seed": 2**64}, "stream": False}
    refused = httpx.post(f"{live.url}/api/generate", json=body)
    assert refused.status_code == 400 and "seed" in refused.json()["error"]


# -- errors -----------------------------------------------------------------------------------


def test_a_prompt_past_the_context_is_context_length_exceeded(
    oc: ollama.Client, ai: openai.OpenAI, live: LiveServer
) -> None:
    long = "word " * 400  # past the 256 tokens of context asked for below
    with pytest.raises(openai.BadRequestError) as refused:
        ai.completions.create(model="tiny", prompt=long, max_tokens=2)
    assert refused.value.status_code == 400 and refused.value.code == "context_length_exceeded"
    with pytest.raises(ollama.ResponseError) as native:
        oc.generate("tiny", long, raw=True, options={"num_ctx": 256, "num_predict": 2})
    assert native.value.status_code == 400
    body = {"model": "tiny", "prompt": long, "raw": True, "options": {"num_ctx": 256}}
    answer = httpx.post(f"{live.url}/api/generate", json=body, timeout=PATIENCE_S)
    assert answer.status_code == 400 and answer.json()["code"] == "context_length_exceeded"


# -- structured output ------------------------------------------------------------------------


def test_structured_answers_with_line_breaks_parse(oc: ollama.Client, ai: openai.OpenAI) -> None:
    # A poem invites line breaks inside a string: the grammar allows them only escaped.
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "poem": {"type": "string"}},
        "required": ["title", "poem"],
    }
    ask = "Write a poem of four short lines about the sea, one line per line, as JSON."
    for seed in range(3):
        answer = oc.chat(
            SMOL, [{"role": "user", "content": ask}], format=schema, options=sampled(seed, 80)
        )
        content = answer.message.content or ""
        if answer.done_reason == "stop":
            jsonschema.validate(json.loads(content), schema)  # more keys are the schema's too
        assert not any(ord(c) < 0x20 and c not in " \n\t" for c in content)
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "poem", "schema": schema}}
    chat = ai.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": ask}],
        response_format=fmt,
        temperature=0,
        max_tokens=200,
    )
    assert chat.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(chat.choices[0].message.content or ""), schema)
    plain = oc.generate(SMOL, ask, format="json", options=sampled(1, 80))
    if plain.done_reason == "stop":
        json.loads(plain.response)


# -- load-time options ------------------------------------------------------------------------


def test_one_requests_num_ctx_does_not_stay_for_the_next(
    oc: ollama.Client, ai: openai.OpenAI, live: LiveServer
) -> None:
    long = " ".join(f"item{i}" for i in range(150))  # about 430 tokens
    small = {"num_ctx": 256, "num_predict": 1}
    assert oc.generate(SMOL, "Hi", options=small).done
    # Held to its own 256 tokens, by whichever runner answers it (a larger one need not reload).
    with pytest.raises(ollama.ResponseError) as refused:
        oc.generate(SMOL, long, options=small)
    assert refused.value.status_code == 400 and "256" in refused.value.error
    # A plain request gets the model's own context: the long prompt fits.
    plain = oc.generate(SMOL, long, options={"num_predict": 1, "temperature": 0})
    assert plain.prompt_eval_count and plain.prompt_eval_count > 400
    own = live.running()[SMOL].context_length
    assert own > 256
    # Embeddings are not cut to the 256 tokens another request loaded the model with.
    oc.generate(SMOL, "Hi", options=small)
    embedded = oc.embed(SMOL, long)
    assert embedded.prompt_eval_count and embedded.prompt_eval_count > 400
    oc.generate(SMOL, "Hi", options=small)
    vectors = ai.embeddings.create(model=SMOL, input=long)
    assert vectors.usage.prompt_tokens > 400
    # Asking for the value in force never reloads.
    pid = live.running()[SMOL].pid
    oc.generate(SMOL, "Hi", options={"num_ctx": own, "num_predict": 1})
    oc.generate(SMOL, "Hi", options={"num_predict": 1})
    assert live.running()[SMOL].pid == pid


# -- /api/generate's context and durations ----------------------------------------------------


def test_generate_returns_its_context_and_continues_from_one(
    oc: ollama.Client, live: LiveServer
) -> None:
    greedy = {"temperature": 0, "num_predict": 8}
    oc.generate(SMOL, "Hi", options={"num_predict": 1})  # loaded: the next requests load nothing
    first = oc.generate(SMOL, "Why is the sky blue?", options=greedy)
    assert first.load_duration and first.load_duration > 0  # Ollama's tests want it set
    assert first.load_duration < 1e9  # but it loaded nothing
    context = list(first.context or [])
    assert len(context) == (first.prompt_eval_count or 0) + (first.eval_count or 0)
    streamed = list(oc.generate(SMOL, "Why is the sky blue?", options=greedy, stream=True))
    assert streamed[-1].done and list(streamed[-1].context or []) == context
    assert all(not part.context for part in streamed[:-1])

    second = oc.generate(SMOL, "Say it again.", options=greedy, context=context)
    assert list(second.context or [])[: len(context)] == context  # the new turn follows it
    assert (second.prompt_eval_count or 0) > len(context)
    # Its tokens come before the new prompt, and the slot holding them is reused.
    body = {"model": SMOL, "prompt": "Say it again.", "options": greedy, "stream": False,
            "context": context}  # fmt: skip
    again = httpx.post(f"{live.url}/api/generate", json=body, timeout=PATIENCE_S).json()
    assert again["prompt_cache_count"] >= len(context) - 1 and again["context"] == second.context
    assert again["response"] == second.response

    for bad in ([10**9], ["a"], [-1], "1 2 3"):
        refused = httpx.post(f"{live.url}/api/generate", json={**body, "context": bad})
        assert refused.status_code == 400, bad
        assert "context" in refused.json()["error"]


# -- options ----------------------------------------------------------------------------------


def test_unknown_options_are_ignored_with_a_warning(
    oc: ollama.Client, live: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="localrun.server")
    options = {"num_predict": 2, "temperature": 0, "warmth": 3, "mirostat": 1}
    answer = oc.generate(SMOL, "Hi", options=options)
    assert answer.done and answer.eval_count == 2
    chat = oc.chat(SMOL, [{"role": "user", "content": "Hi"}], options=options)
    assert chat.done
    assert oc.embed(SMOL, "Hi", options={"warmth": 3}).embeddings
    warned = [r.getMessage() for r in caplog.records if r.name == "localrun.server"]
    assert sum("warmth" in m for m in warned) == 3
    assert not any("mirostat" in m for m in warned)  # known to Ollama, of no use here: quiet
    # A known option's value is still checked.
    with pytest.raises(ollama.ResponseError) as refused:
        oc.generate(SMOL, "Hi", options={"top_p": 7, "warmth": 3})
    assert refused.value.status_code == 400 and "top_p" in refused.value.error


# -- llama-server's routes --------------------------------------------------------------------


def unload_all(oc: ollama.Client, live: LiveServer) -> None:
    for name in list(live.running()):
        oc.generate(name, "", keep_alive=0)
    assert live.running() == {}


def test_tokenize_and_detokenize_as_llama_server_does(oc: ollama.Client, live: LiveServer) -> None:
    url = live.url
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    unload_all(oc, live)
    content = "What is the capital of France ?"
    nothing = httpx.post(f"{url}/tokenize", json={"content": content})
    assert nothing.status_code == 400
    assert "name the model" in nothing.json()["error"]["message"]  # OpenAI's shape

    oc.generate(SMOL, "", keep_alive="5m")  # one model loaded: it is the default
    tokens = httpx.post(f"{url}/tokenize", json={"content": content}).json()["tokens"]
    assert len(tokens) > 5 and all(isinstance(t, int) for t in tokens)
    back = httpx.post(f"{url}/detokenize", json={"tokens": tokens}).json()
    assert back["content"].strip() == content
    named = httpx.post(f"{url}/tokenize", json={"content": content, "model": SMOL}).json()
    assert named["tokens"] == tokens

    # Special tokens are parsed unless asked not to be, and spelled out by /detokenize.
    end = httpx.post(f"{url}/tokenize", json={"content": "<|im_end|>"}).json()["tokens"]
    assert len(end) == 1
    literal = {"content": "<|im_end|>", "parse_special": False}
    assert len(httpx.post(f"{url}/tokenize", json=literal).json()["tokens"]) > 1
    assert httpx.post(f"{url}/detokenize", json={"tokens": end}).json()["content"] == "<|im_end|>"

    text = "This is a test string with unicode 媽 and emoji 🤗"
    body = {"content": text, "with_pieces": True}
    pieces = httpx.post(f"{url}/tokenize", json=body).json()["tokens"]
    assert all(set(p) == {"id", "piece"} and p["piece"] for p in pieces)
    joined = b"".join(
        p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces
    )
    assert joined.decode() == text
    assert any(isinstance(p["piece"], list) for p in pieces)  # the emoji spans tokens
    assert [p["id"] for p in pieces] == httpx.post(
        f"{url}/tokenize", json={"content": text}
    ).json()["tokens"]

    for bad in ([10**9], [-1], ["a"], [True]):
        refused = httpx.post(f"{url}/detokenize", json={"tokens": bad})
        assert refused.status_code == 400, bad
        assert refused.json()["error"]["type"] == "invalid_request_error"
    assert httpx.post(f"{url}/detokenize", json={"tokens": "1"}).status_code == 400
    assert httpx.post(f"{url}/tokenize", json={"content": 5}).status_code == 400

    oc.generate("tiny", "", keep_alive="5m")  # two loaded: a request must name one
    two = httpx.post(f"{url}/detokenize", json={"tokens": tokens})
    assert two.status_code == 400 and "2 models are loaded" in two.json()["error"]["message"]
    tiny = httpx.post(f"{url}/tokenize", json={"content": content, "model": "tiny"})
    assert tiny.status_code == 200 and tiny.json()["tokens"] != tokens
    missing = httpx.post(f"{url}/tokenize", json={"content": content, "model": "nope"})
    assert missing.status_code == 404


def test_health_is_open_without_the_api_key(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    server = LiveServer(store, api_key="sesame")
    try:
        assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
        closed = httpx.post(f"{server.url}/tokenize", json={"content": "x", "model": "m"})
        assert closed.status_code == 401
    finally:
        server.close()


# -- version, show, listing -------------------------------------------------------------------


def test_version_is_the_ollama_api_served_with_localruns_beside_it(live: LiveServer) -> None:
    from localrun import __version__
    from localrun.cli.client import Client

    served = httpx.get(f"{live.url}/api/version").json()
    # on loopback the store it answers from too, so a CLI with another store can say so
    shown = {"version": "0.12.0", "localrun_version": __version__}
    assert served == {**shown, "localrun_store": str(live.store.root)}
    major, minor, _ = (int(x) for x in served["version"].split("."))
    assert (major, minor) >= (0, 9)  # clients gate tools, thinking, /api/show capabilities on it
    client = Client(("127.0.0.1", live.port))
    assert client.is_up() and client.version() == __version__


def test_a_fresh_store_lists_the_packaged_starter_model(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    server = LiveServer(store, Scheduler(store, num_parallel=1))
    try:
        oc = ollama.Client(host=server.url, timeout=PATIENCE_S)
        ai = openai.OpenAI(
            base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=PATIENCE_S
        )
        [listed] = oc.list().models
        assert listed.model == SMOL and listed.size and listed.digest and listed.modified_at
        details = listed.details
        assert details and details.family == "llama" and details.format == "gguf"
        assert details.parameter_size and details.quantization_level == "Q4_1"
        assert [m.id for m in ai.models.list()] == [SMOL]
        assert ai.models.retrieve(SMOL).id == SMOL
        assert ai.models.retrieve("smollm2").id == SMOL  # its alias
        assert not store.exists(names.parse(SMOL))  # listing imports nothing

        # Using it imports it, as before; it is then listed once, from the store.
        answer = ai.chat.completions.create(
            model=SMOL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert answer.choices[0].message.content is not None
        [imported] = oc.list().models
        assert imported.model == SMOL and imported.details == details
        assert [m.id for m in ai.models.list()] == [SMOL]
    finally:
        server.close()


# -- tool calls -------------------------------------------------------------------------------


def test_streamed_tool_calls_come_before_the_final_chunk(
    oc: ollama.Client, live: LiveServer
) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    options = {"temperature": 0, "num_predict": 60}
    # The ollama client sends no tool_choice: SmolLM2 decides whether to call.
    parts = list(oc.chat(SMOL, ask, tools=[WEATHER], options=options, stream=True))
    assert parts[-1].done and not parts[-1].message.tool_calls
    assert all(not p.done for p in parts if p.message.tool_calls)

    body = {"model": SMOL, "messages": ask, "tools": [WEATHER], "tool_choice": "required",
            "options": options}  # fmt: skip
    forced = httpx.post(f"{live.url}/api/chat", json=body, timeout=PATIENCE_S)
    lines = [json.loads(x) for x in forced.text.splitlines()]
    with_calls = [i for i, x in enumerate(lines) if x.get("message", {}).get("tool_calls")]
    assert with_calls == [len(lines) - 2]  # one chunk, just before the final one
    chunk, last = lines[-2], lines[-1]
    assert chunk["done"] is False and last["done"] is True
    assert chunk["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert isinstance(chunk["message"]["tool_calls"][0]["function"]["arguments"], dict)
    assert "tool_calls" not in last["message"] and last["eval_count"] > 0
    # Not streamed: the calls are in the one object, as before.
    whole = httpx.post(
        f"{live.url}/api/chat", json={**body, "stream": False}, timeout=PATIENCE_S
    ).json()
    assert whole["done"] and whole["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


# -- metrics ----------------------------------------------------------------------------------


def scrape(url: str, **headers: str) -> dict[str, float]:
    """The samples of /metrics, parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    answer = httpx.get(f"{url}/metrics", headers=headers)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def test_metrics_count_requests_tokens_and_the_scheduler(
    oc: ollama.Client, ai: openai.OpenAI, live: LiveServer
) -> None:
    before = scrape(live.url)
    answer = oc.generate(SMOL, "Why is the sky blue?", options={"num_predict": 5})
    again = oc.generate(SMOL, "Why is the sky blue?", options={"num_predict": 5})
    chat = ai.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    embedded = oc.embed(SMOL, "hello there")
    # Every dialect is counted in the same place, Anthropic's too.
    message = httpx.post(
        f"{live.url}/v1/messages",
        json={"model": SMOL, "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]},
        timeout=PATIENCE_S,
    ).json()
    assert (
        httpx.post(f"{live.url}/api/generate", json={"model": "nope", "prompt": "x"}).status_code
        == 404
    )
    httpx.get(f"{live.url}/no/such/route")
    after = scrape(live.url)

    def grew(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("localrun_requests_total{method=POST,route=/api/generate,status=200}") == 2
    assert grew("localrun_requests_total{method=POST,route=/api/generate,status=404}") == 1
    assert grew("localrun_requests_total{method=POST,route=/v1/chat/completions,status=200}") == 1
    assert grew("localrun_requests_total{method=GET,route=unmatched,status=404}") == 1
    model = f"model={SMOL}"
    prompts = (answer.prompt_eval_count or 0) + (again.prompt_eval_count or 0)
    prompts += chat.usage.prompt_tokens if chat.usage else 0
    usage = message["usage"]  # the prompt in three parts: evaluated now, cached, written
    prompts += sum(usage[k] for k in ("input_tokens", "cache_read_input_tokens",
                                      "cache_creation_input_tokens"))  # fmt: skip
    assert grew(f"localrun_prompt_tokens_total{{{model}}}") == prompts
    generated = (answer.eval_count or 0) + (again.eval_count or 0)
    generated += chat.usage.completion_tokens if chat.usage else 0
    generated += message["usage"]["output_tokens"]
    assert grew(f"localrun_generated_tokens_total{{{model}}}") == generated
    # The second, identical prompt came from the KV cache.
    assert (
        grew(f"localrun_prompt_cached_tokens_total{{{model}}}")
        >= (again.prompt_eval_count or 0) - 1
    )
    assert grew(f"localrun_embedded_tokens_total{{{model}}}") == embedded.prompt_eval_count
    assert after["localrun_queue_length{}"] == 0
    assert after["localrun_models_loaded{}"] == len(live.running())
    assert (
        after[f"localrun_slots{{{model}}}"] == 2 and after[f"localrun_slots_in_use{{{model}}}"] == 0
    )
    assert 0 < after[f"localrun_model_load_seconds{{{model}}}"] < 60


def test_metrics_are_behind_the_api_key_and_per_app(tmp_path: Path) -> None:
    locked = LiveServer(Store(tmp_path / "a"), api_key="sesame")
    other = LiveServer(Store(tmp_path / "b"))
    try:
        assert httpx.get(f"{locked.url}/metrics").status_code == 401
        for _ in range(3):
            httpx.get(f"{locked.url}/api/tags", headers={"Authorization": "Bearer sesame"})
        seen = scrape(locked.url, Authorization="Bearer sesame")
        assert seen["localrun_requests_total{method=GET,route=/api/tags,status=200}"] == 3
        # Refused before routing: counted, under no route.
        assert seen["localrun_requests_total{method=GET,route=unmatched,status=401}"] == 1
        # Made-up methods and paths (refused or unknown) make no series of their own.
        for i in range(300):
            httpx.request(f"X{i}", f"{locked.url}/nowhere/{i}")
            httpx.request(
                f"Y{i}", f"{locked.url}/api/tags", headers={"Authorization": "Bearer sesame"}
            )
        seen = scrape(locked.url, Authorization="Bearer sesame")
        series = [k for k in seen if k.startswith("localrun_requests_total")]
        assert len(series) <= 6, series
        assert seen["localrun_requests_total{method=other,route=unmatched,status=401}"] == 300
        # Another app, side by side, has counters of its own.
        assert "localrun_requests_total{method=GET,route=/api/tags,status=200}" not in scrape(
            other.url
        )
    finally:
        locked.close()
        other.close()
