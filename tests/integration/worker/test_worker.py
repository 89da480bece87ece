"""The runner process (`python -m localrun.worker`) driven through its JSON-lines protocol, with
the batch engine on the tiny model and on SmolLM2. The fake batch engine's tests, where only the
protocol matters, are in tests/unit/worker/test_worker.py."""

from __future__ import annotations

import json
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
    StoreError,
)
from localrun.recipes import create, modelfile
from localrun.request.genrequest import GenRequest
from localrun.store import names
from localrun.store.local import Store
from localrun.worker import protocol

from support.runner import Worker, load_message, runner_env, runner_root, spawn
from support.tools import ADD, WEATHER

GREEDY = {"temperature": 0, "seed": 1}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_long_model: Path) -> Path:
    return runner_root(tmp_path_factory.mktemp("worker"), tiny_model, tiny_long_model)


@pytest.fixture(scope="module")
def tiny(root: Path) -> Iterator[Worker]:
    with spawn(root, "tiny", slots=2) as worker:
        yield worker


@pytest.fixture(scope="module")
def smol(root: Path) -> Iterator[Worker]:
    with spawn(root, "smollm2:135m", slots=2, options={"num_ctx": 2048}) as worker:
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


def _load_fails(root: Path, message: dict[str, Any]) -> tuple[LocalrunError, str]:
    worker = Worker(runner_env(root / "home"))
    worker.send(message)
    event = worker.event()
    assert worker.close() == 1
    assert event is not None and event["event"] == protocol.ERROR and "id" not in event
    assert worker.event() is None  # nothing after the error
    return protocol.error_from_dict(event["error"]), worker.stderr_text()


@pytest.mark.model
def test_the_runner_loads_what_it_was_handed_not_what_the_name_is_now(
    root: Path, tmp_path: Path, tiny_model: Path, tiny_long_model: Path
) -> None:
    """The load message carries the model as it was resolved: `m` created anew from another
    file after that changes nothing the runner loads. Its blobs collected (nothing held them
    here: store.leases is the scheduler's to take), the load fails with a typed error."""
    store = Store(tmp_path / "models")
    for gguf in (tiny_model, tiny_long_model):
        (tmp_path / gguf.name).write_bytes(gguf.read_bytes())
    create.create(store, names.parse("m"), modelfile.parse(f"FROM {tiny_model.name}\n"), tmp_path)
    message = load_message(tmp_path / "models", "m", backend="fake")
    assert message["num_ctx"] == 256  # tiny's trained context, decided with the message
    replaced = modelfile.parse(f"FROM {tiny_long_model.name}\n")
    create.create(store, names.parse("m"), replaced, tmp_path)  # trained on 2**24
    worker = Worker(runner_env(root / "home"))
    worker.send(message)
    ready = worker.event()
    assert ready is not None and ready["event"] == protocol.READY, worker.stderr_text()
    assert ready["info"]["n_ctx"] == ready["info"]["n_ctx_train"] == 256
    assert worker.close() == 0
    store.prune()  # the first file's blob: used by no manifest now, and held by nobody
    error, stderr = _load_fails(root, message)
    assert isinstance(error, StoreError) and "m:latest" in error.message, error
    assert "Traceback" not in stderr and str(tmp_path) not in error.message


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
    worker = Worker(runner_env(root / "home"))
    worker.send(load_message(root / "corrupt", "broken"))
    event = worker.event()
    assert worker.close() == 1
    assert event is not None and event["event"] == protocol.ERROR
    error = protocol.error_from_dict(event["error"])
    assert isinstance(error, CorruptBlobError) and "damaged" in error.message
    assert "localrun verify" in (error.hint or "")
    assert "Traceback" not in worker.stderr_text()


# -- the fake engine: protocol plumbing ------------------------------------------------------------


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
def test_a_slow_grammar_holds_neither_a_cancel_nor_another_request(smol: Worker) -> None:
    """A format whose grammar takes seconds to check and compile (6,000 properties) is prepared
    off the thread that reads the runner's messages (issue 90: it held another client's plain
    chat 6.88 s, and every cancel): the plain chat is answered while it is prepared, and a
    cancel sent meanwhile ends it before any token."""
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(6000)}}
    slow = smol.start_chat("Hi", format=schema, options={**GREEDY, "num_predict": 4})
    plain = smol.start_chat("Say hi.", options={**GREEDY, "num_predict": 4})
    smol.send(protocol.cancel_request(slow))
    assert smol.chat("Say yes.", options={**GREEDY, "num_predict": 2}).reason == "length"
    assert smol.collect(plain).reason == "length"
    mine = smol.pending.get(slow, [])
    assert not [e for e in mine if e["event"] in protocol.FINAL_EVENTS], mine  # still preparing
    ended = smol.collect(slow)
    assert ended.reason == "cancelled" and not ended.text


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


# -- the event stream's writer thread ----------------------------------------------------------
