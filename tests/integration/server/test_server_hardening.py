"""Hostile and malformed requests against the real server: each gets its 4xx, nothing crashes.

The cases come from an audit of the first server version: wrong JSON types in keep_alive, lone
surrogates, schemas whose grammar nests thousands of levels deep (they crashed llama.cpp's
grammar parser), templates that loop forever, tool_choice without tools, and leaks of the
store's location.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localrun.scheduler import Scheduler
from localrun.store.local import Store

from support.server import LiveServer, add_model, chat, post

pytestmark = [pytest.mark.server, pytest.mark.model]


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_long_model: Path
) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("hardening") / "models")
    add_model(store, "tiny", tiny_model)
    loops = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}x"
    add_model(store, "looping", tiny_model, f'TEMPLATE """{loops}"""')
    macro = "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}"
    add_model(store, "recursive", tiny_model, f'TEMPLATE """{macro}"""')
    # Trained on 2**24 tokens: a num_ctx up to that is held to memory alone.
    add_model(store, "long", tiny_long_model)
    add_model(store, "fresh", tiny_long_model, "PARAMETER temperature 0.5")
    # An Ollama (Go) template that prints tool calls' arguments (issue 57).
    go = (
        "{{ range .Messages }}{{ .Content }}{{ range .ToolCalls }}{{ .Function.Arguments }}"
        "{{ end }}{{ end }}"
    )
    add_model(store, "go-args", tiny_model, f'TEMPLATE """{go}"""')
    server = LiveServer(store, Scheduler(store, num_parallel=2, max_loaded=2, max_queue=8))
    yield server
    server.close()


@pytest.mark.parametrize("keep_alive", [[1], {"a": 1}, "soon", True])
def test_keep_alive_of_the_wrong_type_is_400(live: LiveServer, keep_alive: Any) -> None:
    answer = post(live, "/api/chat", chat(keep_alive=keep_alive))
    assert answer.status_code == 400, answer.text
    assert "keep_alive" in answer.json()["error"]


def test_a_huge_keep_alive_means_forever(live: LiveServer) -> None:
    answer = post(live, "/api/chat", chat(keep_alive=10**400))
    assert answer.status_code == 200, answer.text
    assert live.running()["tiny:latest"].expires_at == float("inf")
    assert post(live, "/api/generate", {"model": "tiny", "keep_alive": 0}).status_code == 200


def test_a_lone_surrogate_is_400(live: LiveServer) -> None:
    raw = b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}'
    assert post(live, "/api/chat", raw).status_code == 400
    assert post(live, "/v1/chat/completions", raw).status_code == 400
    # Spelled as bytes, with no escape: CESU-8's three bytes, or a body in UTF-16 (which
    # json.loads reads from bytes too).
    cesu = raw.replace(b"\\ud800", b"\xed\xa0\x80")
    utf16 = '{"model": "tiny", "prompt": "\ud800"}'.encode("utf-16-le", "surrogatepass")
    for body in (cesu, utf16):
        assert post(live, "/api/chat", body).status_code == 400
        assert post(live, "/api/generate", body).status_code == 400


@pytest.mark.parametrize(
    ("schema", "status"),
    [
        # Bounds that crashed llama.cpp's grammar sampler (a stack of 30000 nested groups):
        # llguidance takes them as written.
        ({"type": "string", "maxLength": 30000}, 200),
        ({"type": "array", "items": {"type": "integer"}, "maxItems": 100000}, 200),
        # What no answer can hold, and what nests past the bound: refused in one line.
        ({"type": "array", "items": {"type": "integer"}, "minItems": 10**9}, 400),
        (json.loads('{"type": "array", "items": ' * 200 + "{}" + "}" * 200), 400),
    ],
)
def test_a_schema_past_a_grammars_reach_is_answered_or_refused_and_the_runner_lives(
    live: LiveServer, schema: dict[str, Any], status: int
) -> None:
    warm = post(live, "/api/chat", chat())
    assert warm.status_code == 200
    pid = live.running()["tiny:latest"].pid
    answer = post(live, "/api/chat", chat(format=schema))
    assert answer.status_code == status, answer.text
    openai_style = post(
        live,
        "/v1/chat/completions",
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 2,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": schema},
            },
        },
    )
    assert openai_style.status_code == status, openai_style.text
    assert post(live, "/api/chat", chat()).status_code == 200
    assert live.running()["tiny:latest"].pid == pid  # the same runner: it never crashed


def test_a_huge_repeat_window_is_bounded(live: LiveServer) -> None:
    answer = post(live, "/api/chat", chat(options={"num_predict": 2, "repeat_last_n": 2**31 - 1}))
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("model", ["looping", "recursive"])
def test_templates_that_never_end_are_400(live: LiveServer, model: str) -> None:
    answer = post(live, "/api/chat", chat(model=model))
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "template_error"


def test_tool_choice_without_tools_is_400(live: LiveServer) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    for choice in ("required", "bogus", {"type": "function", "function": {"name": "nope"}}):
        answer = post(live, "/v1/chat/completions", {**body, "tool_choice": choice})
        assert answer.status_code == 400, (choice, answer.text)
        assert answer.json()["error"]["type"] == "invalid_request_error"


def test_show_does_not_reveal_where_the_store_is(live: LiveServer) -> None:
    shown = post(live, "/api/show", {"model": "tiny"}).json()
    assert str(live.store.root) not in json.dumps(shown)
    assert "FROM sha256:" in shown["modelfile"]


def test_one_letter_names_with_a_tag(live: LiveServer) -> None:
    assert post(live, "/api/copy", {"source": "tiny", "destination": "q"}).status_code == 200
    made = post(live, "/api/create", {"model": "y", "from": "q:latest", "stream": False})
    assert made.status_code == 200, made.text
    windows = post(live, "/api/create", {"model": "z", "from": "C:/models/x.gguf"})
    assert windows.status_code == 400


def test_too_many_embedding_inputs_is_400(live: LiveServer) -> None:
    answer = post(live, "/api/embed", {"model": "tiny", "input": ["w"] * 5000})
    assert answer.status_code == 400
    assert "several requests" in answer.json()["hint"]


def test_an_empty_completion_prompt_is_400(live: LiveServer) -> None:
    answer = post(live, "/v1/completions", {"model": "tiny", "prompt": "", "max_tokens": 2})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error"
    # Ollama's idiom: an empty prompt, raw or not, just loads the model.
    loaded = post(live, "/api/generate", {"model": "tiny", "prompt": "", "raw": True})
    assert loaded.status_code == 200 and loaded.json()["done_reason"] == "load"


def test_a_context_that_cannot_fit_is_400_and_the_runner_stays(live: LiveServer) -> None:
    assert post(live, "/api/chat", chat(model="long")).status_code == 200
    pid = live.running()["long:latest"].pid
    answer = post(live, "/api/chat", chat(model="long", options={"num_ctx": 2**24}))
    assert answer.status_code == 400, answer.text
    assert "num_ctx" in answer.json()["error"]
    assert live.running()["long:latest"].pid == pid
    assert post(live, "/api/chat", chat(model="long")).status_code == 200


def test_num_ctx_past_the_trained_context_loads_the_trained_one(live: LiveServer) -> None:
    # SmolLM2 at num_ctx 65536 answered with a 6 GB runner: past what the model can use.
    answer = post(live, "/api/chat", chat(options={"num_ctx": 2**24}))
    assert answer.status_code == 200, answer.text
    shown = live.running()["tiny:latest"]
    assert shown.context_length == 256 and shown.size < 64 * 1024**2


def test_a_first_load_is_checked_against_memory_from_the_gguf(live: LiveServer) -> None:
    # num_ctx sized the KV cache with no check on a first load: 16777216 took a runner past
    # 4 GB in 11 s, and values llama.cpp could not allocate were a 500.
    for num_ctx in (2**24, 2**22):
        answer = post(live, "/api/chat", chat(model="fresh", options={"num_ctx": num_ctx}))
        assert answer.status_code == 400, answer.text
        message = answer.json()["error"]
        assert f"num_ctx {num_ctx} needs about" in message and "available" in message, message
        assert "fresh:latest" not in live.running()
    assert post(live, "/api/chat", chat(model="fresh")).status_code == 200


def test_an_embedding_stops_when_its_client_goes_away(tmp_path: Path, tiny_model: Path) -> None:
    store = Store(tmp_path / "models")
    add_model(store, "tiny", tiny_model)
    # The fake engine takes 0.05 s per input: 2000 inputs would hold the one slot for 100 s.
    scheduler = Scheduler(store, num_parallel=1, backend="fake", backend_options={"delay": 0.05})
    server = LiveServer(store, scheduler)
    try:
        assert post(server, "/api/embed", {"model": "tiny", "input": "x"}).status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                server.url + "/api/embed",
                json={"model": "tiny", "input": ["x"] * 2000},
                timeout=0.5,
            )
        body = {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
        answer = httpx.post(server.url + "/api/generate", json=body, timeout=5)
        assert answer.status_code == 200 and answer.json()["response"] == "He"
    finally:
        server.close()


def test_a_continued_conversation_reuses_its_cached_prefix(live: LiveServer) -> None:
    first = [{"role": "user", "content": "the a b c d e f g h i j k l m n o p"}]
    one = post(live, "/api/chat", chat(messages=first))
    assert one.status_code == 200
    follow = [*first, one.json()["message"], {"role": "user", "content": "the a"}]
    two = post(live, "/api/chat", chat(messages=follow)).json()
    assert two["prompt_cache_count"] > 10  # the first turn's tokens were not evaluated again
    assert two["prompt_eval_count"] > two["prompt_cache_count"]


ARGUMENTS = ["1e999", "1" * 401, '"NaN"']


@pytest.mark.parametrize("value", ARGUMENTS)
def test_tool_arguments_no_float64_holds_are_400_in_every_dialect(
    live: LiveServer, value: str
) -> None:
    """A Go template that prints arguments a float64 cannot hold (issue 57): one-line 400s."""
    native = (
        '{"model": "go-args", "stream": false, "messages": [{"role": "user", "content": "hi"}, '
        '{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", '
        f'"arguments": {{"n": {value}}}}}}}]}}]}}'
    )
    if value != '"NaN"':  # a string "NaN" in an object is just text; NaN is a JSON string's
        answer = post(live, "/api/chat", native.encode())
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == "template_error" and "\n" not in answer.json()["error"]
    arguments = json.dumps({"n": 0}).replace("0", value.strip('"') if value != '"NaN"' else "NaN")
    messages = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "f", "arguments": arguments}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]  # fmt: skip
    openai = post(live, "/v1/chat/completions", {"model": "go-args", "messages": messages})
    assert openai.status_code == 400, openai.text
    assert openai.json()["error"]["type"] == "invalid_request_error"
    shown = post(live, "/apply-template", {"model": "go-args", "messages": messages})
    assert shown.status_code == 400, shown.text


def test_a_go_template_with_a_number_no_int64_holds_is_400(live: LiveServer) -> None:
    """Refused where it is parsed (at create), even behind a condition no check takes."""
    huge = "{{ if .Tools }}{{ 0x" + "f" * 4000 + " }}{{ end }}{{ .Prompt }}"
    body = {"model": "go-huge", "from": "tiny", "template": huge, "stream": False}
    answer = post(live, "/api/create", body)
    assert answer.status_code == 400, answer.text
    assert "integer overflow" in answer.json()["error"]


def test_a_bad_setting_read_by_a_request_is_its_one_line_not_a_500(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `localrun serve` refuses it at the start (test_server_serve); an app made otherwise reads
    # it when a request needs it, and answered every chat with a 500 (issue 76).
    monkeypatch.setenv("LOCALRUN_CONTEXT_LENGTH", "1e6")
    answer = post(live, "/api/chat", chat())
    assert answer.status_code == 503, answer.text
    assert answer.json()["code"] == "config_error"
    assert answer.json()["error"].startswith("LOCALRUN_CONTEXT_LENGTH: expected a whole number")
    openai = post(live, "/v1/chat/completions", {**chat(), "max_tokens": 3})
    assert openai.status_code == 503 and openai.json()["error"]["code"] == "config_error"
