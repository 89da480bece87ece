"""Queueing, disconnects, runner crashes and keep-alive through the real server.

The runners here use the worker's scripted engine (the "fake" backend: one character per token,
slowed down per token), so a slot stays busy for as long as a test needs and the timing is
deterministic; what is under test is the server and scheduler above it, with real runner
subprocesses, real uvicorn and real HTTP clients.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from localrun.scheduler import Scheduler
from localrun.store.local import Store

from support import PATIENCE_S
from support.server import LiveServer, add_model
from support.tools import WEATHER

pytestmark = pytest.mark.server

REPLY = "abcdefghijklmnopqrstuvwxyz" * 4  # 104 tokens
DELAY = 0.02  # per token: about 2 s per full answer
HI = [{"role": "user", "content": "hi"}]
A = "a:latest"  # the scheduler names models in their short canonical form


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("fake-server") / "models")
    for name in ("a", "b", "c"):
        add_model(store, name, tiny_model)
    scheduler = Scheduler(
        store,
        num_parallel=2,
        max_queue=1,
        max_loaded=3,
        backend="fake",
        backend_options={"replies": [REPLY], "delay": DELAY},
    )
    server = LiveServer(store, scheduler)
    yield server
    server.close()


def chat_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": HI, **extra}


def read_stream(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", url, json=body, timeout=PATIENCE_S) as response:
        assert response.status_code == 200, response.read()
        return [json.loads(line) for line in response.iter_lines() if line]


def test_disconnect_frees_the_slot(live: LiveServer) -> None:
    for dialect in ("ollama", "openai", "not streamed"):
        if dialect == "ollama":
            with httpx.stream("POST", f"{live.url}/api/chat", json=chat_body("a"), timeout=30) as r:
                first = json.loads(next(r.iter_lines()))
                assert first["message"]["content"] == "a"
                assert live.running()[A].busy == 1
        elif dialect == "not streamed":
            with pytest.raises(httpx.ReadTimeout):  # the client gives up and hangs up
                httpx.post(f"{live.url}/api/chat", json=chat_body("a", stream=False), timeout=0.5)
            assert live.running()[A].busy == 1
        else:
            ai = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0)
            stream = ai.chat.completions.create(model="a", messages=HI, stream=True)  # type: ignore[arg-type]
            chunks = iter(stream)  # the role alone, as OpenAI opens a choice; then a token
            assert next(chunks).choices[0].delta.role == "assistant"
            assert next(chunks).choices[0].delta.content == "a"
            assert live.running()[A].busy == 1
            stream.close()
        gone = time.monotonic()
        live.wait_for(lambda: live.running()[A].busy == 0, "the slot to be freed")
        # The whole answer takes about 2 s; the slot came back within a few tokens.
        assert time.monotonic() - gone < 1.0


def test_queue_full_is_503_with_retry_after(live: LiveServer) -> None:
    url = f"{live.url}/api/chat"
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        held = [pool.submit(read_stream, url, chat_body("a")) for _ in range(2)]
        live.wait_for(
            lambda: live.running().get("a:latest") and live.running()[A].busy == 2,
            "2 slots",
        )
        queued = pool.submit(read_stream, url, chat_body("a"))
        live.wait_for(lambda: live.scheduler.waiting == 1, "a queued request")

        refused = httpx.post(url, json=chat_body("a"), timeout=10)
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["code"] == "busy" and isinstance(refused.json()["error"], str)
        ai = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as busy:
            ai.chat.completions.create(model="a", messages=HI)  # type: ignore[arg-type]
        assert busy.value.status_code == 503
        assert busy.value.response.headers["retry-after"]

        # Every accepted stream runs to its end.
        for future in [*held, queued]:
            lines = future.result(timeout=PATIENCE_S)
            assert "".join(x["message"]["content"] for x in lines) == REPLY
            assert lines[-1]["done"] and lines[-1]["done_reason"] == "stop"


def test_killed_runner_fails_only_its_requests(live: LiveServer) -> None:
    url = f"{live.url}/api/chat"
    ai = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0)
    with (
        httpx.stream("POST", url, json=chat_body("a"), timeout=30) as doomed,
        ai.chat.completions.create(model="a", messages=HI, stream=True) as doomed_too,  # type: ignore[arg-type]
        httpx.stream("POST", url, json=chat_body("b"), timeout=30) as other,
    ):
        doomed_lines, chunks, other_lines = (
            doomed.iter_lines(),
            iter(doomed_too),
            other.iter_lines(),
        )
        next(doomed_lines), next(chunks), next(other_lines)
        os.kill(live.running()[A].pid, signal.SIGKILL)
        rest = [json.loads(x) for x in doomed_lines if x]
        assert rest[-1]["code"] == "runner_died" and "error" in rest[-1]
        assert not any(x.get("done") for x in rest)
        with pytest.raises(openai.APIError, match="runner"):
            for _ in chunks:
                pass
        finished = [json.loads(x) for x in other_lines if x]
        assert finished[-1]["done"] and finished[-1]["done_reason"] == "stop"
    again = httpx.post(url, json=chat_body("a", stream=False, options={"num_predict": 3}))
    assert again.status_code == 200 and again.json()["message"]["content"] == "abc"


def test_new_dialects_report_a_runner_death_in_their_stream(live: LiveServer) -> None:
    """Anthropic's stream ends with an `error` event, the Responses stream with
    response.failed; a client that hangs up frees its slot on both."""
    ant = anthropic.Anthropic(base_url=live.url, api_key="x", max_retries=0)
    ai = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0)
    with (
        ant.messages.stream(model="a", messages=HI, max_tokens=500) as messages,  # type: ignore[arg-type]
        ai.responses.create(model="a", input="hi", stream=True) as events,
    ):
        texts, items = messages.text_stream, iter(events)
        assert next(texts) == "a"
        kinds = [next(items).type for _ in range(5)]
        assert kinds[-1] == "response.output_text.delta"
        os.kill(live.running()[A].pid, signal.SIGKILL)
        with pytest.raises(anthropic.APIStatusError, match="runner"):
            for _ in texts:
                pass
        last = list(items)[-1]
        assert last.type == "response.failed"
        assert last.response.status == "failed" and last.response.error
        assert last.response.error.code == "server_error"  # the specification's code
        assert "runner" in last.response.error.message

    for route in ("messages", "responses"):
        url = f"{live.url}/v1/{route}"
        body = {
            "model": "a",
            "stream": True,
            "max_tokens": 500,
            **({"messages": HI} if route == "messages" else {"input": "hi"}),
        }
        with httpx.stream("POST", url, json=body, timeout=30) as response:
            assert response.status_code == 200
            next(response.iter_lines())
            live.wait_for(lambda: live.running()[A].busy == 1, "a busy slot")
        live.wait_for(lambda: live.running()[A].busy == 0, "the slot to be freed")


def test_keep_alive(live: LiveServer) -> None:
    url = f"{live.url}/api/generate"
    quick = {"prompt": "hi", "stream": False, "options": {"num_predict": 2}}
    assert httpx.post(url, json={"model": "c", **quick, "keep_alive": 0}).status_code == 200
    live.wait_for(lambda: "c:latest" not in live.running(), "keep_alive 0 to unload")

    answer = httpx.post(url, json={"model": "c", **quick, "keep_alive": "1s"})
    assert answer.json()["response"] == "ab"
    loaded = live.running()["c:latest"]
    assert loaded.expires_at - time.time() < 1.5
    live.wait_for(lambda: "c:latest" not in live.running(), "keep_alive 1s to expire")

    loading = httpx.post(url, json={"model": "c", "prompt": "", "stream": False}).json()
    assert loading["done"] and loading["done_reason"] == "load"
    ps = httpx.get(f"{live.url}/api/ps").json()["models"]
    assert [m for m in ps if m["name"] == "c:latest"] and ps[0]["expires_at"].endswith("Z")
    body = {"model": "c", "messages": [], "keep_alive": 0, "stream": False}
    unloading = httpx.post(f"{live.url}/api/chat", json=body).json()
    assert unloading["done_reason"] == "unload" and unloading["message"]["content"] == ""
    assert "c:latest" not in live.running()


def test_errors_before_the_first_token_get_their_status(live: LiveServer) -> None:
    long = [{"role": "user", "content": "x" * 5000}]  # the fake engine: one token a character
    native = httpx.post(f"{live.url}/api/chat", json={"model": "a", "messages": long})
    assert native.status_code == 400 and native.json()["code"] == "context_length_exceeded"
    ai = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as overflow:
        ai.chat.completions.create(model="a", messages=long, stream=True)  # type: ignore[arg-type]
    assert overflow.value.code == "context_length_exceeded"
    assert overflow.value.status_code == 400
    bad = httpx.post(f"{live.url}/api/chat", json=chat_body("a", options={"top_p": 7}))
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_parameter"
    assert (
        httpx.post(f"{live.url}/api/chat", json=chat_body("a", keep_alive="soon")).status_code
        == 400
    )


def test_raw_generate_skips_the_template(live: LiveServer) -> None:
    body = {"model": "a", "prompt": "abc", "raw": True, "stream": False,
            "options": {"num_predict": 4}}  # fmt: skip
    answer = httpx.post(f"{live.url}/api/generate", json=body, timeout=30).json()
    assert answer["response"] == "abcd" and answer["done_reason"] == "length"
    assert answer["prompt_eval_count"] == 3  # the fake engine: a token per character, no template
    assert answer["eval_count"] == 4 and answer["total_duration"] >= answer["eval_duration"]


TWO_CALLS = (
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
)


def test_parallel_tool_calls_off_keeps_the_first_call(
    tmp_path: Path, tiny_long_model: Path
) -> None:
    """parallel_tool_calls: false (OpenAI chat and Responses) and Anthropic's
    disable_parallel_tool_use: one call per answer, in every dialect alike."""
    store = Store(tmp_path / "models")
    add_model(store, "a", tiny_long_model, "PARAMETER num_ctx 8192")  # a character per token
    scheduler = Scheduler(
        store, num_parallel=1, backend="fake", backend_options={"replies": [TWO_CALLS]}
    )
    server = LiveServer(store, scheduler)
    try:
        ai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        both = ai.chat.completions.create(model="a", messages=HI, tools=[WEATHER])  # type: ignore[arg-type,list-item]
        assert len(both.choices[0].message.tool_calls or []) == 2
        # Ollama's shape: each call's place in the answer (function.index) and its own id.
        for stream in (False, True):
            body = chat_body("a", tools=[WEATHER], stream=stream)
            answer = httpx.post(f"{server.url}/api/chat", json=body, timeout=PATIENCE_S)
            lines = [json.loads(x) for x in answer.text.splitlines()]
            calls = [c for x in lines for c in x["message"].get("tool_calls", [])]
            assert [c["function"]["index"] for c in calls] == [0, 1]
            assert [c["function"]["arguments"]["city"] for c in calls] == ["Paris", "Rome"]
            assert len({c["id"] for c in calls}) == 2
        one = ai.chat.completions.create(
            model="a",
            messages=HI,
            tools=[WEATHER],
            parallel_tool_calls=False,  # type: ignore[arg-type,list-item]
        )
        calls = one.choices[0].message.tool_calls or []
        assert len(calls) == 1 and "Paris" in calls[0].function.arguments  # type: ignore[union-attr]
        tool = {"type": "function", **WEATHER["function"]}  # type: ignore[dict-item]
        answer = ai.responses.create(
            model="a",
            input="hi",
            tools=[tool],
            parallel_tool_calls=False,  # type: ignore[list-item]
        )
        assert [item.type for item in answer.output] == ["function_call"]
        ant = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
        message = ant.messages.create(
            model="a",
            messages=HI,
            max_tokens=200,
            tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
            tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        )
        assert [b.type for b in message.content] == ["tool_use"]
    finally:
        server.close()
