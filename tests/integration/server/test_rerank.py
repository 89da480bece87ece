"""Rerank on a tiny random-weight reranker (Qwen3-Reranker's shape: rank pooling, a yes/no
head, its rerank template) run by the real llama.cpp in the real server; where a llama-server
built from the same llama.cpp is at hand, its /rerank scores are the reference."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from testmodels.reranker import RERANK_TEMPLATE, write_tiny_reranker

from localrun.engine.library.machine import machine_params
from localrun.scheduler import Scheduler
from localrun.store.local import Store

from support import PATIENCE_S
from support.server import LiveServer, add_model

pytestmark = [pytest.mark.server, pytest.mark.model]

QUERY = "what is the cat doing?"
DOCUMENTS = [
    "the cat sat on the mat",
    "hello world",
    "Paris is a city in France",
    "a b c d e f g",
]


@pytest.fixture(scope="session")
def rerankers(fixtures_dir: Path) -> dict[str, Path]:
    out = fixtures_dir / "rerank"
    out.mkdir(exist_ok=True)
    return {
        "templated": write_tiny_reranker(out / "tiny-reranker.gguf"),
        "plain": write_tiny_reranker(out / "tiny-reranker-plain.gguf", template=False),
    }


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, rerankers: dict[str, Path], tiny_model: Path
) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("rerank") / "models")
    add_model(store, "rr", rerankers["templated"])
    add_model(store, "rr-plain", rerankers["plain"])
    add_model(store, "tiny", tiny_model)
    server = LiveServer(store, Scheduler(store, num_parallel=2, max_loaded=3, max_queue=16))
    yield server
    server.close()


def _post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=PATIENCE_S)


def _scores(answer: dict[str, Any]) -> dict[int, float]:
    return {r["index"]: r["relevance_score"] for r in answer["results"]}


def test_show_says_rerank(live: LiveServer) -> None:
    shown = _post(live.url, "/api/show", {"model": "rr"}).json()
    assert shown["capabilities"] == ["rerank"]
    assert "rerank" not in _post(live.url, "/api/show", {"model": "tiny"}).json()["capabilities"]


def test_results_come_best_first_with_every_index(live: LiveServer) -> None:
    answer = _post(
        live.url, "/v1/rerank", {"model": "rr", "query": QUERY, "documents": DOCUMENTS}
    ).json()
    results = answer["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    # Qwen3-Reranker's head is a softmax over yes/no: the score is a probability.
    assert all(0.0 < s < 1.0 for s in scores) and len(set(scores)) == len(scores)
    assert answer["model"] == "rr" and answer["object"] == "list"
    assert "document" not in results[0]
    # The same answer on llama-server's other paths.
    for path in ("/rerank", "/reranking", "/v1/reranking"):
        again = _post(live.url, path, {"model": "rr", "query": QUERY, "documents": DOCUMENTS})
        assert _scores(again.json()) == pytest.approx(_scores(answer), abs=1e-5)


def test_a_documents_score_does_not_depend_on_the_others(live: LiveServer) -> None:
    together = _scores(
        _post(
            live.url, "/v1/rerank", {"model": "rr", "query": QUERY, "documents": DOCUMENTS}
        ).json()
    )
    for index in (0, 3):
        alone = _post(
            live.url, "/v1/rerank", {"model": "rr", "query": QUERY, "documents": [DOCUMENTS[index]]}
        ).json()
        assert alone["results"][0]["relevance_score"] == pytest.approx(together[index], abs=1e-4)
    other = _post(
        live.url, "/v1/rerank", {"model": "rr", "query": "hello", "documents": DOCUMENTS}
    ).json()
    assert _scores(other) != pytest.approx(together, abs=1e-3)  # the query matters


def test_top_n_documents_and_cohere_style_objects(live: LiveServer) -> None:
    full = _post(
        live.url, "/v1/rerank", {"model": "rr", "query": QUERY, "documents": DOCUMENTS}
    ).json()
    top = _post(
        live.url,
        "/v1/rerank",
        {
            "model": "rr",
            "query": QUERY,
            "documents": [{"text": d} for d in DOCUMENTS],
            "top_n": 2,
            "return_documents": True,
        },
    ).json()
    assert [r["index"] for r in top["results"]] == [r["index"] for r in full["results"][:2]]
    for result in top["results"]:
        assert result["document"] == {"text": DOCUMENTS[result["index"]]}
    many = _post(
        live.url, "/rerank", {"model": "rr", "query": QUERY, "documents": DOCUMENTS, "top_n": 99}
    ).json()
    assert len(many["results"]) == len(DOCUMENTS)


def test_tei_shape(live: LiveServer) -> None:
    full = _scores(
        _post(live.url, "/rerank", {"model": "rr", "query": QUERY, "documents": DOCUMENTS}).json()
    )
    answer = _post(
        live.url,
        "/rerank",
        {"model": "rr", "query": QUERY, "texts": DOCUMENTS, "return_text": True, "top_n": 3},
    ).json()
    assert isinstance(answer, list) and len(answer) == 3
    for item in answer:
        assert item["score"] == pytest.approx(full[item["index"]], abs=1e-5)
        assert item["text"] == DOCUMENTS[item["index"]]


def test_usage_counts_the_tokens_of_each_pair(live: LiveServer) -> None:
    def tokens(model: str, text: str, special: bool) -> int:
        body = {"model": model, "content": text, "add_special": special, "parse_special": True}
        return len(_post(live.url, "/tokenize", body).json()["tokens"])

    answer = _post(
        live.url, "/v1/rerank", {"model": "rr", "query": QUERY, "documents": DOCUMENTS[:2]}
    ).json()
    # The template lays out each pair; its special tokens are parsed, no BOS added.
    pairs = [
        RERANK_TEMPLATE.replace("{query}", QUERY).replace("{document}", d) for d in DOCUMENTS[:2]
    ]
    expected = sum(tokens("rr", p, False) for p in pairs)
    assert answer["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    # Without a template: BOS, the query, the document (this vocabulary adds no EOS or SEP).
    plain = _post(
        live.url, "/v1/rerank", {"model": "rr-plain", "query": QUERY, "documents": DOCUMENTS[:2]}
    ).json()
    query = tokens("rr-plain", QUERY, False)
    expected = sum(1 + query + tokens("rr-plain", d, False) for d in DOCUMENTS[:2])
    assert plain["usage"]["prompt_tokens"] == expected
    assert _scores(plain) != pytest.approx(_scores(answer), abs=1e-3)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"query": QUERY, "documents": []}, "documents must be a non-empty list"),
        ({"query": QUERY, "documents": None}, "documents must be a non-empty list"),
        ({"query": QUERY, "documents": 123}, "documents must be a non-empty list"),
        ({"query": QUERY, "documents": [1, 2, 3]}, "must be a string"),
        ({"documents": DOCUMENTS}, "query must be a string"),
        ({"query": QUERY, "documents": DOCUMENTS, "top_n": 0}, "top_n must be at least 1"),
        ({"query": QUERY, "documents": DOCUMENTS, "top_n": "2"}, "top_n"),
    ],
)
def test_bad_requests_are_400s_in_openais_shape(
    live: LiveServer, body: dict[str, Any], says: str
) -> None:
    for path in ("/v1/rerank", "/rerank"):
        answer = _post(live.url, path, {"model": "rr", **body})
        assert answer.status_code == 400, answer.text
        assert says in answer.json()["error"]["message"]


def test_a_model_that_cannot_rerank_is_a_400_and_a_reranker_makes_no_embeddings(
    live: LiveServer,
) -> None:
    answer = _post(live.url, "/v1/rerank", {"model": "tiny", "query": QUERY, "documents": ["a"]})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "cannot rerank" in error["message"] and "rerank" in error.get("hint", "")
    embedded = _post(live.url, "/v1/embeddings", {"model": "rr", "input": "hello"})
    assert embedded.status_code == 400
    assert "is a reranker" in embedded.json()["error"]["message"]
    ollama = _post(live.url, "/api/embed", {"model": "rr", "input": "hello"})
    assert ollama.status_code == 400 and "is a reranker" in ollama.json()["error"]
    # The runner is fine afterwards.
    again = _post(live.url, "/v1/rerank", {"model": "rr", "query": QUERY, "documents": ["a"]})
    assert again.status_code == 200


def test_a_pair_longer_than_the_context_is_refused(live: LiveServer) -> None:
    answer = _post(
        live.url,
        "/v1/rerank",
        {"model": "rr", "query": QUERY, "documents": ["the cat " * 400], "options": {}},
    )
    assert answer.status_code == 400, answer.text
    assert "context" in answer.json()["error"]["message"]


def test_a_gateway_reranks_on_an_openai_style_upstream(live: LiveServer, tmp_path: Path) -> None:
    from support.serve import gateway

    gw = gateway(
        tmp_path / "gw",
        {
            "box": {"url": live.url, "models": ["rr"]},
            "old": {"url": live.url, "models": ["rr-plain"], "dialect": "ollama"},
        },
    )
    try:
        body = {"query": QUERY, "documents": DOCUMENTS, "top_n": 2}
        direct = _post(live.url, "/v1/rerank", {"model": "rr", **body}).json()
        through = _post(gw.url, "/v1/rerank", {"model": "rr", **body})
        assert through.status_code == 200, through.text
        assert through.json()["results"] == direct["results"]
        assert through.json()["usage"] == direct["usage"]
        refused = _post(gw.url, "/v1/rerank", {"model": "rr-plain", **body})
        assert refused.status_code == 400
        assert "Ollama's API, which has no rerank" in refused.json()["error"]["message"]
    finally:
        gw.kill()


# -- llama-server as the reference ----------------------------------------------------------


def _llama_server() -> Path | None:
    """llama-server built from the llama.cpp llama-cpp-python vendors (scripts/bench/decode.py
    builds it into its cache), or LOCALRUN_LLAMA_SERVER."""
    named = os.environ.get("LOCALRUN_LLAMA_SERVER")
    if named:
        return Path(named)
    import llama_cpp

    built = (
        Path.home()
        / ".cache"
        / "localrun-bench"
        / f"llama.cpp-{llama_cpp.__version__}"
        / "build"
        / "bin"
        / "llama-server"
    )
    return built if built.is_file() else None


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["templated", "plain"])
def test_scores_equal_llama_servers(
    live: LiveServer, rerankers: dict[str, Path], kind: str
) -> None:
    binary = _llama_server()
    if binary is None:
        pytest.skip("no llama-server build (scripts/bench/decode.py --suite vision builds one)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [str(binary), "-m", str(rerankers[kind]), "--reranking", "--port", str(port)]
    args += ["-c", "2048", "-t", "1", "--no-webui", *machine_params().server_args()]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + PATIENCE_S
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "llama-server failed"
            time.sleep(0.2)
        body = {"query": QUERY, "documents": DOCUMENTS}
        theirs = _post(url, "/rerank", body).json()
        model = "rr" if kind == "templated" else "rr-plain"
        ours = _post(live.url, "/rerank", {"model": model, **body}).json()
    finally:
        server.terminate()
        server.wait(timeout=PATIENCE_S)
    assert _scores(ours) == pytest.approx(_scores(theirs), abs=1e-4)
    assert [r["index"] for r in ours["results"]] == [r["index"] for r in theirs["results"]]
    assert ours["usage"] == theirs["usage"]
