"""The Responses API's stream: the numbered events OpenAI's clients parse, from a generation.

A streamed answer is response.created, response.in_progress, then per item
output_item.added, content_part.added, output_text.delta (or reasoning_text.delta) ... .done,
content_part.done, output_item.done (function_call_arguments.delta / .done for calls), and
response.completed with the usage, or response.incomplete where max_output_tokens cut the
answer (its last item `incomplete` too); an error after the stream has begun is
response.failed, the answer so far in its output. With `include:
["message.output_text.logprobs"]` every output_text.delta carries its tokens' log-probabilities,
and the message's part all of them.

Each event is made once, as its JSON (`Event`), and framed as a server-sent event where it is
sent (`frame`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any

from localrun.errors import BusyError, ContextOverflowError, LocalrunError
from localrun.server.errors import body_of, refused, status_of, unexpected
from localrun.server.generation import Generation, runs
from localrun.server.logprobs import logprob_items
from localrun.server.responses import tools as responses_tools
from localrun.server.responses.output import (
    Answer,
    cut,
    message_item,
    reasoning_item,
    text_part,
)

# An event: its type and its JSON (made when it happens: the response it carries changes after).
Event = tuple[str, bytes]


def frame(event: Event) -> bytes:
    """The server-sent event of `event` (named, as OpenAI's stream names each)."""
    kind, data = event
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


class EventStream:
    """The numbered events of one Responses stream, and the output items they build in `obj`.

    One item is open at a time (a message or a reasoning item) and grows by deltas; another
    kind of piece closes it and opens the next. The methods return the events in order.
    """

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self.output: list[dict[str, Any]] = obj["output"]
        self.sequence = 0
        self.open_kind: str | None = None  # "text" or "reasoning": the item being streamed
        self.text = ""  # the open item's text so far
        self.logprobs: list[dict[str, Any]] = []  # the open message's entries (when asked for)

    def event(self, kind: str, **fields: Any) -> Event:
        self.sequence += 1
        obj = {"type": kind, "sequence_number": self.sequence - 1, **fields}
        return kind, json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()

    def renumber(self, count: int) -> None:
        """Number the next event `count`.

        The events made after the first `count` were never sent: a background response's log had no
        room for them.
        """
        self.sequence = count

    def opening(self) -> list[Event]:
        return [
            self.event("response.created", response=self.obj),
            self.event("response.in_progress", response=self.obj),
        ]

    def _at(self, index: int) -> dict[str, Any]:
        """The fields that place an event in the content of output item `index`."""
        return {"item_id": self.output[index]["id"], "output_index": index, "content_index": 0}

    def delta(
        self, kind: str, piece: str, logprobs: list[dict[str, Any]] | None = None
    ) -> list[Event]:
        """A piece of `kind` ("text" or "reasoning"), opening an item of that kind if need be.

        A text piece comes with its tokens' log-probability entries (`logprobs.logprob_items`).
        """
        if not piece:  # entries of text a stop string held back: the item's, without a delta
            if kind == "text" and self.open_kind == "text":
                self.logprobs += logprobs or []
            return []
        out = self.begin(kind) if self.open_kind != kind else []
        self.text += piece
        where = self._at(len(self.output) - 1)
        if kind == "reasoning":
            out.append(self.event("response.reasoning_text.delta", **where, delta=piece))
            return out
        self.logprobs += logprobs or []
        out.append(
            self.event("response.output_text.delta", **where, delta=piece, logprobs=logprobs or [])
        )
        return out

    def begin(self, kind: str, item: dict[str, Any] | None = None) -> list[Event]:
        """Close the open item and open one of `kind`: "text" (a message) or "reasoning".

        The new item is a fresh one, or `item` (a stored response's, replayed), added empty and
        `in_progress`.
        """
        out = self.close()
        self.open_kind, self.text, self.logprobs = kind, "", []
        if item is not None:
            item = {**item, "content": []}  # a copy: the stored item stays as it is
            if "status" in item:
                item["status"] = "in_progress"
        elif kind == "text":
            item = message_item(None, status="in_progress")
        else:
            item = {**reasoning_item("", status="in_progress"), "content": []}
        part: dict[str, Any] = (
            text_part("") if kind == "text" else {"type": "reasoning_text", "text": ""}
        )
        self.output.append(item)
        index = len(self.output) - 1
        out.append(self.event("response.output_item.added", output_index=index, item=item))
        out.append(self.event("response.content_part.added", **self._at(index), part=part))
        return out

    def _part(self) -> dict[str, Any]:
        """The open item's content part, its text so far."""
        if self.open_kind == "text":
            return text_part(self.text, self.logprobs)
        return {"type": "reasoning_text", "text": self.text}

    def _filled(self, status: str) -> dict[str, Any]:
        """The open item (as `begin` added it) with its text so far, as `status`."""
        item = {**self.output[-1], "content": [self._part()]}
        if "status" in item:
            item["status"] = status
        return item

    def close(self, status: str = "completed") -> list[Event]:
        """Finish the open item, if any: its whole text, its part, the item itself.

        The item's `status` is "incomplete" where the token budget cut it.
        """
        if self.open_kind is None:
            return []
        index = len(self.output) - 1
        where = self._at(index)
        text = self.text
        self.output[index] = self._filled(status)
        part = self._part()
        if self.open_kind == "text":
            finished = self.event(
                "response.output_text.done", **where, text=text, logprobs=self.logprobs
            )
        else:
            finished = self.event("response.reasoning_text.done", **where, text=text)
        return [
            finished,
            self.event("response.content_part.done", **where, part=part),
            self.event("response.output_item.done", output_index=index, item=self.output[index]),
        ]

    def snapshot(self) -> dict[str, Any]:
        """The response as it stands, the open item holding its text so far."""
        shown = dict(self.obj)
        if self.open_kind is not None:
            shown["output"] = [*self.output[:-1], self._filled("in_progress")]
        else:
            shown["output"] = list(self.output)
        return shown

    def settle(self) -> None:
        """Keep the open item's text in the response, without events.

        An answer that an error or a cancel ended leaves the item `incomplete`.
        """
        if self.open_kind is not None:
            self.output[-1] = self._filled("incomplete")
            self.open_kind = None

    def end(self, calls: list[dict[str, Any]], status: str = "completed") -> list[Event]:
        """Close the last item as `status`, then add the function calls not streamed yet.

        An empty answer is still one empty message.
        """
        empty = not self.output and not calls
        out = self.begin("text") if self.open_kind is None and empty else []
        out += self.calls(calls)
        out += self.close(status)
        self.open_kind = None
        return out

    def calls(self, calls: list[dict[str, Any]]) -> list[Event]:
        """Function call items as soon as they are read (the open item closes first)."""
        if not calls:
            return []
        out = self._close_open()
        for call in calls:
            out += self.call(call)
        return out

    def _close_open(self) -> list[Event]:
        out = self.close() if self.open_kind is not None else []
        self.open_kind = None
        return out

    def call(self, call: dict[str, Any]) -> list[Event]:
        self.output.append(call)
        index = len(self.output) - 1
        if call["type"] == "custom_tool_call":
            added = {**call, "input": "", "status": "in_progress"}
            where = {"item_id": call["id"], "output_index": index}
            return [
                self.event("response.output_item.added", output_index=index, item=added),
                self.event("response.custom_tool_call_input.delta", **where, delta=call["input"]),
                self.event("response.custom_tool_call_input.done", **where, input=call["input"]),
                self.event("response.output_item.done", output_index=index, item=call),
            ]
        added = {**call, "arguments": "", "status": "in_progress"}
        return [
            self.event("response.output_item.added", output_index=index, item=added),
            self.event(
                "response.function_call_arguments.delta",
                item_id=call["id"],
                output_index=index,
                delta=call["arguments"],
            ),
            self.event(
                "response.function_call_arguments.done",
                item_id=call["id"],
                output_index=index,
                name=call["name"],
                arguments=call["arguments"],
            ),
            self.event("response.output_item.done", output_index=index, item=call),
        ]

    def failed(self, exc: LocalrunError) -> Event:
        """The last event of a stream that an error ended (the answer so far in its output)."""
        refused("POST", "/v1/responses (streamed)", exc)
        detail = body_of(exc, "responses")["error"]
        self.settle()
        self.obj["status"] = "failed"
        self.obj["error"] = {"code": failure_code(exc), "message": detail["message"]}
        return self.event("response.failed", response=self.obj)


def failure_code(exc: LocalrunError) -> str:
    """A failed response's `error.code`, from the specification's ResponseErrorCode.

    What the request asked for is `invalid_prompt`, and a full queue `rate_limit_exceeded` (retry
    later). Anything else is `server_error`, a background response's log that outgrew its room
    among them. A prompt past the context keeps OpenAI's own `context_length_exceeded`, which its
    API sends there and Codex compacts on.
    """
    if isinstance(exc, ContextOverflowError):
        return exc.code
    if isinstance(exc, BusyError):
        return "rate_limit_exceeded"
    return "invalid_prompt" if 400 <= status_of(exc) < 500 else "server_error"


async def answer_events(
    stream: EventStream,
    generation: Generation,
    answer: Answer,
    toolset: responses_tools.ToolSet,
    save: Callable[[], Awaitable[None]],
) -> AsyncGenerator[Event, None]:
    """The answer's events after the opening ones, up to the last event.

    An item comes per run of reasoning or text, then the function calls. The last event is
    response.completed, or response.incomplete where the token budget cut the answer. The answer is
    saved just before it.
    """
    try:
        async with contextlib.aclosing(runs(generation)) as pieces:
            async for run in pieces:
                items = [toolset.call_item(call) for call in run.calls]
                if run.kind == "calls":
                    events = stream.calls(items)
                elif run.kind == "late":
                    events = stream.end(items, "incomplete" if cut(generation) else "completed")
                elif run.kind == "thinking":
                    events = stream.delta("reasoning", run.text)
                else:
                    events = stream.delta("text", run.text, logprob_items(run.logprobs))
                for event in events:
                    yield event
        answer.finish(generation)
        await save()
        yield stream.event(answer.terminal, response=stream.obj)
    except LocalrunError as exc:
        yield stream.failed(exc)
    except Exception as exc:
        yield stream.failed(unexpected(exc, "a streamed response"))


_LAST = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
}


_KINDS = {"message": "text", "reasoning": "reasoning"}  # an item's type: EventStream's kind


def replayed(obj: dict[str, Any]) -> Iterator[Event]:
    """The events of a finished response that kept none, made from its object.

    Such a response was not run in the background, or its log was not kept. The events come as
    EventStream streams them: each item whole, its text in one delta, then the last event its status
    calls for. A cancelled one has none, its stream just ending. They are made one at a time, as
    they are sent, so a large response is never held several times over.
    """
    opened = {**obj, "status": "in_progress", "output": [], "usage": None, "error": None}
    opened.update(incomplete_details=None, completed_at=None)
    stream = EventStream(opened)
    yield stream.event("response.created", response=opened)  # one at a time (not opening())
    yield stream.event("response.in_progress", response=opened)
    for item in obj.get("output") or []:
        kind = _KINDS.get(item.get("type", ""))
        if kind is None:  # a function or custom tool call
            yield from stream.call(item)
            continue
        part = (item.get("content") or [{}])[0]
        yield from stream.begin(kind, item)
        yield from stream.delta(kind, part.get("text", ""), part.get("logprobs") or [])
        yield from stream.end([], item.get("status", "completed"))
    last = _LAST.get(obj.get("status", ""))
    if last is not None:
        yield stream.event(last, response=obj)
