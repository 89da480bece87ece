"""Hostile input on the surfaces added after the first audit, against the real server and runners.

Each case was seen to grow a process by gigabytes, starve other requests or kill a runner; here
each gets its 4xx in the dialect's shape and the server and the runner answer the next request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from conftest import PATIENCE_S
from test_server import SMOL, LiveServer, add_model

from localrun.scheduler import Scheduler
from localrun.sources import obtain
from localrun.store import reference
from localrun.store.models import Store
from localrun.worker import protocol

pytestmark = [pytest.mark.server, pytest.mark.model]

PAIR = "<|im_start|><|endoftext|>"  # two of SmolLM2's special tokens


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("hostile") / "models")
    add_model(store, "tiny", tiny_model)
    obtain.find(store, reference.resolve(SMOL))
    server = LiveServer(store, Scheduler(store, num_parallel=2, max_loaded=2, max_queue=16))
    yield server
    server.close()


def post(live: LiveServer, path: str, body: Any) -> httpx.Response:
    return httpx.post(live.url + path, json=body, timeout=PATIENCE_S)


def generate(live: LiveServer) -> httpx.Response:
    body = {"model": SMOL, "prompt": "Hi", "stream": False, "options": {"num_predict": 3}}
    return post(live, "/api/generate", body)


# -- tokenize ---------------------------------------------------------------------------------


def test_tokenize_reads_a_bounded_text(live: LiveServer) -> None:
    too_long = post(live, "/tokenize", {"model": SMOL, "content": "a" * (2 * 1024 * 1024 + 1)})
    assert too_long.status_code == 400 and "LOCALRUN_MAX_TOKENIZE_BYTES" in too_long.text
    # With pieces, an answer of a few bytes a token: at most LOCALRUN_MAX_TOKEN_PIECES tokens.
    cjk = "漢字かな交じり文" * 12_000  # about 80,000 tokens, 288 KB
    pieces = post(live, "/tokenize", {"model": SMOL, "content": cjk, "with_pieces": True})
    assert pieces.status_code == 400 and "with_pieces" in pieces.text
    plain = post(live, "/tokenize", {"model": SMOL, "content": cjk})
    assert plain.status_code == 200 and len(plain.json()["tokens"]) > 65536
    assert generate(live).status_code == 200


def test_special_tokens_are_read_in_bounded_numbers(live: LiveServer) -> None:
    # llama.cpp reads special tokens in time quadratic in their number: 100k pairs took
    # minutes and held the runner; past LOCALRUN_MAX_SPECIAL_TOKENS the text is a 400.
    many = PAIR * 20_000
    with ThreadPoolExecutor(2) as pool:
        refused = pool.submit(
            post, live, "/tokenize", {"model": SMOL, "content": many, "parse_special": True}
        )
        other = pool.submit(generate, live)
        assert refused.result().status_code == 400
        assert "special tokens" in refused.result().text
        assert other.result().status_code == 200
    # Read as text, the same string is fine; and fewer special tokens are read as such.
    as_text = post(live, "/tokenize", {"model": SMOL, "content": many, "parse_special": False})
    assert as_text.status_code == 200 and len(as_text.json()["tokens"]) > 40_000
    some = post(live, "/tokenize", {"model": SMOL, "content": PAIR * 4000, "parse_special": True})
    assert some.status_code == 200 and len(some.json()["tokens"]) == 8000
    # A prompt is tokenized the same way: a chat message full of them is a 400 too.
    chat = {"model": SMOL, "messages": [{"role": "user", "content": many}], "stream": False}
    answer = post(live, "/api/chat", chat)
    assert answer.status_code == 400 and "special tokens" in answer.json()["error"]
    counted = post(
        live,
        "/v1/messages/count_tokens",
        {"model": SMOL, "messages": [{"role": "user", "content": many}]},
    )
    assert counted.status_code == 400 and counted.json()["type"] == "error"
    assert generate(live).status_code == 200


def test_characters_a_sentencepiece_vocabulary_lacks_are_read_in_bounded_numbers(
    live: LiveServer,
) -> None:
    # llama.cpp spells each such character byte by byte in time quadratic in their number:
    # on the tiny (SentencePiece) vocabulary 200k CJK characters took 7.8 s, 2 MB minutes.
    lacking = "中" * 70_000
    with ThreadPoolExecutor(2) as pool:
        refused = pool.submit(post, live, "/tokenize", {"model": "tiny", "content": lacking})
        other = pool.submit(generate, live)
        assert refused.result().status_code == 400, refused.result().text
        assert "byte by byte" in refused.result().json()["error"]["message"]
        assert other.result().status_code == 200
    fewer = post(live, "/tokenize", {"model": "tiny", "content": "中" * 30_000})
    assert fewer.status_code == 200 and len(fewer.json()["tokens"]) >= 90_000  # 3 bytes each
    chat = {"model": "tiny", "messages": [{"role": "user", "content": lacking}], "stream": False}
    answer = post(live, "/api/chat", chat)
    assert answer.status_code == 400 and "byte by byte" in answer.json()["error"]
    # SmolLM2's byte-level BPE reads any character in linear time: no such bound.
    assert post(live, "/tokenize", {"model": SMOL, "content": lacking}).status_code == 200


# -- detokenize and the runner's event channel ------------------------------------------------


def _tree_rss() -> int:
    me = psutil.Process()
    return me.memory_info().rss + sum(p.memory_info().rss for p in me.children(recursive=True))


def test_detokenize_reads_a_bounded_list_and_the_runner_lives(live: LiveServer) -> None:
    assert generate(live).status_code == 200
    pid = live.running()[SMOL].pid
    # 15 million ids (a 29 MB body) cost 50 s, 3 GB and the runner's life: now a fast 400
    # that says the limit, before a runner sees it.
    body = b'{"model": "' + SMOL.encode() + b'", "tokens": [' + b"0," * 15_000_000 + b"0]}"
    started = time.monotonic()
    refused = httpx.post(
        live.url + "/detokenize",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=PATIENCE_S,
    )
    assert refused.status_code == 400, refused.text[:300]
    assert "262,144" in refused.json()["error"]["message"]
    assert "LOCALRUN_MAX_DETOKENIZE_TOKENS" in refused.json()["error"]["hint"]
    assert "30.0 MB" in refused.json()["error"]["message"]  # refused by its size, unparsed
    assert time.monotonic() - started < 20
    assert _tree_rss() < 2 << 30
    # A list just past the limit in a small body is refused by its count.
    past = post(live, "/detokenize", {"model": SMOL, "tokens": [0] * 262_145})
    assert past.status_code == 400
    assert "tokens holds 262,145 token ids" in past.json()["error"]["message"]
    # At the limit, the text comes back; the runner is the same one.
    most = post(live, "/detokenize", {"model": SMOL, "tokens": [1] * 262_144})
    assert most.status_code == 200 and most.json()["content"] == "<|im_start|>" * 262_144
    assert generate(live).status_code == 200 and live.running()[SMOL].pid == pid


def test_an_answer_too_large_for_the_channel_costs_that_answer_not_the_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A runner's event line past the channel's limit used to get the runner killed (and the
    # model loaded again). With a small limit, a detokenized text over it is that request's
    # 400; the runner answers the next request and is the same process.
    monkeypatch.setattr(protocol, "LINE_LIMIT", 256 * 1024)
    store = Store(tmp_path / "models")
    obtain.find(store, reference.resolve(SMOL))
    server = LiveServer(store, Scheduler(store, num_parallel=2, max_loaded=1, max_queue=8))
    try:
        assert generate(server).status_code == 200
        pid = server.running()[SMOL].pid
        large = post(server, "/detokenize", {"model": SMOL, "tokens": [1] * 40_000})  # 480 KB
        assert large.status_code == 400, large.text[:300]
        assert "more than a runner sends in one event" in large.json()["error"]["message"]
        small = post(server, "/detokenize", {"model": SMOL, "tokens": [1] * 1000})
        assert small.status_code == 200 and len(small.json()["content"]) == 12_000
        assert generate(server).status_code == 200 and server.running()[SMOL].pid == pid
    finally:
        server.close()
