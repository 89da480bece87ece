"""The real server (uvicorn on an ephemeral port) with the official `ollama` and `openai` clients.

One server per module, with real runners (llama.cpp) on SmolLM2 and the tiny model. Greedy
SmolLM2 answers are deterministic, which lets concurrent streams be checked against a single
request. `LiveServer` is shared with the other test_server_* modules.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pydantic
import pytest

from localrun.recipes import modelfile
from localrun.scheduler import Scheduler
from localrun.sources import obtain
from localrun.store import local as store_mod
from localrun.store import names, reference
from localrun.store.local import Store

from support import PATIENCE_S
from support.server import SMOL, LiveServer, add_model, prompts, pulled_again, show_round_trip
from support.tools import WEATHER

pytestmark = [pytest.mark.server, pytest.mark.model]

QUESTION = "What is the capital of France? Answer with one word."


def greedy(n: int) -> dict[str, Any]:
    return {"temperature": 0, "seed": 0, "num_predict": n}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("server") / "models")
    add_model(store, "tiny", tiny_model)
    obtain.find(store, reference.parse(SMOL))
    server = LiveServer(store, Scheduler(store, num_parallel=4, max_loaded=3, max_queue=64))
    yield server
    server.close()


# -- Ollama's client -------------------------------------------------------------------------


def test_ollama_generate_and_chat(oc: ollama.Client, live: LiveServer) -> None:
    answer = oc.generate(SMOL, QUESTION, options=greedy(12))
    assert "Paris" in answer.response
    assert answer.done and answer.done_reason in ("stop", "length")
    assert answer.eval_count and answer.eval_count > 0
    assert answer.prompt_eval_count and answer.prompt_eval_count > 5
    assert answer.total_duration and answer.eval_duration and answer.total_duration > 0

    parts = list(
        oc.chat(SMOL, [{"role": "user", "content": QUESTION}], options=greedy(12), stream=True)
    )
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    text = "".join(p.message.content or "" for p in parts)
    assert "Paris" in text
    assert parts[-1].eval_count and parts[-1].eval_count >= 1
    running = oc.ps().models
    assert SMOL in [m.model for m in running]
    smol = next(m for m in running if m.model == SMOL)
    assert smol.context_length and smol.size and smol.expires_at


def test_ollama_list_show(oc: ollama.Client) -> None:
    listed = {m.model: m for m in oc.list().models}
    assert {SMOL, "tiny:latest"} <= set(listed)
    assert listed[SMOL].details and listed[SMOL].details.family == "llama"
    assert listed[SMOL].size and listed[SMOL].digest and len(listed[SMOL].digest) == 64
    shown = oc.show(SMOL)
    assert shown.details and shown.details.quantization_level == "Q4_1"
    assert shown.modelinfo and shown.modelinfo["general.architecture"] == "llama"
    assert shown.template and "im_start" in shown.template
    assert shown.modelfile and shown.modelfile.count("FROM ") >= 1
    assert shown.capabilities and "completion" in shown.capabilities
    with pytest.raises(ollama.ResponseError) as missing:
        oc.show("no-such-model")
    assert missing.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as bad:
        oc.show("../../etc/passwd")
    assert bad.value.status_code == 400


def test_ollama_embed(oc: ollama.Client) -> None:
    result = oc.embed(SMOL, ["The cat sat.", "A dog ran."])
    assert len(result.embeddings) == 2 and len(result.embeddings[0]) == 576
    assert math.isclose(math.hypot(*result.embeddings[0]), 1.0, rel_tol=1e-3)
    single = oc.embeddings(SMOL, "The cat sat.")
    assert single.embedding == pytest.approx(result.embeddings[0], abs=1e-4)


def test_ollama_create_copy_delete(oc: ollama.Client, live: LiveServer, tiny_model: Path) -> None:
    done = oc.create(
        "mario", from_=SMOL, system="You are Mario.", parameters={"temperature": 0.3, "stop": ["x"]}
    )
    assert done.status == "success"
    shown = oc.show("mario")
    assert shown.parameters and "temperature" in shown.parameters
    assert oc.copy("mario", "me/luigi:v1").status == "success"
    assert {"mario:latest", "me/luigi:v1"} <= {m.model for m in oc.list().models}
    assert oc.delete("me/luigi:v1").status == "success"
    with pytest.raises(ollama.ResponseError) as gone:
        oc.delete("me/luigi:v1")
    assert gone.value.status_code == 404

    # A file is uploaded as a blob, then named by digest: the server reads no client path.
    digest = oc.create_blob(tiny_model)
    assert digest == "sha256:" + hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    events = list(oc.create("uploaded", files={"tiny.gguf": digest}, stream=True))
    assert events[-1].status == "success"
    assert oc.show("uploaded").details.family == "llama"  # type: ignore[union-attr]
    oc.delete("uploaded")
    oc.delete("mario")


def test_show_gives_a_go_template_that_comes_back_to_the_same_prompts(
    oc: ollama.Client, live: LiveServer
) -> None:
    """SmolLM2's Jinja writes a default system turn where a conversation has none, which none
    of Ollama's templates does: the Go template shown is written for its ChatML markers."""
    shown = show_round_trip(live.url, SMOL, [WEATHER])
    assert "You are a helpful AI assistant named SmolLM" in shown["template"]
    assert "<|im_start|>{{ .Role }}" in shown["template"]
    assert "{%" in shown["chat_template"]  # the GGUF's own, as it is
    assert oc.show(SMOL).template == shown["template"]
    # `localrun run` on a server shows (/show template) the template the model is prompted with.
    from localrun.cli.run.remote import view_from_show

    assert view_from_show(shown).template == shown["chat_template"]


def test_shows_modelfile_keeps_a_jinja_template_the_model_was_given(
    oc: ollama.Client, live: LiveServer
) -> None:
    """A model whose Modelfile gave it a Jinja TEMPLATE: its modelfile keeps that Jinja (the Go
    template shown renders its turns, not its tools), so /api/create of it prompts alike, tools
    and all."""
    jinja = httpx.post(f"{live.url}/api/show", json={"model": SMOL}).json()["chat_template"]
    own = "{#- given -#}" + jinja
    assert oc.create("smol-own", from_=SMOL, template=own).status == "success"
    try:
        shown = httpx.post(f"{live.url}/api/show", json={"model": "smol-own"}).json()
        assert modelfile.parse(shown["modelfile"]).template == own
        assert shown["chat_template"] == own and shown["template"]  # the Go one still shown
        copy = {"model": "smol-own-copy", "modelfile": shown["modelfile"], "stream": False}
        assert httpx.post(f"{live.url}/api/create", json=copy).status_code == 200
        for tools in (None, [WEATHER]):
            assert prompts(live.url, "smol-own-copy", tools) == prompts(live.url, "smol-own", tools)
    finally:
        for name in ("smol-own", "smol-own-copy"):
            oc.delete(name)


def test_ollama_pull_of_a_model_the_store_has(oc: ollama.Client, live: LiveServer) -> None:
    """The starter (a catalog model, in the store): Ollama's steps from its manifest, as
    ollama-python's pull example draws them (a tqdm bar a digest, the other lines printed)."""
    from tqdm import tqdm

    modified = live.store.manifest_path(names.parse(SMOL)).stat().st_mtime_ns
    updates = list(oc.pull(SMOL, stream=True))
    pulled_again(updates, live.store, SMOL)
    assert live.store.manifest_path(names.parse(SMOL)).stat().st_mtime_ns == modified
    assert oc.pull(SMOL).status == "success"  # not streamed: the last line alone

    shown, printed, bars = io.StringIO(), [], {}
    current = ""
    for progress in updates:  # examples/pull.py, its bars written to `shown`
        digest = progress.get("digest", "")
        if digest != current and current in bars:
            bars[current].close()
        if not digest:
            printed.append(progress.get("status"))
            continue
        if digest not in bars and (total := progress.get("total")):
            bars[digest] = tqdm(total=total, desc=f"pulling {digest[7:19]}", file=shown)
        if completed := progress.get("completed"):
            bars[digest].update(completed - bars[digest].n)
        current = digest
    manifest = live.store.read_manifest(names.parse(SMOL))
    assert printed == ["pulling manifest", "verifying sha256 digest", "writing manifest", "success"]
    assert {d: (b.n, b.total) for d, b in bars.items()} == {
        x.digest: (x.size, x.size) for x in [*manifest.layers, manifest.config]
    }


def test_ollama_pull_from_local_hub(
    oc: ollama.Client, live: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hubs.hfhub import FakeHub
    from testmodels.text import write_tiny_model

    fresh = write_tiny_model(tmp_path / "other.gguf", seed=7)  # not in the store
    with FakeHub() as hub:
        hub.add_repo("Test/Tiny-GGUF", {"tiny-Q8_0.gguf": fresh, "README.md": b"hi"})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)  # the pull job inherits it
        monkeypatch.setenv("HF_TOKEN", "")
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        events = list(oc.pull("hf.co/Test/Tiny-GGUF", stream=True))
        assert events[0].status == "pulling manifest"
        assert any(e.total and e.completed == e.total for e in events)
        assert events[-1].status == "success"
        assert "hf.co/test/tiny-gguf:latest" in {m.model for m in oc.list().models}
        # Again, unchanged on the hub: Ollama's steps for a model it has, nothing downloaded.
        sent = hub.bytes_sent
        again = list(oc.pull("hf.co/Test/Tiny-GGUF", stream=True))
        pulled_again(again, live.store, "hf.co/test/tiny-gguf:latest")
        assert hub.bytes_sent == sent
        with pytest.raises(ollama.ResponseError, match=r"not found|no such|does not exist"):
            list(oc.pull("hf.co/Test/Missing", stream=True))
    oc.delete("hf.co/test/tiny-gguf:latest")


# -- OpenAI's client -------------------------------------------------------------------------


def test_openai_chat_and_stream_with_usage(ai: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": QUESTION}]
    reply = ai.chat.completions.create(model=SMOL, messages=messages, temperature=0, max_tokens=12)
    choice = reply.choices[0]
    assert "Paris" in (choice.message.content or "")
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage and reply.usage.prompt_tokens > 5 and reply.usage.completion_tokens > 0

    chunks = list(
        ai.chat.completions.create(
            model=SMOL,
            messages=messages,
            temperature=0,
            max_completion_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and text in (choice.message.content or "")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage
    assert chunks[-1].usage.completion_tokens == 3


def test_openai_completions(ai: openai.OpenAI) -> None:
    done = ai.completions.create(
        model=SMOL, prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert "Paris" in done.choices[0].text
    assert done.usage and done.usage.completion_tokens == 5
    streamed = list(
        ai.completions.create(
            model=SMOL, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text
    assert streamed[-1].choices[0].finish_reason == "length"


def test_openai_embeddings(ai: openai.OpenAI, oc: ollama.Client) -> None:
    packed = ai.embeddings.create(model=SMOL, input=["The cat sat.", "A dog ran."])  # base64
    plain = ai.embeddings.create(model=SMOL, input="The cat sat.", encoding_format="float")
    assert [d.index for d in packed.data] == [0, 1]
    assert packed.data[0].embedding == pytest.approx(plain.data[0].embedding, abs=1e-5)
    assert len(plain.data[0].embedding) == 576 and packed.usage.prompt_tokens > 0
    short = ai.embeddings.create(model=SMOL, input="The cat sat.", dimensions=64)
    assert len(short.data[0].embedding) == 64
    assert math.isclose(math.hypot(*short.data[0].embedding), 1.0, rel_tol=1e-3)


class City(pydantic.BaseModel):
    city: str
    country: str


def test_openai_json_schema(ai: openai.OpenAI) -> None:
    parsed = ai.chat.completions.parse(
        model=SMOL,
        messages=[{"role": "user", "content": "Name the capital of France and its country."}],
        response_format=City,
        temperature=0,
        max_tokens=60,
    )
    city = parsed.choices[0].message.parsed
    assert isinstance(city, City) and city.city
    plain = ai.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": 'Reply with the JSON {"city": "Paris"}.'}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=40,
    )
    content = plain.choices[0].message.content or ""
    assert content.startswith("{")  # the JSON grammar held, even where SmolLM2 rambles on
    if plain.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


def test_tool_calls_in_both_dialects(ai: openai.OpenAI, live: LiveServer) -> None:
    ask: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    reply = ai.chat.completions.create(
        model=SMOL,
        messages=ask,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=60,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert "city" in json.loads(call.function.arguments)  # type: ignore[union-attr]
    # OpenAI's message fields beside the calls: refusal (required, nullable) and annotations.
    message = reply.model_dump(exclude_unset=True)["choices"][0]["message"]
    assert message["refusal"] is None and message["annotations"] == []
    assert message["content"] is None

    streamed = list(
        ai.chat.completions.create(
            model=SMOL,
            messages=ask,
            tools=[WEATHER],
            tool_choice="required",
            temperature=0,
            max_tokens=60,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    # A role-only chunk opens the choice; the call's id and name, then its arguments follow.
    opening = streamed[0].model_dump(exclude_unset=True)["choices"][0]
    assert opening["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert opening["logprobs"] is None and streamed[0].usage is None
    deltas = [c.choices[0].delta for c in streamed if c.choices and c.choices[0].delta.tool_calls]
    first_call = deltas[0].tool_calls[0] if deltas and deltas[0].tool_calls else None
    assert first_call and first_call.function and first_call.function.name == "get_weather"
    assert first_call.id and first_call.index == 0
    assert all(c.choices[0].delta.role is None for c in streamed[1:] if c.choices)
    assert streamed[-2].choices[0].finish_reason == "tool_calls"
    assert streamed[-1].choices == [] and streamed[-1].usage
    # openai-python's stream helper gathers the same message the stream told.
    with ai.chat.completions.stream(
        model=SMOL, messages=ask, tools=[WEATHER], tool_choice="required",  # type: ignore[list-item]
        temperature=0, max_tokens=60,
    ) as helper:  # fmt: skip
        final = helper.get_final_completion().choices[0].message
    assert final.role == "assistant" and final.tool_calls
    assert [c.function.name for c in final.tool_calls] == ["get_weather"]  # type: ignore[union-attr]

    # The native dialect: tool_calls with arguments as an object, each with Ollama's id and
    # function.index (its place in the answer; types.go has no omitempty: 0 is sent).
    body = {"model": SMOL, "messages": ask, "tools": [WEATHER], "tool_choice": "required",
            "stream": False, "options": greedy(60)}  # fmt: skip
    native = httpx.post(f"{live.url}/api/chat", json=body, timeout=PATIENCE_S).json()
    [whole] = native["message"]["tool_calls"]
    call_ = whole["function"]
    assert call_["name"] == "get_weather" and isinstance(call_["arguments"], dict)
    assert call_["index"] == 0 and whole["id"].startswith("call_")
    lines = httpx.post(f"{live.url}/api/chat", json={**body, "stream": True}, timeout=PATIENCE_S)
    [told] = [
        c for x in lines.text.splitlines() for c in json.loads(x)["message"].get("tool_calls", [])
    ]
    assert told["function"] == call_ and told["id"].startswith("call_")


def test_eight_simultaneous_streams(ai: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": QUESTION}]
    alone = ai.chat.completions.create(model=SMOL, messages=messages, temperature=0, max_tokens=8)
    expected = alone.choices[0].message.content

    def stream(_: int) -> tuple[str, str | None]:
        chunks = ai.chat.completions.create(
            model=SMOL, messages=messages, temperature=0, max_tokens=8, stream=True
        )
        parts = [(c.choices[0].delta.content or "", c.choices[0].finish_reason) for c in chunks]
        return "".join(p for p, _ in parts), parts[-1][1]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(stream, range(8)))
    assert [text for text, _ in results] == [expected] * 8
    assert {reason for _, reason in results} == {alone.choices[0].finish_reason}


def test_openai_errors(ai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        ai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        ai.chat.completions.create(model=SMOL, messages=[], max_tokens=3)
    with pytest.raises(openai.BadRequestError):
        ai.chat.completions.create(
            model=SMOL, messages=[{"role": "user", "content": "hi"}], temperature=-3
        )
    assert SMOL in {m.id for m in ai.models.list()}
    assert ai.models.retrieve(SMOL).id == SMOL
    with pytest.raises(openai.NotFoundError):
        ai.models.retrieve("nope")


# -- create and blobs: no server paths --------------------------------------------------------


def test_create_never_reads_server_paths(live: LiveServer, tmp_path: Path) -> None:
    real = tmp_path / "exists.gguf"
    real.write_bytes(b"GGUF")

    def refusal(body: dict[str, Any]) -> tuple[int, str]:
        r = httpx.post(f"{live.url}/api/create", json={"model": "x", "stream": False, **body})
        return r.status_code, r.json()["error"]

    for field in ("from", "modelfile"):
        answers = []
        for path in (str(real), str(tmp_path / "missing.gguf"), "/etc/passwd", "/nonexistent"):
            value = f"FROM {path}\n" if field == "modelfile" else path
            status, message = refusal({field: value})
            answers.append((status, message.replace(path, "PATH")))
        assert len(set(answers)) == 1, answers
        assert answers[0][0] == 400
    assert refusal({"files": {"a.gguf": "sha256:" + "0" * 64}})[0] == 400
    assert refusal({"files": {"a.gguf": "../../etc/passwd"}})[0] == 400
    assert refusal({"from": SMOL, "quantize": "q4_0"})[0] == 400


def test_blob_uploads_are_writers_and_wait_for_their_create(live: LiveServer) -> None:
    # A streamed upload during `localrun create` (whose start prunes leftovers) lost its
    # temporary file 3 times of 3; an uploaded blob could be pruned before its /api/create.
    data = b"an upload that streams slowly" * 4096
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started, release = threading.Event(), threading.Event()

    def body() -> Iterator[bytes]:
        yield data[:1000]
        started.set()
        release.wait(30)
        yield data[1000:]

    answer: list[httpx.Response] = []
    upload = threading.Thread(
        target=lambda: answer.append(
            httpx.post(f"{live.url}/api/blobs/{digest}", content=body(), timeout=PATIENCE_S)
        )
    )
    upload.start()
    assert started.wait(30)
    live.wait_for(
        lambda: [p for p in live.store.blobs.iterdir() if p.name.startswith(".tmp-")],
        "the upload's temporary file",
    )
    assert live.store.prune(blocking=False) is None  # busy: the upload holds the store
    release.set()
    upload.join(60)
    assert answer and answer[0].status_code == 201, answer
    # Referenced by nothing yet, the fresh upload survives a prune ...
    live.store.prune()
    assert live.store.has_blob(digest)
    # ... until its grace period is over.
    marker = live.store.root / "uploads" / digest.replace(":", "-")
    old = time.time() - store_mod.UPLOAD_GRACE_S - 1
    os.utime(marker, (old, old))
    report = live.store.prune()
    assert report is not None and report.orphan_blobs == 1
    assert not live.store.has_blob(digest) and not marker.exists()


def test_blob_upload_checks_digest(live: LiveServer) -> None:
    data = b"not a model, just bytes" * 100
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    url = f"{live.url}/api/blobs/{digest}"
    assert httpx.head(url).status_code == 404
    wrong = httpx.post(f"{live.url}/api/blobs/sha256:{'1' * 64}", content=data)
    assert wrong.status_code == 400 and "digest" in wrong.json()["error"]
    assert not live.store.has_blob("sha256:" + "1" * 64)
    assert httpx.post(url, content=data).status_code == 201
    assert httpx.head(url).status_code == 200
    assert httpx.post(url, content=data).status_code == 200
    assert httpx.post(f"{live.url}/api/blobs/sha256-..%2F..%2Fetc", content=b"x").status_code in (
        400,
        404,
    )
    assert not [p for p in live.store.blobs.iterdir() if p.name.startswith(".tmp-")]
    # A blob that is not a GGUF is refused by create, which names it by digest only.
    r = httpx.post(
        f"{live.url}/api/create",
        json={"model": "junk", "files": {"x.gguf": digest}, "stream": False},
        timeout=PATIENCE_S,
    )
    assert r.status_code == 400 and str(live.store.root) not in r.text


# -- a model resolved once ---------------------------------------------------------------------


def test_a_model_replaced_while_it_loads_is_served_as_admitted(
    tmp_path: Path, tiny_model: Path, smollm2_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler admits a request by the manifest `m` names then, and its runner is handed
    that model. A `create` that points `m` at another file while the runner starts, and a
    prune that finds the first file used by no manifest, change nothing: the runner loads the
    blobs it was handed (its lease keeps them), /api/ps shows the digest admitted and the
    context decided for it, and the answer is that model's. Once it is unloaded the blob goes."""
    from localrun.worker.process import RunnerProcess

    store = Store(tmp_path / "models")
    add_model(store, "m", Path(smollm2_path))
    manifest = store.read_manifest(names.parse("m"))
    admitted = hashlib.sha256(manifest.to_bytes()).hexdigest()
    blob = store.blob_path(manifest.of_kind("model")[0].digest)
    # The pause point: the runner process starts once the test has replaced the model.
    paused, go = threading.Event(), threading.Event()
    start = RunnerProcess.start

    async def start_when_told(self: RunnerProcess, **kw: Any) -> None:
        paused.set()
        await asyncio.to_thread(go.wait, PATIENCE_S)
        await start(self, **kw)

    monkeypatch.setattr(RunnerProcess, "start", start_when_told)
    server = LiveServer(store)
    try:
        body = {"model": "m", "prompt": QUESTION, "stream": False, "options": greedy(12)}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(
                httpx.post, f"{server.url}/api/generate", json=body, timeout=PATIENCE_S
            )
            try:
                assert paused.wait(PATIENCE_S), answer.result()
                add_model(store, "m", tiny_model)  # `m` is the tiny model now
                store.prune()
                assert blob.is_file()  # held for the runner of the manifest admitted
            finally:
                go.set()
            reply = answer.result()
        assert reply.status_code == 200, reply.text
        assert "Paris" in reply.json()["response"]  # SmolLM2's answer, not the tiny model's
        (shown,) = httpx.get(f"{server.url}/api/ps").json()["models"]
        assert (shown["name"], shown["digest"]) == ("m:latest", admitted)
        assert shown["context_length"] == 4096  # SmolLM2's default context; the tiny one's is 256
        unload = {"model": "m", "prompt": "", "keep_alive": 0}
        assert httpx.post(f"{server.url}/api/generate", json=unload, timeout=PATIENCE_S).is_success
        store.prune()
        assert not blob.exists()  # its runner gone, nothing holds it
    finally:
        server.close()
