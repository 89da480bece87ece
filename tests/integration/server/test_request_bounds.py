"""Requests past the bounds that protect a runner: a 400 in the dialect's shape, fast, and the
runner answers the next request (the audit's crashes, hangs and blow-ups, one by one)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localrun.scheduler import Scheduler
from localrun.store.local import Store

from support.server import LiveServer, add_model, chat, post

pytestmark = [pytest.mark.server, pytest.mark.model]

TEMPLATES = {
    "center": "{{ 'x'|center(2147483647) }}",
    "format": "{{ '%2147483647d'|format(1) }}",
    "doubling": "{% set s = namespace(v='xxxxxxxx') %}{% for i in range(60) %}"
    "{% set s.v = s.v ~ s.v %}{% endfor %}{{ s.v|length }}",
    "repeat": "{% for m in messages * 999999 %}{% for n in messages * 999999 %}{% endfor %}"
    "{% endfor %}x",
    "join": "{{ (messages * 100000)|join('x' * 100000) }}",
}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("bounds") / "models")
    add_model(store, "tiny", tiny_model)
    for name, template in TEMPLATES.items():
        add_model(store, f"t-{name}", tiny_model, f'TEMPLATE """{template}"""')
    server = LiveServer(store, Scheduler(store, num_parallel=2, max_loaded=2, max_queue=8))
    yield server
    server.close()


def still_answers(live: LiveServer) -> None:
    started = time.monotonic()
    assert post(live, "/api/chat", chat()).status_code == 200
    assert time.monotonic() - started < 10


def schema(**prop: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"a": {"type": "string", **prop}}, "required": ["a"]}


@pytest.mark.parametrize(
    "hostile",
    [
        schema(pattern="^a{0,30000}$"),
        schema(pattern="^((a{0,1000}){0,1000})$"),
        schema(pattern="^(((a{2,20}){2,20}){2,20}){2,20}$"),
        schema(enum=[f"value-{i}" for i in range(100_000)]),
        schema(pattern="^" + "(a|b)?" * 5000 + "$"),
    ],
    ids=["repeat-30000", "nested-repeats", "deep-repeats", "enum-100000", "long-pattern"],
)
def test_hostile_schemas_are_answered_or_refused_and_stall_nobody(
    live: LiveServer, hostile: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    """Counts and nested repetitions cost llguidance next to nothing: answered (llama.cpp's
    grammars hung on them, or crashed); a grammar past its bytes or a pattern past its length
    is refused in one line. Either way in bounded time, and the next request is answered."""
    refused = request.node.callspec.id in ("enum-100000", "long-pattern")
    started = time.monotonic()
    answer = post(live, "/api/chat", chat(format=hostile, options={"num_predict": 8}))
    assert answer.status_code == (400 if refused else 200), answer.text[:300]
    if refused:
        assert "grammar" in answer.json()["error"] or "pattern" in answer.json()["error"]
    assert time.monotonic() - started < 10
    openai = post(
        live,
        "/v1/chat/completions",
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": hostile},
            },
        },
    )
    assert openai.status_code == (400 if refused else 200), openai.text[:300]
    if refused:
        assert openai.json()["error"]["type"], openai.text[:300]
    still_answers(live)


def test_a_modest_pattern_and_enum_still_work(live: LiveServer) -> None:
    for fmt in (schema(pattern="^[a-z]{2,8}$"), schema(enum=["red", "green", "blue"])):
        answer = post(live, "/api/chat", chat(format=fmt, options={"num_predict": 30}))
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_templates_that_grow_or_loop_are_400_within_bounds(live: LiveServer, name: str) -> None:
    started = time.monotonic()
    answer = post(live, "/api/chat", chat(model=f"t-{name}"))
    assert answer.status_code == 400, answer.text[:300]
    assert "template" in answer.json()["error"]
    # Includes loading the model and waiting for a slot (max_loaded 2); alone each takes < 5 s.
    assert time.monotonic() - started < 60
    assert live.running()[f"t-{name}:latest"].size < 2**31
    still_answers(live)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_deep_json_is_400_wherever_it_hides(live: LiveServer) -> None:
    deep = nested(950)
    bodies = [
        ("/api/chat", '{"model": "tiny", "stream": false, "messages": [], "format": ' + deep + "}"),
        ("/api/chat", '{"model": "tiny", "messages": ' + nested(100_000) + "}"),
        (
            "/v1/chat/completions",
            '{"model": "tiny", "messages": [{"role": "user", "content": "x"}], '
            '"tools": [], "tool_choice": ' + deep + "}",
        ),
    ]
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": deep}}
    bodies.append(
        (
            "/v1/chat/completions",
            json.dumps(
                {
                    "model": "tiny",
                    "messages": [
                        {"role": "user", "content": "x"},
                        {"role": "assistant", "content": None, "tool_calls": [call]},
                        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
                    ],
                }
            ),
        )
    )
    ollama_call = {"function": {"name": "f", "arguments": deep}}
    bodies.append(
        (
            "/api/chat",
            json.dumps(
                {
                    "model": "tiny",
                    "stream": False,
                    "messages": [{"role": "assistant", "content": "", "tool_calls": [ollama_call]}],
                }
            ),
        )
    )
    for path, body in bodies:
        answer = post(live, path, body.encode())
        assert answer.status_code == 400, (path, answer.status_code, answer.text[:300])
        assert "nest" in answer.text, answer.text[:300]
    still_answers(live)


@pytest.mark.parametrize("num_ctx", [1, 2, 3, 8])
def test_embeddings_with_a_tiny_context_do_not_abort_the_runner(
    live: LiveServer, num_ctx: int
) -> None:
    answer = post(
        live,
        "/api/embed",
        {"model": "tiny", "input": "the a the a", "options": {"num_ctx": num_ctx}},
    )
    assert answer.status_code in (200, 400), answer.text[:300]
    generated = post(live, "/api/chat", chat(options={"num_ctx": num_ctx, "num_predict": 3}))
    assert generated.status_code in (200, 400), generated.text[:300]
    plain = post(live, "/api/embed", {"model": "tiny", "input": "the a"})
    assert plain.status_code == 200, plain.text[:300]
    still_answers(live)
