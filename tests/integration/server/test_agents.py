"""What the coding agents send on first contact, through the real server and llama.cpp.

The models are scripted (scripts/scripted_model.py): real GGUFs whose greedy answer is a given
text, here a tool call in the agent's own tools or a thinking model's reasoning. Claude Code
sends `role: "system"` messages among the turns and `thinking: {"type": "adaptive"}` with an
effort to every model; Codex offers a `namespace` of tools and the hosted `web_search`. Each
must be answered, never refused.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import llguidance
import openai
import pytest
from testmodels.scripted import write_scripted_model
from testmodels.vocab import THINKING_TEMPLATE

from localrun.errors import ContextOverflowError
from localrun.request import overflow
from localrun.scheduler import Scheduler
from localrun.store.local import Store

from support import DATA, PATIENCE_S, TEMPLATES
from support.server import SCRIPTED, LiveServer, add_model
from support.tools import APPLY_PATCH

pytestmark = [pytest.mark.server, pytest.mark.model]

QWEN = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
N_CTX = 30030  # the longest a scripted model holds: Claude Code's prompt is ~19k tokens


def call(name: str, arguments: dict[str, Any]) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


MEMORY_CALL = {"command": "create", "path": "/memories/user.md", "file_text": "Name: Ann\n"}
PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+Hello\n*** End Patch\n"
BROKEN_PATCH = PATCH.replace("+Hello", "Hello")  # an added line without its "+"

MODELS = {
    "agent-text": ("Done.", QWEN),
    "agent-think": ("<think>plan</think>Done.", THINKING_TEMPLATE),
    "agent-ns": (call("collaboration.spawn_agent", {"message": "look"}), QWEN),
    "agent-custom": (call("apply_patch", {"input": PATCH}), QWEN),
    "agent-ctx": ("Done.", QWEN),
    "agent-memory": (call("memory", MEMORY_CALL), QWEN),
}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("agents")
    store = Store(folder / "models")
    for name, (says, template) in MODELS.items():
        gguf = write_scripted_model(folder / f"{name}.gguf", says, template=template, n_ctx=N_CTX)
        add_model(store, name, gguf, SCRIPTED)  # its own spelling of forced text
    short = write_scripted_model(folder / "short.gguf", "Done.", template=QWEN, n_ctx=8192)
    add_model(store, "agent-short", short, "")
    says = call("apply_patch", {"input": BROKEN_PATCH})
    broken = write_scripted_model(folder / "broken.gguf", says, template=QWEN, n_ctx=N_CTX)
    add_model(store, "agent-broken-patch", broken, f"{SCRIPTED}\nPARAMETER num_ctx 16384\n")
    server = LiveServer(store, Scheduler(store, num_parallel=1, max_loaded=2, max_queue=8))
    yield server
    server.close()


@pytest.fixture(scope="module")
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=PATIENCE_S) as client:
        yield client


def messages(http: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    headers = {"anthropic-version": "2023-06-01", "x-api-key": "x"}
    return http.post("/v1/messages", json={"max_tokens": 64, **body}, headers=headers)


def blocks_of(reply: httpx.Response) -> list[dict[str, Any]]:
    """The content blocks of a Messages answer, streamed or not."""
    if not reply.headers["content-type"].startswith("text/event-stream"):
        return list(reply.json()["content"])
    blocks: list[dict[str, Any]] = []
    for line in reply.text.splitlines():
        if not line.startswith("data: "):
            continue
        event = json.loads(line[6:])
        if event["type"] == "content_block_start":
            blocks.append(dict(event["content_block"]))
        elif event["type"] == "content_block_delta":
            delta = event["delta"]
            key = {"text_delta": "text", "thinking_delta": "thinking"}.get(delta["type"])
            if key:
                blocks[event["index"]][key] += delta[key]
    for block in blocks:
        block.pop("signature", None)
    return blocks


def prompt_of(usage: dict[str, int]) -> int:
    """The prompt's tokens, as Anthropic's usage counts them: in three parts."""
    parts = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    return sum(usage[key] for key in parts)


def test_a_system_message_among_the_turns_is_taken_at_its_place(http: httpx.Client) -> None:
    turns: list[dict[str, Any]] = [{"role": "user", "content": "Hi"}]
    note = {"role": "system", "content": "Answer briefly, in the user's language."}
    blocks = {"role": "system", "content": [{"type": "text", "text": note["content"]}]}
    plain = messages(http, {"model": "agent-text", "messages": turns})
    assert plain.status_code == 200, plain.text
    for extra in (note, blocks):
        reply = messages(http, {"model": "agent-text", "messages": [*turns, extra]})
        assert reply.status_code == 200, reply.text
        assert reply.json()["content"] == [{"type": "text", "text": "Done.", "citations": None}]
        counted = http.post(
            "/v1/messages/count_tokens", json={"model": "agent-text", "messages": [*turns, extra]}
        )
        # Rendered as a system turn of its own: more tokens than the conversation without it.
        assert counted.json()["input_tokens"] > prompt_of(plain.json()["usage"]) + 8
    image = {"role": "system", "content": [{"type": "image", "source": {"type": "url"}}]}
    refused = messages(http, {"model": "agent-text", "messages": [*turns, image]})
    assert refused.status_code == 400 and "image" in refused.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_adaptive_thinking_with_an_effort_is_the_models_to_decide(
    http: httpx.Client, stream: bool
) -> None:
    """Claude Code sends both to every model: one that cannot think answers without."""
    body = {
        "messages": [{"role": "user", "content": "Hi"}],
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "stream": stream,
    }
    plain = messages(http, {**body, "model": "agent-text"})
    assert plain.status_code == 200, plain.text
    assert blocks_of(plain) == [{"type": "text", "text": "Done.", "citations": None}]
    thinker = messages(http, {**body, "model": "agent-think"})
    assert thinker.status_code == 200, thinker.text
    assert [b["type"] for b in blocks_of(thinker)] == ["thinking", "text"]
    assert blocks_of(thinker)[0]["thinking"] == "plan"
    # Asked outright, a model that cannot think still says so.
    enabled = {**body, "thinking": {"type": "enabled", "budget_tokens": 1024}}
    refused = messages(http, {**enabled, "model": "agent-text", "stream": False})
    assert refused.status_code == 400 and "does not support thinking" in refused.text


CODEX_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "exec_command",
        "description": "Runs a command.",
        "strict": False,
        "parameters": {
            "type": "object",
            "properties": {"cmd": {"type": "string"}},
            "required": ["cmd"],
        },
    },
    {
        "type": "namespace",
        "name": "collaboration",
        "description": "Tools for spawning and managing sub-agents.",
        "tools": [
            {
                "type": "function",
                "name": "spawn_agent",
                "description": "Spawn a sub-agent.",
                "strict": False,
                "defer_loading": False,
                "parameters": {
                    "type": "object",
                    "properties": {"message": {"type": "string"}},
                    "required": ["message"],
                },
            },
            {"type": "function", "name": "wait_agent", "parameters": {"type": "object"}},
        ],
    },
    {
        "type": "custom",
        "name": "apply_patch",
        "description": "Edit files.",
        "format": {"type": "grammar", "syntax": "lark", "definition": APPLY_PATCH},
    },
    {"type": "web_search", "external_web_access": False},
]


@pytest.mark.parametrize("stream", [False, True])
def test_codex_namespaced_and_custom_tools_and_hosted_web_search(
    http: httpx.Client, stream: bool
) -> None:
    body: dict[str, Any] = {
        "input": [
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Look around."}],
            }
        ],
        "tools": CODEX_TOOLS,
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": None,
        "store": False,
        "stream": stream,
        "include": [],
    }
    reply = http.post("/v1/responses", json={**body, "model": "agent-ns"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-localrun-tools-left-out"] == "web_search"
    item = _output(reply, stream)[-1]
    assert item["type"] == "function_call"
    assert (item["namespace"], item["name"]) == ("collaboration", "spawn_agent")
    assert json.loads(item["arguments"]) == {"message": "look"}

    # The next turn: the call as Codex sends it back, and its output.
    follow = [
        *body["input"],
        {k: item[k] for k in ("type", "name", "namespace", "arguments", "call_id")},
        {"type": "function_call_output", "call_id": item["call_id"], "output": "agent 1 started"},
    ]
    again = http.post("/v1/responses", json={**body, "model": "agent-text", "input": follow})
    assert again.status_code == 200, again.text

    custom = http.post("/v1/responses", json={**body, "model": "agent-custom"})
    assert custom.status_code == 200, custom.text
    item = _output(custom, stream)[-1]
    assert item["type"] == "custom_tool_call" and item["name"] == "apply_patch"
    assert item["input"] == PATCH
    follow = [
        *body["input"],
        {k: item[k] for k in ("type", "name", "input", "call_id")},
        {"type": "custom_tool_call_output", "call_id": item["call_id"], "output": "applied"},
    ]
    again = http.post("/v1/responses", json={**body, "model": "agent-text", "input": follow})
    assert again.status_code == 200, again.text


def _output(reply: httpx.Response, stream: bool) -> list[dict[str, Any]]:
    if not stream:
        return list(reply.json()["output"])
    events = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "response.completed"
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done == events[-1]["response"]["output"]
    return done


def test_claude_codes_web_search_is_left_out_and_named(http: httpx.Client) -> None:
    tools = [
        {"name": "Write", "description": "Write a file.", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 8},
        {"type": "bash_20250124", "name": "bash"},
    ]
    reply = messages(
        http,
        {"model": "agent-text", "messages": [{"role": "user", "content": "Hi"}], "tools": tools},
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-localrun-tools-left-out"] == "web_search_20250305"


def test_the_memory_tool_is_the_clients_to_run(live: LiveServer, tmp_path: Path) -> None:
    """Anthropic's memory tool runs on the client (the SDK's local filesystem memory tool), as
    its bash and text editor do: the model is given its commands, tool_choice may name it, and
    the call comes back as a tool_use the SDK's tool runner carries out."""
    import anthropic
    from anthropic.tools import BetaLocalFilesystemMemoryTool

    ant = anthropic.Anthropic(base_url=live.url, api_key="x", max_retries=0, timeout=PATIENCE_S)
    memory = BetaLocalFilesystemMemoryTool(base_path=str(tmp_path))
    runner = ant.beta.messages.tool_runner(
        model="agent-memory",
        max_tokens=200,
        messages=[{"role": "user", "content": "Remember that my name is Ann."}],
        tools=[memory],
        tool_choice={"type": "tool", "name": "memory"},
    )
    message = next(iter(runner))
    assert message.stop_reason == "tool_use"
    (use,) = [b for b in message.content if b.type == "tool_use"]
    assert use.name == "memory" and use.input == MEMORY_CALL
    results = runner.generate_tool_call_response()
    assert results is not None
    (result,) = results["content"]
    assert result["type"] == "tool_result" and not result.get("is_error"), result
    assert (tmp_path / "memories" / "user.md").read_text() == "Name: Ann\n"


# -- a prompt past the context ---------------------------------------------------------------

# What the agents match (their code, issue 56): Claude Code's, then OpenCode's and litellm's.
CLAUDE_CODE = re.compile(r"prompt is too long[^0-9]*(\d+)\s*tokens?\s*>\s*(\d+)", re.I)
OPENCODE = re.compile(r"maximum context length is \d+ tokens", re.I)
LITELLM_OLLAMA = "is longer than the model's context length"
LONG = "word " * 5000  # about 5000 tokens: past the default context of 4096


def test_an_overflow_is_worded_as_each_api_words_it(
    live: LiveServer, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    ask = [{"role": "user", "content": LONG}]
    with caplog.at_level(logging.INFO, logger="localrun.server"):
        anthropic = messages(http, {"model": "agent-text", "messages": ask})
    assert anthropic.status_code == 400
    error = anthropic.json()["error"]
    assert error["type"] == "invalid_request_error"
    found = CLAUDE_CODE.search(error["message"])
    assert found and int(found.group(1)) > 4096 and int(found.group(2)) == 4096
    # The hint names what raises it for a client of this API, within what the model holds.
    assert (
        "PARAMETER num_ctx 8192" in error["hint"]
        and "LOCALRUN_CONTEXT_LENGTH=8192" in (error["hint"])
    )
    assert "options" not in error["hint"] and "--param" not in error["hint"]
    # The server's log says why, without the prompt.
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert any(line.startswith("refused POST /v1/messages: 400 the prompt is") for line in lines)
    assert not any("word word" in line for line in lines)

    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="agent-text", messages=ask)  # type: ignore[arg-type]
    body: Any = raised.value.body
    assert body["code"] == "context_length_exceeded" and body["param"] == "messages"
    assert OPENCODE.search(body["message"])

    refused = http.post("/v1/responses", json={"model": "agent-text", "input": LONG})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    # Streamed, as Codex asks: the stream starts and fails with the code Codex compacts on.
    streamed = http.post(
        "/v1/responses", json={"model": "agent-text", "input": LONG, "stream": True}
    )
    assert streamed.status_code == 200
    events = [json.loads(x[6:]) for x in streamed.text.splitlines() if x.startswith("data: ")]
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.failed",
    ]
    assert events[-1]["response"]["error"]["code"] == "context_length_exceeded"

    native = http.post("/api/chat", json={"model": "agent-text", "messages": ask, "stream": False})
    assert native.status_code == 400 and LITELLM_OLLAMA in native.json()["error"]
    assert '"options": {"num_ctx": 8192}' in native.json()["hint"]


def test_the_hint_never_passes_what_the_model_was_trained_on(http: httpx.Client) -> None:
    near = messages(http, {"model": "agent-short", "messages": [{"role": "user", "content": LONG}]})
    assert (
        "raise the context to 8192 tokens (the model was trained on 8192)"
        in (near.json()["error"]["hint"])
    )
    past = [{"role": "user", "content": "word " * 9000}]
    too_long = messages(http, {"model": "agent-short", "messages": past})
    hint = too_long.json()["error"]["hint"]
    assert "trained on a context of 8192 tokens, fewer than the prompt's" in hint
    assert "num_ctx" not in hint


@pytest.mark.parametrize(
    ("tokens", "trained", "size"),
    [(5000, 30030, 8192), (3000, None, 4096), (7000, 8192, 8192), (8192, 8192, None)],
)
def test_the_suggested_context(tokens: int, trained: int | None, size: int | None) -> None:
    assert overflow.suggested(tokens, trained) == size
    error = overflow.error(tokens, 4096, trained)
    assert isinstance(error, ContextOverflowError) and error.tokens == tokens
    assert error.to_dict()["tokens"] == tokens  # the numbers travel with it


def test_a_server_wide_default_context(
    live: LiveServer, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LOCALRUN_CONTEXT_LENGTH, as Ollama's OLLAMA_CONTEXT_LENGTH: what a model loads with
    unless its Modelfile or the request says otherwise, held to what it was trained on."""
    monkeypatch.setenv("LOCALRUN_CONTEXT_LENGTH", "65536")
    reply = messages(http, {"model": "agent-ctx", "messages": [{"role": "user", "content": LONG}]})
    assert reply.status_code == 200, reply.text
    running = {m["name"]: m for m in http.get("/api/ps").json()["models"]}
    assert running["agent-ctx:latest"]["context_length"] == N_CTX


# -- the agents' own requests, replayed -------------------------------------------------------

RECORDED = DATA / "agents"
# What scripts/measure/agents_e2e.py gave each case's model (see its TEMPLATES).
CASE_TEMPLATES = {
    "answer": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "tool": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "thinking": "Qwen-Qwen3-0.6B.jinja",
    "patch": "Qwen-Qwen2.5-7B-Instruct.jinja",
}
RECORDINGS = sorted(RECORDED.glob("*.json"))
# The headers a replay sends again (the key is the server's own).
KEPT = ("content-type", "anthropic-version", "anthropic-beta", "user-agent", "openai-beta")


def _recording(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with the model each recording's requests name, saying what it said then."""
    folder = tmp_path_factory.mktemp("replay")
    store = Store(folder / "models")
    for path in RECORDINGS:
        recording = _recording(path)
        template = (TEMPLATES / CASE_TEMPLATES[recording["case"]]).read_text()
        gguf = write_scripted_model(
            folder / f"{path.stem}.gguf", recording["model_answer"], template=template, n_ctx=N_CTX
        )
        bodies = [r["body"] or {} for r in recording["requests"]]
        names = {b.get("model") or b["name"] for b in bodies if "model" in b or "name" in b}
        for name in names:
            # The variant `localrun launch` made: its context in its name; forced text spelled
            # as the script has it, as scripts/measure/agents_e2e.py gave it.
            size = re.search(r"-ctx(\d+)(k?)$", name)
            num_ctx = int(size.group(1)) * (1024 if size.group(2) else 1) if size else 0
            context = f"PARAMETER num_ctx {num_ctx}\n" if num_ctx else ""
            add_model(store, name, gguf, f"{SCRIPTED}\n{context}")
    server = LiveServer(store, Scheduler(store, num_parallel=1, max_loaded=1, max_queue=8))
    yield server
    server.close()


def test_the_recordings_cover_every_agent_and_case() -> None:
    cases = {(r["agent"], r["case"]) for r in map(_recording, RECORDINGS)}
    for agent in ("claude", "codex", "opencode", "aider"):
        assert {(agent, "answer"), (agent, "tool")} <= cases, agent
    assert {("claude", "thinking"), ("codex", "thinking"), ("codex", "patch")} <= cases
    versions = {r["agent"]: r["version"] for r in map(_recording, RECORDINGS)}
    assert versions == {
        "claude": "2.1.197",
        "codex": "0.169.0",
        "opencode": "1.18.33",
        "aider": "0.86.2",
    }


@pytest.mark.parametrize("path", RECORDINGS, ids=[p.stem for p in RECORDINGS])
def test_an_agents_recorded_requests_are_answered_as_it_reads_them(
    replay: LiveServer, path: Path
) -> None:
    """Every request the agent made (its first, the follow-up carrying the tool's result and
    its thinking, the small side requests), as it made them: answered, and the answer in the
    shape the agent reads, holding the text or the call in the agent's own tool."""
    recording = _recording(path)
    said = recording["model_answer"]
    with httpx.Client(base_url=replay.url, timeout=PATIENCE_S * 4) as http:
        for request in recording["requests"]:
            if request["method"] != "POST":
                continue
            headers = {k: v for k, v in request["headers"].items() if k in KEPT}
            reply = http.post(request["path"], json=request["body"], headers=headers)
            assert reply.status_code == 200, (request["path"], reply.text[:500])
            answer = _answer(request["path"], reply)
            if request["path"] == "/api/show":
                continue
            if "<tool_call>" in said and request["body"].get("tools"):
                name = json.loads(said.split("<tool_call>")[1].split("</tool_call>")[0])["name"]
                assert answer["calls"] == [name], answer
                for tool, text in answer["inputs"]:  # a free-form tool's: in its grammar
                    assert _in_grammar(text, _grammar_of(request["body"], tool)), text
            else:  # a side request without tools (a title): the text as it was said
                shown = said.split("</think>")[-1].strip().split("\n")[0]
                assert shown in answer["text"], answer
            if said.startswith("<think>"):
                assert "The user wants hello.txt written" in answer["thinking"], answer


def _answer(path: str, reply: httpx.Response) -> dict[str, Any]:
    """The text, thinking and tool calls (by name) of an answer in any of the dialects,
    streamed or not."""
    text, thinking, calls, inputs = "", "", [], []
    streamed = reply.headers["content-type"].split(";")[0]
    if streamed == "application/x-ndjson":
        items = [json.loads(line) for line in reply.text.splitlines() if line.strip()]
    elif streamed == "text/event-stream":
        items = [
            json.loads(line[6:])
            for line in reply.text.splitlines()
            if line.startswith("data: ") and line[6:].strip() != "[DONE]"
        ]
    else:
        items = [reply.json()]
    for item in items:
        if path == "/api/chat":
            message = item.get("message") or {}
            text += message.get("content") or ""
            thinking += message.get("thinking") or ""
            calls += [c["function"]["name"] for c in message.get("tool_calls") or []]
        elif path == "/v1/messages":
            blocks = item.get("content") or []
            if item.get("type") == "content_block_start":
                blocks = [item["content_block"]]
            delta = item.get("delta") or {}
            text += delta.get("text") or ""
            thinking += delta.get("thinking") or ""
            for block in blocks:
                text += block.get("text") or ""
                thinking += block.get("thinking") or ""
                if block.get("type") == "tool_use":
                    calls.append(block["name"])
        elif path == "/v1/responses":
            if item.get("type") in (None, "response.completed"):
                output = item.get("output") or item.get("response", {}).get("output") or []
                for entry in output:
                    if entry["type"] == "message":
                        text += "".join(part["text"] for part in entry["content"])
                    elif entry["type"] == "reasoning":
                        thinking += "".join(part["text"] for part in entry.get("content") or [])
                    elif entry["type"] in ("function_call", "custom_tool_call"):
                        calls.append(entry["name"])
                    if entry["type"] == "custom_tool_call":
                        inputs.append((entry["name"], entry["input"]))
        elif path == "/v1/chat/completions":
            for choice in item.get("choices") or []:
                part = choice.get("delta") or choice.get("message") or {}
                text += part.get("content") or ""
                thinking += part.get("reasoning_content") or ""
                for call in part.get("tool_calls") or []:
                    name = (call.get("function") or {}).get("name")
                    if name:
                        calls.append(name)
    return {"text": text, "thinking": thinking, "calls": calls, "inputs": inputs}


def test_codexs_apply_patch_is_held_to_its_grammar(http: httpx.Client) -> None:
    """The request Codex made with its free-form apply_patch (recorded): a model whose patch
    the tool's Lark grammar refuses is held to it; what comes back is a patch that parses."""
    asked = _recording(RECORDED / "codex-patch.json")["requests"][0]["body"]
    grammar = _grammar_of(asked, "apply_patch")
    assert grammar["syntax"] == "lark" and _in_grammar(PATCH, grammar)
    assert not _in_grammar(BROKEN_PATCH, grammar)
    for stream in (False, True):
        body = {**asked, "model": "agent-broken-patch", "stream": stream}
        reply = http.post("/v1/responses", json=body)
        assert reply.status_code == 200, reply.text[:500]
        answer = _answer("/v1/responses", reply)
        assert answer["calls"] and {name for name, _ in answer["inputs"]} == {"apply_patch"}
        for _, text in answer["inputs"]:
            assert text != BROKEN_PATCH and _in_grammar(text, grammar), text


def _grammar_of(body: dict[str, Any], name: str) -> dict[str, str]:
    """The format of the request's free-form tool `name`."""
    (tool,) = [t for t in body["tools"] if t["type"] == "custom" and t["name"] == name]
    return dict(tool["format"])


class _Bytes:
    """A tokenizer of one token a byte, for llguidance to match text as it is."""

    eos_token_id, bos_token_id, special_token_ids = 256, None, [256]
    tokens = [bytes([i]) for i in range(256)] + [b"<eos>"]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


BYTES = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Bytes()))


def _in_grammar(text: str, grammar: dict[str, str]) -> bool:
    """Whether llguidance takes `text` whole in a custom tool's grammar (lark or regex)."""
    compile = llguidance.LLMatcher.grammar_from_lark
    if grammar["syntax"] == "regex":
        compile = llguidance.LLMatcher.grammar_from_regex
    matcher = llguidance.LLMatcher(BYTES, compile(grammar["definition"]), log_level=0)
    taken = matcher.consume_tokens(list(text.encode()))
    return bool(taken) and not matcher.is_error() and matcher.is_accepting()
