"""The runner process (`python -m localrun.worker`) with the fake batch engine, where only the
protocol matters (cancellation timing, tool-call plumbing, bad requests), and the pure pieces:
stop strings, the stream writer."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from localrun.errors import (
    BadRequestError,
)
from localrun.request.genrequest import GenRequest
from localrun.worker import protocol
from localrun.worker.sink import StopFilter

from support.runner import Worker, load_message, runner_env, runner_root, spawn
from support.tools import ADD, WEATHER


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_long_model: Path) -> Path:
    return runner_root(tmp_path_factory.mktemp("worker"), tiny_model, tiny_long_model)


@pytest.fixture
def fake(root: Path) -> Iterator[Worker]:
    replies = ["Hello world!", "x" * 2000]
    with spawn(root, "tiny", slots=1, backend="fake", replies=replies, delay=0.005) as worker:
        yield worker


def test_an_empty_prompt_is_a_bad_request(fake: Worker) -> None:
    id = fake.id()
    fake.send(protocol.generate_request(id, GenRequest("", prompt="")))
    assert isinstance(fake.collect(id).error, BadRequestError)


def test_eof_before_load_exits_0(root: Path) -> None:
    worker = Worker(runner_env(root / "home"))
    assert worker.close() == 0 and worker.event() is None


def test_bad_load_request(root: Path) -> None:
    for message in (
        load_message(root / "models", "tiny", slots=0),
        load_message(root / "models", "tiny", backend="gpu-magic"),
        {**load_message(root / "models", "tiny"), "num_ctx": 0},
        {**load_message(root / "models", "tiny"), "model": "tiny"},  # a name, to look up: no
        {"op": "chat", "id": 1, "messages": []},
    ):
        worker = Worker(runner_env(root / "home"))
        worker.send(message)
        event = worker.event()
        assert worker.close() == 1
        assert event is not None and event["event"] == protocol.ERROR
        assert isinstance(protocol.error_from_dict(event["error"]), BadRequestError)


def test_fake_chat_cancel_and_queue(fake: Worker) -> None:
    first = fake.chat("hi")
    assert first.text == "Hello world!" and first.reason == "stop"
    long = fake.start_chat("hi")  # the long reply holds the only slot
    waiting = fake.start_chat("hi")  # queued behind it
    event = fake.event()
    assert event is not None and event["id"] == long
    fake.send(protocol.cancel_request(waiting))
    fake.send(protocol.cancel_request(long))
    held = fake.collect(long)
    assert held.reason == "cancelled" and len(held.text) < 1999  # one piece read above
    dropped = fake.collect(waiting)
    assert dropped.reason == "cancelled" and dropped.text == ""


def test_fake_eof_cancels_running_requests(root: Path) -> None:
    worker = Worker(runner_env(root / "home"))
    load = load_message(root / "models", "tiny", backend="fake", replies=["y" * 5000], delay=0.01)
    worker.send(load)
    assert (worker.event() or {})["event"] == protocol.READY
    id = worker.start_chat("hi")
    assert (worker.event() or {})["event"] == protocol.PIECE
    assert worker.close() == 0
    assert worker.collect(id).reason == "cancelled"


def test_fake_tool_calls_are_parsed(root: Path) -> None:
    replies = [
        'Sure.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        '{"name": "add", "arguments": {"a": 1, "b": 2}}',
        '{"name": "add", "arguments": {"a": 1, "b": 2}}',
    ]
    load = {"backend": "fake", "replies": replies, "options": {"num_ctx": 4096}}
    with spawn(root, "long", **load) as worker:
        _check_tool_calls(worker)


def _check_tool_calls(worker: Worker) -> None:
    reply = worker.chat("weather?", tools=[WEATHER, ADD])
    assert reply.text == "Sure."
    assert reply.final["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    forced = worker.chat("add", tools=[WEATHER, ADD], tool_choice="required")
    assert forced.pieces == []
    assert forced.final["tool_calls"] == [{"name": "add", "arguments": {"a": 1, "b": 2}}]
    ignored = worker.chat("add", tools=[WEATHER, ADD], tool_choice="none")
    assert ignored.final["tool_calls"] is None and ignored.text.startswith('{"name": "add"')


def test_stop_filter() -> None:
    stop = StopFilter(["END", "xyz"])
    assert stop.feed("abc E") == "abc "
    assert stop.feed("N") == ""
    assert stop.feed("o") == "ENo"
    assert stop.feed("x") == ""
    assert stop.feed("xyz and more") == "x" and stop.hit
    assert stop.feed("later") == "" and stop.flush() == ""
    held = StopFilter(["STOP"])
    assert held.feed("ST") == "" and held.flush() == "ST"
    assert StopFilter([]).feed("anything") == "anything"


def test_events_from_many_threads_are_written_whole_in_order_and_flushed_at_close() -> None:
    """The loop hands each line to the writer thread (worker.writer): every thread's lines come
    out whole and in the order it sent them, and close() writes all that was sent first."""
    import io

    from localrun.worker.writer import StreamOutput

    stream = io.BytesIO()
    output = StreamOutput(stream)

    def send(thread: int) -> None:
        for i in range(300):
            output.send(protocol.piece_event(thread, f"{thread}:{i}"))

    senders = [threading.Thread(target=send, args=(t,)) for t in range(4)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    output.flush()
    written = stream.getvalue()
    output.send(protocol.piece_event(9, "last"))
    output.close()
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(written.splitlines()) == 1200 and len(events) == 1201
    for thread in range(4):
        texts = [e["text"] for e in events if e["id"] == thread]
        assert texts == [f"{thread}:{i}" for i in range(300)]
    assert events[-1]["text"] == "last"


def test_a_reader_gone_marks_the_stream_broken_and_nothing_blocks() -> None:
    from localrun.worker.writer import StreamOutput

    read, write = os.pipe()
    os.close(read)
    stream = os.fdopen(write, "wb")
    output = StreamOutput(stream)
    output.send(protocol.piece_event(1, "x"))
    output.flush(10.0)
    assert output.broken
    output.send(protocol.piece_event(1, "y"))  # dropped, as before: no reader left
    output.close()
    with contextlib.suppress(OSError):
        stream.close()
