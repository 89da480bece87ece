"""The official clients' example programs, run against a real `localrun serve` through the
clients' own packages (scripts/examplelib: the programs from their PyPI and npm packages, fetched
by scripts/corpora/fetch.py; without them these tests skip).

scripts/corpora/examples.py runs every in-scope program (about ten minutes on 2 cores); this runs
the subset examples.toml marks `test`, chosen to cover each client and each route once:
ollama-python (/api/chat streamed, with tools, format, images and think; /api/generate, with
suffix; /api/embed, /api/create, /api/tags, /v1/systemone), ollama-js (/api/generate from the npm
package, with tsx; skipped without node and npm or npm's registry), openai-python (chat completions
plain, streamed and with tools; Responses parsed into a schema, in the background, and its input
token count), and anthropic-sdk-python (messages streamed, with an image, parsed into a schema,
through the tool runner and with the memory tool). Each must run; a program examples.toml marks
as failing for the model's size is expected to fail, with that reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from examplelib import table
from examplelib.server import Serve
from examplelib.session import Session, fetched

from support import CORPORA

TABLE = table.load()
SUBSET = [example for corpus in TABLE.values() for example in corpus.examples if example.test]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    home: Path = tmp_path_factory.mktemp("examples-home")
    with Serve(home) as serve, Session(serve.url, TABLE, folder=CORPORA) as running:
        yield running


def _marks(example: table.Example) -> list[pytest.MarkDecorator]:
    marks = [pytest.mark.server, pytest.mark.model, pytest.mark.slow]
    if TABLE[example.corpus].runner == "tsx":
        marks.append(pytest.mark.network)  # its npm packages come from npm's registry
    return marks


@pytest.mark.parametrize("example", [pytest.param(e, id=e.key, marks=_marks(e)) for e in SUBSET])
def test_the_example_runs(session: Session, example: table.Example) -> None:
    if fetched(TABLE[example.corpus], CORPORA) is None:
        pytest.skip(f"{example.corpus} is not fetched: run scripts/corpora/fetch.py")
    outcome = session.outcome(example)
    if outcome.result == "skipped":
        pytest.skip(outcome.why)
    if example.size and outcome.result == "failed":
        pytest.xfail(f"{example.size} ({outcome.why})")
    assert outcome.result == "ran", f"{outcome.why}\n{outcome.output}"
