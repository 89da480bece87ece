"""What the coding agents send on first contact, through the real server and llama.cpp.

The models are scripted (scripts/scripted_model.py): real GGUFs whose greedy answer is a given
text, here a tool call in the agent's own tools or a thinking model's reasoning. Claude Code
sends `role: "system"` messages among the turns and `thinking: {"type": "adaptive"}` with an
effort to every model; Codex offers a `namespace` of tools and the hosted `web_search`. Each
must be answered, never refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import PATIENCE_S
from test_server import LiveServer, add_model
from testmodels.scripted import write_scripted_model
from testmodels.vocab import THINKING_TEMPLATE

from localrun.scheduler import Scheduler
from localrun.store.models import Store

pytestmark = [pytest.mark.server, pytest.mark.model]

QWEN = (Path(__file__).parent / "data" / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
N_CTX = 30030  # the longest a scripted model holds: Claude Code's prompt is ~19k tokens


def call(name: str, arguments: dict[str, Any]) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


MODELS = {
    "agent-text": ("Done.", QWEN),
    "agent-think": ("<think>plan</think>Done.", THINKING_TEMPLATE),
    "agent-ns": (call("collaboration.spawn_agent", {"message": "look"}), QWEN),
    "agent-custom": (call("apply_patch", {"input": "*** Begin Patch\n*** End Patch"}), QWEN),
}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("agents")
    store = Store(folder / "models")
    for name, (says, template) in MODELS.items():
        gguf = write_scripted_model(folder / f"{name}.gguf", says, template=template, n_ctx=N_CTX)
        add_model(store, name, gguf, "")
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


def test_a_system_message_among_the_turns_is_taken_at_its_place(http: httpx.Client) -> None:
    turns: list[dict[str, Any]] = [{"role": "user", "content": "Hi"}]
    note = {"role": "system", "content": "Answer briefly, in the user's language."}
    blocks = {"role": "system", "content": [{"type": "text", "text": note["content"]}]}
    plain = messages(http, {"model": "agent-text", "messages": turns})
    assert plain.status_code == 200, plain.text
    for extra in (note, blocks):
        reply = messages(http, {"model": "agent-text", "messages": [*turns, extra]})
        assert reply.status_code == 200, reply.text
        assert reply.json()["content"] == [{"type": "text", "text": "Done."}]
        counted = http.post(
            "/v1/messages/count_tokens", json={"model": "agent-text", "messages": [*turns, extra]}
        )
        # Rendered as a system turn of its own: more tokens than the conversation without it.
        assert counted.json()["input_tokens"] > plain.json()["usage"]["input_tokens"] + 8
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
    assert blocks_of(plain) == [{"type": "text", "text": "Done."}]
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
        "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "*** Begin Patch"'},
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
    assert item["input"] == "*** Begin Patch\n*** End Patch"
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
