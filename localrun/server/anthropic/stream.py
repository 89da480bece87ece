"""A Messages answer in Anthropic's shapes: the Message, its usage and blocks, and its events.

Usage counts the prompt in three parts that add up to count_tokens' figure, as Anthropic's do.
`cache_read_input_tokens` is what the KV cache already held (an earlier request's prefix, or the
disk prompt cache's), and `input_tokens` what was evaluated now. `cache_creation_input_tokens`
is 0: localrun keeps every prompt it reads for the next request by itself. No client asks or
pays for a cache write (`cache_control` changes nothing), so no part of the prompt is one.

Requests of the beta API (`POST /v1/messages?beta=true`, the SDK's `client.beta.messages`, its
tool runner's) get the beta Message's extra fields. `diagnostics` and `context_management` are
null (localrun compares no earlier request and edits no context), usage's `iterations` null (one
sampling pass) and `speed` "standard".
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from localrun.errors import LocalrunError
from localrun.server.errors import body_of, refused, unexpected
from localrun.server.generation import Generation, runs
from localrun.server.streaming import sse

# Where the inference ran (Anthropic's usage says "global" or "us"): on this machine, which is
# neither; Anthropic's own records say "not_available" for a request without a geography.
INFERENCE_GEO = "not_available"
_BETA_MESSAGE = {"diagnostics": None, "context_management": None}


def stop_reason(generation: Generation) -> tuple[str, str | None]:
    """Anthropic's stop_reason and stop_sequence of a finished generation."""
    if generation.tool_calls:
        return "tool_use", None
    if generation.done_reason == "length":
        return "max_tokens", None
    if generation.stop_sequence is not None:
        return "stop_sequence", generation.stop_sequence
    return "end_turn", None


def _counts(generation: Generation, beta: bool) -> dict[str, Any]:
    """The counts a Message's usage and a message_delta's share."""
    t = generation.stream.timings
    cached = t.cached_tokens
    counts = {
        "input_tokens": max(0, generation.prompt_count - cached),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": t.eval_tokens,
        "output_tokens_details": None,
        "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
    }
    return {**counts, "iterations": None} if beta else counts


def usage(generation: Generation, beta: bool = False) -> dict[str, Any]:
    """A Message's usage.

    Before the end it holds the prompt, every part counted as input: the cached part is known only
    at the end.
    """
    out = {
        **_counts(generation, beta),
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "service_tier": "standard",
        "inference_geo": INFERENCE_GEO,
    }
    return {**out, "speed": "standard"} if beta else out


def head(message_id: str, model: str) -> dict[str, Any]:
    """A Message's fields before its content."""
    return {"id": message_id, "type": "message", "role": "assistant", "model": model}


def ending(generation: Generation) -> dict[str, Any]:
    """The fields that say how a Message ended (a message_delta's `delta`)."""
    reason, sequence = stop_reason(generation)
    return {
        "stop_reason": reason,
        "stop_sequence": sequence,
        "stop_details": None,  # a refusal's details: localrun's models have no classifier
        "container": None,  # the code execution tool's container: localrun runs none
    }


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text, "citations": None}


def thinking_block(thinking: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": thinking, "signature": ""}


def tool_blocks(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [
        {
            "type": "tool_use",
            "id": "toolu_" + call["id"].removeprefix("call_"),
            "name": call["name"],
            "input": call["arguments"],
            "caller": {"type": "direct"},  # the model called it (not a code execution tool)
        }
        for call in calls or []
    ]


def message(generation: Generation, message_head: dict[str, Any], beta: bool) -> dict[str, Any]:
    """The whole Message of a collected generation (`beta`: the beta API's)."""
    content: list[dict[str, Any]] = []
    if generation.thinking:
        content.append(thinking_block(generation.thinking))
    tools = tool_blocks(generation.tool_calls)
    if generation.text or not tools:
        content.append(text_block(generation.text))
    return {
        **message_head,
        "content": content + tools,
        **ending(generation),
        **(_BETA_MESSAGE if beta else {}),
        "usage": usage(generation, beta),
    }


async def events(
    generation: Generation, message_head: dict[str, Any], request_id: str | None, beta: bool
) -> AsyncIterator[bytes]:
    """Anthropic's stream: a content block per run of thinking or text, then the tool calls."""
    opening = {
        **message_head,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "stop_details": None,
        "container": None,
        **(_BETA_MESSAGE if beta else {}),
    }
    # The prompt's count is known once its first piece came (start() awaits it), as
    # Anthropic's API and llama-server tell it here; the answer's count comes at the end.
    yield _event("message_start", message={**opening, "usage": usage(generation, beta)})
    blocks = _Blocks()
    try:
        async with contextlib.aclosing(runs(generation)) as pieces:
            async for run in pieces:
                if run.kind == "calls":
                    out = blocks.tools(tool_blocks(run.calls))
                elif run.kind == "late":
                    out = blocks.end(tool_blocks(run.calls))
                else:
                    out = blocks.delta(run.kind, run.text)
                for event in out:
                    yield event
        beta_fields = {"context_management": None} if beta else {}
        counts = _counts(generation, beta)
        yield _event("message_delta", delta=ending(generation), usage=counts, **beta_fields)
        yield _event("message_stop")
    except Exception as exc:
        yield failed(exc, "/v1/messages", request_id)


def failed(exc: Exception, path: str, request_id: str | None) -> bytes:
    """The `error` event that ends a stream broken by `exc` (logged, a bug as a bug)."""
    if isinstance(exc, LocalrunError):
        refused("POST", f"{path} (streamed)", exc)
        error = exc
    else:
        error = unexpected(exc, f"a streamed answer of {path}")
    return sse(body_of(error, "anthropic", request_id), event="error")


def _event(kind: str, **fields: Any) -> bytes:
    return sse({"type": kind, **fields}, event=kind)


class _Blocks:
    """The content blocks of one stream, numbered as they open; methods return the events.

    One block is open at a time (text or thinking), and a piece of another kind closes it.
    """

    def __init__(self) -> None:
        self.index = -1
        self.open_kind: str | None = None  # "text" or "thinking": the block being streamed

    def delta(self, kind: str, text: str) -> list[bytes]:
        """A piece of `kind`, opening a block of that kind if need be."""
        out = self.switch(kind) if self.open_kind != kind else []
        delta = (
            {"type": "text_delta", "text": text}
            if kind == "text"
            else {"type": "thinking_delta", "thinking": text}
        )
        out.append(_event("content_block_delta", index=self.index, delta=delta))
        return out

    def switch(self, kind: str | None) -> list[bytes]:
        """Close the open block, if any, and open one of `kind` (None: none)."""
        out = []
        if self.open_kind is not None:
            out.append(_event("content_block_stop", index=self.index))
        self.open_kind = kind
        if kind is not None:
            self.index += 1
            block = text_block("") if kind == "text" else thinking_block("")
            out.append(_event("content_block_start", index=self.index, content_block=block))
        return out

    def end(self, tools: list[dict[str, Any]]) -> list[bytes]:
        """Close the last block, then add the tool_use blocks not streamed yet.

        An empty answer is still one empty text block.
        """
        empty = self.index < 0 and not tools
        out = self.switch("text") if self.open_kind is None and empty else []
        return out + self.tools(tools) + self.switch(None)

    def tools(self, tools: list[dict[str, Any]]) -> list[bytes]:
        """A tool_use block per call, as soon as it is read.

        The open block closes first, then the call's input comes as an input_json_delta.
        """
        if not tools:
            return []
        out = self.switch(None)
        for tool in tools:
            self.index += 1
            out.append(
                _event("content_block_start", index=self.index, content_block={**tool, "input": {}})
            )
            arguments = json.dumps(tool["input"], ensure_ascii=False)
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(_event("content_block_delta", index=self.index, delta=delta))
            out.append(_event("content_block_stop", index=self.index))
        return out
