"""How many tokens each coding agent's first prompt takes on a model: the largest generation
request of each recording in tests/data/agents/ (scripts/measure/agents_e2e.py --record), counted
by a running localrun server the way that request's own route renders it.

- Anthropic's /v1/messages: POST /v1/messages/count_tokens with the same body;
- the Responses API: POST /v1/responses/input_tokens with the same body;
- chat completions and Ollama's /api/chat: POST /apply-template with its messages and tools,
  then POST /tokenize of that prompt with the tokenizer's special tokens added.

The model's name in a recording is replaced by the one measured. Used by
scripts/measure/agent_prompts.py (a table over the models at hand) and by the test that holds
each agent's `need` (localrun.cli.launch.agents) to what its prompt takes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = ["RECORDED", "FirstPrompt", "count", "first_prompts"]

RECORDED = Path(__file__).resolve().parents[2] / "tests" / "data" / "agents"
GENERATION = ("/v1/messages", "/v1/responses", "/v1/chat/completions", "/api/chat")
TIMEOUT_S = 600.0
# How each dialect marks a tool's result in a conversation.
_RESULTS = ('"tool_result"', '_call_output"', '"role": "tool"')


@dataclass(frozen=True)
class FirstPrompt:
    """An agent's largest first-turn generation request over its recordings."""

    agent: str
    version: str
    case: str
    path: str  # the route it was sent to
    body: dict[str, Any]


def _first_turn(body: dict[str, Any]) -> bool:
    """Whether a request is still at its conversation's first turn: no tool's result in it yet
    (an agent's prompt may hold example exchanges, as Aider's does, so assistant messages may
    be there)."""
    turns = body.get("messages") or body.get("input") or []
    text = json.dumps(turns)
    return not any(mark in text for mark in _RESULTS)


def _first_turns(recording: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for request in recording["requests"]:
        body = request.get("body")
        if request["method"] != "POST" or request["path"] not in GENERATION:
            continue
        if isinstance(body, dict) and _first_turn(body):
            out.append((request["path"], body))
    return out


def first_prompts(folder: Path = RECORDED) -> list[FirstPrompt]:
    """Each agent's largest first-turn request (by its JSON's length) over its recordings: its
    main prompt, not a side request such as a title's."""
    best: dict[str, FirstPrompt] = {}
    for file in sorted(folder.glob("*.json")):
        recording = json.loads(file.read_text())
        for path, body in _first_turns(recording):
            found = FirstPrompt(
                recording["agent"], recording["version"], recording["case"], path, body
            )
            known = best.get(found.agent)
            if known is None or len(json.dumps(body)) > len(json.dumps(known.body)):
                best[found.agent] = found
    return [best[agent] for agent in sorted(best)]


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = client.post(path, json=body)
    if reply.status_code != 200:
        raise RuntimeError(f"POST {path} answered {reply.status_code}: {reply.text[:300]}")
    answer = reply.json()
    assert isinstance(answer, dict)
    return answer


def count(base_url: str, prompt: FirstPrompt, model: str, api_key: str = "") -> int:
    """The tokens of `prompt`'s request on `model`, as the server at `base_url` renders it."""
    body = {**prompt.body, "model": model}
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=base_url, timeout=TIMEOUT_S, headers=headers) as client:
        if prompt.path == "/v1/messages":
            return int(_post(client, "/v1/messages/count_tokens", body)["input_tokens"])
        if prompt.path == "/v1/responses":
            return int(_post(client, "/v1/responses/input_tokens", body)["input_tokens"])
        rendered = _post(
            client,
            "/apply-template",
            {"model": model, "messages": body["messages"], "tools": body.get("tools")},
        )
        tokens = _post(
            client,
            "/tokenize",
            {"model": model, "content": rendered["prompt"], "add_special": True},
        )
        return len(tokens["tokens"])
