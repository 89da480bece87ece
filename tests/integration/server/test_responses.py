"""OpenAI's Responses API as its specification and openai-python's own flows have it: usage
with the prompt cache's reads and writes, an answer cut short ending in response.incomplete,
input token counts, and background mode (polled, streamed, left and resumed, cancelled, bounded
per client, read back after its server crashed or without its log).

One server with real runners (llama.cpp on SmolLM2) and the official `openai` client.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from localrun.scheduler import Scheduler
from localrun.server.responses import background as responses_background
from localrun.server.responses.store import ResponseStore
from localrun.sources import obtain
from localrun.store import reference
from localrun.store.local import Store

from support import PATIENCE_S
from support.server import SMOL, LiveServer

pytestmark = [pytest.mark.server, pytest.mark.model]

QUESTION = "What is the capital of France? Answer with one word."
GREEDY: Any = {"model": SMOL, "temperature": 0}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = Store(tmp_path_factory.mktemp("responses") / "models")
    obtain.find(store, reference.parse(SMOL))
    return store


@pytest.fixture(scope="module")
def responses_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stored")


@pytest.fixture(scope="module")
def live(store: Store, responses_dir: Path) -> Iterator[LiveServer]:
    scheduler = Scheduler(store, num_parallel=2, max_loaded=1, max_queue=16)
    server = LiveServer(store, scheduler, responses_dir=responses_dir)
    yield server
    server.close()


# -- usage ------------------------------------------------------------------------------------


def test_usage_says_what_the_prompt_cache_read_and_kept(ai: openai.OpenAI) -> None:
    first = ai.responses.create(
        **GREEDY, input="My name is Ada Quillfeather. Say hello.", max_output_tokens=8
    )
    assert first.usage
    details = first.usage.input_tokens_details
    # The prompt is read (cache_write_tokens) or found in the KV cache (cached_tokens): together
    # the whole of it.
    assert details.cache_write_tokens > 0
    assert details.cached_tokens + details.cache_write_tokens == first.usage.input_tokens
    again = ai.responses.create(
        **GREEDY, previous_response_id=first.id, input="What is my name?", max_output_tokens=8
    )
    assert again.usage
    read = again.usage.input_tokens_details
    # The conversation so far came from the KV cache; only the new turn was read, and kept.
    assert read.cached_tokens >= first.usage.input_tokens - 2
    assert 0 < read.cache_write_tokens == again.usage.input_tokens - read.cached_tokens
    assert read.cache_write_tokens < again.usage.input_tokens - first.usage.input_tokens + 8
    stored = ai.responses.retrieve(again.id)
    assert stored.usage == again.usage

    with ai.responses.stream(**GREEDY, input=QUESTION, max_output_tokens=8) as stream:
        events = list(stream)
    usage = events[-1].response.usage  # type: ignore[union-attr]
    assert usage and isinstance(usage.input_tokens_details.cache_write_tokens, int)
    assert usage.model_dump()["input_tokens_details"]["cache_write_tokens"] >= 0


# -- an answer cut short ----------------------------------------------------------------------


def test_an_answer_cut_by_max_output_tokens_ends_with_response_incomplete(
    ai: openai.OpenAI,
) -> None:
    raw = list(ai.responses.create(**GREEDY, input=QUESTION, max_output_tokens=2, stream=True))
    assert [e.sequence_number for e in raw] == list(range(len(raw)))
    kinds = [e.type for e in raw]
    assert kinds[0] == "response.created" and kinds[-1] == "response.incomplete"
    assert "response.completed" not in kinds
    last = raw[-1]
    assert last.type == "response.incomplete"
    assert last.response.status == "incomplete" and last.response.completed_at is None
    assert last.response.incomplete_details
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.usage and last.response.usage.output_tokens == 2
    done = [e for e in raw if e.type == "response.output_item.done"]
    assert done[-1].item.status == "incomplete"
    assert last.response.output[-1].status == "incomplete"

    # openai-python's stream helper ends on it without raising, with the answer so far.
    with ai.responses.stream(**GREEDY, input=QUESTION, max_output_tokens=2) as stream:
        events = list(stream)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.output_text == last.response.output_text

    whole = ai.responses.create(**GREEDY, input=QUESTION, max_output_tokens=2)
    assert whole.status == "incomplete" and whole.output[-1].status == "incomplete"
    assert whole.output_text == last.response.output_text

    finished = list(
        ai.responses.create(**GREEDY, input=QUESTION, max_output_tokens=64, stream=True)
    )
    assert finished[-1].type == "response.completed"
    assert finished[-1].response.status == "completed" and finished[-1].response.completed_at


# -- input token counts -----------------------------------------------------------------------

WEATHER: Any = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


def test_input_tokens_counts_the_prompt_the_response_reads(ai: openai.OpenAI) -> None:
    asked: Any = {"instructions": "Answer briefly.", "input": QUESTION, "tools": WEATHER}
    counted = ai.responses.input_tokens.count(model=SMOL, **asked)
    assert counted.object == "response.input_tokens"
    answered = ai.responses.create(**GREEDY, **asked, max_output_tokens=4)
    assert answered.usage and counted.input_tokens == answered.usage.input_tokens
    # Instructions and tools are part of the prompt; a continued conversation brings its turns.
    bare = ai.responses.input_tokens.count(model=SMOL, input=QUESTION)
    assert bare.input_tokens < counted.input_tokens
    follow: Any = {"previous_response_id": answered.id, "input": "And of Spain?"}
    continued = ai.responses.input_tokens.count(model=SMOL, **follow)
    again = ai.responses.create(**GREEDY, **follow, max_output_tokens=4)
    assert again.usage and continued.input_tokens == again.usage.input_tokens
    assert continued.input_tokens > bare.input_tokens


def test_input_tokens_refusals_in_openais_shape(ai: openai.OpenAI, live: LiveServer) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        ai.responses.input_tokens.count(model="no-such-model", input="hi")
    assert unknown.value.body["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as gone:
        ai.responses.input_tokens.count(model=SMOL, input="hi", previous_response_id="resp_00")
    assert "not found" in gone.value.message
    for bad in ({"input": "hi"}, {"model": SMOL, "input": 5}, {"model": SMOL, "input": []}):
        with pytest.raises(openai.BadRequestError) as refused:
            ai.post("/responses/input_tokens", body=bad, cast_to=object)
        body: Any = refused.value.body
        assert body["type"] == "invalid_request_error" and body["message"]
    with pytest.raises(openai.BadRequestError, match="conversation is not supported"):
        ai.responses.input_tokens.count(model=SMOL, input="hi", conversation="conv_1")


# -- background mode --------------------------------------------------------------------------

COUNT = "Count from 1 to 10, separated by commas."
STORY = "Write a very long story about a dragon who learns to bake bread."


def wait_until_done(ai: openai.OpenAI, response: Any) -> Any:
    """Poll as OpenAI's background guide does, until the response leaves queued/in_progress."""
    deadline = time.monotonic() + PATIENCE_S
    while response.status in ("queued", "in_progress"):
        assert time.monotonic() < deadline, "the background response never finished"
        time.sleep(0.05)
        response = ai.responses.retrieve(response.id)
    return response


def test_background_response_polled_until_done(ai: openai.OpenAI) -> None:
    asked: Any = {**GREEDY, "input": COUNT, "max_output_tokens": 48}
    foreground = ai.responses.create(**asked, store=False)
    queued = ai.responses.create(**asked, background=True)
    assert queued.status == "queued" and queued.background is True and not queued.output
    done = wait_until_done(ai, queued)
    assert done.status == foreground.status and done.background is True
    assert done.output_text == foreground.output_text  # the same answer, run in the background
    assert done.usage and foreground.usage
    assert done.usage.output_tokens == foreground.usage.output_tokens
    # Its whole log, as it was streamed: numbered from 0, queued before in_progress.
    events = list(ai.responses.retrieve(done.id, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:3]] == [
        "response.created",
        "response.queued",
        "response.in_progress",
    ]
    assert events[0].response.status == "queued"  # type: ignore[union-attr]
    assert events[-1].type == f"response.{done.status}"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == done.output_text


def test_background_stream_left_after_ten_events_and_resumed(ai: openai.OpenAI) -> None:
    """openai-python's examples/responses/background.py: leave after event 10, come back with
    starting_after=10 and get exactly events 11 to the end; the run went on meanwhile."""
    seen: list[Any] = []
    response_id = None
    with ai.responses.create(
        **GREEDY, input=COUNT, max_output_tokens=48, background=True, stream=True
    ) as stream:
        for event in stream:
            if event.type == "response.created":
                response_id = event.response.id
            seen.append(event)
            if event.sequence_number == 10:
                break
    assert response_id is not None and [e.sequence_number for e in seen] == list(range(11))
    with ai.responses.retrieve(response_id=response_id, stream=True, starting_after=10) as stream:
        rest = list(stream)
    assert [e.sequence_number for e in rest] == list(range(11, 11 + len(rest)))
    assert rest[-1].type in ("response.completed", "response.incomplete")
    whole = list(ai.responses.retrieve(response_id, stream=True))
    assert [e.model_dump() for e in whole] == [e.model_dump() for e in [*seen, *rest]]
    final = ai.responses.retrieve(response_id)
    text = "".join(e.delta for e in whole if e.type == "response.output_text.delta")
    assert text == final.output_text and final.status == rest[-1].response.status

    # examples/responses/background_streaming.py: the stream helper, resumed by id.
    with ai.responses.stream(response_id=response_id, starting_after=10) as helper:
        resumed = list(helper)
        if final.status == "completed":
            assert helper.get_final_response().output_text == final.output_text
    assert [e.sequence_number for e in resumed] == [e.sequence_number for e in rest]


def test_background_response_cancelled(ai: openai.OpenAI, live: LiveServer) -> None:
    with ai.responses.create(
        **GREEDY, input=STORY, max_output_tokens=1500, background=True, stream=True
    ) as stream:
        for event in stream:
            if event.type == "response.created":
                response_id = event.response.id
            if event.type == "response.output_text.delta":
                break  # it runs: leave it running
    running = ai.responses.retrieve(response_id)
    assert running.status == "in_progress"
    cancelled = ai.responses.cancel(response_id)
    assert cancelled.status == "cancelled" and cancelled.id == response_id
    assert cancelled.output_text  # what it had written is kept
    assert cancelled.output[-1].status == "incomplete"  # type: ignore[union-attr]
    live.wait_for(lambda: live.running()[SMOL].busy == 0, "its slot to come free")
    assert ai.responses.retrieve(response_id).status == "cancelled"
    assert ai.responses.cancel(response_id).status == "cancelled"  # twice: the same answer
    # Its log ends where it stopped: no last event for a cancelled response.
    events = list(ai.responses.retrieve(response_id, stream=True))
    assert events and events[-1].type not in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_background_refusals_in_openais_shape(ai: openai.OpenAI, live: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError, match="store: true"):
        ai.responses.create(**GREEDY, input="hi", background=True, store=False)
    with pytest.raises(openai.NotFoundError) as unknown:
        ai.responses.retrieve("resp_" + "0" * 48, stream=True)
    assert unknown.value.body["code"] == "not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        ai.responses.cancel("resp_" + "0" * 48)
    foreground = ai.responses.create(**GREEDY, input="hi", max_output_tokens=4)
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a synchronous response"):
        ai.responses.cancel(foreground.id)
    events = list(ai.responses.retrieve(foreground.id, stream=True))
    with pytest.raises(openai.BadRequestError, match="past this response's last event"):
        list(ai.responses.retrieve(foreground.id, stream=True, starting_after=len(events)))
    assert not list(
        ai.responses.retrieve(foreground.id, stream=True, starting_after=len(events) - 1)
    )
    reply = httpx.get(f"{live.url}/v1/responses/{foreground.id}?stream=true&starting_after=x")
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error"


def test_a_stored_response_streams_its_events(ai: openai.OpenAI) -> None:
    """A response not run in the background, fetched with stream=true: its events, made from
    it (each item in one delta), which the stream helper reads back into the same response."""
    stored = ai.responses.create(**GREEDY, input=QUESTION, max_output_tokens=16)
    with ai.responses.stream(response_id=stored.id) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert final.output_text == stored.output_text and final.id == stored.id
    assert final.usage == stored.usage


def test_a_background_log_is_bounded(ai: openai.OpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its events take a share of LOCALRUN_RESPONSES_MAX_RECORD_BYTES; past it the answer
    stops and the response fails, saying so, its log whole up to there."""
    monkeypatch.setenv("LOCALRUN_RESPONSES_MAX_RECORD_BYTES", "20000")
    queued = ai.responses.create(**GREEDY, input=STORY, max_output_tokens=400, background=True)
    failed = wait_until_done(ai, queued)
    assert failed.status == "failed" and failed.error
    assert failed.error.code == "server_error"
    assert "outgrew" in failed.error.message and failed.output_text
    events = list(ai.responses.retrieve(failed.id, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.failed"
    assert sum(len(e.model_dump_json()) for e in events) < 20000


def test_background_runs_are_bounded_per_client(
    ai: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One client cannot queue runs without end (each generates whether or not anyone
    listens): past LOCALRUN_RESPONSES_BACKGROUND_MAX_PER_CLIENT it is refused with a 429."""
    monkeypatch.setenv("LOCALRUN_RESPONSES_BACKGROUND_MAX_PER_CLIENT", "1")
    story: Any = {**GREEDY, "input": STORY, "max_output_tokens": 1500, "background": True}
    first = ai.responses.create(**story)
    with pytest.raises(openai.RateLimitError) as refused:
        ai.responses.create(**story)
    assert refused.value.status_code == 429
    assert refused.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    assert "LOCALRUN_RESPONSES_BACKGROUND_MAX_PER_CLIENT" in refused.value.message
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert ai.responses.create(**GREEDY, input="hi", max_output_tokens=2).status  # not run so
    assert ai.responses.cancel(first.id).status == "cancelled"
    second = ai.responses.create(**{**story, "max_output_tokens": 4})  # room again
    assert wait_until_done(ai, second).status in ("completed", "incomplete")


def test_a_background_response_left_by_a_crashed_server_reads_as_failed(
    ai: openai.OpenAI, responses_dir: Path
) -> None:
    """A server that crashed mid-run and came back as the same pid (a container's pid 1): its
    record still says queued, under this pid, but it names another server. It reads as failed,
    is cancelled as it is, and a conversation continues from it."""
    asked: Any = {**GREEDY, "input": COUNT, "max_output_tokens": 8, "background": True}
    done = wait_until_done(ai, ai.responses.create(**asked))
    store = ResponseStore(responses_dir)
    record = store.load(done.id)
    assert record["owner"]["pid"] == os.getpid()  # this server, in this process
    # The record as the crashed server saved it at launch: queued, its first two events.
    record["response"].update(status="queued", output=[], usage=None, completed_at=None)
    record.update(events=record["events"][:2], messages=record["messages"][:-1])
    record["owner"] = {**record["owner"], "instance": "0" * 16}
    store.save(record)
    found = ai.responses.retrieve(done.id)
    assert found.status == "failed" and found.error and found.error.code == "server_error"
    assert "server stopped" in found.error.message
    events = list(ai.responses.retrieve(done.id, stream=True))
    assert [e.type for e in events] == ["response.created", "response.queued", "response.failed"]
    assert ai.responses.cancel(done.id).status == "failed"
    follow = ai.responses.create(
        **GREEDY, input="Go on.", previous_response_id=done.id, max_output_tokens=2
    )
    assert follow.status in ("completed", "incomplete")
    assert follow.previous_response_id == done.id


def test_a_background_response_whose_log_was_not_kept(
    live: LiveServer, ai: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log that fits its room but not the record with it: the response is stored without it.
    Its events made again from the response are not numbered as its stream was, so resuming
    after an event is a 400; its whole stream, made again, still reads from the start."""
    # The log's room is a share of the record's room chosen so that this does not happen;
    # a larger share makes it happen on a short answer.
    monkeypatch.setattr(responses_background, "_LOG_SHARE", 10.0)
    monkeypatch.setenv("LOCALRUN_RESPONSES_MAX_RECORD_BYTES", "8000")
    asked: Any = {**GREEDY, "input": COUNT, "max_output_tokens": 48, "background": True}
    done = wait_until_done(ai, ai.responses.create(**asked))
    assert done.status in ("completed", "incomplete") and done.output_text
    # Until it is stored the run stays in memory, its events with it, and a client resumes.
    runs = live.app.state.background.runs
    live.wait_for(lambda: done.id not in runs, "the run to be stored and let go")
    with pytest.raises(openai.BadRequestError, match="events were not kept"):
        list(ai.responses.retrieve(done.id, stream=True, starting_after=3))
    events = list(ai.responses.retrieve(done.id, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == f"response.{done.status}"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == done.output_text


@pytest.fixture
def narrow(store: Store, tmp_path: Path) -> Iterator[tuple[LiveServer, openai.OpenAI]]:
    """A server of one slot and a queue of one, its stored responses its own."""
    scheduler = Scheduler(store, num_parallel=1, max_loaded=1, max_queue=1)
    server = LiveServer(store, scheduler, responses_dir=tmp_path / "stored")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    try:
        yield server, client
    finally:
        server.close()


def test_background_runs_wait_in_the_queue_and_end_with_the_server(
    narrow: tuple[LiveServer, openai.OpenAI], tmp_path: Path
) -> None:
    server, ai = narrow
    ai.responses.create(**GREEDY, input="hi", max_output_tokens=2, store=False)  # loaded
    story: Any = {**GREEDY, "input": STORY, "max_output_tokens": 1500, "background": True}
    first = ai.responses.create(**story)
    server.wait_for(lambda: ai.responses.retrieve(first.id).status == "in_progress", "a slot")
    second = ai.responses.create(**story)  # waits for the one slot, as any request does
    time.sleep(0.5)
    assert ai.responses.retrieve(second.id).status == "queued"
    third = wait_until_done(ai, ai.responses.create(**story))  # the queue is full
    assert third.status == "failed" and third.error and third.error.code == "rate_limit_exceeded"
    # Cancelled while it waits: it leaves the queue, its log ends after response.queued.
    assert server.scheduler.waiting == 1
    assert ai.responses.cancel(second.id).status == "cancelled"
    assert server.scheduler.waiting == 0
    events = list(ai.responses.retrieve(second.id, stream=True))
    assert [e.type for e in events] == ["response.created", "response.queued"]
    assert ai.responses.retrieve(first.id).status == "in_progress"
    server.close()  # the server stops: the run it still had ends failed, and is saved
    record = ResponseStore(tmp_path / "stored").load(first.id)
    assert record["response"]["status"] == "failed"
    assert "server stopped" in record["response"]["error"]["message"]
    assert record["events"][-1]["type"] == "response.failed"
    assert record["response"]["output"][0]["content"][0]["text"]  # what it had written


def test_stored_responses_read_at_once_are_bounded_per_client(
    ai: openai.OpenAI, live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored response replayed to clients that do not read (issue 90: 24 such sockets took
    1.1-1.5 GB): past LOCALRUN_RESPONSES_RETRIEVALS_PER_CLIENT open at once, a 429; a stream
    closed gives its share back; a large hosted tool is echoed by its type alone."""
    monkeypatch.setenv("LOCALRUN_RESPONSES_RETRIEVALS_PER_CLIENT", "2")
    junk = {"type": "web_search", "filters": {"allowed_domains": ["x" * 1000] * 200}}
    done = ai.responses.create(**GREEDY, input=QUESTION, max_output_tokens=4,
                               tools=[junk, {"type": "web_search"}])  # type: ignore[list-item]  # fmt: skip
    assert [t.type for t in done.tools] == ["web_search", "web_search"]
    assert len(done.model_dump_json()) < 20_000
    # Its replay larger than the sockets hold: instructions past the context (the run fails).
    large = ai.responses.create(**GREEDY, input="Hi", instructions="word " * 600_000,
                                background=True, max_output_tokens=4)  # fmt: skip
    assert wait_until_done(ai, large).status == "failed"
    url = f"{live.url}/v1/responses/{large.id}?stream=true"
    with httpx.Client(timeout=PATIENCE_S) as one, httpx.Client(timeout=PATIENCE_S) as two:
        with one.stream("GET", url) as first, two.stream("GET", url) as second:
            assert first.status_code == second.status_code == 200
            refused = httpx.get(url, timeout=PATIENCE_S)
            assert refused.status_code == 429, refused.text
            assert "LOCALRUN_RESPONSES_RETRIEVALS_PER_CLIENT" in refused.json()["error"]["message"]
            assert int(refused.headers["retry-after"]) >= 1
            items = httpx.get(f"{live.url}/v1/responses/{done.id}/input_items", timeout=PATIENCE_S)
            assert items.status_code == 429
        live.wait_for(lambda: not live.app.state.retrievals.held, "the shares given back")
    events = list(ai.responses.retrieve(done.id, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert ai.responses.input_items.list(done.id).data
    replayed = list(ai.responses.retrieve(large.id, stream=True))
    assert [e.type for e in replayed][-1] == "response.failed"
