"""The request set: every route localrun serves in the three dialects, each asked as its
official client asks it (the body the SDK would send, its headers), greedy and short.

A body names its models by role, filled in when the set is run (`Models`): `{chat}` a chat
model (the SmolLM2 starter), `{tools}` one that answers with a call of get_weather, `{think}`
one that reasons before it answers, `{text}` one that says TEXT, `{embed}` one that embeds.
`{stored}` is the id of the response an earlier request stored, `{counted}` the prompt's size
count_tokens gave (`capture`). `asked` names the checks of what the request asked for that a
schema cannot see (asked.ASKED).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SAY = "Say hello to the world in one short sentence."
LONG = "Write a long story about a dragon who learns to fly."
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
CHAT_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": WEATHER_PARAMETERS,
    },
}
RESPONSES_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": WEATHER_PARAMETERS,
    "strict": False,
}
ANTHROPIC_TOOL = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": WEATHER_PARAMETERS,
}
OLLAMA_TOOL = CHAT_TOOL
SCHEMA = {
    "type": "object",
    "properties": {"greeting": {"type": "string"}},
    "required": ["greeting"],
    "additionalProperties": False,
}
WEATHER_ASK = "What is the weather in Paris?"
TEXT = "The weather is sunny. Done."  # what `{text}` answers: "sunny" is a stop sequence


@dataclass(frozen=True)
class Case:
    """One request: its dialect (openai, responses, anthropic, ollama), method, path and body,
    whether a stream is expected, and what status class is expected: `ok` (2xx), an error in
    the dialect's shape, or `either` (an answer or a refusal)."""

    name: str
    dialect: str
    method: str
    path: str
    body: Any = None
    stream: bool = False
    ok: bool = True
    either: bool = False
    capture: tuple[str, str] | None = None  # (name, field): the answer's field kept as {name}
    asked: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Models:
    """The model each role is played by on the server under test."""

    chat: str = "smollm2:135m"
    tools: str = "tools"
    think: str = "thinker"
    text: str = "sayer"
    embed: str = "smollm2:135m"


def _chat(name: str, body: dict[str, Any], **kw: Any) -> Case:
    base = {"model": "{chat}", "messages": [{"role": "user", "content": SAY}], "max_tokens": 8}
    full = {**base, "temperature": 0, **body}
    return Case(
        name, "openai", "POST", "/v1/chat/completions", full, bool(full.get("stream")), **kw
    )


def _tools_chat(name: str, body: dict[str, Any]) -> Case:
    ask = [{"role": "user", "content": WEATHER_ASK}]
    return _chat(name, {"model": "{tools}", "messages": ask, "tools": [CHAT_TOOL], **body})


OPENAI = [
    _chat("chat", {}),
    _chat("chat stream", {"stream": True}),
    _chat("chat stream include_usage", {"stream": True, "stream_options": {"include_usage": True}}),
    _chat("chat n=2", {"n": 2}, asked=("two choices",)),
    _chat("chat logprobs", {"logprobs": True, "top_logprobs": 2}),
    _chat("chat stream logprobs", {"stream": True, "logprobs": True, "top_logprobs": 2}),
    _tools_chat("chat tools", {"tool_choice": "auto", "max_tokens": 64}),
    _tools_chat("chat tools stream", {"tool_choice": "auto", "max_tokens": 64, "stream": True}),
    _tools_chat(
        "chat tool_choice named",
        {
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "max_tokens": 64,
        },
    ),
    _chat(
        "chat response_format json_schema",
        {
            "max_tokens": 24,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "greeting", "schema": SCHEMA, "strict": True},
            },
        },
    ),
    _chat("chat reasoning", {"model": "{think}", "max_tokens": 32, "reasoning_effort": "low"}),
    _chat(
        "chat max_tokens cut",
        {"messages": [{"role": "user", "content": LONG}], "max_tokens": 3},
        asked=("finish length",),
    ),
    _chat(
        "chat stream max_tokens cut",
        {"messages": [{"role": "user", "content": LONG}], "max_tokens": 3, "stream": True},
    ),
    Case(
        "completion",
        "openai",
        "POST",
        "/v1/completions",
        {"model": "{chat}", "prompt": SAY, "max_tokens": 8, "temperature": 0},
    ),
    Case(
        "completion stream",
        "openai",
        "POST",
        "/v1/completions",
        {"model": "{chat}", "prompt": SAY, "max_tokens": 8, "temperature": 0, "stream": True},
        stream=True,
    ),
    Case(
        "completion echo logprobs",
        "openai",
        "POST",
        "/v1/completions",
        {"model": "{chat}", "prompt": SAY, "max_tokens": 4, "echo": True, "logprobs": 2},
    ),
    Case(
        "embeddings",
        "openai",
        "POST",
        "/v1/embeddings",
        {"model": "{embed}", "input": ["a", "b"], "encoding_format": "float"},
    ),
    Case(
        "embeddings base64",
        "openai",
        "POST",
        "/v1/embeddings",
        {"model": "{embed}", "input": "a", "encoding_format": "base64"},
    ),
    Case("models list", "openai", "GET", "/v1/models"),
    Case("models retrieve", "openai", "GET", "/v1/models/{chat}"),
    _chat("error: unknown model", {"model": "no-such-model"}, ok=False),
    Case(
        "error: bad body", "openai", "POST", "/v1/chat/completions", {"model": "{chat}"}, ok=False
    ),
    Case("error: unknown path", "openai", "GET", "/v1/no-such-route", ok=False),
]


def _resp(name: str, body: dict[str, Any], **kw: Any) -> Case:
    full = {"model": "{chat}", "input": SAY, "max_output_tokens": 16, "temperature": 0, **body}
    return Case(name, "responses", "POST", "/v1/responses", full, bool(full.get("stream")), **kw)


RESPONSES = [
    _resp("response", {}),
    _resp("response stream", {"stream": True}),
    _resp(
        "response max_output_tokens cut",
        {"input": LONG, "max_output_tokens": 3},
        asked=("incomplete",),
    ),
    _resp(
        "response stream max_output_tokens cut",
        {"input": LONG, "max_output_tokens": 3, "stream": True},
    ),
    _resp(
        "response tools",
        {
            "model": "{tools}",
            "input": WEATHER_ASK,
            "tools": [RESPONSES_TOOL],
            "max_output_tokens": 64,
        },
    ),
    _resp(
        "response tools stream",
        {
            "model": "{tools}",
            "input": WEATHER_ASK,
            "tools": [RESPONSES_TOOL],
            "max_output_tokens": 64,
            "stream": True,
        },
    ),
    _resp(
        "response reasoning",
        {"model": "{think}", "reasoning": {"effort": "low"}, "max_output_tokens": 32},
    ),
    _resp(
        "response reasoning stream",
        {
            "model": "{think}",
            "reasoning": {"effort": "low"},
            "max_output_tokens": 32,
            "stream": True,
        },
    ),
    _resp(
        "response text.format json_schema",
        {
            "max_output_tokens": 24,
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "greeting",
                    "schema": SCHEMA,
                    "strict": True,
                }
            },
        },
    ),
    _resp(
        "response include logprobs",
        {"include": ["message.output_text.logprobs"], "top_logprobs": 2},
        asked=("logprobs",),
    ),
    _resp(
        "response stream include logprobs",
        {"include": ["message.output_text.logprobs"], "top_logprobs": 2, "stream": True},
        asked=("logprobs",),
    ),
    _resp("response store", {"store": True}, capture=("stored", "id")),
    Case("response retrieve", "responses", "GET", "/v1/responses/{stored}"),
    Case("response input_items", "responses", "GET", "/v1/responses/{stored}/input_items"),
    _resp(
        "response previous_response_id", {"previous_response_id": "{stored}", "input": "And again."}
    ),
    Case("response delete", "responses", "DELETE", "/v1/responses/{stored}"),
    Case("response retrieve deleted", "responses", "GET", "/v1/responses/{stored}", ok=False),
    Case(
        "response input_tokens",
        "responses",
        "POST",
        "/v1/responses/input_tokens",
        {"model": "{chat}", "input": SAY},
    ),
    _resp(
        "response background",
        {"background": True, "store": True},
        capture=("background", "id"),
        asked=("background",),
    ),
    Case(
        "response background replayed",
        "responses",
        "GET",
        "/v1/responses/{background}?stream=true&starting_after=1",
        stream=True,
    ),
    Case(
        "response background cancel finished",
        "responses",
        "POST",
        "/v1/responses/{background}/cancel",
    ),
    _resp(
        "response background long",
        {"background": True, "store": True, "input": LONG, "max_output_tokens": 400},
        capture=("running", "id"),
    ),
    Case(
        "response background cancel",
        "responses",
        "POST",
        "/v1/responses/{running}/cancel",
        asked=("cancelled",),
    ),
    _resp("error: unknown model", {"model": "no-such-model"}, ok=False),
    _resp("error: bad body", {"input": 5}, ok=False),
    Case("error: unknown path", "responses", "GET", "/v1/responses/resp_no_such_id", ok=False),
]

ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "unused"}


def _msg(name: str, body: dict[str, Any], **kw: Any) -> Case:
    ask = [{"role": "user", "content": SAY}]
    full = {"model": "{chat}", "max_tokens": 16, "messages": ask, "temperature": 0, **body}
    stream = bool(full.get("stream"))
    return Case(
        name, "anthropic", "POST", "/v1/messages", full, stream, headers=ANTHROPIC_HEADERS, **kw
    )


def _tools_msg(name: str, body: dict[str, Any]) -> Case:
    ask = [{"role": "user", "content": WEATHER_ASK}]
    return _msg(
        name,
        {"model": "{tools}", "messages": ask, "tools": [ANTHROPIC_TOOL], "max_tokens": 64, **body},
    )


def _anthropic_get(name: str, path: str, **kw: Any) -> Case:
    return Case(name, "anthropic", "GET", path, headers=ANTHROPIC_HEADERS, **kw)


ANTHROPIC = [
    _msg("message", {}),
    _msg("message stream", {"stream": True}),
    _tools_msg("message tools", {}),
    _tools_msg("message tools stream", {"stream": True}),
    _tools_msg(
        "message tool_choice tool", {"tool_choice": {"type": "tool", "name": "get_weather"}}
    ),
    _tools_msg("message tool_choice any", {"tool_choice": {"type": "any"}}),
    _msg(
        "message thinking",
        {
            "model": "{think}",
            "max_tokens": 2048,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
    ),
    _msg(
        "message thinking stream",
        {
            "model": "{think}",
            "max_tokens": 2048,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "stream": True,
        },
    ),
    _msg(
        "message stop_sequences",
        {"model": "{text}", "max_tokens": 64, "stop_sequences": ["sunny"]},
        asked=("stop sequence",),
    ),
    _msg(
        "message max_tokens cut",
        {"messages": [{"role": "user", "content": LONG}], "max_tokens": 3},
        asked=("max_tokens",),
    ),
    _msg(
        "message stream max_tokens cut",
        {"messages": [{"role": "user", "content": LONG}], "max_tokens": 3, "stream": True},
    ),
    Case(
        "count_tokens",
        "anthropic",
        "POST",
        "/v1/messages/count_tokens",
        {"model": "{chat}", "messages": [{"role": "user", "content": SAY}]},
        capture=("counted", "input_tokens"),
        headers=ANTHROPIC_HEADERS,
    ),
    # The first message's prompt, asked again: read from the cache this time.
    _msg("message usage adds up", {}, asked=("usage adds up",)),
    _anthropic_get("models list", "/v1/models"),
    _anthropic_get("models retrieve", "/v1/models/{chat}"),
    _msg("error: unknown model", {"model": "no-such-model"}, ok=False),
    Case(
        "error: bad body",
        "anthropic",
        "POST",
        "/v1/messages",
        {"model": "{chat}", "messages": []},
        ok=False,
        headers=ANTHROPIC_HEADERS,
    ),
    Case(
        "text completion",
        "anthropic",
        "POST",
        "/v1/complete",
        {"model": "{chat}", "prompt": "\n\nHuman: hi\n\nAssistant:", "max_tokens_to_sample": 8},
        headers=ANTHROPIC_HEADERS,
    ),
    Case(
        "text completion stream",
        "anthropic",
        "POST",
        "/v1/complete",
        {
            "model": "{chat}",
            "prompt": "\n\nHuman: hi\n\nAssistant:",
            "max_tokens_to_sample": 8,
            "stream": True,
        },
        stream=True,
        headers=ANTHROPIC_HEADERS,
    ),
    Case(
        "error: unknown path",
        "anthropic",
        "POST",
        "/v1/no-such-route",
        {"model": "{chat}"},
        ok=False,
        headers=ANTHROPIC_HEADERS,
    ),
]


def _ollama(
    name: str, path: str, body: dict[str, Any], stream: bool | None = None, **kw: Any
) -> Case:
    streamed = body.get("stream", True) is not False if stream is None else stream
    return Case(name, "ollama", "POST", path, body, streamed, **kw)


OPTIONS = {"temperature": 0, "num_predict": 8}
ASK = [{"role": "user", "content": SAY}]
WEATHER = [{"role": "user", "content": WEATHER_ASK}]
# ollama-python's examples/systemone.py's questions: one of each type.
SYSTEM_ONE = {
    "team": {
        "type": "choice",
        "instructions": "Which team should handle this?",
        "criteria": {"billing": "Payments and refunds", "other": None},
    },
    "polite": {"type": "noul", "instructions": "Is it polite?"},
    "urgency": {"type": "score", "instructions": "How urgent?", "criteria": ["Low", "High"]},
}
OLLAMA = [
    _ollama(
        "chat",
        "/api/chat",
        {"model": "{chat}", "messages": ASK, "stream": False, "options": OPTIONS},
    ),
    _ollama("chat stream", "/api/chat", {"model": "{chat}", "messages": ASK, "options": OPTIONS}),
    _ollama(
        "chat tools",
        "/api/chat",
        {
            "model": "{tools}",
            "messages": WEATHER,
            "tools": [OLLAMA_TOOL],
            "stream": False,
            "options": {"temperature": 0},
        },
    ),
    _ollama(
        "chat tools stream",
        "/api/chat",
        {
            "model": "{tools}",
            "messages": WEATHER,
            "tools": [OLLAMA_TOOL],
            "options": {"temperature": 0},
        },
    ),
    _ollama(
        "chat format",
        "/api/chat",
        {
            "model": "{chat}",
            "messages": ASK,
            "format": SCHEMA,
            "stream": False,
            "options": {"temperature": 0, "num_predict": 24},
        },
    ),
    _ollama(
        "chat think",
        "/api/chat",
        {
            "model": "{think}",
            "messages": ASK,
            "think": True,
            "stream": False,
            "options": {"temperature": 0},
        },
    ),
    _ollama(
        "chat logprobs",
        "/api/chat",
        {
            "model": "{chat}",
            "messages": ASK,
            "logprobs": True,
            "top_logprobs": 2,
            "stream": False,
            "options": OPTIONS,
        },
    ),
    _ollama(
        "generate",
        "/api/generate",
        {"model": "{chat}", "prompt": SAY, "stream": False, "options": OPTIONS},
    ),
    _ollama(
        "generate stream", "/api/generate", {"model": "{chat}", "prompt": SAY, "options": OPTIONS}
    ),
    _ollama(
        "generate format",
        "/api/generate",
        {"model": "{chat}", "prompt": SAY, "format": "json", "stream": False, "options": OPTIONS},
    ),
    _ollama("embed", "/api/embed", {"model": "{embed}", "input": ["a", "b"]}, stream=False),
    _ollama("embeddings", "/api/embeddings", {"model": "{embed}", "prompt": "a"}, stream=False),
    Case("tags", "ollama", "GET", "/api/tags"),
    _ollama("show", "/api/show", {"model": "{chat}"}, stream=False),
    Case("ps", "ollama", "GET", "/api/ps"),
    Case("version", "ollama", "GET", "/api/version"),
    _ollama("pull present model", "/api/pull", {"model": "{chat}"}),
    _ollama("pull present model, not streamed", "/api/pull", {"model": "{chat}", "stream": False}),
    _ollama(
        "systemone",
        "/v1/systemone",
        {"model": "{chat}", "state": {"ticket": SAY}, "questions": SYSTEM_ONE},
        stream=False,
    ),
    _ollama(
        "error: systemone question of no type",
        "/v1/systemone",
        {"model": "{chat}", "state": SAY, "questions": {"q": {"type": "maybe"}}},
        stream=False,
        ok=False,
    ),
    _ollama(
        "error: unknown model",
        "/api/chat",
        {"model": "no-such-model", "messages": ASK, "stream": False},
        ok=False,
    ),
    _ollama(
        "error: bad body",
        "/api/chat",
        {"model": "{chat}", "messages": "hello", "stream": False},
        ok=False,
    ),
    _ollama(
        "error: unknown path", "/api/no-such-route", {"model": "{chat}"}, stream=False, ok=False
    ),
]

CASES: list[Case] = [*OPENAI, *RESPONSES, *ANTHROPIC, *OLLAMA]
