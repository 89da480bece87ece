"""The order each specification gives its streamed events, checked on events already parsed
(each a JSON object, or "[DONE]"); every finding is (where, what).

- Chat completions and completions (OpenAI's `stream` and `stream_options` descriptions):
  data-only events ending with `[DONE]`; each choice's `finish_reason` is null until its last
  chunk, which sets it once; with `include_usage`, the last chunk before `[DONE]` carries the
  usage and no choices, and every other chunk `usage: null`.
- Responses (`ResponseStreamEvent`): `response.created` first; `sequence_number` counting up
  from the first; one terminal event (`response.completed`, `response.incomplete`,
  `response.failed`), last, naming the status its response has; an output item's events
  between its `response.output_item.added` and `response.output_item.done`.
- Anthropic Messages (`MessageStreamEvent` and "Streaming Messages"): `message_start` first;
  each content block as `content_block_start`, its deltas, `content_block_stop`, by index from
  0; the deltas of a block's kind; `message_delta` after the blocks; `message_stop` last; `ping`
  anywhere.
- Ollama (api/types.go's `Done`): NDJSON lines, `done: false` until the last, `done: true`.
"""

from __future__ import annotations

import itertools
from typing import Any

Finding = tuple[str, str]
TERMINAL = {
    "response.completed": "completed",
    "response.incomplete": "incomplete",
    "response.failed": "failed",
}
BLOCK_DELTAS = {
    "text": {"text_delta", "citations_delta"},
    "tool_use": {"input_json_delta"},
    "server_tool_use": {"input_json_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
}


def _at(index: int, event: Any) -> str:
    kind = event.get("type") if isinstance(event, dict) else None
    return f"event {index}" + (f" ({kind})" if kind else "")


def chat(events: list[Any], include_usage: bool) -> list[Finding]:
    if not events or events[-1] != "[DONE]":
        return [("stream", "does not end with data: [DONE]")]
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    found: list[Finding] = []
    finished: dict[int, int] = {}
    for i, chunk in enumerate(chunks):
        for choice in chunk.get("choices") or []:
            index = choice.get("index")
            if choice.get("finish_reason") is not None:
                if index in finished:
                    found.append((_at(i, chunk), f"choice {index}'s finish_reason set again"))
                finished[index] = i
            elif index in finished:
                found.append((_at(i, chunk), f"choice {index} goes on after its finish_reason"))
    if include_usage and chunks:
        last = chunks[-1]
        if last.get("usage") is None or last.get("choices") != []:
            found.append(("stream", "include_usage: no last chunk with usage and no choices"))
        stray = [i for i, c in enumerate(chunks[:-1]) if c.get("usage") is not None]
        if stray:
            found.append((_at(stray[0], chunks[stray[0]]), "include_usage: usage before the end"))
    if not finished:
        found.append(("stream", "no chunk sets a finish_reason"))
    return found


def responses(events: list[Any], starting_after: int | None = None) -> list[Finding]:
    """The order of the Responses events; `event N` counts every event sent. A stored
    response replayed from `starting_after` opens with the event numbered one more (its
    items were opened before it, so their order is not checked)."""
    sent = [(i, e) for i, e in enumerate(events) if isinstance(e, dict)]
    if not sent:
        return [("stream", "no events")]
    found: list[Finding] = []
    if starting_after is not None:
        if sent[0][1].get("sequence_number") != starting_after + 1:
            found.append((_at(*sent[0]), f"the first event is not number {starting_after + 1}"))
    elif sent[0][1].get("type") != "response.created":
        found.append((_at(*sent[0]), "the first event is not response.created"))
    for (_, before), (i, event) in itertools.pairwise(sent):
        previous, number = before.get("sequence_number"), event.get("sequence_number")
        if isinstance(previous, int) and isinstance(number, int) and number != previous + 1:
            found.append((_at(i, event), "sequence_number does not count up by one"))
            break
    terminal = [(i, e) for i, e in sent if e.get("type") in TERMINAL]
    if len(terminal) != 1:
        found.append(("stream", f"{len(terminal)} terminal events, not one"))
    if terminal and terminal[-1][0] != sent[-1][0]:
        found.append((_at(*terminal[-1]), "events follow the terminal one"))
    for i, event in terminal:
        status = (event.get("response") or {}).get("status")
        if TERMINAL[event["type"]] != status:
            found.append((_at(i, event), f"carries a response whose status is {status!r}"))
    return found + (_items(sent) if starting_after is None else [])


def completions(events: list[Any]) -> list[Finding]:
    """A legacy text completion's stream (Anthropic's /v1/complete): `completion` events, only
    the last with a stop_reason."""
    sent = [(i, e) for i, e in enumerate(events) if isinstance(e, dict) and e.get("type") != "ping"]
    if not sent:
        return [("stream", "no events")]
    found: list[Finding] = []
    for i, event in sent:
        if event.get("type") != "completion":
            found.append((_at(i, event), "not a completion event"))
    stops = [i for i, e in sent if e.get("stop_reason") is not None]
    if stops != [sent[-1][0]]:
        found.append(("stream", "the stop_reason is not in the last event alone"))
    return found


def _items(sent: list[tuple[int, dict[str, Any]]]) -> list[Finding]:
    found: list[Finding] = []
    opened: set[int] = set()
    closed: set[int] = set()
    for i, event in sent:
        kind, index = event.get("type", ""), event.get("output_index")
        if not isinstance(index, int):
            continue
        if kind == "response.output_item.added":
            if index in opened:
                found.append((_at(i, event), f"output item {index} added twice"))
            opened.add(index)
        elif index not in opened or index in closed:
            found.append((_at(i, event), f"output item {index} is not open"))
        if kind == "response.output_item.done":
            closed.add(index)
    for index in sorted(opened - closed):
        found.append(("stream", f"output item {index} never done"))
    return found


def anthropic(events: list[Any]) -> list[Finding]:
    """The order of Anthropic's events (pings aside); `event N` counts every event sent."""
    sent = [(i, e) for i, e in enumerate(events) if isinstance(e, dict) and e.get("type") != "ping"]
    if not sent:
        return [("stream", "no events")]
    found: list[Finding] = []
    (first, head), (last, tail) = sent[0], sent[-1]
    if head.get("type") != "message_start":
        found.append((_at(first, head), "the first event is not message_start"))
    if tail.get("type") != "message_stop":
        found.append((_at(last, tail), "the last event is not message_stop"))
    blocks: dict[int, str] = {}  # each started block's type, by its index
    open_block: int | None = None
    delta_seen = False
    for i, event in sent:
        kind, index, where = event.get("type"), event.get("index"), _at(i, event)
        if str(kind).startswith("content_block_") and not isinstance(index, int):
            found.append((where, "no block index"))
            continue
        if kind == "content_block_start":
            if open_block is not None or index != len(blocks) or delta_seen:
                found.append((where, f"block {index} starts out of order"))
            blocks[index] = (event.get("content_block") or {}).get("type", "")
            open_block = index
        elif kind in ("content_block_delta", "content_block_stop"):
            if index != open_block:
                found.append((where, f"block {index} is not the open one"))
            elif kind == "content_block_stop":
                open_block = None
            else:
                delta = (event.get("delta") or {}).get("type")
                if delta not in BLOCK_DELTAS.get(blocks[index], {delta}):
                    found.append((where, f"a {delta} in a {blocks[index]} block"))
        elif kind == "message_delta":
            if open_block is not None:
                found.append((where, f"message_delta while block {open_block} is open"))
            delta_seen = True
    if not delta_seen:
        found.append(("stream", "no message_delta"))
    return found


def ollama(lines: list[Any]) -> list[Finding]:
    if not lines:
        return [("stream", "no lines")]
    found: list[Finding] = []
    for i, line in enumerate(lines[:-1]):
        if isinstance(line, dict) and line.get("done") is True:
            found.append((f"line {i}", "done: true before the last line"))
    last = lines[-1]
    if isinstance(last, dict) and "done" in last and last.get("done") is not True:
        found.append((f"line {len(lines) - 1}", "the last line is not done: true"))
    return found
