"""The Responses API's response object (`Answer`) and its output items, as OpenAI writes them.

Output items: a `reasoning` item (a thinking model's reasoning), a `message` with one
`output_text` part, and a `function_call` (with its `namespace` for a namespaced tool) or a
`custom_tool_call` per tool call. `assistant_message` turns them back into the conversation's
next turn, which `response_store` keeps for `previous_response_id`.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from localrun.errors import BadRequestError
from localrun.server.body import Body
from localrun.server.generation import Generation
from localrun.server.responses import tools as responses_tools
from localrun.server.responses.store import new_id


def item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def _metadata(body: Body) -> dict[str, str]:
    """OpenAI's metadata, bounded as OpenAI's API bounds it.

    It holds at most 16 pairs, keys of at most 64 characters, and text values of at most 512.
    """
    metadata = body.get("metadata", dict) or {}
    if len(metadata) > 16:
        raise BadRequestError("metadata holds more than 16 pairs")
    for key, value in metadata.items():
        if len(key) > 64:
            raise BadRequestError(f"metadata key {key[:64]!r}... is longer than 64 characters")
        if not isinstance(value, str) or len(value) > 512:
            raise BadRequestError(f"metadata[{key!r}] must be text of at most 512 characters")
    return metadata


class Answer:
    """The response object of one request, built up as its answer arrives."""

    def __init__(self, body: Body, model: str, store: bool, previous: str | None) -> None:
        text = body.get("text", dict) or {}
        self.obj: dict[str, Any] = {
            "id": new_id(),
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "background": False,
            "completed_at": None,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions", str),
            "max_output_tokens": body.get("max_output_tokens", int),
            "metadata": _metadata(body),
            "model": model,
            "output": [],
            "parallel_tool_calls": body.flag("parallel_tool_calls", True),
            "previous_response_id": previous,
            "reasoning": {
                "effort": (body.get("reasoning", dict) or {}).get("effort"),
                "summary": None,
            },
            "store": store,
            "temperature": body.get("temperature", (int, float), 1.0),
            "text": {"format": text.get("format") or {"type": "text"}},
            "tool_choice": body.data.get("tool_choice") or "auto",
            "tools": responses_tools.echoed(body.get("tools", list) or []),
            "top_logprobs": body.get("top_logprobs", int),
            "top_p": body.get("top_p", (int, float), 1.0),
            "truncation": "disabled",
            "usage": None,
            "user": body.get("user", str),
        }

    def finish(self, generation: Generation) -> None:
        """The answer's usage and its status: `incomplete` where the token budget cut it."""
        self.obj["usage"] = usage_of(generation)
        if cut(generation):
            self.obj["status"] = "incomplete"
            self.obj["incomplete_details"] = {"reason": "max_output_tokens"}
        else:
            self.obj["status"] = "completed"
            self.obj["completed_at"] = int(time.time())

    @property
    def terminal(self) -> str:
        """The last event of the answer's stream, as its status says."""
        return "response.incomplete" if self.obj["status"] == "incomplete" else "response.completed"


def cut(generation: Generation) -> bool:
    """Whether the token budget (max_output_tokens, or the context) ended the answer."""
    return generation.done_reason == "length" and not generation.tool_calls


def usage_of(generation: Generation) -> dict[str, Any]:
    """OpenAI's usage of an answer.

    `cached_tokens` are the prompt's tokens read from the runner's KV cache or the disk prompt
    cache. `cache_write_tokens` are the prompt's other tokens, read now, which the KV cache keeps
    after the answer for the next request that starts with them (a conversation's next turn). It
    is 0 where all were cached.
    """
    t = generation.stream.timings
    prompt = generation.prompt_count
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": t.cached_tokens,
            "cache_write_tokens": max(0, prompt - t.cached_tokens),
        },
        "output_tokens": t.eval_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + t.eval_tokens,
    }


def reasoning_item(text: str, status: str = "completed", item: str = "") -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": item or item_id("rs"),
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": status,
    }


def text_part(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def message_item(
    text: str | None,
    status: str = "completed",
    item: str = "",
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item or item_id("msg"),
        "status": status,
        "role": "assistant",
        "content": [] if text is None else [text_part(text, logprobs)],
    }


def assistant_message(output: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer as a turn of the stored conversation."""
    text = "".join(
        part["text"] for item in output if item["type"] == "message" for part in item["content"]
    )
    message: dict[str, Any] = {"role": "assistant", "content": text}
    calls = [
        {
            "id": item["call_id"],
            "type": "function",
            "function": {
                "name": responses_tools.model_name(item.get("namespace"), item["name"]),
                "arguments": {"input": item["input"]}
                if item["type"] == "custom_tool_call"
                else json.loads(item["arguments"]),
            },
        }
        for item in output
        if item["type"] in ("function_call", "custom_tool_call")
    ]
    if calls:
        message["tool_calls"] = calls
    return message
