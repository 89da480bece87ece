"""Hostile requests for every route of every dialect of `localrun serve`, made by a seeded
generator (`make_request`).

Each request starts from a valid body for its route and replaces one to three fields (or fields
of its options, messages, tools and schemas) with hostile values: wrong types, huge and negative
numbers, deep nesting, lone surrogates, oversized strings, the audit's hostile JSON schemas and
regular expressions; or one tokenize-shaped request (/tokenize with pieces, count_tokens,
/detokenize, a chat) over megabytes of CJK text, thousands of special tokens or a million
token ids. fuzzlib.checks says whether an answer to one is sound.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from typing import Any

__all__ = ["DETOKENIZE_MOST", "GET_ROUTES", "POST_ROUTES", "Request", "make_request"]

Body = dict[str, Any]


def _deep(depth: int) -> Any:
    value: Any = "x"
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


def _schema(**extra: Any) -> Body:
    return {"type": "object", "properties": {"a": {"type": "string", **extra}}, "required": ["a"]}


HOSTILE_SCHEMAS = [
    _schema(pattern="^a{0,30000}$"),
    _schema(pattern="^((a{0,1000}){0,1000})$"),
    _schema(pattern="^(a?){0,1000}$"),
    _schema(pattern="(("),
    _schema(pattern="^" + "(a|b)?" * 400 + "$"),
    _schema(enum=[f"v{i}" for i in range(20_000)]),
    _schema(maxLength=10**9),
    _schema(minLength=-5),
    {"type": "array", "items": _deep(300)},
    {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}},
    {"type": "object", "properties": {"a": {"type": "nonsense"}}},
    {"anyOf": [_schema(pattern="^a{0,999}$")] * 50},
    {},
    {"type": "string", "format": "date-time"},
]

VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**31,
    2**63,
    -(2**63),
    10**40,
    1e308,
    -1e308,
    0.5,
    "",
    "x",
    "\ud800",
    "x" * 100_000,
    "../../etc/passwd",
    "sha256:" + "0" * 64,
    [],
    {},
    [None],
    {"": None},
    _deep(200),
    ["x"] * 5000,
    {f"k{i}": i for i in range(2000)},
]

OPTIONS = {
    "num_ctx": [1, 2, 3, 64, 2**24, 2**31, -1, 0],
    "num_predict": [-2, -1, 0, 1, 2**31, 10**12],
    "temperature": [-1, 0, 1e308, "hot"],
    "top_k": [-1, 0, 2**40],
    "top_p": [-1, 2, 0],
    "min_p": [-1, 2],
    "seed": [-1, 2**64, "s"],
    "stop": [[""], ["a"] * 5000, "x" * 100_000, [None]],
    "repeat_last_n": [-2, 2**31],
    "num_gpu": [10**9, -5],
    "num_thread": [0, 4096, -1],
    "num_batch": [0, 2**31],
    "mirostat": [3, -1],
    "typical_p": [-1],
    "presence_penalty": [1e308],
    "speculate": ["draft", "sometimes", "", 1, True],
    "draft_num_predict": [-1, 0, 257, 2**31, "x"],
}


def _messages(rng: random.Random) -> list[Body]:
    choice = rng.randrange(8)
    if choice == 0:
        return [{"role": "user", "content": rng.choice(VALUES)}]
    if choice == 1:
        return [{"role": rng.choice(["system", "tool", "x", "", None]), "content": "hi"}]
    if choice == 2:
        depth = rng.choice([10, 950])
        call = {"function": {"name": "f", "arguments": "[" * depth + "]" * depth}}
        return [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "ok"},
        ]
    if choice == 3:
        return [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "x"}]}]
    if choice == 4:
        return [{"role": "user", "content": "hi", "images": ["not base64!"]}]
    if choice == 5:
        return [{"role": "user", "content": "hi"}] * rng.choice([1, 200, 3000])
    if choice == 6:
        return rng.choice(VALUES)  # type: ignore[no-any-return]
    return [{"role": "user", "content": "hi"}]


def _tools(rng: random.Random) -> Any:
    parameters = rng.choice([*HOSTILE_SCHEMAS, rng.choice(VALUES)])
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    return rng.choice([[tool], [tool] * 200, rng.choice(VALUES), [{"type": "x"}]])


# LOCALRUN_MAX_DETOKENIZE_TOKENS's default: a longer list is refused before any work.
DETOKENIZE_MOST = 262_144


@dataclass
class Request:
    method: str
    path: str
    body: Any  # JSON-able, or bytes sent as they are

    def describe(self) -> str:
        text = self.body if isinstance(self.body, bytes) else json.dumps(self.body)[:300]
        return f"{self.method} {self.path} {text!r}"[:400]


def _base(path: str, model: str) -> Body:
    chat = [{"role": "user", "content": "hi"}]
    return {
        "/api/generate": {"model": model, "prompt": "hi", "stream": False},
        "/api/chat": {"model": model, "messages": chat, "stream": False},
        "/api/embed": {"model": model, "input": "hi"},
        "/api/embeddings": {"model": model, "prompt": "hi"},
        "/api/show": {"model": model},
        "/api/create": {"model": "fuzzed", "from": model, "stream": False},
        "/api/copy": {"source": model, "destination": "fuzz-copy"},
        "/api/pull": {"model": "no-such-model-anywhere", "stream": False},
        "/v1/chat/completions": {"model": model, "messages": chat, "max_tokens": 8},
        "/v1/completions": {"model": model, "prompt": "hi", "max_tokens": 8},
        "/v1/embeddings": {"model": model, "input": "hi"},
        "/v1/responses": {"model": model, "input": "hi", "max_output_tokens": 8},
        "/v1/responses/input_tokens": {"model": model, "input": "hi"},
        "/v1/messages": {"model": model, "messages": chat, "max_tokens": 8},
        "/v1/messages/count_tokens": {"model": model, "messages": chat},
        "/tokenize": {"model": model, "content": "hi"},
        "/detokenize": {"model": model, "tokens": [1, 2]},
        "/infill": {"model": model, "input_prefix": "a", "input_suffix": "b", "n_predict": 4},
        "/v1/systemone": {
            "model": model,
            "state": "hi",
            "questions": {
                "q": {"type": "choice", "instructions": "hi", "criteria": {"a": None, "b": "x"}}
            },
        },
    }[path]


POST_ROUTES = [
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
    "/api/create",
    "/api/copy",
    "/api/pull",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/responses/input_tokens",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/tokenize",
    "/detokenize",
    "/infill",
    "/v1/systemone",
]
GET_ROUTES = [
    "/",
    "/api/version",
    "/api/tags",
    "/api/ps",
    "/v1/models",
    "/v1/models/{x}",
    "/v1/responses/{x}",
    "/v1/responses/{x}/input_items",
    "/health",
    "/metrics",
]
_PATH_VALUES = ["x", "resp_" + "0" * 24, "..%2F..%2Fetc", "%00", "a" * 5000, "tiny"]
_FIELDS = [
    "model",
    "prompt",
    "messages",
    "options",
    "format",
    "stream",
    "keep_alive",
    "tools",
    "tool_choice",
    "response_format",
    "max_tokens",
    "n",
    "logprobs",
    "top_logprobs",
    "stop",
    "think",
    "system",
    "template",
    "raw",
    "context",
    "input",
    "text",
    "reasoning",
    "instructions",
    "previous_response_id",
    "background",
    "include",
    "suffix",
    "images",
    "truncate",
    "dimensions",
    "seed",
    "temperature",
    "stream_options",
    "speculate",
    "draft_num_predict",
    "thinking",
    "parameters",
    "modelfile",
    "files",
    "adapters",
    "quantize",
    "state",
    "questions",
]


@functools.cache
def _hostile_text(kind: str) -> str:
    """Texts past the tokenizing bounds (made once): megabytes of CJK, thousands of special
    tokens (llama.cpp reads them in quadratic time)."""
    cjk = "".join(chr(0x4E00 + i % 2000) for i in range(1 << 20))  # 3 MB in UTF-8
    return {
        "cjk_1mb": cjk[: 1 << 18],
        "cjk_3mb": cjk,
        "specials": "<|im_start|><|endoftext|>" * 20_000,
    }[kind]


def _tokenize_request(rng: random.Random, model: str) -> Request:
    """A tokenize-shaped request over a hostile text or token list."""
    text = _hostile_text(rng.choice(["cjk_1mb", "cjk_3mb", "specials"]))
    path = rng.choice(["/tokenize", "/v1/messages/count_tokens", "/detokenize", "/api/chat"])
    if path == "/tokenize":
        body: Body = {"model": model, "content": text, "with_pieces": rng.random() < 0.5}
    elif path == "/detokenize":
        # Below LOCALRUN_MAX_DETOKENIZE_TOKENS, just past it (a 400 before any work), and the
        # millions that once cost a runner its life.
        count = rng.choice([10**5, 262_145, 10**6, 3 * 10**6])
        body = {"model": model, "tokens": [rng.randrange(1, 300)] * count}
    else:
        body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": False}
    return Request("POST", path, body)


def make_request(rng: random.Random, model: str) -> Request:
    """One hostile request for a route chosen by `rng`."""
    if rng.random() < 0.1:
        path = rng.choice(GET_ROUTES).replace("{x}", rng.choice(_PATH_VALUES))
        return Request(rng.choice(["GET", "DELETE"]), path, None)
    path = rng.choice(POST_ROUTES)
    body: Any = _base(path, model)
    shape = rng.randrange(20)
    if shape == 0:
        return Request("POST", path, rng.choice([b"", b"{", b"[]", b"null", b"\xff\xfe", b"1e999"]))
    if shape == 1:
        return Request("POST", path, b"[" * 100_000 + b"]" * 100_000)
    if shape == 2:
        return _tokenize_request(rng, model)
    for _ in range(rng.randint(1, 3)):
        field = rng.choice(_FIELDS)
        kind = rng.randrange(6)
        if kind == 0:
            body[field] = rng.choice(VALUES)
        elif kind == 1:
            name = rng.choice(list(OPTIONS))
            body.setdefault("options", {})
            if isinstance(body["options"], dict):
                body["options"][name] = rng.choice(OPTIONS[name] + VALUES[:8])
        elif kind == 2:
            schema = rng.choice(HOSTILE_SCHEMAS)
            target = rng.choice(["format", "response_format", "text"])
            if target == "response_format":
                body[target] = {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": schema},
                }
            elif target == "text":
                body[target] = {"format": {"type": "json_schema", "name": "x", "schema": schema}}
            else:
                body[target] = schema
        elif kind == 3:
            body["messages"] = _messages(rng)
        elif kind == 4:
            body["tools"] = _tools(rng)
            body["tool_choice"] = rng.choice(["required", "auto", {"type": "function"}, None])
        else:
            body["stream"] = True
    return Request("POST", path, body)
