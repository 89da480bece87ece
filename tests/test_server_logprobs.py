"""Log-probabilities through the real server (llama.cpp on SmolLM2) and the official clients.

Greedy decoding picks the likeliest token, so each token's logprob must equal the first of its
alternatives; the tokens must spell the text the client got, also when a stop string cuts it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest
from conftest import PATIENCE_S
from test_server import SMOL, LiveServer

from localrun.scheduler import Scheduler
from localrun.sources import obtain
from localrun.store import reference
from localrun.store.models import Store

pytestmark = [pytest.mark.server, pytest.mark.model]

ASK: Any = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("logprobs") / "models")
    obtain.find(store, reference.resolve(SMOL))
    server = LiveServer(store, Scheduler(store, num_parallel=2, max_loaded=1, max_queue=16))
    yield server
    server.close()


def check_greedy(entries: list[Any], text: str, top: int) -> None:
    """The entries spell `text`; each is the likeliest of its alternatives (greedy)."""
    assert entries and "".join(e.token for e in entries) == text
    for e in entries:
        assert e.logprob <= 0
        raw = getattr(e, "bytes", None)  # Ollama's client does not keep the bytes
        assert raw is None or bytes(raw).decode("utf-8", "replace") == e.token
        assert len(e.top_logprobs) == top
        probs = [t.logprob for t in e.top_logprobs]
        assert probs == sorted(probs, reverse=True)
        assert e.top_logprobs[0].token == e.token
        assert math.isclose(e.top_logprobs[0].logprob, e.logprob, abs_tol=1e-4)


def test_chat_logprobs(ai: openai.OpenAI) -> None:
    reply = ai.chat.completions.create(
        model=SMOL, messages=ASK, temperature=0, max_tokens=12, logprobs=True, top_logprobs=3
    )
    choice = reply.choices[0]
    assert choice.logprobs and choice.logprobs.content
    check_greedy(choice.logprobs.content, choice.message.content or "", 3)

    chunks = list(
        ai.chat.completions.create(
            model=SMOL, messages=ASK, temperature=0, max_tokens=12, logprobs=True,
            top_logprobs=2, stream=True,
        )
    )  # fmt: skip
    entries = [e for c in chunks if c.choices for e in (c.choices[0].logprobs or _none()).content]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    check_greedy(entries, text, 2)

    plain = ai.chat.completions.create(model=SMOL, messages=ASK, temperature=0, max_tokens=4)
    assert plain.choices[0].logprobs is None


class _none:
    content: tuple[Any, ...] = ()


def test_a_stop_string_drops_the_entries_past_it(ai: openai.OpenAI) -> None:
    full = ai.chat.completions.create(model=SMOL, messages=ASK, temperature=0, max_tokens=12)
    words = (full.choices[0].message.content or "").split()
    assert len(words) >= 3
    cut = ai.chat.completions.create(
        model=SMOL, messages=ASK, temperature=0, max_tokens=12, stop=[words[2]],
        logprobs=True, top_logprobs=1,
    )  # fmt: skip
    text = cut.choices[0].message.content or ""
    assert words[2] not in text
    content = cut.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None
    # The entries cover the text sent, the last one maybe only in part (where the stop began),
    # and none lies past it.
    spelled = "".join(e.token for e in content)
    assert spelled.startswith(text) and len(spelled) - len(content[-1].token) < len(text)


def test_completion_logprobs(ai: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    done = ai.completions.create(model=SMOL, prompt=prompt, max_tokens=5, temperature=0, logprobs=2)
    lp = done.choices[0].logprobs
    assert lp and lp.tokens and "".join(lp.tokens) == done.choices[0].text
    assert lp.token_logprobs and all(x <= 0 for x in lp.token_logprobs)
    assert lp.top_logprobs and all(len(alts) == 2 for alts in lp.top_logprobs)
    assert lp.text_offset and lp.text_offset[0] == len(prompt)
    streamed = list(
        ai.completions.create(
            model=SMOL, prompt=prompt, max_tokens=5, temperature=0, logprobs=2, stream=True
        )
    )
    tokens = [t for c in streamed for t in (c.choices[0].logprobs.tokens or [])]  # type: ignore[union-attr]
    assert tokens == lp.tokens


def test_ollama_logprobs(live: LiveServer) -> None:
    oc = ollama.Client(host=live.url, timeout=PATIENCE_S)
    options = {"temperature": 0, "num_predict": 8}
    answer = oc.chat(SMOL, ASK, options=options, logprobs=True, top_logprobs=2)
    assert answer.logprobs
    check_greedy(answer.logprobs, answer.message.content or "", 2)
    parts = list(oc.generate(SMOL, "Hello", options=options, logprobs=True, stream=True))
    entries = [e for p in parts for e in p.logprobs or []]
    assert "".join(e.token for e in entries) == "".join(p.response for p in parts)
    assert all(not e.top_logprobs for e in entries)
    plain = oc.chat(SMOL, ASK, options=options)
    assert not plain.logprobs


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": ASK, "logprobs": True, "top_logprobs": 21}),
        ("/v1/chat/completions", {"messages": ASK, "top_logprobs": 2}),
        ("/v1/completions", {"prompt": "x", "logprobs": 6}),
        ("/v1/completions", {"prompt": "x", "logprobs": True}),
        ("/api/chat", {"messages": ASK, "logprobs": True, "top_logprobs": -1}),
    ],
)
def test_bad_logprobs_are_400(live: LiveServer, path: str, body: dict[str, Any]) -> None:
    answer = httpx.post(f"{live.url}{path}", json={"model": SMOL, **body}, timeout=PATIENCE_S)
    assert answer.status_code == 400, answer.text
