"""What a request asked for that no schema can see, each as its specification describes the
field: a check by name (cases.Case.asked) of an answer, every finding (where, what)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Finding = tuple[str, str]


def _two_choices(
    body: Any, request: dict[str, Any], events: list[Any], names: dict[str, str]
) -> list[Finding]:
    count = len(body.get("choices") or [])
    return [] if count == 2 else [("$.choices", f"{count} choices for n=2")]


def _finish_length(
    body: Any, request: dict[str, Any], events: list[Any], names: dict[str, str]
) -> list[Finding]:
    reason = (body.get("choices") or [{}])[0].get("finish_reason")
    if reason == "length":
        return []
    return [("$.choices[0].finish_reason", f"{reason!r} for an answer cut by max_tokens")]


def _incomplete(
    body: Any, request: dict[str, Any], events: list[Any], names: dict[str, str]
) -> list[Finding]:
    reason = (body.get("incomplete_details") or {}).get("reason")
    if body.get("status") == "incomplete" and reason == "max_output_tokens":
        return []
    shown = f"status {body.get('status')!r}, incomplete_details.reason {reason!r}"
    return [("$.status", f"{shown} for an answer cut by max_output_tokens")]


def _logprobs(
    body: Any, request: dict[str, Any], events: list[Any], names: dict[str, str]
) -> list[Finding]:
    """include: ["message.output_text.logprobs"]: the text's tokens with their logprobs."""
    found: list[Finding] = []
    if events:
        for i, event in enumerate(events):
            if not isinstance(event, dict) or event.get("type") != "response.output_text.delta":
                continue
            if event.get("delta") and not event.get("logprobs"):
                found.append((f"event {i} (response.output_text.delta) $.logprobs", "empty"))
        return found[:1]
    for i, item in enumerate(body.get("output") or []):
        for j, part in enumerate(item.get("content") or []):
            if part.get("type") == "output_text" and part.get("text") and not part.get("logprobs"):
                found.append(
                    (f"$.output[{i}].content[{j}].logprobs", "empty for a text asked with them")
                )
    return found


def _background(
    body: Any, request: dict[str, Any], events: list[Any], names: dict[str, str]
) -> list[Finding]:
    if body.get("background") is True:
        return []
    return [("$.background", f"{body.get('background')!r} for a request with background: true")]


def _stop_sequence(
    body: Any, request: dict[str, Any], events: list[Any], names: dict[str, str]
) -> list[Finding]:
    wanted = request["stop_sequences"][0]
    if body.get("stop_reason") == "stop_sequence" and body.get("stop_sequence") == wanted:
        return []
    shown = f"stop_reason {body.get('stop_reason')!r}, stop_sequence {body.get('stop_sequence')!r}"
    return [("$.stop_reason", f"{shown} where the answer met {wanted!r}")]


def _max_tokens(
    body: Any, request: dict[str, Any], events: list[Any], names: dict[str, str]
) -> list[Finding]:
    if body.get("stop_reason") == "max_tokens":
        return []
    return [("$.stop_reason", f"{body.get('stop_reason')!r} for an answer cut by max_tokens")]


def _cancelled(
    body: Any, request: dict[str, Any], events: list[Any], names: dict[str, str]
) -> list[Finding]:
    """A background response cancelled while it runs (or waits) reads as cancelled."""
    if body.get("status") == "cancelled":
        return []
    return [("$.status", f"{body.get('status')!r} for a response cancelled while it ran")]


def _usage_adds_up(
    body: Any, request: dict[str, Any], events: list[Any], names: dict[str, str]
) -> list[Finding]:
    """Anthropic's Usage: "Total input tokens in a request is the summation of `input_tokens`,
    `cache_creation_input_tokens`, and `cache_read_input_tokens`", against count_tokens' "total
    number of tokens across the provided list of messages, system prompt, and tools" for the
    same request (`{counted}`)."""
    usage = body.get("usage") or {}
    parts = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    total = sum(usage.get(p) or 0 for p in parts)
    counted = int(names["counted"]) if names.get("counted", "").isdigit() else None
    if counted is None:
        return [("$.usage", "nothing to add up against: count_tokens gave no count before it")]
    if total == counted:
        return []
    shown = " + ".join(str(usage.get(p) or 0) for p in parts)
    return [("$.usage", f"{shown} = {total} input tokens, where count_tokens counts {counted}")]


ASKED: dict[str, Callable[[Any, dict[str, Any], list[Any], dict[str, str]], list[Finding]]] = {
    "two choices": _two_choices,
    "finish length": _finish_length,
    "incomplete": _incomplete,
    "logprobs": _logprobs,
    "background": _background,
    "stop sequence": _stop_sequence,
    "max_tokens": _max_tokens,
    "usage adds up": _usage_adds_up,
    "cancelled": _cancelled,
}
