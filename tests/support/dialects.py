"""One question with tools (ASK), asked through the real server in each dialect with its
official client, whole or streamed: each answer as (content, reasoning, calls), so that a test
can hold every dialect to the same reading."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import ollama
import openai

from support import PATIENCE_S
from support.server import LiveServer

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


Answer = tuple[str, str, list[Any]]  # content, reasoning, calls


def _openai(
    live: LiveServer, model: str, tools: list[Any], stream: bool, think: bool = True
) -> Answer:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0)
    common: Any = {"model": model, "messages": ASK, "tools": tools, "temperature": 0}
    if not think:
        common["reasoning_effort"] = "none"
    if not stream:
        message = client.chat.completions.create(**common).choices[0].message
        calls = [
            {"name": c.function.name, "arguments": json.loads(c.function.arguments)}
            for c in message.tool_calls or []
        ]
        reasoning = getattr(message, "reasoning_content", None) or ""
        return message.content or "", reasoning, calls
    content, reasoning, parts = "", "", {}  # type: ignore[var-annotated]
    for chunk in client.chat.completions.create(**common, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        reasoning += getattr(delta, "reasoning_content", None) or ""
        for call in delta.tool_calls or []:
            entry = parts.setdefault(call.index, {"name": "", "arguments": ""})
            if call.function and call.function.name:
                entry["name"] += call.function.name
            if call.function and call.function.arguments:
                entry["arguments"] += call.function.arguments
    calls = [
        {"name": p["name"], "arguments": json.loads(p["arguments"])}
        for _, p in sorted(parts.items())
    ]
    return content, reasoning, calls


def _ollama(
    live: LiveServer, model: str, tools: list[Any], stream: bool, think: bool = True
) -> Answer:
    client = ollama.Client(host=live.url, timeout=PATIENCE_S)
    common: Any = {
        "model": model,
        "messages": ASK,
        "tools": tools,
        "options": {"temperature": 0},
    }
    if not think:
        common["think"] = False
    parts = [client.chat(**common)] if not stream else list(client.chat(**common, stream=True))
    content = "".join(p.message.content or "" for p in parts)
    reasoning = "".join(p.message.thinking or "" for p in parts)
    calls = [
        {"name": c.function.name, "arguments": dict(c.function.arguments)}
        for p in parts
        for c in p.message.tool_calls or []
    ]
    return content, reasoning, calls


def _anthropic(
    live: LiveServer, model: str, tools: list[Any], stream: bool, think: bool = True
) -> Answer:
    client = anthropic.Anthropic(base_url=live.url, api_key="x", max_retries=0)
    tools = [
        {
            "name": t["function"]["name"],
            "description": t["function"].get("description", ""),
            "input_schema": t["function"].get("parameters") or {"type": "object"},
        }
        for t in tools
    ]
    common: Any = {"model": model, "messages": ASK, "tools": tools, "max_tokens": 4096}
    if not think:
        common["thinking"] = {"type": "disabled"}
    if stream:
        with client.messages.stream(**common) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**common)
    content = "".join(b.text for b in message.content if b.type == "text")
    reasoning = "".join(b.thinking for b in message.content if b.type == "thinking")
    calls = [
        {"name": b.name, "arguments": dict(b.input)}  # type: ignore[call-overload]
        for b in message.content
        if b.type == "tool_use"
    ]
    return content, reasoning, calls


def _responses(
    live: LiveServer, model: str, tools: list[Any], stream: bool, think: bool = True
) -> Answer:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0)
    tools = [{"type": "function", **t["function"]} for t in tools]
    common: Any = {"model": model, "input": ASK, "tools": tools, "temperature": 0}
    if not think:
        common["reasoning"] = {"effort": "none"}
    if stream:
        with client.responses.stream(**common) as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(**common)
    content, reasoning, calls = "", "", []
    for item in response.output:
        if item.type == "message":
            content += "".join(getattr(p, "text", "") for p in item.content)
        elif item.type == "reasoning":
            reasoning += "".join(getattr(p, "text", "") for p in item.content or [])
        elif item.type == "function_call":
            calls.append({"name": item.name, "arguments": json.loads(item.arguments)})
    return content, reasoning, calls


DIALECTS = {
    "openai": _openai,
    "ollama": _ollama,
    "anthropic": _anthropic,
    "responses": _responses,
}
