"""The runner process (`python -m localrun.worker`) driven through its JSON-lines protocol.

Real subprocesses: the batch engine on the tiny model and on SmolLM2 (`model`), and the fake
batch engine where only the protocol matters (cancellation timing, tool-call plumbing).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localrun.errors import (
    BadRequestError,
    ContextOverflowError,
    CorruptBlobError,
    InvalidParameterError,
    LocalrunError,
    ModelNotFoundError,
)
from localrun.recipes import create, modelfile
from localrun.request import GenRequest
from localrun.sources import obtain
from localrun.store import names, reference
from localrun.store.models import Store
from localrun.worker import protocol
from localrun.worker.sink import StopFilter

from support.tools import WEATHER

GREEDY = {"temperature": 0, "seed": 1}
DEADLINE = 120.0
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    },
}


class Reply:
    def __init__(
        self, pieces: list[str], final: dict[str, Any], groups: list[Any] | None = None
    ) -> None:
        self.pieces = pieces
        self.final = final
        self.groups = groups or []  # the "vectors" events of an embedding
        self.text = "".join(pieces)

    @property
    def reason(self) -> str:
        return str(self.final.get("reason"))

    @property
    def error(self) -> LocalrunError:
        assert self.final["event"] == protocol.ERROR, self.final
        return protocol.error_from_dict(self.final["error"])


class Worker:
    """A runner subprocess and the events it sends, sorted by request id."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localrun.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stderr: list[bytes] = []
        self.raw: list[bytes] = []
        self.pending: dict[Any, list[dict[str, Any]]] = {}
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)
            self.events.put(protocol.decode(line))
        self.events.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def send(self, message: dict[str, Any] | bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(message if isinstance(message, bytes) else protocol.encode(message))
        self.proc.stdin.flush()

    def event(self, timeout: float = DEADLINE) -> dict[str, Any] | None:
        return self.events.get(timeout=timeout)

    def id(self) -> int:
        self.next_id += 1
        return self.next_id

    def collect(self, id: Any, timeout: float = DEADLINE) -> Reply:
        """Events of request `id` up to its final one (others are kept for their readers)."""
        deadline = time.monotonic() + timeout
        mine = self.pending.setdefault(id, [])
        while not mine or mine[-1]["event"] not in protocol.FINAL_EVENTS:
            event = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            assert event is not None, "the worker exited: " + self.stderr_text()
            self.pending.setdefault(event.get("id"), []).append(event)
        del self.pending[id]
        pieces = [e["text"] for e in mine[:-1] if e["event"] == protocol.PIECE and "calls" not in e]
        told = [e["calls"] for e in mine[:-1] if e["event"] == protocol.PIECE and "calls" in e]
        calls = [call for found in told for call in found]
        groups = [e["embeddings"] for e in mine[:-1] if e["event"] == protocol.VECTORS]
        assert len(pieces) + len(groups) + len(told) == len(mine) - 1, mine
        # Calls go out as they are read; the final event repeats them all.
        assert calls == (mine[-1].get("tool_calls") or []), mine
        return Reply(pieces, mine[-1], groups)

    def chat(self, content: str, **fields: Any) -> Reply:
        return self.collect(self.start_chat(content, **fields))

    def start_chat(self, content: str, **fields: Any) -> int:
        id = self.id()
        messages = fields.pop("messages", [{"role": "user", "content": content}])
        self.send(protocol.generate_request(id, GenRequest("", messages=messages, **fields)))
        return id

    def close(self, timeout: float = 60) -> int:
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.proc.wait(timeout=timeout)

    def stderr_text(self) -> str:
        return b"".join(self.stderr).decode(errors="replace")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALRUN_")}
    return {**env, "LOCALRUN_HOME": str(home), **extra}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_long_model: Path) -> Path:
    """A store with `tiny` (the generated model), `long` (the same, trained on 2**24 tokens)
    and SmolLM2."""
    path = tmp_path_factory.mktemp("worker")
    store = Store(path / "models")
    folder = path / "src"
    folder.mkdir()
    for name, gguf in (("tiny", tiny_model), ("long", tiny_long_model)):
        (folder / f"{name}.gguf").write_bytes(gguf.read_bytes())
        create.create(store, names.parse(name), modelfile.parse(f"FROM {name}.gguf\n"), folder)
    obtain.find(store, reference.resolve("smollm2:135m"))
    return path


@contextlib.contextmanager
def spawn(root: Path, model: str, **load: Any) -> Iterator[Worker]:
    """A loaded worker; on exit its input is closed and it must exit 0 without a traceback."""
    worker = Worker(_env(root / "home"))
    worker.send(protocol.load_request(str(root / "models"), model, **load))
    ready = worker.event()
    assert ready is not None and ready["event"] == protocol.READY, (ready, worker.stderr_text())
    worker.ready = protocol.ReadyInfo.from_dict(ready["info"])  # type: ignore[attr-defined]
    yield worker
    assert worker.close() == 0, worker.stderr_text()
    assert "Traceback" not in worker.stderr_text()


@pytest.fixture(scope="module")
def tiny(root: Path) -> Iterator[Worker]:
    with spawn(root, "tiny", slots=2) as worker:
        yield worker


@pytest.fixture(scope="module")
def smol(root: Path) -> Iterator[Worker]:
    with spawn(root, "smollm2:135m", slots=2, options={"num_ctx": 2048}) as worker:
        yield worker


@pytest.fixture
def fake(root: Path) -> Iterator[Worker]:
    replies = ["Hello world!", "x" * 2000]
    with spawn(root, "tiny", slots=1, backend="fake", replies=replies, delay=0.005) as worker:
        yield worker


# -- the real engine on the tiny model -----------------------------------------------------------


@pytest.mark.model
def test_ready_info(tiny: Worker) -> None:
    info: protocol.ReadyInfo = tiny.ready  # type: ignore[attr-defined]
    assert info.n_ctx >= 256 and info.n_ctx_train == 256 and info.slots == 2
    assert info.size > 0 and 0 <= info.size_vram <= info.size
    assert info.layers == 3 and 0 <= info.gpu_layers <= info.layers
    assert info.processor.endswith(("CPU", "GPU")) and info.load_s > 0


@pytest.mark.model
def test_chat_streams_pieces_then_done(tiny: Worker) -> None:
    reply = tiny.chat("hello", options={**GREEDY, "num_predict": 8})
    assert reply.final["event"] == protocol.DONE and reply.reason in ("stop", "length")
    timings = protocol.timings_from_dict(reply.final["timings"])
    assert timings.prompt_tokens > 0 and 0 < timings.eval_tokens <= 8
    assert timings.total_s > 0 and reply.final["tool_calls"] is None
    assert reply.pieces and all(reply.pieces)
    again = tiny.chat("hello", options={**GREEDY, "num_predict": 8})
    assert again.text == reply.text  # greedy is deterministic, cached prefix or not
    assert protocol.timings_from_dict(again.final["timings"]).cached_tokens > 0


@pytest.mark.model
def test_complete_is_raw(tiny: Worker) -> None:
    id = tiny.id()
    request = GenRequest("", prompt="hello world", options={**GREEDY, "num_predict": 4})
    tiny.send(protocol.generate_request(id, request))
    reply = tiny.collect(id)
    assert reply.final["event"] == protocol.DONE
    timings = protocol.timings_from_dict(reply.final["timings"])
    # "hello world" is three tokens (BOS, ▁hello, ▁world): no template around it.
    assert timings.prompt_tokens + timings.cached_tokens == 3


@pytest.mark.model
def test_embed(tiny: Worker) -> None:
    id = tiny.id()
    tiny.send(protocol.embed_request(id, ["hello", "the world"]))
    reply = tiny.collect(id)
    assert reply.final["event"] == protocol.EMBEDDINGS and reply.final["prompt_tokens"] > 0
    vectors = reply.final["embeddings"]
    assert len(vectors) == 2 and len(vectors[0]) == 64
    assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-4
    id = tiny.id()
    tiny.send(protocol.embed_request(id, ["hello " * 400], truncate=False))
    assert isinstance(tiny.collect(id).error, ContextOverflowError)


@pytest.mark.model
def test_embed_sends_vectors_in_groups(tiny: Worker) -> None:
    texts = [f"text {i}" for i in range(protocol.EMBED_GROUP + 4)]
    id = tiny.id()
    tiny.send(protocol.embed_request(id, texts))
    reply = tiny.collect(id)
    assert [len(g) for g in reply.groups] == [protocol.EMBED_GROUP]
    assert len(reply.final["embeddings"]) == 4 and not reply.final["cancelled"]
    id = tiny.id()
    tiny.send(protocol.embed_request(id, texts[-1:]))
    alone = tiny.collect(id).final
    assert reply.final["embeddings"][-1] == pytest.approx(alone["embeddings"][0], abs=1e-5)
    assert reply.final["prompt_tokens"] > alone["prompt_tokens"] > 0


def test_an_empty_prompt_is_a_bad_request(fake: Worker) -> None:
    id = fake.id()
    fake.send(protocol.generate_request(id, GenRequest("", prompt="")))
    assert isinstance(fake.collect(id).error, BadRequestError)


@pytest.mark.model
def test_cancel(tiny: Worker) -> None:
    id = tiny.start_chat("hello", options={**GREEDY, "num_predict": -2, "repeat_penalty": 1.0})
    first = tiny.event()
    assert first is not None and first["event"] == protocol.PIECE and first["id"] == id
    tiny.send(protocol.cancel_request(id))
    tiny.send(protocol.cancel_request(12345))  # unknown (finished) ids are ignored
    reply = tiny.collect(id)
    assert reply.reason in ("cancelled", "length")  # a 256-token context may fill first


@pytest.mark.model
def test_stop_string_ends_the_answer(tiny: Worker) -> None:
    options = {**GREEDY, "num_predict": 24}
    full = tiny.chat("the world", options=options)
    assert len(full.text) > 6, full.text
    stop = full.text[3:6]
    cut = tiny.chat("the world", options={**options, "stop": [stop]})
    assert cut.reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]


@pytest.mark.model
def test_bad_requests_keep_the_worker_serving(tiny: Worker) -> None:
    tiny.send(b"not json\n")
    bad = tiny.event()
    assert bad is not None and "id" not in bad
    assert isinstance(protocol.error_from_dict(bad["error"]), BadRequestError)
    tiny.send(b"\n")  # blank lines are ignored
    cases: list[tuple[dict[str, Any], type[LocalrunError]]] = [
        ({"op": "dance"}, BadRequestError),
        ({"op": "chat", "messages": "hi"}, BadRequestError),
        ({"op": "chat", "messages": [{"content": "no role"}]}, BadRequestError),
        ({"op": "chat", "messages": [], "options": {"top_p": 7}}, InvalidParameterError),
        ({"op": "chat", "messages": [], "options": {"warmth": 1}}, InvalidParameterError),
        ({"op": "chat", "messages": [], "format": "xml"}, BadRequestError),
        ({"op": "chat", "messages": [], "format": {"type": "nonsense"}}, BadRequestError),
        ({"op": "chat", "messages": [], "tools": "nope"}, BadRequestError),
        ({"op": "complete", "prompt": 5}, BadRequestError),
        ({"op": "complete", "prompt": "hello " * 300}, ContextOverflowError),
        ({"op": "embed", "input": [1, 2]}, BadRequestError),
    ]
    for message, error in cases:
        id = tiny.id()
        tiny.send({**message, "id": id})
        reply = tiny.collect(id)
        assert isinstance(reply.error, error), (message, reply.final)
    tiny.send({"op": "chat", "messages": []})  # no id: answered without one
    missing = tiny.event()
    assert missing is not None and missing["event"] == protocol.ERROR and "id" not in missing
    assert tiny.chat("hello", options={"num_predict": 2}).final["event"] == protocol.DONE


@pytest.mark.model
def test_parallel_requests_share_the_slots(tiny: Worker) -> None:
    ids = [tiny.start_chat(f"hello {n}", options={**GREEDY, "num_predict": 6}) for n in range(5)]
    replies = [tiny.collect(id) for id in ids]
    assert all(r.final["event"] == protocol.DONE for r in replies)


@pytest.mark.model
def test_events_are_clean_json_lines(tiny: Worker) -> None:
    tiny.chat("hello", options={"num_predict": 4})
    for line in tiny.raw:
        assert line.endswith(b"\n") and json.loads(line)["event"] in protocol.EVENTS


# -- load failures -------------------------------------------------------------------------------


def _load_fails(root: Path, model: str, **env: str) -> tuple[LocalrunError, str]:
    worker = Worker(_env(root / "home", **env))
    worker.send(protocol.load_request(str(root / "models"), model))
    event = worker.event()
    assert worker.close() == 1
    assert event is not None and event["event"] == protocol.ERROR and "id" not in event
    assert worker.event() is None  # nothing after the error
    return protocol.error_from_dict(event["error"]), worker.stderr_text()


@pytest.mark.model
def test_missing_model_is_an_error_and_exit_1(root: Path) -> None:
    error, stderr = _load_fails(root, "nope:latest")
    assert isinstance(error, ModelNotFoundError) and "nope" in error.message
    assert "Traceback" not in stderr


@pytest.mark.model
@pytest.mark.slow
def test_corrupt_model_file(root: Path, tiny_model: Path) -> None:
    # A store of its own: the module's stays intact for the other tests.
    store = Store(root / "corrupt")
    folder = root / "corrupt-src"
    folder.mkdir()
    data = bytearray(tiny_model.read_bytes())
    (folder / "m.gguf").write_bytes(data)
    create.create(store, names.parse("broken"), modelfile.parse("FROM m.gguf\n"), folder)
    blob = next(p for p in (root / "corrupt" / "blobs").iterdir() if p.stat().st_size > 1000)
    blob.chmod(0o644)
    blob.write_bytes(data[: len(data) // 2])  # truncated: the tensor data is gone
    worker = Worker(_env(root / "home"))
    worker.send(protocol.load_request(str(root / "corrupt"), "broken"))
    event = worker.event()
    assert worker.close() == 1
    assert event is not None and event["event"] == protocol.ERROR
    error = protocol.error_from_dict(event["error"])
    assert isinstance(error, CorruptBlobError) and "damaged" in error.message
    assert "localrun verify" in (error.hint or "")
    assert "Traceback" not in worker.stderr_text()


def test_eof_before_load_exits_0(root: Path) -> None:
    worker = Worker(_env(root / "home"))
    assert worker.close() == 0 and worker.event() is None


def test_bad_load_request(root: Path) -> None:
    for message in (
        protocol.load_request(str(root / "models"), "tiny", slots=0),
        protocol.load_request(str(root / "models"), "tiny", backend="gpu-magic"),
        {"op": "chat", "id": 1, "messages": []},
    ):
        worker = Worker(_env(root / "home"))
        worker.send(message)
        event = worker.event()
        assert worker.close() == 1
        assert event is not None and event["event"] == protocol.ERROR
        assert isinstance(protocol.error_from_dict(event["error"]), BadRequestError)


# -- the fake engine: protocol plumbing ------------------------------------------------------------


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
    worker = Worker(_env(root / "home"))
    load = protocol.load_request(
        str(root / "models"), "tiny", backend="fake", replies=["y" * 5000], delay=0.01
    )
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


# -- the real engine on SmolLM2 ------------------------------------------------------------------


@pytest.mark.model
def test_smollm2_answers(smol: Worker) -> None:
    reply = smol.chat("What is the capital of France?", options={**GREEDY, "num_predict": 24})
    assert "Paris" in reply.text and reply.final["event"] == protocol.DONE


@pytest.mark.model
def test_smollm2_format_json(smol: Worker) -> None:
    reply = smol.chat(
        "Describe a cat as JSON.", format="json", options={**GREEDY, "num_predict": 80}
    )
    assert reply.reason == "stop", reply.text
    json.loads(reply.text)


@pytest.mark.model
def test_smollm2_format_schema(smol: Worker) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "color": {"enum": ["black", "white", "orange"]},
        },
        "required": ["name", "age", "color"],
    }
    reply = smol.chat(
        "Describe a cat: name, age and color.",
        format=schema,
        options={**GREEDY, "num_predict": 80},
    )
    assert reply.reason == "stop", reply.text
    value = json.loads(reply.text)
    assert set(value) == {"name", "age", "color"}
    assert isinstance(value["name"], str) and isinstance(value["age"], int)
    assert value["color"] in ("black", "white", "orange")


@pytest.mark.model
def test_smollm2_forced_tool_call(smol: Worker) -> None:
    options = {**GREEDY, "num_predict": 80}
    reply = smol.chat(
        "What is the weather in Paris?",
        tools=[WEATHER, ADD],
        tool_choice="required",
        options=options,
    )
    assert reply.pieces == [] and reply.reason == "stop"
    (call,) = reply.final["tool_calls"]
    assert call["name"] in ("get_weather", "add") and isinstance(call["arguments"], dict)
    named = smol.chat(
        "What is 1 plus 2?",
        tools=[WEATHER, ADD],
        tool_choice={"type": "function", "function": {"name": "add"}},
        options=options,
    )
    (call,) = named.final["tool_calls"]
    assert call["name"] == "add"
    assert set(call["arguments"]) == {"a", "b"}
    assert all(isinstance(v, int | float) for v in call["arguments"].values())


@pytest.mark.model
def test_smollm2_renders_a_tool_conversation(smol: Worker) -> None:
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
        },
        {"role": "tool", "content": "18 degrees and sunny"},
    ]
    reply = smol.chat("", messages=messages, tools=[WEATHER], options={**GREEDY, "num_predict": 30})
    assert reply.final["event"] == protocol.DONE, reply.final


# -- stop strings (pure) ---------------------------------------------------------------------------


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


# -- the event stream's writer thread ----------------------------------------------------------


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
