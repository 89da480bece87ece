"""Hostile input on the surfaces added after the first audit, against the real server and runners.

Each case was seen to grow a process by gigabytes, starve other requests or kill a runner; here
each gets its 4xx in the dialect's shape and the server and the runner answer the next request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from localrun.scheduler import Scheduler
from localrun.sources import obtain
from localrun.store import reference
from localrun.store.local import Store
from localrun.worker import protocol

from support import PATIENCE_S
from support.server import SMOL, LiveServer, add_model

pytestmark = [pytest.mark.server, pytest.mark.model]

PAIR = "<|im_start|><|endoftext|>"  # two of SmolLM2's special tokens


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("hostile") / "models")
    add_model(store, "tiny", tiny_model)
    obtain.find(store, reference.parse(SMOL))
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
    obtain.find(store, reference.parse(SMOL))
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


# -- schemas: checks off the event loop, grammars that crash the compiler ----------------------


class VersionProbe:
    """The slowest GET /api/version while a hostile request runs (the event loop must stay
    free), polled every 50 ms on a thread."""

    def __init__(self, live: LiveServer) -> None:
        self.live, self.slowest, self.answers = live, 0.0, 0
        self._pool = ThreadPoolExecutor(1)
        self._stop = False
        self._done = self._pool.submit(self._poll)

    def _poll(self) -> None:
        with httpx.Client(timeout=PATIENCE_S) as client:
            while not self._stop:
                started = time.monotonic()
                assert client.get(self.live.url + "/api/version").status_code == 200
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.answers += 1
                time.sleep(0.05)

    def stop(self) -> float:
        self._stop = True
        self._done.result()
        self._pool.shutdown()
        assert self.answers > 0
        return self.slowest


def ref_chain(n: int) -> dict[str, Any]:
    """A schema whose definitions chain `n` deep: each object's property is the next."""
    defs: dict[str, Any] = {
        f"d{i}": {"type": "object", "properties": {"x": {"$ref": f"#/$defs/d{i + 1}"}}}
        for i in range(n)
    }
    defs[f"d{n}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def test_a_backtracking_pattern_in_the_check_after_holds_that_request_alone(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `not` is checked after the answer; its pattern backtracks 2^n steps on n characters
    # (^(a|.)*b$ passes a gate on widths), and the check ran on the event loop: every other
    # client waited 32 s for a 27-character answer. Now it runs in a child that is stopped at
    # LOCALRUN_CHECK_TIMEOUT, and the answer is a 422.
    monkeypatch.setenv("LOCALRUN_CHECK_TIMEOUT", "1s")
    assert generate(live).status_code == 200  # the model loaded: only the check is timed
    schema = {"type": "string", "const": "a" * 40, "not": {"pattern": "^(a|.)*b$"}}
    probe = VersionProbe(live)
    started = time.monotonic()
    body = {"model": SMOL, "prompt": "Say a", "format": schema, "stream": False,
            "options": {"num_predict": 64}}  # fmt: skip
    answer = post(live, "/api/generate", body)
    took = time.monotonic() - started
    assert probe.stop() < 2.0  # it was 32 s; 2 s leaves room for a busy machine
    assert answer.status_code == 422, answer.text[:300]
    assert "took over 1 s" in answer.json()["error"]
    assert took < 10
    # The same pattern on a schema whose answer does not trigger it is checked as before.
    fine = {"type": "string", "const": "ab", "not": {"pattern": "^(a|.)*c$"}}
    kept = post(live, "/api/generate", {**body, "format": fine})
    assert kept.status_code == 200 and kept.json()["response"] == '"ab"'


def test_reading_a_huge_schema_never_holds_the_event_loop(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # jsonschema read a format of 20,000 properties for 17 s on the event loop.
    monkeypatch.setenv("LOCALRUN_CHECK_TIMEOUT", "1s")
    schema = {"type": "object", "uniqueItems": True,
              "properties": {f"p{i}": {"type": "string"} for i in range(20_000)}}  # fmt: skip
    probe = VersionProbe(live)
    started = time.monotonic()
    refused = post(live, "/api/generate", {"model": SMOL, "prompt": "Hi", "format": schema})
    assert probe.stop() < 2.0  # it was 32 s; 2 s leaves room for a busy machine
    assert refused.status_code == 400, refused.text[:300]
    assert "took over 1 s" in refused.json()["error"]
    assert time.monotonic() - started < 10


def test_a_ref_chain_is_refused_and_the_runner_and_its_streams_live(live: LiveServer) -> None:
    # A chain of 2,500 definitions crashed llguidance (SIGSEGV, the runner and every stream on
    # it); past formats.grammar_bounds.MAX_RESOLVED_DEPTH it is a 400 before the compiler.
    assert generate(live).status_code == 200
    pid = live.running()[SMOL].pid
    long = {"model": SMOL, "prompt": "Tell me a long story.", "stream": True,
            "options": {"num_predict": 120, "temperature": 0}}  # fmt: skip
    with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=PATIENCE_S) as client:

        def stream() -> list[dict[str, Any]]:
            with client.stream("POST", live.url + "/api/generate", json=long) as response:
                assert response.status_code == 200
                return [json.loads(line) for line in response.iter_lines() if line]

        other = pool.submit(stream)
        chain = ref_chain(2_500)
        ollama_route = post(live, "/api/generate", {"model": SMOL, "prompt": "Hi", "format": chain})
        assert ollama_route.status_code == 400, ollama_route.text[:300]
        assert "$refs are followed" in ollama_route.json()["error"]
        openai_route = post(live, "/v1/chat/completions", {
            "model": SMOL, "messages": [{"role": "user", "content": "Hi"}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "chain", "schema": chain}}})  # fmt: skip
        assert openai_route.status_code == 400, openai_route.text[:300]
        assert openai_route.json()["error"]["type"] == "invalid_request_error"
        events = other.result()
    # The other stream ended as its answer did, not cut by a runner's death.
    assert events[-1]["done"] is True and events[-1]["done_reason"] in ("stop", "length")
    # A chain well inside the bound compiles and is answered; the runner is the same one.
    inside = {"model": SMOL, "prompt": "Hi", "format": ref_chain(20), "stream": False,
              "options": {"num_predict": 8}}  # fmt: skip
    short = post(live, "/api/generate", inside)
    assert short.status_code == 200
    assert live.running()[SMOL].pid == pid
