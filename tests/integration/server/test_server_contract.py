"""What the clients of Ollama, OpenAI and Anthropic take for granted, on the real server.

llama.cpp's server tests and Ollama's integration tests, run against `localrun serve` through
their own clients, found these: the context a request asks for is its limit, Anthropic's stream
tells the prompt's size at its start, `logit_bias` is honoured, and /api/show's capabilities say
what localrun does with a model. Real runners (llama.cpp) on SmolLM2 and the tiny model, with
the official `ollama`, `openai` and `anthropic` clients.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from localrun.scheduler import Scheduler
from localrun.sources import obtain
from localrun.store import reference
from localrun.store.local import Store

from support import PATIENCE_S
from support.server import SMOL, LiveServer, add_model
from support.tools import WEATHER

pytestmark = [pytest.mark.server, pytest.mark.model]

HI: Any = [{"role": "user", "content": "What is the capital of France?"}]


def mean_pooled(source: Path, target: Path) -> Path:
    """`source` with a pooling type: a model made for embeddings, as llama.cpp reads it."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(target), "llama")
    mean = MetadataDetails(gguf.GGUFValueType.UINT32, int(gguf.PoolingType.MEAN))
    copy_with_new_metadata(reader, writer, {"llama.pooling_type": mean}, [])
    return target


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("contract")
    store = Store(root / "models")
    add_model(store, "tiny", tiny_model)
    add_model(store, "embedder", mean_pooled(tiny_model, root / "pooled.gguf"))
    obtain.find(store, reference.parse(SMOL))
    server = LiveServer(store, Scheduler(store, num_parallel=2, max_loaded=3, max_queue=64))
    yield server
    server.close()


def tokens(live: LiveServer, text: str, model: str = SMOL) -> list[int]:
    answer = httpx.post(
        f"{live.url}/tokenize", json={"model": model, "content": text, "add_special": False}
    )
    assert answer.status_code == 200, answer.text
    return [int(t) for t in answer.json()["tokens"]]


# -- the context asked for --------------------------------------------------------------------


def test_the_context_a_request_asks_for_is_its_limit(
    oc: ollama.Client, ai: openai.OpenAI, live: LiveServer
) -> None:
    # llama.cpp pads a context to a multiple of 256: the limit is still the num_ctx asked for.
    text = "one two three four five six seven eight"
    with pytest.raises(ollama.ResponseError) as refused:
        oc.embed("tiny", text, truncate=False, options={"num_ctx": 3})
    assert refused.value.status_code == 400 and "context" in refused.value.error
    cut = oc.embed("tiny", text, options={"num_ctx": 3})
    assert cut.prompt_eval_count == 3
    prompt = "word " * 70  # 140 tokens of the tiny model: over 100, under the padded 256
    assert 100 < len(tokens(live, prompt, "tiny")) < 256
    body = {"model": "tiny", "prompt": prompt, "raw": True, "stream": False,
            "options": {"num_ctx": 100, "num_predict": 2}}  # fmt: skip
    answer = httpx.post(f"{live.url}/api/generate", json=body, timeout=PATIENCE_S)
    assert answer.status_code == 400 and answer.json()["code"] == "context_length_exceeded"
    assert answer.json()["limit"] == 100  # the request's limit, whatever runner answered it
    # Loaded rounded up to a power of two (a growing num_ctx keeps one runner); /api/ps says
    # what the runner was loaded with, as Ollama's clients read it.
    assert live.running()["tiny:latest"].context_length == 128
    listed = {m.model: m for m in oc.ps().models}
    assert listed["tiny:latest"].context_length == 128
    # An answer ends at the limit too: 100 tokens of context hold the prompt and the answer.
    short = oc.generate("tiny", "word " * 30, raw=True, options={"num_ctx": 100,
                                                                 "num_predict": 500})  # fmt: skip
    assert short.done_reason == "length"
    assert (short.prompt_eval_count or 0) + (short.eval_count or 0) <= 100


# -- Anthropic's stream -----------------------------------------------------------------------


def test_anthropics_stream_tells_the_prompts_size_at_its_start(live: LiveServer) -> None:
    ant = anthropic.Anthropic(base_url=live.url, api_key="x", max_retries=0)
    with ant.messages.stream(model=SMOL, messages=HI, max_tokens=8) as stream:
        events = list(stream)
        final = stream.get_final_message()
    start = next(e for e in events if e.type == "message_start")
    told = start.message.usage.input_tokens  # the cached part is known at the end only
    assert told > 10
    assert told == final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0)
    whole = ant.messages.create(model=SMOL, messages=HI, max_tokens=8)
    assert whole.usage.input_tokens + (whole.usage.cache_read_input_tokens or 0) == told
    counted = ant.messages.count_tokens(model=SMOL, messages=HI)
    assert counted.input_tokens == told


# -- logit_bias -------------------------------------------------------------------------------


def _greedy(ai: openai.OpenAI, **kw: Any) -> tuple[str, list[str]]:
    """A greedy chat answer of 8 tokens: its text and its tokens (from its log-probabilities)."""
    answer = ai.chat.completions.create(
        model=SMOL, messages=HI, temperature=0, max_tokens=8, logprobs=True, **kw
    )
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    return choice.message.content or "", [t.token for t in choice.logprobs.content]


def test_logit_bias_steers_the_answer(ai: openai.OpenAI, live: LiveServer) -> None:
    text, pieces = _greedy(ai)
    assert text and len(pieces) == 8
    banned = {token for piece in pieces for token in tokens(live, piece)}
    other, other_pieces = _greedy(ai, logit_bias={str(t): -100 for t in banned})
    assert other != text
    assert not set(other_pieces) & set(pieces), (pieces, other_pieces)
    # +100 on one token: greedy picks it every time.
    forced = tokens(live, " banana")[0]
    piece = httpx.post(f"{live.url}/detokenize", json={"model": SMOL, "tokens": [forced]})
    shown = piece.json()["content"]
    chosen, _ = _greedy(ai, logit_bias={str(forced): 100}, max_completion_tokens=3)
    assert chosen.strip() == (shown * 3).strip()
    # The legacy completions take it too, and llama-server's [[id, false]] form bans a token.
    plain = ai.completions.create(model=SMOL, prompt="The capital of France is", max_tokens=1,
                                  temperature=0)  # fmt: skip
    first = tokens(live, plain.choices[0].text)[0]
    biased = ai.completions.create(model=SMOL, prompt="The capital of France is", max_tokens=1,
                                   temperature=0, logit_bias={str(first): -100})  # fmt: skip
    assert biased.choices[0].text != plain.choices[0].text
    body = {"model": SMOL, "prompt": "The capital of France is", "max_tokens": 1,
            "temperature": 0, "logit_bias": [[first, False]]}  # fmt: skip
    listed = httpx.post(f"{live.url}/v1/completions", json=body, timeout=PATIENCE_S).json()
    assert listed["choices"][0]["text"] == biased.choices[0].text


@pytest.mark.parametrize(
    ("bias", "fragment"),
    [
        ({"hello": 5}, "token ids"),
        ({"17": 200}, "-100 to 100"),
        ({"17": "high"}, "-100 to 100"),
        ({"99999999": -100}, "vocabulary"),
        ("all of them", "token ids to biases"),
    ],
)
def test_a_bad_logit_bias_is_a_400(ai: openai.OpenAI, bias: Any, fragment: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        ai.chat.completions.create(
            model=SMOL, messages=HI, max_tokens=2, extra_body={"logit_bias": bias}
        )
    assert fragment in str(refused.value.message), refused.value.message


# -- capabilities -----------------------------------------------------------------------------


def test_capabilities_say_what_localrun_does(
    oc: ollama.Client, ai: openai.OpenAI, live: LiveServer
) -> None:
    # Tool calls work with any chat model (SmolLM2's template renders none: a system note).
    for name in (SMOL, "tiny"):
        assert oc.show(name).capabilities == ["completion", "tools"]
    called = ai.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_tokens=60,
    )
    calls = called.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    # Only a model made for embeddings says `embedding`, as Ollama's list does; a chat model
    # still embeds when asked.
    assert oc.show("embedder").capabilities == ["embedding"]
    assert len(oc.embed("embedder", "hello").embeddings[0]) > 0
    assert len(oc.embed(SMOL, "hello").embeddings[0]) > 0
