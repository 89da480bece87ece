"""OpenAI's Responses API as its specification and openai-python's own flows have it: usage
with the prompt cache's reads and writes, an answer cut short ending in response.incomplete,
input token counts, and background mode (polled, streamed, left and resumed, cancelled).

One server with real runners (llama.cpp on SmolLM2) and the official `openai` client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from localrun.scheduler import Scheduler
from localrun.sources import obtain
from localrun.store import reference
from localrun.store.models import Store

from support.server import SMOL, LiveServer

pytestmark = [pytest.mark.server, pytest.mark.model]

QUESTION = "What is the capital of France? Answer with one word."
GREEDY: Any = {"model": SMOL, "temperature": 0}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = Store(tmp_path_factory.mktemp("responses") / "models")
    obtain.find(store, reference.resolve(SMOL))
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
    assert done[-1].item.status == "incomplete"  # type: ignore[union-attr]
    assert last.response.output[-1].status == "incomplete"  # type: ignore[union-attr]

    # openai-python's stream helper ends on it without raising, with the answer so far.
    with ai.responses.stream(**GREEDY, input=QUESTION, max_output_tokens=2) as stream:
        events = list(stream)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.output_text == last.response.output_text

    whole = ai.responses.create(**GREEDY, input=QUESTION, max_output_tokens=2)
    assert whole.status == "incomplete" and whole.output[-1].status == "incomplete"  # type: ignore[union-attr]
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
