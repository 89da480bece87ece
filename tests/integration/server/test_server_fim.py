"""Fill in the middle (editors' autocomplete) through the real server and clients.

A tiny generated GGUF with FIM tokens (found by their texts, as llama.cpp does for many code
models) answers Ollama's `suffix`, OpenAI's completions `suffix` and llama-server's /infill:
the same greedy middle through all three, from a prompt laid out as llama-server lays it out.
The plain tiny model has no FIM tokens: a 400 that says so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from testmodels.text import write_tiny_model

from localrun.scheduler import Scheduler
from localrun.store.local import Store

from support import PATIENCE_S
from support.server import LiveServer, add_model

pytestmark = [pytest.mark.server, pytest.mark.model]

PREFIX = "def hello(name):\n    return "
SUFFIX = "\n\nprint(hello('world'))\n"
GREEDY = {"temperature": 0, "num_predict": 8}


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, tiny_fim_model: Path, tiny_model: Path
) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("fim") / "models")
    # Room for other files: llama-server's layout gives them what the context has beyond a
    # batch and twice the answer, and the tiny model's own context (256) leaves none.
    add_model(store, "coder", tiny_fim_model, "PARAMETER num_ctx 2048")
    add_model(store, "tiny", tiny_model)
    by_ids = write_tiny_model(tmp_path_factory.mktemp("fim-ids") / "tiny-fim-ids.gguf", fim="ids")
    add_model(store, "coder-ids", by_ids)
    server = LiveServer(store, Scheduler(store, num_parallel=2, max_loaded=2, max_queue=16))
    yield server
    server.close()


def layout_size(path: Path, prefix: str, suffix: str, extra: list[tuple[str, str]]) -> int:
    """How many tokens llama-server's infill layout of this request takes (computed here)."""
    from localrun.engine.types import LoadOptions
    from localrun.engine.weights import Weights

    weights = Weights(str(path), LoadOptions(num_ctx=256))
    try:

        def n(text: str) -> int:
            return len(weights.tokenize(text, add_special=False, parse_special=False))

        fim = weights.fim
        assert fim is not None and fim.bos >= 0
        size = 1 + n("myproject\n") if fim.rep >= 0 else 0  # <|repo_name|>
        if fim.sep >= 0:
            size += sum(1 + n(name + "\n") + n(text) for name, text in extra)  # other files
            size += 1 + n("filename\n")  # <|file_sep|> of the file being edited
        return size + 1 + 1 + n(prefix) + 1 + n(suffix) + 1  # BOS <PRE> .. <SUF> .. <MID>
    finally:
        weights.close()


def test_the_same_middle_through_every_route(live: LiveServer, tiny_fim_model: Path) -> None:
    oc = ollama.Client(host=live.url, timeout=PATIENCE_S)
    native = oc.generate("coder", PREFIX, suffix=SUFFIX, options=GREEDY)
    assert native.done and native.eval_count == 8
    assert native.prompt_eval_count == layout_size(tiny_fim_model, PREFIX, SUFFIX, [])

    ai = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0)
    completion = ai.completions.create(
        model="coder", prompt=PREFIX, suffix=SUFFIX, temperature=0, max_tokens=8
    )
    assert completion.choices[0].text == native.response
    assert completion.usage and completion.usage.prompt_tokens == native.prompt_eval_count

    body = {"model": "coder", "input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 8,
            "temperature": 0}  # fmt: skip
    infill = httpx.post(f"{live.url}/infill", json=body, timeout=PATIENCE_S).json()
    assert infill["content"] == native.response and infill["stop"] is True
    assert infill["tokens_predicted"] == 8 and infill["stop_type"] == "limit"
    assert infill["tokens_evaluated"] == native.prompt_eval_count
    assert infill["timings"]["predicted_n"] == 8

    streamed = []
    with httpx.stream("POST", f"{live.url}/infill", json={**body, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                streamed.append(json.loads(line[6:]))
    assert "".join(e["content"] for e in streamed) == native.response
    assert streamed[-1]["stop"] is True and not any(e["stop"] for e in streamed[:-1])

    # Ollama streams it too, and an empty prefix is a request of its own (not a load).
    parts = list(oc.generate("coder", PREFIX, suffix=SUFFIX, options=GREEDY, stream=True))
    assert "".join(p.response for p in parts) == native.response
    empty = oc.generate("coder", "", suffix=SUFFIX, options=GREEDY)
    assert empty.done_reason != "load" and empty.eval_count == 8


def test_other_files_come_first(live: LiveServer, tiny_fim_model: Path) -> None:
    extra = [("util.py", "def greet():\n    pass\n")]
    body = {
        "model": "coder",
        "input_prefix": PREFIX,
        "input_suffix": SUFFIX,
        "input_extra": [{"filename": name, "text": text} for name, text in extra],
        "n_predict": 4,
        "temperature": 0,
    }
    infill = httpx.post(f"{live.url}/infill", json=body, timeout=PATIENCE_S).json()
    assert infill["tokens_evaluated"] == layout_size(tiny_fim_model, PREFIX, SUFFIX, extra)


def test_capabilities_say_insert(live: LiveServer) -> None:
    oc = ollama.Client(host=live.url, timeout=PATIENCE_S)
    assert "insert" in (oc.show("coder").capabilities or [])
    assert "insert" in (oc.show("coder-ids").capabilities or [])
    assert "insert" not in (oc.show("tiny").capabilities or [])


def test_fim_tokens_named_by_the_gguf_keys(live: LiveServer, tmp_path: Path) -> None:
    """Token texts llama.cpp does not know, named by tokenizer.ggml.fim_*_token_id."""
    path = write_tiny_model(tmp_path / "ids.gguf", fim="ids")  # the same file
    oc = ollama.Client(host=live.url, timeout=PATIENCE_S)
    answer = oc.generate("coder-ids", PREFIX, suffix=SUFFIX, options=GREEDY)
    assert answer.done and answer.eval_count == 8
    assert answer.prompt_eval_count == layout_size(path, PREFIX, SUFFIX, [])


def test_a_model_without_fim_tokens_is_a_400(live: LiveServer) -> None:
    oc = ollama.Client(host=live.url, timeout=PATIENCE_S)
    with pytest.raises(ollama.ResponseError) as refused:
        oc.generate("tiny", PREFIX, suffix=SUFFIX)
    assert refused.value.status_code == 400 and "fill-in-the-middle" in refused.value.error
    ai = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="fill-in-the-middle"):
        ai.completions.create(model="tiny", prompt=PREFIX, suffix=SUFFIX, max_tokens=4)
    answer = httpx.post(
        f"{live.url}/infill",
        json={"model": "tiny", "input_prefix": PREFIX, "input_suffix": SUFFIX},
        timeout=PATIENCE_S,
    )
    assert answer.status_code == 400 and "fill-in-the-middle" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"model": "coder", "input_prefix": 5},
        {"model": "coder", "input_extra": "nope"},
        {"model": "coder", "input_extra": [{"filename": "a", "text": 7}]},
        {"model": "coder", "input_extra": [3]},
        {"model": "coder", "n_predict": "many"},
        {"model": "coder", "stop": [1]},
        {"input_prefix": "x"},  # no model named and none loaded... or several
    ],
)
def test_bad_infill_requests_are_400(live: LiveServer, body: dict[str, Any]) -> None:
    if "model" not in body:
        # Two loaded models: the route cannot pick one.
        for name in ("coder", "tiny"):
            httpx.post(f"{live.url}/api/generate", json={"model": name}, timeout=PATIENCE_S)
    answer = httpx.post(f"{live.url}/infill", json=body, timeout=PATIENCE_S)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["message"]
