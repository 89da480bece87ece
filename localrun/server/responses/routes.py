"""OpenAI's Responses API as a translation over the same generations (`generation`).

    POST   /v1/responses                   a response (its fields: the comment above `create`)
    POST   /v1/responses/input_tokens      {"object": "response.input_tokens", "input_tokens": N}
    GET    /v1/responses/{id}              a response as it stands, or ?stream=true its events
    GET    /v1/responses/{id}/input_items  the input items it was given
    POST   /v1/responses/{id}/cancel       a background response stopped
    DELETE /v1/responses/{id}

output.py shapes the response object and its items, events.py a streamed answer's events, and
background.py runs background responses. Ollama and llama-server keep no conversations; here,
with `store` (the default), the answer and its whole conversation are kept (store.py).
`previous_response_id` continues it: its prompt extends the one the runner's KV cache holds, so
only the new turn is read.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localrun.errors import BadRequestError, ContextOverflowError
from localrun.request import media
from localrun.request.genrequest import GenRequest
from localrun.server import core, image_urls
from localrun.server.body import Body, read_json
from localrun.server.generation import Generation, count_prompt, start
from localrun.server.http import connections
from localrun.server.logprobs import logprob_items
from localrun.server.messages import chat_messages
from localrun.server.responses import input as responses_input
from localrun.server.responses import store as response_store
from localrun.server.responses import tools as responses_tools
from localrun.server.responses.background import EVENTS_LOST, UNFINISHED, Runs
from localrun.server.responses.events import Event, EventStream, answer_events, frame, replayed
from localrun.server.responses.output import (
    Answer,
    assistant_message,
    cut,
    message_item,
    reasoning_item,
)
from localrun.server.responses.store import ResponseStore, encode
from localrun.server.streaming import event_stream, off_loop, rendered, rendered_with
from localrun.server.turns import Share, Shares
from localrun.settings import limits


def _retrievals(request: Request) -> Shares:
    shares: Shares = request.app.state.retrievals
    return shares


def _store(request: Request) -> ResponseStore:
    store: ResponseStore = request.app.state.responses
    return store


def _runs(request: Request) -> Runs:
    runs: Runs = request.app.state.background
    return runs


async def _load(request: Request, response_id: str) -> dict[str, Any]:
    """A stored record as it stands (`Runs.settled`); NotFoundError if there is none."""
    record = await anyio.to_thread.run_sync(_store(request).load, response_id)
    return _runs(request).settled(record)


@dataclass
class _Prepared:
    """A Responses request read: the core request, and what its stored record keeps."""

    req: GenRequest
    conversation: list[dict[str, Any]]  # without instructions, which are not carried over
    items: list[dict[str, Any]]  # the input items as sent
    toolset: responses_tools.ToolSet
    previous: str | None


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
        logprobs=responses_input.logprobs_of(body),
    )


async def _prepare(request: Request, body: Body) -> _Prepared:
    """The body read into the core request, every 400 raised before anything runs.

    It reads the stored conversation the body continues, its input, instructions and tools.
    """
    model = body.model()
    previous = body.get("previous_response_id", str)
    if body.data.get("conversation") is not None:
        raise BadRequestError(
            "conversation is not supported: localrun keeps no Conversations",
            hint="continue a stored response with previous_response_id",
        )
    history: list[dict[str, Any]] = []
    if previous:
        record = await _load(request, previous)
        status = record["response"].get("status")
        if status in UNFINISHED:
            raise BadRequestError(
                f"previous response {previous} is still {status}",
                hint="wait until it has finished, or cancel it",
            )
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
    return _Prepared(
        _request(body, model, messages, toolset), conversation, items, toolset, previous
    )


def _record(prepared: _Prepared, obj: dict[str, Any], answered: bool = True) -> dict[str, Any]:
    """What the store keeps of a response: it, its conversation and its input items.

    The conversation holds the answer once there is one.
    """
    conversation = prepared.conversation
    if answered:
        conversation = [*conversation, assistant_message(obj["output"])]
    return {"response": obj, "messages": conversation, "input_items": prepared.items}


# POST /v1/responses takes input (a string or items: messages with text parts, function_call,
# function_call_output, custom_tool_call, custom_tool_call_output), instructions, tools
# (function, namespace, custom; hosted ones are left out, see tools.py), tool_choice,
# text.format (text, json_object, json_schema), max_output_tokens, temperature, top_p, seed,
# stop, metadata, parallel_tool_calls, reasoning.effort, include
# (message.output_text.logprobs), top_logprobs, store, previous_response_id, stream and
# background.
async def create(request: Request) -> Response:
    body = Body(await read_json(request))
    keep = body.flag("store", True)
    background = body.flag("background", False)
    if background:
        _may_run_in_background(keep)
    prepared = await _prepare(request, body)
    answer = Answer(body, prepared.req.model, keep, prepared.previous)
    if keep:  # what the record holds before its answer: refused now rather than after it
        record = _record(prepared, answer.obj, answered=False)
        response_store.check_size(len(response_store.encode(record)))
    streamed = body.flag("stream", False)
    if background:
        return await _launch(request, prepared, answer, streamed)
    try:
        generation = await start(request, prepared.req)
    except ContextOverflowError as exc:
        if not streamed:
            raise
        # OpenAI's API reports it in the stream, and Codex compacts on that alone.
        stream = EventStream(answer.obj)
        return event_stream(_framed([*stream.opening(), stream.failed(exc)]))

    async def save() -> None:
        if keep:
            await anyio.to_thread.run_sync(_store(request).save, _record(prepared, answer.obj))

    headers = core.tools_left_out(prepared.toolset.left_out)
    if streamed:
        stream = EventStream(answer.obj)
        events = answer_events(stream, generation, answer, prepared.toolset, save)
        return event_stream(_framed(stream.opening(), events), headers)
    await core.until_disconnect(request, generation.collect)
    answer.obj["output"] = _output(generation, prepared.toolset)
    answer.finish(generation)
    await save()
    return await rendered(answer.obj, headers=headers)


def _may_run_in_background(keep: bool) -> None:
    """Refuse what background mode cannot do: a response not stored cannot be fetched."""
    if not keep:
        raise BadRequestError("background mode requires store: true")
    if limits.responses_max() == 0:
        raise BadRequestError(
            "background mode requires stored responses, and LOCALRUN_RESPONSES_MAX is 0",
            hint="raise LOCALRUN_RESPONSES_MAX, or leave background out",
        )


async def _launch(
    request: Request, prepared: _Prepared, answer: Answer, streamed: bool
) -> Response:
    """Start a background response, which runs on in the server (background.py).

    It is answered at once as `queued`, or its events are streamed as they come.
    """
    answer.obj["background"] = True
    stream = EventStream(answer.obj)

    async def saved_with_its_log() -> None:
        return None  # the run saves the record, with its events, once it has ended

    def events(generation: Generation) -> AsyncGenerator[Event, None]:
        return answer_events(stream, generation, answer, prepared.toolset, saved_with_its_log)

    def record() -> dict[str, Any]:
        answered = answer.obj["status"] not in UNFINISHED
        return _record(prepared, answer.obj, answered=answered)

    ctx = core.context(request)
    client = connections.client_key(request.client)  # whose share of runs it takes
    run = await _runs(request).launch(ctx, prepared.req, stream, record, events, client)
    headers = core.tools_left_out(prepared.toolset.left_out)
    if streamed:
        return event_stream(_framed((), run.follow(-1)), headers)
    return await rendered(run.snapshot(), headers=headers)


def _output(generation: Generation, toolset: responses_tools.ToolSet) -> list[dict[str, Any]]:
    """The output items of a whole answer: its reasoning, its text, its calls.

    The last item is `incomplete` where the token budget cut it.
    """
    output = []
    if generation.thinking:
        output.append(reasoning_item(generation.thinking))
    calls = [toolset.call_item(call) for call in generation.tool_calls or []]
    if generation.text or not calls:
        entries = logprob_items(generation.logprobs)
        output.append(message_item(generation.text, logprobs=entries))
    if output and cut(generation):
        output[-1]["status"] = "incomplete"
    return output + calls


async def _framed(
    first: Iterable[Event], then: AsyncGenerator[Event, None] | None = None
) -> AsyncIterator[bytes]:
    """Events as server-sent events: `first`, then those `then` yields."""
    for event in first:
        yield frame(event)
    if then is not None:
        async with contextlib.aclosing(then) as events:  # a client that leaves closes it
            async for event in events:
                yield frame(event)


async def input_tokens(request: Request) -> Response:
    """The tokens of the prompt this Responses request would read.

    The prompt holds its input, instructions, tools and the conversation it continues. They are
    counted as Anthropic's count_tokens counts.
    """
    prepared = await _prepare(request, Body(await read_json(request)))
    count = await count_prompt(request, prepared.req)
    return JSONResponse({"object": "response.input_tokens", "input_tokens": count})


async def retrieve(request: Request) -> Response:
    """A response as it stands, or with ?stream=true its events after `starting_after`.

    The events logged come first, then each as it comes while it runs in the background, to its
    end. A client reads at most LOCALRUN_RESPONSES_RETRIEVALS_PER_CLIENT at once (429 past it). A
    stored response's events are made one at a time off the event loop as the client reads them.
    """
    response_id = request.path_params["response_id"]
    streamed = _query_flag(request, "stream")
    after = _starting_after(request)
    release = _retrievals(request).take(connections.client_key(request.client))  # or a 429
    try:
        run = _runs(request).get(response_id)
        if run is not None:
            if streamed:
                return event_stream(_released(_framed((), run.follow(after)), release))
            return await rendered(run.snapshot())
        record = await _load(request, response_id)
        if not streamed:
            return await rendered(record["response"])
        if after >= 0 and record.get(EVENTS_LOST):
            raise BadRequestError(
                f"this response's events were not kept (its record had no room for them), so "
                f"its stream cannot resume after event {after}",
                hint="fetch the response without stream, or its events from the start "
                "(stream=true without starting_after), made again from the response",
            )
        if after >= 0:
            count = await anyio.to_thread.run_sync(_count, _stored_events(record))
            if after >= count:
                raise BadRequestError(
                    f"starting_after {after} is past this response's last event ({count - 1})"
                )
        events = itertools.islice(_stored_events(record), after + 1, None)
        return event_stream(_released(off_loop(frame(e) for e in events), release))
    except BaseException:
        release()
        raise
    finally:
        if not streamed:
            release()


def _count(events: Iterator[Event]) -> int:
    return sum(1 for _ in events)


def _released(frames: AsyncIterator[bytes], share: Share) -> AsyncIterator[bytes]:
    """`frames`, then the client's retrieval share given back however the stream ends.

    A stream never started, its client gone first, gives it back as it is collected.
    """

    async def framed() -> AsyncIterator[bytes]:
        try:
            async for data in frames:
                yield data
        finally:
            share.release()

    out = framed()
    weakref.finalize(out, share.release)
    return out


def _stored_events(record: dict[str, Any]) -> Iterator[Event]:
    """A stored response's events, each made as it is taken.

    A background response's log holds them. Else they are made from the response, for one not run
    in the background or one whose log was not kept.
    """
    log = record.get("events")
    if isinstance(log, list):
        return ((str(e.get("type")), encode(e)) for e in log if isinstance(e, dict))
    return replayed(record["response"])


def _query_flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise BadRequestError(f"{name} must be true or false")
    return value in ("true", "1")


def _starting_after(request: Request) -> int:
    """The number of the last event the client has (-1: none)."""
    value = request.query_params.get("starting_after")
    if value is None:
        return -1
    try:
        number = int(value)
    except ValueError:
        raise BadRequestError("starting_after must be a whole number") from None
    return max(number, -1)


async def cancel(request: Request) -> Response:
    """Cancel a background response: `cancelled` unless it had finished.

    A finished one comes as it is, as OpenAI answers a second cancel. A response not run in the
    background is refused.
    """
    response_id = request.path_params["response_id"]
    run = _runs(request).get(response_id)
    if run is not None:
        return await rendered(await run.cancel())
    obj = (await _load(request, response_id))["response"]
    if not obj.get("background"):
        raise BadRequestError(
            "Cannot cancel a synchronous response.",
            hint="only a response created with background: true can be cancelled",
        )
    if obj.get("status") in UNFINISHED:
        raise BadRequestError(
            "this response runs on another localrun server sharing the folder of stored "
            "responses; cancel it there"
        )
    return await rendered(obj)


async def input_items_list(request: Request) -> Response:
    """A stored response's input items (as a client's share of retrievals: made off the loop)."""
    share = _retrievals(request).take(connections.client_key(request.client))
    try:
        record = await _load(request, request.path_params["response_id"])
        desc = request.query_params.get("order", "desc") == "desc"
        return await rendered_with(_input_items, record, desc)
    finally:
        share.release()


def _input_items(record: dict[str, Any], desc: bool) -> dict[str, Any]:
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
    if desc:
        items.reverse()
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": False,
    }


async def delete(request: Request) -> Response:
    store = _store(request)
    response_id = request.path_params["response_id"]
    run = _runs(request).get(response_id)
    if run is not None:  # one still running stops first (it saves itself as it ends)
        await run.cancel()
    await anyio.to_thread.run_sync(store.delete, response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})
