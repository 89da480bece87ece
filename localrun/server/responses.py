"""OpenAI's Responses API as a translation over the same generations (`generation`).

    POST   /v1/responses                    input (a string or items: messages with text
                                            parts, function_call, function_call_output,
                                            custom_tool_call, custom_tool_call_output),
                                            instructions, tools (function, namespace, custom;
                                            hosted ones left out: responses_tools), tool_choice,
                                            text.format (text, json_object, json_schema),
                                            max_output_tokens, temperature, top_p, stop,
                                            metadata, parallel_tool_calls, reasoning.effort,
                                            store, previous_response_id, stream
    GET    /v1/responses/{id}               a stored response
    GET    /v1/responses/{id}/input_items   the input items it was given
    DELETE /v1/responses/{id}

Output items: a `reasoning` item (a thinking model's reasoning), a `message` with one
`output_text` part, and a `function_call` (with its `namespace` for a namespaced tool) or a
`custom_tool_call` per tool call. A streamed answer is the event sequence
OpenAI's client parses: response.created, response.in_progress, then per item
output_item.added, content_part.added, output_text.delta (or reasoning_text.delta) ... .done,
content_part.done, output_item.done (function_call_arguments.delta / .done for calls), and
response.completed with the usage; an error after the stream has begun is response.failed.

Stateful conversations (which Ollama and llama-server do not have): with `store` (the default)
the answer and its whole conversation are kept (`response_store`), and `previous_response_id`
continues it; its prompt then extends the one the runner's KV cache holds, so only the new turn
is read.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localrun import media
from localrun.errors import BadRequestError, ContextOverflowError, LocalrunError
from localrun.request import GenRequest
from localrun.server import core, image_urls, response_store, responses_input, responses_tools
from localrun.server.body import Body, read_json
from localrun.server.errors import body_of, refused, unexpected
from localrun.server.generation import Generation, runs, start
from localrun.server.messages import chat_messages
from localrun.server.response_store import ResponseStore, new_id
from localrun.server.streaming import event_stream, sse


def _store(request: Request) -> ResponseStore:
    store: ResponseStore = request.app.state.responses
    return store


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


# -- the response object ----------------------------------------------------------------------


def _metadata(body: Body) -> dict[str, str]:
    """OpenAI's metadata: at most 16 pairs, keys of at most 64 characters, text values of at
    most 512 (as OpenAI's API refuses more)."""
    metadata = body.get("metadata", dict) or {}
    if len(metadata) > 16:
        raise BadRequestError("metadata holds more than 16 pairs")
    for key, value in metadata.items():
        if len(key) > 64:
            raise BadRequestError(f"metadata key {key[:64]!r}... is longer than 64 characters")
        if not isinstance(value, str) or len(value) > 512:
            raise BadRequestError(f"metadata[{key!r}] must be text of at most 512 characters")
    return metadata


class _Answer:
    """The response object of one request, built up as its answer arrives."""

    def __init__(self, body: Body, model: str, store: bool, previous: str | None) -> None:
        text = body.get("text", dict) or {}
        self.obj: dict[str, Any] = {
            "id": new_id(),
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "background": False,
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
            "tools": body.get("tools", list) or [],
            "top_p": body.get("top_p", (int, float), 1.0),
            "truncation": "disabled",
            "usage": None,
            "user": body.get("user", str),
        }

    def finish(self, generation: Generation) -> None:
        t = generation.stream.timings
        prompt = generation.prompt_count
        self.obj["usage"] = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": t.cached_tokens},
            "output_tokens": t.eval_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + t.eval_tokens,
        }
        if generation.done_reason == "length" and not generation.tool_calls:
            self.obj["status"] = "incomplete"
            self.obj["incomplete_details"] = {"reason": "max_output_tokens"}
        else:
            self.obj["status"] = "completed"


def _reasoning_item(text: str, status: str = "completed", item_id: str = "") -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": item_id or _item_id("rs"),
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": status,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(text: str | None, status: str = "completed", item_id: str = "") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id or _item_id("msg"),
        "status": status,
        "role": "assistant",
        "content": [] if text is None else [_text_part(text)],
    }


def _assistant_message(output: list[dict[str, Any]]) -> dict[str, Any]:
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


# -- routes -----------------------------------------------------------------------------------


def _request(
    body: Body, model: str, messages: list[dict[str, Any]], toolset: responses_tools.ToolSet
) -> GenRequest:
    return GenRequest(
        model,
        messages=chat_messages(messages, translated=True),
        options=responses_input.options_of(body),
        format=responses_input.format_of(body),
        format_lenient=responses_input.lenient(body),
        tools=toolset.tools,
        tool_choice=responses_tools.tool_choice_of(body.data.get("tool_choice")),
        tool_grammars=toolset.grammars or None,
        think=responses_input.think_of(body),
        parallel_tool_calls=body.flag("parallel_tool_calls", True),
    )


async def create(request: Request) -> Response:
    body = Body(await read_json(request))
    model = body.model()
    keep = body.flag("store", True)
    previous = body.get("previous_response_id", str)
    store = _store(request)
    history: list[dict[str, Any]] = []
    if previous:
        record = await anyio.to_thread.run_sync(store.load, previous)
        history = record.get("messages") or []
    await image_urls.inline(body.data, "responses")
    items = responses_input.input_items(body.data.get("input", []))
    conversation = responses_input.messages_of(items, history)
    if not conversation:
        raise BadRequestError("input must not be empty")
    instructions = body.get("instructions", str)
    if instructions:
        media.count_markers(instructions, "instructions")
    messages = ([{"role": "system", "content": instructions}] if instructions else []) + (
        conversation
    )
    toolset = responses_tools.tools_of(body.data.get("tools"))
    req = _request(body, model, messages, toolset)
    answer = _Answer(body, model, keep, previous)
    if keep:  # what the record holds before its answer: refused now rather than after it
        response_store.check_size(len(response_store.encode(
            {"response": answer.obj, "messages": conversation, "input_items": items}
        )))  # fmt: skip
    streamed = body.flag("stream", False)
    try:
        generation = await start(request, req)
    except ContextOverflowError as exc:
        if not streamed:
            raise
        # OpenAI's API reports it in the stream, and Codex compacts on that alone.
        return event_stream(_failed_stream(answer, exc))

    async def save() -> None:
        if keep:
            record = {
                "response": answer.obj,
                "messages": [*conversation, _assistant_message(answer.obj["output"])],
                "input_items": items,
            }
            await anyio.to_thread.run_sync(store.save, record)

    headers = core.tools_left_out(toolset.left_out)
    if streamed:
        return event_stream(_events(generation, answer, save, toolset), headers)
    await core.until_disconnect(request, generation.collect)
    output = []
    if generation.thinking:
        output.append(_reasoning_item(generation.thinking))
    calls = [toolset.call_item(call) for call in generation.tool_calls or []]
    if generation.text or not calls:
        output.append(_message_item(generation.text))
    answer.obj["output"] = output + calls
    answer.finish(generation)
    await save()
    return JSONResponse(answer.obj, headers=headers)


async def _failed_stream(answer: _Answer, exc: LocalrunError) -> AsyncIterator[bytes]:
    """A stream that an error ended before any of the answer: created, then failed."""
    stream = _Stream(answer.obj)
    yield stream.event("response.created", response=stream.obj)
    yield stream.event("response.in_progress", response=stream.obj)
    yield stream.failed(exc)


async def _events(
    generation: Generation,
    answer: _Answer,
    save: Callable[[], Awaitable[None]],
    toolset: responses_tools.ToolSet,
) -> AsyncIterator[bytes]:
    """The Responses stream: an item per run of reasoning or text, then the function calls."""
    stream = _Stream(answer.obj)
    yield stream.event("response.created", response=stream.obj)
    yield stream.event("response.in_progress", response=stream.obj)
    try:
        async with contextlib.aclosing(runs(generation)) as pieces:
            async for run in pieces:
                items = [toolset.call_item(call) for call in run.calls]
                if run.kind == "calls":
                    events = stream.calls(items)
                elif run.kind == "late":
                    events = stream.end(items)
                else:
                    kind = "reasoning" if run.kind == "thinking" else "text"
                    events = stream.delta(kind, run.text)
                for event in events:
                    yield event
        answer.finish(generation)
        await save()
        yield stream.event("response.completed", response=stream.obj)
    except LocalrunError as exc:
        yield stream.failed(exc)
    except Exception as exc:
        yield stream.failed(unexpected(exc, "a streamed response"))


class _Stream:
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

    def event(self, kind: str, **fields: Any) -> bytes:
        self.sequence += 1
        return sse({"type": kind, "sequence_number": self.sequence - 1, **fields}, event=kind)

    def _at(self, index: int) -> dict[str, Any]:
        """The fields that place an event in the content of output item `index`."""
        return {"item_id": self.output[index]["id"], "output_index": index, "content_index": 0}

    def delta(self, kind: str, piece: str) -> list[bytes]:
        """A piece of `kind` ("text" or "reasoning"), opening an item of that kind if need be."""
        out = self.begin(kind) if self.open_kind != kind else []
        self.text += piece
        name = "response.output_text.delta" if kind == "text" else "response.reasoning_text.delta"
        extra: dict[str, Any] = {"logprobs": []} if kind == "text" else {}
        out.append(self.event(name, **self._at(len(self.output) - 1), delta=piece, **extra))
        return out

    def begin(self, kind: str) -> list[bytes]:
        """Close the open item and open an empty one of `kind`."""
        out = self.close()
        self.open_kind, self.text = kind, ""
        if kind == "text":
            item = _message_item(None, status="in_progress")
            part: dict[str, Any] = _text_part("")
        else:
            item = {**_reasoning_item("", status="in_progress"), "content": []}
            part = {"type": "reasoning_text", "text": ""}
        self.output.append(item)
        index = len(self.output) - 1
        out.append(self.event("response.output_item.added", output_index=index, item=item))
        out.append(self.event("response.content_part.added", **self._at(index), part=part))
        return out

    def close(self) -> list[bytes]:
        """Finish the open item, if any: its whole text, its part, the item itself."""
        if self.open_kind is None:
            return []
        index = len(self.output) - 1
        item = self.output[index]
        where = self._at(index)
        text = self.text
        if self.open_kind == "text":
            part = _text_part(text)
            finished = self.event("response.output_text.done", **where, text=text, logprobs=[])
            self.output[index] = _message_item(text, item_id=item["id"])
        else:
            part = {"type": "reasoning_text", "text": text}
            finished = self.event("response.reasoning_text.done", **where, text=text)
            self.output[index] = _reasoning_item(text, item_id=item["id"])
        return [
            finished,
            self.event("response.content_part.done", **where, part=part),
            self.event("response.output_item.done", output_index=index, item=self.output[index]),
        ]

    def end(self, calls: list[dict[str, Any]]) -> list[bytes]:
        """Close the last item (an empty answer is still one, empty, message), then add the
        function calls not streamed yet."""
        empty = not self.output and not calls
        out = self.begin("text") if self.open_kind is None and empty else []
        return out + self.calls(calls) + self._close_open()

    def calls(self, calls: list[dict[str, Any]]) -> list[bytes]:
        """Function call items as soon as they are read (the open item closes first)."""
        if not calls:
            return []
        out = self._close_open()
        for call in calls:
            out += self.call(call)
        return out

    def _close_open(self) -> list[bytes]:
        out = self.close() if self.open_kind is not None else []
        self.open_kind = None
        return out

    def call(self, call: dict[str, Any]) -> list[bytes]:
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

    def failed(self, exc: LocalrunError) -> bytes:
        """The last event of a stream that an error ended."""
        refused("POST", "/v1/responses (streamed)", exc)
        detail = body_of(exc, "responses")["error"]
        self.obj["status"] = "failed"
        self.obj["error"] = {"code": detail["code"], "message": detail["message"]}
        return self.event("response.failed", response=self.obj)


async def retrieve(request: Request) -> Response:
    store = _store(request)
    record = await anyio.to_thread.run_sync(store.load, request.path_params["response_id"])
    return JSONResponse(record["response"])


async def input_items_list(request: Request) -> Response:
    store = _store(request)
    record = await anyio.to_thread.run_sync(store.load, request.path_params["response_id"])
    items = []
    for number, item in enumerate(record.get("input_items") or []):
        shown = dict(item)
        if shown.get("type", "message") == "message":
            shown["type"] = "message"
            content = shown.get("content")
            if isinstance(content, str):
                shown["content"] = [{"type": "input_text", "text": content}]
        shown.setdefault("id", f"{record['response']['id']}_in{number}")
        items.append(shown)
    if request.query_params.get("order", "desc") == "desc":
        items.reverse()
    return JSONResponse(
        {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
            "has_more": False,
        }
    )


async def delete(request: Request) -> Response:
    store = _store(request)
    response_id = request.path_params["response_id"]
    await anyio.to_thread.run_sync(store.delete, response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})
