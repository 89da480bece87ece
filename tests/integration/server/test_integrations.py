"""What the editors and agents that speak Ollama's or OpenAI's API send, and what they read back.

Each test sends one integration's requests as its source writes them (headers, bodies, the
types of its fields) and checks the fields it parses, with the types it parses them as:
Zed (crates/ollama), Continue (core/llm/llms/Ollama.ts and its CLI), GitHub Copilot Chat's
Ollama provider, Open WebUI (routers/ollama.py, utils/payload.py), goose (providers/ollama.rs),
Cline (providers/ollama.ts, with the `ollama` npm client) and Aider (litellm's `ollama_chat`).
A client's field that Ollama accepts or ignores must be accepted or ignored here too.

The runners use the scripted engine (the "fake" backend: one character per token), so these
are tests of the server's translation, on the real server and real runner processes.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from testmodels.text import write_tiny_model

from localrun.scheduler import Scheduler
from localrun.server.messages import chat_messages
from localrun.store.local import Store

from support import PATIENCE_S, TEMPLATES
from support.server import LiveServer, add_model
from support.tools import WEATHER

pytestmark = pytest.mark.server

CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
REPLY = "Sunny." + CALL  # text, then a call (read as one only when the request has tools)
TINY = "tiny:latest"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("integrations")
    # Trained on far more than any client asks for, so a num_ctx is never held down to it.
    gguf = write_tiny_model(folder / "tiny.gguf", n_ctx=1 << 20)
    store = Store(folder / "models")
    add_model(store, "tiny", gguf)
    # Trained on 8192 tokens: the num_ctx a client asks for beyond that is held to it.
    short = write_tiny_model(folder / "short.gguf", n_ctx=8192, seed=1)
    add_model(store, "short", short)
    # A real chat template that pairs a tool result with its call by id.
    mistral = (TEMPLATES / "mistralai-Mistral-Nemo-Instruct-2407.jinja").read_text()
    gguf = write_tiny_model(folder / "mistral.gguf", n_ctx=1 << 16, chat_template=mistral)
    add_model(store, "tpl-mistral", gguf)
    scheduler = Scheduler(
        store, num_parallel=2, max_loaded=2, backend="fake", backend_options={"replies": [REPLY]}
    )
    server = LiveServer(store, scheduler)
    yield server
    server.close()


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def post(live: LiveServer, path: str, body: Any) -> httpx.Response:
    """A JSON body posted as the Node and Rust clients write it: serialised once, sent with
    Content-Type application/json."""
    return httpx.post(
        f"{live.url}{path}",
        content=json.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=PATIENCE_S,
    )


def loaded(live: LiveServer, model: str = TINY) -> tuple[int, int]:
    """The loaded runner of `model`: its process id and the context it was loaded with."""
    running = live.running()[model]
    return running.pid, running.context_length


# -- Zed (crates/ollama/src/ollama.rs) --------------------------------------------------------


def test_zed_lists_shows_and_chats(live: LiveServer) -> None:
    # get_models: models[] deserialised strictly; one missing or mistyped field fails them all.
    listing = httpx.get(f"{live.url}/api/tags", headers={"Accept": "application/json"}).json()
    assert listing["models"]
    for model in listing["models"]:
        assert isinstance(model["name"], str) and isinstance(model["modified_at"], str)
        assert isinstance(model["size"], int) and model["size"] >= 0  # u64
        assert isinstance(model["digest"], str)
        details = model["details"]
        for key in ("format", "family", "parameter_size", "quantization_level"):
            assert isinstance(details[key], str), (model["name"], key)
        assert details.get("families") is None or all(
            isinstance(f, str) for f in details["families"]
        )
    # show_model: {"model": m}; capabilities[] (serde default) for tools, vision, thinking.
    shown = post(live, "/api/show", {"model": TINY}).json()
    assert isinstance(shown["capabilities"], list) and "tools" in shown["capabilities"]

    # stream_chat_completion: the ChatRequest as serde writes it. keep_alive is the integer -1
    # (KeepAlive::Seconds), every ChatOptions field is present (None as null), tools is always
    # there, think is null for a model that does not say `thinking`; an assistant message
    # carries tool_calls and thinking as null, and a tool result its tool_name.
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
            "thinking": None,
        },
        {"role": "tool", "tool_name": "get_weather", "content": "22 degrees, sunny"},
        {"role": "assistant", "content": "It is sunny.", "tool_calls": None, "thinking": None},
        {"role": "user", "content": "Thanks!"},
    ]
    request = {
        "model": TINY,
        "messages": messages,
        "stream": True,
        "keep_alive": -1,
        "options": {
            "num_ctx": 4096,
            "num_predict": None,
            "stop": None,
            "temperature": None,
            "top_p": None,
        },
        "tools": [],
        "think": None,
    }
    lines = ndjson(post(live, "/api/chat", request))
    for line in lines:  # ChatResponseDelta: model, created_at, message (tagged by role), done
        assert isinstance(line["model"], str) and isinstance(line["created_at"], str)
        assert line["message"]["role"] == "assistant"
        assert isinstance(line["message"]["content"], str)
        assert isinstance(line["done"], bool)
    final = lines[-1]
    assert final["done"] and isinstance(final["prompt_eval_count"], int)
    assert isinstance(final["eval_count"], int)
    assert "".join(x["message"]["content"] for x in lines) == REPLY  # no tools: all text
    # keep_alive -1: loaded until the server stops.
    ps = httpx.get(f"{live.url}/api/ps").json()["models"]
    assert next(m for m in ps if m["name"] == TINY)["expires_at"].startswith("9999-")

    # with_tools(): stream false, and the answer is one object holding the calls.
    request = {**request, "tools": [WEATHER], "stream": False, "think": False}
    answer = post(live, "/api/chat", request)
    assert answer.status_code == 200, answer.text
    message = answer.json()["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    # OllamaToolCall: {id, function} since Zed's #42275 (Ollama 0.12.10 sends the calls' ids;
    # before it, an externally tagged enum that took "function" alone); its function struct
    # ignores the index Ollama sends beside name and arguments.
    assert [sorted(c) for c in message["tool_calls"]] == [["function", "id"]]
    call = message["tool_calls"][0]["function"]
    assert call == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}

    # keep_alive may also be a duration string (KeepAlive::Duration).
    request = {**request, "keep_alive": "10m", "tools": []}
    assert post(live, "/api/chat", request).status_code == 200


def test_ollama_tool_results_find_their_calls(live: LiveServer) -> None:
    """Ollama's tool calls carry no id, and its tool results name the tool (Zed) or nothing
    (Continue): a template that pairs a result with its call by id (Mistral's refuses one
    without) gets the pairing the order and the names tell."""
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    zed: list[dict[str, Any]] = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call], "thinking": None},
        {"role": "tool", "tool_name": "get_weather", "content": "22 degrees"},
    ]
    # Continue's _convertToOllamaMessage: calls without ids, results with role and content.
    continue_: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a coding assistant."},
        {"role": "user", "content": "What is the weather in Paris and in Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [
            call, {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "content": "22 degrees"},
        {"role": "tool", "content": "25 degrees"},
    ]  # fmt: skip
    for messages in (zed, continue_):
        request = {"model": "tpl-mistral", "messages": messages, "tools": [WEATHER],
                   "stream": False, "keep_alive": -1, "options": {"num_ctx": 4096}}  # fmt: skip
        answer = post(live, "/api/chat", request)
        assert answer.status_code == 200, answer.text
        assert answer.json()["done"] and isinstance(answer.json()["message"]["content"], str)
        # Each result carries the id of its call.
        prompt = post(live, "/apply-template", request).json()["prompt"]
        ids = re.findall(r'"id": "(\w{9})"', prompt)
        assert len(ids) == len([m for m in messages if m["role"] == "tool"]), prompt
        for n, found in enumerate(ids):
            assert f'"call_id": "{found}"' in prompt, (n, prompt)


def test_tool_results_pair_by_name_then_order() -> None:
    """A result that names its tool answers the first unanswered call of that name; one that
    names nothing, the first unanswered call; ids a client sent are kept."""
    weather = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    clock = {"function": {"name": "get_time", "arguments": {}}}
    messages = chat_messages([
        {"role": "user", "content": "weather and time?"},
        {"role": "assistant", "content": "", "tool_calls": [weather, clock, weather]},
        {"role": "tool", "tool_name": "get_time", "content": "12:00"},
        {"role": "tool", "content": "22 degrees"},
        {"role": "tool", "tool_name": "get_weather", "content": "25 degrees"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "abc", **clock}]},
        {"role": "tool", "tool_call_id": "abc", "content": "12:01"},
    ])  # fmt: skip
    ids = [c["id"] for c in messages[1]["tool_calls"]]
    assert len(set(ids)) == 3
    assert [m.get("tool_call_id") for m in messages[2:5]] == [ids[1], ids[0], ids[2]]
    assert messages[5]["tool_calls"][0]["id"] == "abc" and messages[6]["tool_call_id"] == "abc"
    assert "id" not in weather  # the request's own objects are left as they were


# -- Continue (core/llm/llms/Ollama.ts; the `cn` CLI) -----------------------------------------


def test_continue_ide_show_chat_and_complete(live: LiveServer) -> None:
    # The constructor asks /api/show with {"name"} and reads num_ctx and stop from the
    # `parameters` lines by this pattern: a line it cannot match throws, and the rest of the
    # reply (the template's .Suffix, FIM) is never read.
    parameters = 'PARAMETER num_ctx 4096\nPARAMETER stop "<|im_end|>"\nPARAMETER stop "user:"'
    add_model(live.store, "continue-params", _gguf(live), parameters + "\nPARAMETER top_k 20")
    shown = post(live, "/api/show", {"name": "continue-params"})
    assert shown.status_code == 200, shown.text
    body = shown.json()
    seen: dict[str, list[str]] = {}
    for row in body["parameters"].split("\n"):
        parts = re.match(r'^(\S+)\s+((?:".*")|\S+)$', row)
        assert parts is not None, row
        seen.setdefault(parts[1], []).append(parts[2])
    assert seen["num_ctx"] == ["4096"] and seen["top_k"] == ["20"]
    assert [json.loads(s) for s in seen["stop"]] == ["<|im_end|>", "user:"]
    assert isinstance(body["template"], str)

    # _streamChat: the options it has (undefined ones are left out by JSON.stringify),
    # keep_alive as a number of seconds (1800), streamed NDJSON read line by line.
    options = {"temperature": 0.2, "top_p": 0.9, "num_predict": 400, "stop": ["user:"],
               "num_ctx": 4096, "mirostat": 0, "min_p": 0.05}  # fmt: skip
    request = {
        "model": TINY,
        "messages": [{"role": "user", "content": "Write a haiku."}],
        "options": options,
        "keep_alive": 1800,
        "stream": True,
    }
    lines = ndjson(post(live, "/api/chat", request))
    assert all(line["message"]["role"] == "assistant" for line in lines)
    assert "error" not in lines[-1] and lines[-1]["done"]

    # With tools (after a user message) it asks stream: false and reads message.tool_calls.
    request = {**request, "tools": [WEATHER], "stream": False}
    answer = post(live, "/api/chat", request)
    assert answer.status_code == 200, answer.text
    calls = answer.json()["message"]["tool_calls"]
    assert json.dumps(calls[0]["function"]["arguments"]) == '{"city": "Paris"}'

    # _streamComplete: /api/generate with raw (its own template applied) and keep_alive 1800.
    request = {"model": TINY, "prompt": "def add(a, b):", "raw": True, "options": options,
               "keep_alive": 1800, "stream": True}  # fmt: skip
    lines = ndjson(post(live, "/api/generate", request))
    assert all(isinstance(line["response"], str) for line in lines) and lines[-1]["done"]


def test_continue_cli_speaks_openai(live: LiveServer) -> None:
    # `cn` with provider "ollama" uses the openai SDK on <host>/v1: both key headers, usage
    # asked for in the stream, models from /v1/models.
    ai = openai.OpenAI(
        base_url=f"{live.url}/v1",
        api_key="unused",
        max_retries=0,
        timeout=PATIENCE_S,
        default_headers={"x-api-key": "unused"},
    )
    assert TINY in {m.id for m in ai.models.list()}
    stream = ai.chat.completions.create(
        model=TINY,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(REPLY)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY


def _gguf(live: LiveServer) -> Path:
    """The tiny model's GGUF file (for models made from it with other parameters)."""
    return Path(live.store.root).parent / "tiny.gguf"


# -- GitHub Copilot Chat, BYOK Ollama (ollamaProvider.ts) -------------------------------------


def _version_at_least(version: str, minimum: str) -> bool:
    """_isVersionSupported: dotted parts compared as numbers (parseInt), missing ones 0."""
    current = [int(re.match(r"\d*", p)[0] or "nan") for p in version.split(".")]  # type: ignore[index]
    least = [int(p) for p in minimum.split(".")]
    for i in range(max(len(current), len(least))):
        a = current[i] if i < len(current) else 0
        b = least[i] if i < len(least) else 0
        if a != b:
            return a > b
    return True


def test_copilot_checks_the_version_and_reads_each_model(live: LiveServer) -> None:
    version = httpx.get(f"{live.url}/api/version").json()["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version) and _version_at_least(version, "0.6.4")
    # Every model /api/tags lists is shown with {"model": id}; the context window is
    # model_info["<general.architecture>.context_length"] (4096 when missing), the display
    # name model_info["general.basename"] (the id when missing).
    models = [m["model"] for m in httpx.get(f"{live.url}/api/tags").json()["models"]]
    assert TINY in models
    for model in models:  # one failure, and no model is offered at all
        shown = post(live, "/api/show", {"model": model})
        assert shown.status_code == 200, (model, shown.text)
        assert isinstance(shown.json()["capabilities"], list)
        assert isinstance(shown.json()["model_info"], dict)
    info = post(live, "/api/show", {"model": TINY}).json()
    model_info = info["model_info"]
    arch = model_info["general.architecture"]
    assert arch == "llama"
    assert model_info[f"{arch}.context_length"] == 1 << 20
    name = model_info.get("general.basename") or TINY
    assert isinstance(name, str) and name
    assert "tools" in info["capabilities"] and "vision" not in info["capabilities"]
    assert info["details"]["family"] == "llama"
    # Chat goes to <url>/v1/chat/completions (OpenAI-compatible), streamed, with tools.
    ai = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    stream = ai.chat.completions.create(
        model=TINY,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        stream=True,
    )
    chunks = list(stream)
    calls = [c for chunk in chunks for c in chunk.choices[0].delta.tool_calls or []]
    assert calls and calls[0].function and calls[0].function.name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# -- Open WebUI (routers/ollama.py, utils/payload.py) -----------------------------------------


def test_open_webui_connects_and_lists(live: LiveServer) -> None:
    assert httpx.get(f"{live.url}/api/version").json()["version"]
    tags = httpx.get(f"{live.url}/api/tags").json()["models"]
    assert all(m["model"] == m["name"] for m in tags)
    post(live, "/api/generate", {"model": TINY, "prompt": "", "stream": False})  # load it
    running = httpx.get(f"{live.url}/api/ps").json()["models"]
    tiny = next(m for m in running if m["name"] == TINY)
    assert tiny["model"] == TINY and tiny["expires_at"].endswith("Z")
    assert isinstance(tiny["size_vram"], int) and isinstance(tiny["size"], int)
    # Unloading a model from the admin page: keep_alive 0 and no prompt.
    unloaded = post(live, "/api/generate", {"model": TINY, "keep_alive": 0, "stream": False})
    assert unloaded.status_code == 200 and unloaded.json()["done_reason"] == "unload"
    assert TINY not in [m["name"] for m in httpx.get(f"{live.url}/api/ps").json()["models"]]


def test_open_webui_chat_payload(live: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    # What Open WebUI's convert_payload_openai_to_ollama and apply_model_params_to_body_ollama
    # make of a chat: `:latest` added to a bare id, `metadata` and a top-level num_predict
    # beside the fields Ollama reads, the model's advanced parameters in options (custom ones
    # too, such as the older new_topic_penalty), keep_alive parsed from its JSON text, think
    # lifted to the top, an assistant's tool calls with their index and id, and a tool result
    # with tool_call_id.
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_5c2e1f0a",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                },
            ],
        },
        {"role": "tool", "content": "22 degrees", "tool_call_id": "call_5c2e1f0a"},
        {"role": "assistant", "content": "It is 22 degrees."},
        {"role": "user", "content": "And tomorrow?"},
    ]
    request = {
        "model": TINY,
        "messages": messages,
        "stream": True,
        "num_predict": 64,
        "metadata": {"chat_id": "abc", "message_id": "def", "session_id": "ghi"},
        "keep_alive": -1,
        "think": False,
        "options": {
            "temperature": 0.8,
            "top_k": 40,
            "num_ctx": 4096,
            "num_keep": 5,
            "repeat_last_n": 64,
            "use_mmap": True,
            "use_mlock": False,
            "new_topic_penalty": 0.5,
            "seed": 42,
            "stop": ["<|im_end|>"],
        },
    }
    with caplog.at_level(logging.WARNING, logger="localrun.server"):
        lines = ndjson(post(live, "/api/chat", request))
    assert lines[-1]["done"] and "".join(x["message"]["content"] for x in lines) == REPLY
    assert "new_topic_penalty" in caplog.text  # ignored, as Ollama warns "invalid option"

    # Native tool calling: the OpenAI function tools forwarded as they are.
    request = {**request, "tools": [WEATHER], "stream": False, "keep_alive": "5m"}
    answer = post(live, "/api/chat", request)
    assert answer.status_code == 200, answer.text
    assert answer.json()["message"]["tool_calls"][0]["function"]["name"] == "get_weather"

    # Embeddings through /api/embed, with the fields it forwards.
    body = {"model": TINY, "input": ["one", "two"], "truncate": True, "keep_alive": "5m"}
    embedded = post(live, "/api/embed", body)
    assert embedded.status_code == 200, embedded.text
    assert len(embedded.json()["embeddings"]) == 2


# -- goose (crates/goose/src/providers/ollama.rs) ---------------------------------------------


def test_goose_sends_options_to_the_openai_route(live: LiveServer) -> None:
    # OpenAI's chat body plus a top-level options.num_ctx (GOOSE_INPUT_LIMIT, else the model's
    # context limit). Ollama's /v1 routes ignore it; so does localrun: it is no reason to
    # reload the model or to refuse the request.
    tags = httpx.get(f"{live.url}/api/tags").json()["models"]
    assert TINY in [m["name"] for m in tags]
    post(live, "/api/generate", {"model": TINY, "prompt": "", "stream": False})
    before = loaded(live)
    ai = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    stream = ai.chat.completions.create(
        model=TINY,
        messages=[
            {"role": "system", "content": "You are goose."},
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        ],
        tools=[WEATHER],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"options": {"num_ctx": 128000}},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None
    assert any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    assert loaded(live) == before


# -- Cline (src/core/api/providers/ollama.ts, the `ollama` npm client) ------------------------


def test_cline_chats_with_its_context_every_time(live: LiveServer) -> None:
    oc = ollama.Client(host=live.url, timeout=PATIENCE_S)
    system = "You are Cline. Use tools with XML tags."
    stream = oc.chat(
        TINY,
        [{"role": "system", "content": system}, {"role": "user", "content": "<task>hi</task>"}],
        stream=True,
        options={"num_ctx": 32768},
    )
    parts = list(stream)
    text = "".join(p.message.content or "" for p in parts)
    assert text == REPLY  # no tools: the XML is the answer's text
    assert parts[-1].prompt_eval_count and parts[-1].eval_count == len(REPLY)
    # The same num_ctx on the next request answers from the same runner.
    first = loaded(live)
    assert first[1] == 32768
    again = oc.chat(TINY, [{"role": "user", "content": "again"}], options={"num_ctx": 32768})
    assert again.message.content == REPLY and loaded(live) == first


# -- Aider (litellm's ollama_chat provider) ---------------------------------------------------


def test_aider_reads_the_context_from_show(live: LiveServer) -> None:
    # litellm's OllamaConfig.get_model_info: {"name": m}; the first model_info key that holds
    # "context_length" is the window; "tools" in the template, function calling.
    shown = post(live, "/api/show", {"name": TINY})
    assert shown.status_code == 200, shown.text
    info = shown.json()["model_info"]
    windows = [v for k, v in info.items() if "context_length" in k]
    assert windows and windows[0] == 1 << 20
    assert isinstance(shown.json()["template"], str)


def aider_chat(live: LiveServer, model: str, content: str) -> dict[str, Any]:
    """One request as litellm's ollama_chat sends Aider's: num_ctx = prompt tokens * 1.25
    + 8192 (recomputed each time), temperature 0, streamed."""
    tokens = len(content)  # the fake engine's tokens are characters
    request = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "options": {"num_ctx": int(tokens * 1.25) + 8192, "temperature": 0},
        "stream": True,
    }
    lines = ndjson(post(live, "/api/chat", request))
    assert lines[-1]["done"], lines[-1]
    return lines[-1]


def test_aider_num_ctx_on_every_request(live: LiveServer) -> None:
    """A num_ctx that differs on every request is answered every time, from a context that
    holds it. Where the model was trained on less, each is held to the trained context and
    one runner answers them all; where it was trained on more, the first loads a context rounded up
    to a power of two, which answers the next ones (tests/integration/engine/test_context_reuse.py
    counts the loads)."""
    pids = set()
    for n in range(3):
        aider_chat(live, "short:latest", "x" * (100 + 50 * n))
        pid, context = loaded(live, "short:latest")
        assert context == 8192
        pids.add(pid)
    assert len(pids) == 1

    for n in range(3):
        content = "x" * (100 + 50 * n)
        final = aider_chat(live, TINY, content)
        assert final["eval_count"] == len(REPLY)
        assert loaded(live)[1] >= int(len(content) * 1.25) + 8192
