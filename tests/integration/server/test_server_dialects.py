"""Anthropic's Messages API and OpenAI's Responses API through the real server and clients.

One server per module with real runners (llama.cpp) on SmolLM2. Greedy answers are
deterministic, so the same conversation must give the same text through every dialect: the new
routes are translations over the one implementation, not second ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from localrun.scheduler import Scheduler
from localrun.sources import obtain
from localrun.store import reference
from localrun.store.local import Store

from support import PATIENCE_S
from support.server import SMOL, LiveServer
from support.tools import CITY

pytestmark = [pytest.mark.server, pytest.mark.model]

QUESTION = "What is the capital of France? Answer with one word."
# The current anthropic client sends sampling settings only as extra fields.
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = Store(tmp_path_factory.mktemp("dialects") / "models")
    obtain.find(store, reference.parse(SMOL))
    return store


@pytest.fixture(scope="module")
def responses_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("responses")


def start(store: Store, responses_dir: Path, **kw: Any) -> LiveServer:
    scheduler = Scheduler(store, num_parallel=2, max_loaded=1, max_queue=16)
    return LiveServer(store, scheduler, responses_dir=responses_dir, **kw)


@pytest.fixture(scope="module")
def live(store: Store, responses_dir: Path) -> Iterator[LiveServer]:
    server = start(store, responses_dir)
    yield server
    server.close()


# -- one conversation, four dialects ----------------------------------------------------------


def test_same_greedy_answer_through_every_dialect(
    live: LiveServer, ant: anthropic.Anthropic, ai: openai.OpenAI
) -> None:
    messages: Any = [{"role": "user", "content": QUESTION}]
    oc = ollama.Client(host=live.url, timeout=PATIENCE_S)
    native = oc.chat(SMOL, messages, options={"temperature": 0, "num_predict": 16})
    text = native.message.content or ""
    assert "Paris" in text
    chat = ai.chat.completions.create(model=SMOL, messages=messages, temperature=0, max_tokens=16)
    assert chat.choices[0].message.content == text
    response = ai.responses.create(
        model=SMOL, input=QUESTION, temperature=0, max_output_tokens=16, store=False
    )
    assert response.output_text == text
    message = ant.messages.create(model=SMOL, messages=messages, extra_body=GREEDY, max_tokens=16)
    assert message.content[0].type == "text" and message.content[0].text == text


def test_n_choices_share_the_prompt(ai: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Tell me one fact about the Moon, please."}]
    greedy = ai.chat.completions.create(
        model=SMOL, messages=messages, temperature=0, max_tokens=10, n=2
    )
    assert [c.index for c in greedy.choices] == [0, 1]
    assert greedy.choices[0].message.content == greedy.choices[1].message.content
    assert greedy.usage and greedy.usage.completion_tokens == 20
    # Sampled with a seed: choice i gets seed + i, so the two differ and repeat.
    sampled = ai.chat.completions.create(
        model=SMOL, messages=messages, temperature=1.0, seed=5, max_tokens=16, n=2
    )
    texts = [c.message.content for c in sampled.choices]
    assert texts[0] != texts[1]
    again = ai.chat.completions.create(
        model=SMOL, messages=messages, temperature=1.0, seed=5, max_tokens=16, n=2
    )
    assert [c.message.content for c in again.choices] == texts
    alone = ai.chat.completions.create(
        model=SMOL, messages=messages, temperature=1.0, seed=6, max_tokens=16
    )
    assert alone.choices[0].message.content == texts[1]

    chunks = list(
        ai.chat.completions.create(
            model=SMOL, messages=messages, temperature=1.0, seed=5, max_tokens=16, n=2,
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    streamed = ["", ""]
    finished = {}
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert streamed == texts and set(finished) == {0, 1}
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens == 32

    completion = ai.completions.create(
        model=SMOL, prompt="The Moon is", temperature=0, max_tokens=6, n=3
    )
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert len({c.text for c in completion.choices}) == 1
    with pytest.raises(openai.BadRequestError, match="n must be"):
        ai.chat.completions.create(model=SMOL, messages=messages, n=99)
    with pytest.raises(openai.BadRequestError, match="n must be"):
        ai.completions.create(model=SMOL, prompt="x", n=0)


def test_embeddings_from_token_ids(ai: openai.OpenAI, live: LiveServer) -> None:
    """langchain's OpenAIEmbeddings sends token ids: they embed as their text does."""
    texts = ["The cat sat.", "A dog ran."]
    ids = [
        httpx.post(
            f"{live.url}/tokenize", json={"model": SMOL, "content": t, "add_special": True}
        ).json()["tokens"]
        for t in texts
    ]
    by_text = ai.embeddings.create(model=SMOL, input=texts, encoding_format="float")
    by_ids = ai.embeddings.create(model=SMOL, input=ids, encoding_format="float")
    one = ai.embeddings.create(model=SMOL, input=ids[0], encoding_format="float")
    for got in (by_ids.data[0], one.data[0]):
        assert got.embedding == pytest.approx(by_text.data[0].embedding, abs=1e-5)
    assert by_ids.data[1].embedding == pytest.approx(by_text.data[1].embedding, abs=1e-5)
    assert by_ids.usage.prompt_tokens == sum(map(len, ids))
    for bad in ([[1, 2], []], [1, "a"], [[10**9]], [True, 2]):
        with pytest.raises(openai.BadRequestError):
            ai.embeddings.create(model=SMOL, input=bad)  # type: ignore[arg-type]


# -- Anthropic -------------------------------------------------------------------------------


def test_anthropic_create_and_stream(ant: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": QUESTION}]
    message = ant.messages.create(
        model=SMOL, system="Answer briefly.", messages=messages, extra_body=GREEDY, max_tokens=20
    )
    assert message.type == "message" and message.role == "assistant" and message.model == SMOL
    assert message.id.startswith("msg_")
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 5 and message.usage.output_tokens > 0
    text = message.content[0].text  # type: ignore[union-attr]
    assert "Paris" in text

    with ant.messages.stream(
        model=SMOL, system="Answer briefly.", messages=messages, extra_body=GREEDY, max_tokens=20
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == message.stop_reason
    assert final.usage.output_tokens == message.usage.output_tokens
    assert prompt_of(final.usage) == prompt_of(message.usage)

    # The first few words, then a stop sequence taken from the answer itself.
    word = text.split()[-1].strip(".")
    stopped = ant.messages.create(
        model=SMOL,
        system="Answer briefly.",
        messages=messages,
        extra_body=GREEDY,
        max_tokens=20,
        stop_sequences=[word],
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == word
    assert word not in stopped.content[0].text  # type: ignore[union-attr]

    short = ant.messages.create(model=SMOL, messages=messages, extra_body=GREEDY, max_tokens=1)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 1


def test_anthropic_tools_and_results(ant: anthropic.Anthropic) -> None:
    tools: Any = [{"name": "get_weather", "description": "Weather in a city", "input_schema": CITY}]
    ask: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    message = ant.messages.create(
        model=SMOL,
        messages=ask,
        tools=tools,
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body=GREEDY,
        max_tokens=60,
    )
    assert message.stop_reason == "tool_use"
    use = [b for b in message.content if b.type == "tool_use"]
    assert len(use) == 1 and use[0].name == "get_weather"
    assert isinstance(use[0].input, dict) and isinstance(use[0].input.get("city"), str)

    with ant.messages.stream(
        model=SMOL,
        messages=ask,
        tools=tools,
        tool_choice={"type": "any"},
        extra_body=GREEDY,
        max_tokens=60,
    ) as stream:
        final = stream.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and streamed[0].input == use[0].input
    # The model called it itself (not a code execution tool), in both.
    assert use[0].caller is not None and use[0].caller.type == "direct"
    assert streamed[0].caller is not None and streamed[0].caller.type == "direct"

    follow: Any = [
        *ask,
        {"role": "assistant", "content": [b.model_dump() for b in message.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use[0].id, "content": "Sunny, 24 C"},
                {"type": "text", "text": "So, how is it?"},
            ],
        },
    ]
    answer = ant.messages.create(
        model=SMOL, messages=follow, tools=tools, extra_body=GREEDY, max_tokens=20
    )
    assert prompt_of(answer.usage) > prompt_of(message.usage)
    assert answer.content and answer.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_a_forced_memory_call_is_one_the_sdks_memory_tool_takes(ant: anthropic.Anthropic) -> None:
    """The memory tool's schema holds a real model's forced call to one of its commands, with
    that command's fields, as the SDK's memory tools read it."""
    from anthropic.types.beta import BetaMemoryTool20250818Command
    from pydantic import TypeAdapter

    message = ant.messages.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Remember that my name is Ann."}],
        tools=[{"type": "memory_20250818", "name": "memory"}],
        tool_choice={"type": "tool", "name": "memory"},
        extra_body=GREEDY,
        max_tokens=150,
    )
    (use,) = [b for b in message.content if b.type == "tool_use"]
    command = TypeAdapter(BetaMemoryTool20250818Command).validate_python(use.input)
    assert use.name == "memory" and use.input["command"] == command.command


def prompt_of(usage: Any) -> int:
    """The prompt's tokens, as Anthropic's usage counts them: in three parts."""
    parts = (usage.cache_read_input_tokens, usage.cache_creation_input_tokens)
    return int(usage.input_tokens or 0) + sum(part or 0 for part in parts)


def test_anthropic_usage_adds_up_to_count_tokens(ant: anthropic.Anthropic) -> None:
    """input_tokens, cache_read_input_tokens and cache_creation_input_tokens add up to the
    prompt, as Anthropic's clients add them (the SDK's tool runner, Claude Code's meter); the
    same prompt again is read from the KV cache whole (its slot kept the logits of its last
    token: engine.slots `_held`)."""
    ask: dict[str, Any] = {
        "model": SMOL,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Which planet is the largest?"}],
    }
    counted = ant.messages.count_tokens(**ask).input_tokens
    assert counted > 5
    beta = ant.beta.messages.count_tokens(**ask)
    assert beta.input_tokens == counted and beta.context_management is None
    first = ant.messages.create(**ask, extra_body=GREEDY, max_tokens=2)
    again = ant.messages.create(**ask, extra_body=GREEDY, max_tokens=2)
    for usage in (first.usage, again.usage):
        assert prompt_of(usage) == counted
        assert usage.cache_creation_input_tokens == 0
        assert usage.cache_creation is not None
        assert usage.cache_creation.ephemeral_5m_input_tokens == 0
        assert usage.cache_creation.ephemeral_1h_input_tokens == 0
    assert again.usage.cache_read_input_tokens == counted and again.usage.input_tokens == 0
    with ant.messages.stream(**ask, extra_body=GREEDY, max_tokens=2) as stream:
        events = list(stream)
        final = stream.get_final_message()
    start = next(e for e in events if e.type == "message_start")
    delta = next(e for e in events if e.type == "message_delta")
    # Before the answer the cached part is not known yet: the prompt counts as input whole.
    assert prompt_of(start.message.usage) == counted
    assert prompt_of(delta.usage) == counted and delta.usage.cache_read_input_tokens == counted
    assert prompt_of(final.usage) == counted and final.usage.input_tokens == 0


def test_anthropic_errors(ant: anthropic.Anthropic, live: LiveServer) -> None:
    messages: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.NotFoundError) as missing:
        ant.messages.create(model="no-such-model", messages=messages, max_tokens=5)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    # The error's id is the request's, in its body as in the header the SDK reads.
    assert missing.value.request_id and missing.value.request_id.startswith("req_")
    assert missing.value.body["request_id"] == missing.value.request_id  # type: ignore[index]
    bad_bodies: list[dict[str, Any]] = [
        {"model": SMOL, "messages": messages},  # no max_tokens
        {"model": SMOL, "messages": [], "max_tokens": 5},
        {"model": SMOL, "messages": [{"role": "robot", "content": "x"}], "max_tokens": 5},
        {"model": SMOL, "messages": messages, "max_tokens": 5, "tool_choice": {"type": "x"}},
        {
            "model": SMOL,
            "messages": [{"role": "user", "content": [{"type": "image"}]}],
            "max_tokens": 5,
        },
        {"model": SMOL, "messages": messages, "max_tokens": "five"},
    ]
    for body in bad_bodies:
        response = httpx.post(f"{live.url}/v1/messages", json=body, timeout=PATIENCE_S)
        assert response.status_code == 400, (body, response.text)
        error = response.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert error["error"]["message"]
        assert error["request_id"] == response.headers["request-id"]
    for body in bad_bodies[1:5]:  # count_tokens reads the same fields (no max_tokens needed)
        response = httpx.post(f"{live.url}/v1/messages/count_tokens", json=body, timeout=PATIENCE_S)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.post(
        f"{live.url}/v1/messages/count_tokens",
        json={"model": "no-such-model", "messages": messages},
        timeout=PATIENCE_S,
    )
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    broken = httpx.post(
        f"{live.url}/v1/messages",
        content=b"{not json",
        timeout=PATIENCE_S,
        headers={"content-type": "application/json"},
    )
    assert broken.status_code == 400 and broken.json()["type"] == "error"


ANTHROPIC = {"anthropic-version": "2023-06-01"}  # what every Anthropic client sends
HUMAN = ["\n\nHuman:"]  # where Anthropic's text completions stop


def test_anthropic_shapes_have_every_field_of_the_spec(live: LiveServer) -> None:
    """Message, its usage and blocks, and the stream's events, with the fields Anthropic's
    OpenAPI document requires (null where localrun has nothing to say)."""
    body = {"model": SMOL, "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]}
    whole = httpx.post(f"{live.url}/v1/messages", json=body, timeout=PATIENCE_S).json()
    assert set(whole) == {"id", "type", "role", "model", "content", "stop_reason",
                          "stop_sequence", "stop_details", "container", "usage"}  # fmt: skip
    assert whole["stop_details"] is None and whole["container"] is None
    assert whole["content"][0]["citations"] is None
    usage = whole["usage"]
    assert usage["server_tool_use"] == {"web_search_requests": 0, "web_fetch_requests": 0}
    assert usage["service_tier"] == "standard" and usage["inference_geo"] == "not_available"
    assert usage["output_tokens_details"] is None and "cache_creation" in usage
    streamed = httpx.post(
        f"{live.url}/v1/messages", json={**body, "stream": True}, timeout=PATIENCE_S
    )
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line[:6] == "data: "]
    start = events[0]["message"]
    assert set(start) == set(whole) and start["stop_details"] is None
    assert start["container"] is None and start["stop_reason"] is None
    opened = next(e for e in events if e["type"] == "content_block_start")
    assert opened["content_block"] == {"type": "text", "text": "", "citations": None}
    delta = next(e for e in events if e["type"] == "message_delta")
    assert set(delta["delta"]) == {"stop_reason", "stop_sequence", "stop_details", "container"}
    assert set(delta["usage"]) == {"input_tokens", "cache_creation_input_tokens",
                                   "cache_read_input_tokens", "output_tokens",
                                   "output_tokens_details", "server_tool_use"}  # fmt: skip
    # The beta API's (the SDK's client.beta) Message has a few fields more.
    beta = httpx.post(f"{live.url}/v1/messages?beta=true", json=body, timeout=PATIENCE_S).json()
    assert set(beta) == set(whole) | {"diagnostics", "context_management"}
    assert beta["diagnostics"] is None and beta["context_management"] is None
    assert beta["usage"]["iterations"] is None and beta["usage"]["speed"] == "standard"
    streamed = httpx.post(
        f"{live.url}/v1/messages?beta=true", json={**body, "stream": True}, timeout=PATIENCE_S
    )
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line[:6] == "data: "]
    assert set(events[0]["message"]) == set(beta)
    delta = next(e for e in events if e["type"] == "message_delta")
    assert delta["context_management"] is None and delta["usage"]["iterations"] is None


def test_every_answer_names_its_request(
    live: LiveServer, ant: anthropic.Anthropic, ai: openai.OpenAI
) -> None:
    """One id per request, in `request-id` (the anthropic SDK's `_request_id`) and
    `x-request-id` (openai's); the server's own, whatever id the client sent."""
    messages: Any = [{"role": "user", "content": "Hi"}]
    first = ant.messages.create(model=SMOL, messages=messages, max_tokens=1)
    second = ant.messages.create(model=SMOL, messages=messages, max_tokens=1)
    chat = ai.chat.completions.create(model=SMOL, messages=messages, max_tokens=1)
    ids = [first._request_id, second._request_id, chat._request_id]
    assert all(i and i.startswith("req_") and len(i) == 28 for i in ids), ids
    assert len(set(ids)) == 3
    native = httpx.post(
        f"{live.url}/api/chat",
        json={"model": SMOL, "messages": messages, "stream": False, "options": {"num_predict": 1}},
        headers={"x-request-id": "mine"},
        timeout=PATIENCE_S,
    )
    assert native.headers["x-request-id"] == native.headers["request-id"] != "mine"
    refused = httpx.get(f"{live.url}/api/nothing-here")  # an error, and no route, still named
    assert refused.status_code == 404 and refused.headers["request-id"].startswith("req_")


def test_an_anthropic_clients_unknown_path_is_answered_in_its_shape(
    live: LiveServer, ant: anthropic.Anthropic
) -> None:
    """A 404 an Anthropic client can read (its SDK raises NotFoundError with the body), on
    any path no other dialect alone serves, told by the anthropic-version header every
    Anthropic client sends; other clients, and the other dialects' own routes, keep their
    API's shape."""
    with pytest.raises(anthropic.NotFoundError) as missing:
        ant.get("/v1/messages/batches/msgbatch_01", cast_to=object)
    body: Any = missing.value.body
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert body["request_id"] == missing.value.request_id
    for path in ("/v1/files", "/v1/organizations/me", "/nothing-here"):
        answer = httpx.get(f"{live.url}{path}", headers=ANTHROPIC)
        assert answer.status_code == 404, path
        assert answer.json()["error"]["type"] == "not_found_error", path
        assert answer.json()["request_id"] == answer.headers["request-id"], path
    assert set(httpx.get(f"{live.url}/v1/files").json()) == {"error"}  # OpenAI's shape
    # x-api-key alone is no sign: OpenAI clients send it too (Continue's cn).
    keyed = httpx.get(f"{live.url}/v1/files", headers={"x-api-key": "k"})
    assert set(keyed.json()) == {"error"}
    assert httpx.get(f"{live.url}/api/nothing-here").json()["code"] == "not_found"  # Ollama's
    # Ollama's and OpenAI's own routes keep their shape, whatever headers come with them.
    ollama_own = httpx.get(f"{live.url}/api/nothing-here", headers=ANTHROPIC).json()
    assert ollama_own["code"] == "not_found" and "type" not in ollama_own
    chat = httpx.post(f"{live.url}/v1/chat/completions", json={"model": 5}, headers=ANTHROPIC)
    assert chat.status_code == 400 and set(chat.json()) == {"error"}, chat.text


def test_anthropic_clients_list_models_in_their_shape(
    live: LiveServer, ant: anthropic.Anthropic, ai: openai.OpenAI
) -> None:
    """GET /v1/models answers an Anthropic client (anthropic-version) with Anthropic's
    ModelInfo pages, an OpenAI client with OpenAI's list: the same models."""
    copies = [f"smol-copy-{i}" for i in range(2)]  # three models to page through
    for name in copies:
        made = httpx.post(f"{live.url}/api/copy", json={"source": SMOL, "destination": name})
        assert made.status_code == 200, made.text
    try:
        listed = [m.id for m in ai.models.list()]
        assert len(listed) >= 3 and SMOL in listed
        page = ant.models.list()
        assert [m.id for m in page.data] == listed[:20]
        assert all(m.type == "model" and m.display_name == m.id for m in page.data)
        assert page.first_id == listed[0] and page.last_id == listed[min(20, len(listed)) - 1]
        first = ant.models.list(limit=1)
        assert [m.id for m in first.data] == listed[:1] and first.has_more is True
        second = ant.models.list(limit=1, after_id=listed[0])
        assert [m.id for m in second.data] == listed[1:2]
        back = ant.models.list(limit=1, before_id=listed[1])
        assert [m.id for m in back.data] == listed[:1] and back.has_more is False
        last = ant.models.list(limit=1000, after_id=listed[0])
        assert [m.id for m in last.data] == listed[1:] and last.has_more is False
    finally:
        for name in copies:
            httpx.request("DELETE", f"{live.url}/api/delete", json={"model": name})
    one = ant.models.retrieve(SMOL)
    assert one.id == SMOL and one.type == "model" and one.created_at.year > 2000
    with pytest.raises(anthropic.NotFoundError):
        ant.models.retrieve("no-such-model")
    with pytest.raises(anthropic.BadRequestError):
        ant.models.list(limit=0)
    for limit in ("²", "-1", "1e3", "9" * 40):  # a digit of another script was a 500
        odd = httpx.get(f"{live.url}/v1/models", params={"limit": limit}, headers=ANTHROPIC)
        assert odd.status_code == 400 and odd.json()["type"] == "error", (limit, odd.text)


def test_anthropic_text_completions(live: LiveServer, ant: anthropic.Anthropic) -> None:
    """/v1/complete continues the raw prompt as /v1/completions does (the same core, the same
    greedy text), stops at "\n\nHuman:" and at stop_sequences, streamed or not."""
    prompt = "\n\nHuman: What is the capital of France?\n\nAssistant:"
    ask = {"model": SMOL, "prompt": prompt, "max_tokens_to_sample": 12, "temperature": 0}
    completion: Any = ant.post("/v1/complete", cast_to=object, body=ask)
    assert completion["type"] == "completion" and completion["id"].startswith("compl_")
    assert completion["model"] == SMOL
    assert completion["stop_reason"] in ("stop_sequence", "max_tokens")
    same = httpx.post(
        f"{live.url}/v1/completions",
        json={**ask, "max_tokens": 12, "stop": HUMAN},
        timeout=PATIENCE_S,
    ).json()
    assert completion["completion"] == same["choices"][0]["text"]
    events: Any = list(
        ant.post(
            "/v1/complete",
            cast_to=object,
            body={**ask, "stream": True},
            stream=True,
            stream_cls=anthropic.Stream[object],
        )
    )
    assert all(e["type"] == "completion" and e["id"] == events[0]["id"] for e in events)
    assert "".join(e["completion"] for e in events) == completion["completion"]
    assert [e["stop_reason"] for e in events[:-1]] == [None] * (len(events) - 1)
    assert events[-1]["stop_reason"] == completion["stop_reason"]
    short: Any = ant.post("/v1/complete", cast_to=object, body={**ask, "max_tokens_to_sample": 1})
    assert short["stop_reason"] == "max_tokens"
    word = completion["completion"].split()[0]
    cut: Any = ant.post("/v1/complete", cast_to=object, body={**ask, "stop_sequences": [word]})
    assert cut["stop_reason"] == "stop_sequence" and word not in cut["completion"]
    for bad in ({"prompt": prompt}, {"max_tokens_to_sample": 5}, {**ask, "stop_sequences": 3}):
        with pytest.raises(anthropic.BadRequestError) as refused:
            ant.post("/v1/complete", cast_to=object, body={"model": SMOL, **bad})
        assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        ant.post("/v1/complete", cast_to=object, body={**ask, "model": "no-such-model"})


def test_anthropic_api_key(store: Store, responses_dir: Path) -> None:
    server = start(store, responses_dir, api_key="sekrit")
    try:
        good = anthropic.Anthropic(base_url=server.url, api_key="sekrit", max_retries=0)
        counted = good.messages.count_tokens(
            model=SMOL, messages=[{"role": "user", "content": "hi"}]
        )
        assert counted.input_tokens > 0
        bad = anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as refused:
            bad.messages.create(
                model=SMOL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
        assert refused.value.status_code == 401
        assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    finally:
        server.close()


# -- OpenAI Responses ------------------------------------------------------------------------


def test_responses_create_and_stream(ai: openai.OpenAI) -> None:
    response = ai.responses.create(
        model=SMOL,
        instructions="Answer briefly.",
        input=QUESTION,
        temperature=0,
        max_output_tokens=20,
        metadata={"run": "1"},
    )
    assert response.status in ("completed", "incomplete") and response.id.startswith("resp_")
    assert "Paris" in response.output_text
    assert response.usage and response.usage.input_tokens > 5
    assert response.metadata == {"run": "1"} and response.instructions == "Answer briefly."

    kinds: list[str] = []
    deltas: list[str] = []
    with ai.responses.stream(
        model=SMOL,
        instructions="Answer briefly.",
        input=QUESTION,
        temperature=0,
        max_output_tokens=20,
    ) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert "".join(deltas) == response.output_text == final.output_text
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.usage and final.usage.output_tokens == response.usage.output_tokens

    raw = list(ai.responses.create(model=SMOL, input=QUESTION, max_output_tokens=2, stream=True))
    assert [e.sequence_number for e in raw] == list(range(len(raw)))
    last = raw[-1]
    assert last.type == "response.incomplete"  # OpenAI's last event of an answer cut short
    assert last.response.status == "incomplete"
    assert last.response.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]


def test_responses_stored_conversation_survives_restart(
    store: Store, responses_dir: Path, live: LiveServer, ai: openai.OpenAI
) -> None:
    first = ai.responses.create(
        model=SMOL, input="My name is Ada. Say hello.", temperature=0, max_output_tokens=12
    )
    again = ai.responses.create(
        model=SMOL,
        previous_response_id=first.id,
        input="What is my name?",
        temperature=0,
        max_output_tokens=12,
    )
    # The second prompt extends the first conversation: its prefix came from the KV cache.
    assert again.usage and first.usage
    assert again.usage.input_tokens > first.usage.input_tokens
    assert again.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens - 2
    assert again.previous_response_id == first.id
    items = ai.responses.input_items.list(again.id, order="asc")
    assert [i.type for i in items.data] == ["message"]

    server = start(store, responses_dir)  # a second server (as after a restart), same folder
    try:
        other = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        assert other.responses.retrieve(again.id).output_text == again.output_text
        continued = other.responses.create(
            model=SMOL,
            previous_response_id=again.id,
            input="And again: what is my name?",
            temperature=0,
            max_output_tokens=12,
        )
        assert continued.usage and continued.usage.input_tokens > again.usage.input_tokens
        other.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError) as gone:
            other.responses.retrieve(first.id)
        assert gone.value.status_code == 404
        assert gone.value.body["code"] == "not_found"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            other.responses.create(model=SMOL, previous_response_id=first.id, input="hi")
    finally:
        server.close()
    unstored = ai.responses.create(model=SMOL, input="hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        ai.responses.retrieve(unstored.id)
    for bad in ("resp_nope", "../../etc/passwd", "resp_" + "0" * 48):
        with pytest.raises(openai.NotFoundError):
            ai.responses.retrieve(bad)


def test_responses_function_tools(ai: openai.OpenAI) -> None:
    tools: Any = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": CITY,
        }
    ]
    called = ai.responses.create(
        model=SMOL,
        input="What is the weather in Paris?",
        tools=tools,
        tool_choice="required",
        temperature=0,
        max_output_tokens=60,
    )
    calls = [item for item in called.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments)["city"], str)

    with ai.responses.stream(
        model=SMOL,
        input="What is the weather in Paris?",
        tools=tools,
        tool_choice={"type": "function", "name": "get_weather"},
        temperature=0,
        max_output_tokens=60,
    ) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.done" in events
    streamed = [item for item in final.output if item.type == "function_call"]
    assert streamed[0].arguments == calls[0].arguments

    answered = ai.responses.create(
        model=SMOL,
        previous_response_id=called.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny"}],
        tools=tools,
        temperature=0,
        max_output_tokens=20,
    )
    assert answered.status in ("completed", "incomplete") and answered.output


def test_responses_structured_output(ai: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    response = ai.responses.create(
        model=SMOL,
        input="Name a city in France as JSON.",
        text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}},
        temperature=0,
        max_output_tokens=60,
    )
    value = json.loads(response.output_text)
    assert set(value) == {"city", "country"}
    loose = ai.responses.create(
        model=SMOL,
        input="Say hi as JSON.",
        text={"format": {"type": "json_object"}},
        temperature=0,
        max_output_tokens=30,
    )
    # The grammar holds to the end of the answer; the budget may cut the value short (a near
    # tie, where speculation's batched logits differ, decides how long it runs).
    if loose.status == "completed":
        json.loads(loose.output_text)
    else:
        assert loose.incomplete_details.reason == "max_output_tokens"
        assert loose.output_text.lstrip().startswith(("{", "["))


def test_stored_responses_are_bounded_in_bytes(
    ai: openai.OpenAI, live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenAI's own bounds on metadata: 16 pairs, 64-character keys, 512-character values.
    for metadata in ({f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}):
        with pytest.raises(openai.BadRequestError, match="metadata"):
            ai.responses.create(model=SMOL, input="hi", metadata=metadata, max_output_tokens=16)
    # A record larger than LOCALRUN_RESPONSES_MAX_RECORD_BYTES is refused before it is made
    # (the server reads the setting at each request).
    monkeypatch.setenv("LOCALRUN_RESPONSES_MAX_RECORD_BYTES", "6000")
    long = "word " * 5000  # 25 KB
    with pytest.raises(openai.BadRequestError, match="store"):
        ai.responses.create(model=SMOL, input=long, max_output_tokens=16)
    served = ai.responses.create(model=SMOL, input="hi", max_output_tokens=16)
    assert served.status in ("completed", "incomplete") and ai.responses.retrieve(served.id)
    unstored = ai.responses.create(
        model=SMOL, input="hi", instructions="x" * 8000, store=False, max_output_tokens=16
    )
    assert unstored.status in ("completed", "incomplete")


def test_responses_errors(ai: openai.OpenAI, live: LiveServer) -> None:
    with pytest.raises(openai.NotFoundError):
        ai.responses.create(model="no-such-model", input="hi")
    bad_bodies: list[dict[str, Any]] = [
        {"model": SMOL, "input": 5},
        {"model": SMOL, "input": [{"type": "mystery"}]},
        {"model": SMOL, "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
        {"model": SMOL, "input": "hi", "text": {"format": {"type": "yaml"}}},
        {"model": SMOL, "input": "hi", "tools": [{"type": "namespace", "name": "ns"}]},
        {"model": SMOL, "input": "hi", "tools": [{"type": 7}]},
        {"model": SMOL, "input": "hi", "max_output_tokens": 0},
        {"model": SMOL, "input": "hi", "reasoning": {"effort": "extreme"}},
        {
            "model": SMOL,
            "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{oops"}],
        },
    ]
    for body in bad_bodies:
        response = httpx.post(f"{live.url}/v1/responses", json=body, timeout=PATIENCE_S)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"]
