"""scripts/examplelib's table of the official clients' example programs, and how a run's outcome
is read. Every program of every fetched corpus has its row (a new release of a corpus cannot add
a program that is silently never run); the rows that are not run say why; a program marked as
failing for the model's size is one that runs."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from corpora import fetch as fetch_corpora
from examplelib import node, table
from examplelib.models import alias_of
from examplelib.running import Outcome, _why, client_env, write_png
from examplelib.session import fetched

from support import CORPORA

TABLE = table.load()


def test_each_corpus_is_one_fetch_corpora_fetches_at_its_version() -> None:
    assert set(TABLE) == {"openai-python", "anthropic-sdk-python", "ollama-python", "ollama-js"}
    for name, corpus in TABLE.items():
        pinned = fetch_corpora.CORPORA[name]
        assert f"-{corpus.version}." in pinned.filename, name
        assert pinned.package == corpus.client, name


@pytest.mark.parametrize("name", sorted(TABLE))
def test_every_program_of_a_fetched_corpus_has_its_row(name: str) -> None:
    folder = fetched(TABLE[name], CORPORA)
    if folder is None:
        pytest.skip(f"{name} is not fetched: run scripts/corpora/fetch.py")
    rows = [example.path for example in TABLE[name].examples]
    assert len(rows) == len(set(rows))
    assert sorted(rows) == table.programs(folder)


def test_every_row_says_what_it_exercises_or_why_it_is_not_run() -> None:
    rows = [example for corpus in TABLE.values() for example in corpus.examples]
    assert all(len(example.what) >= 10 for example in rows)
    in_scope = [example for example in rows if example.scope == "in"]
    assert len(in_scope) >= 60
    # A size mark is for a program that runs and whose model falls short, said in words.
    assert all(e.scope == "in" and len(e.size) >= 30 for e in rows if e.size)
    # The system test runs some of each client's.
    assert {e.corpus for e in in_scope if e.test} == set(TABLE)


def test_each_corpus_names_the_models_its_programs_use() -> None:
    for corpus in TABLE.values():
        folder = fetched(corpus, CORPORA)
        if folder is None:
            continue
        for name in corpus.names:
            users = [
                e
                for e in corpus.examples
                if e.scope == "in" and name in (folder / "examples" / e.path).read_text()
            ]
            assert users, f"{corpus.name}: no program in scope uses {name}"


def test_a_name_is_aliased_as_a_lookup_finds_it() -> None:
    assert alias_of("gpt-4o-2024-08-06") == "gpt-4o-2024-08-06:latest"
    assert alias_of("llama3.1:8b") == "llama3.1:8b"
    # The catalog's alias: `llama3.2` is looked up as llama3.2:3b, so that is the copy's name.
    assert alias_of("llama3.2") == "llama3.2:3b"


@pytest.mark.parametrize(
    "row",
    [
        {"in": "chat", "out": "both"},
        {"out": "hosted", "test": True},
        {"in": "chat", "modle": "vision"},
        {"in": "chat", "model": "giant"},
        {"in": ""},
    ],
)
def test_a_row_it_cannot_read_is_refused(tmp_path: Path, row: dict[str, object]) -> None:
    fields = ", ".join(f"{k} = {v!r}".replace("True", "true") for k, v in row.items())
    text = (
        '[c]\nrunner = "python"\nclient = "openai"\nversion = "1.0"\n'
        f'[c.examples]\n"a.py" = {{ {fields} }}\n'
    )
    (tmp_path / "t.toml").write_text(text.replace("'", '"'))
    with pytest.raises(table.TableError, match=r"a\.py"):
        table.load(tmp_path / "t.toml")


def test_why_a_program_failed_is_its_exception_line() -> None:
    python = (
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "openai.NotFoundError: Error code: 404 - {'error': 'x'}\n"
    )
    assert _why(python, node=False) == "openai.NotFoundError: Error code: 404 - {'error': 'x'}"
    assert _why("Traceback ...\nAssertionError\n", node=False) == "AssertionError"
    node = (
        "node:internal/process/promises:391\n"
        "    triggerUncaughtException(err, true /* fromPromise */);\n"
        "DOMException [AbortError]: This operation was aborted\n"
        "    at new DOMException (node:internal/per_context/domexception:53:5)\n"
        "Node.js v20.20.2\n"
    )
    assert _why(node, node=True) == "DOMException [AbortError]: This operation was aborted"


def test_a_size_mark_is_said_with_the_failure_and_never_hides_a_run() -> None:
    example = table.Example("c", "a.py", "in", "chat", size="a 135M model does not call it")
    failed = Outcome(example, "failed", "AssertionError")
    assert failed.expected and "135M" in failed.line() and "AssertionError" in failed.line()
    ran = Outcome(example, "ran")
    assert ran.expected and "marked" in ran.line()
    plain = table.Example("c", "b.py", "in", "chat")
    assert not Outcome(plain, "failed", "boom").expected


def test_the_clients_environment_points_at_the_server_and_drops_the_callers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_ORG_ID", "org-mine")
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "mine")
    env = client_env("http://127.0.0.1:1234")
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:1234/v1"
    assert env["ANTHROPIC_BASE_URL"] == env["OLLAMA_HOST"] == "http://127.0.0.1:1234"
    assert "OPENAI_ORG_ID" not in env and "ANTHROPIC_AUTH_TOKEN" not in env


def test_the_image_given_to_programs_is_a_png(tmp_path: Path) -> None:
    data = write_png(tmp_path / "i.png", size=8).read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
    length = int.from_bytes(data[33:37], "big")
    rows = zlib.decompress(data[41 : 41 + length])
    assert len(rows) == 8 * (1 + 8 * 3)


def test_without_node_a_javascript_corpus_is_skipped_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(node.NodeUnavailable, match="node and npm are not installed"):
        node.install(("ollama@0.5.2",), tmp_path / "js")
    assert not (tmp_path / "js").exists()
