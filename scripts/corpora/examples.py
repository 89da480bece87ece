#!/usr/bin/env python3
"""Run the official clients' example programs against `localrun serve` and print their table.

    python scripts/corpora/fetch.py                  # the programs, once (from PyPI and npm)
    python scripts/corpora/examples.py                   # all of them, on a server of its own
    python scripts/corpora/examples.py --only tools      # those whose path holds "tools"
    python scripts/corpora/examples.py --url http://127.0.0.1:11435 --markdown

The programs (openai-python, anthropic-sdk-python, ollama-python, ollama-js) and what each
needs are in scripts/examplelib/examples.toml: out-of-scope ones (a hosted service, a device)
are listed with their reason and not run. Each in-scope one runs unmodified but for the
placeholders that table names, through its own client (the venv's; ollama-js's npm package,
installed with tsx into a temporary folder, skipped without node and npm), with OPENAI_BASE_URL,
ANTHROPIC_BASE_URL and OLLAMA_HOST pointed at the server and its model names copied from a
small model: SmolLM2-135M, or the tiny vision, fill-in-the-middle and thinking models the tests
generate. Without --url the server is one of the run's own (a temporary home, no registry, no
hub); with --url the models are created on that server (examples-* and the names the programs
use: do not point it at a store you care about). Exit status 1 when an in-scope program fails
for anything but what examples.toml says the model's size explains.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from examplelib import table
from examplelib.models import DEFAULT_PREDICT, SetupError
from examplelib.running import Outcome
from examplelib.server import Serve
from examplelib.session import Session


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running localrun serve (default: start one)")
    parser.add_argument("--key", default="localrun", help="the API key the clients send")
    parser.add_argument("--model", default="smollm2:135m", help="the text model (a name)")
    parser.add_argument(
        "--predict", type=int, default=DEFAULT_PREDICT, help="answer cap where none is asked"
    )
    parser.add_argument("--corpus", action="append", help="only this corpus (repeatable)")
    parser.add_argument("--only", action="append", help="only paths holding this (repeatable)")
    parser.add_argument("--test", action="store_true", help="only the system test's subset")
    parser.add_argument("--markdown", action="store_true", help="the table in Markdown")
    parser.add_argument(
        "--verbose", action="store_true", help="what each failed program wrote (its end)"
    )
    return parser.parse_args(argv)


def _chosen(corpora: dict[str, table.Corpus], args: argparse.Namespace) -> list[table.Example]:
    chosen = []
    for corpus in corpora.values():
        if args.corpus and corpus.name not in args.corpus:
            continue
        for example in corpus.examples:
            if args.only and not any(part in example.path for part in args.only):
                continue
            if args.test and not example.test:
                continue
            chosen.append(example)
    return chosen


def _print(outcomes: list[Outcome], markdown: bool) -> None:
    rows = [(o.example.key, o.example.scope, o.line(), o.seconds) for o in outcomes]
    if markdown:
        print("| example | scope | result | seconds |\n| --- | --- | --- | --- |")
        for key, scope, line, seconds in rows:
            cell = line.replace("|", "\\|")
            print(
                f"| {key} | {scope} | {cell} | {seconds:.1f} |"
                if seconds
                else f"| {key} | {scope} | {cell} | |"
            )
        return
    width = max((len(r[0]) for r in rows), default=0)
    for key, scope, line, seconds in rows:
        time = f"{seconds:6.1f} s" if seconds else " " * 8
        print(f"{key:<{width}}  {scope:<3}  {time}  {line}")


def _run(url: str, args: argparse.Namespace, examples: list[table.Example]) -> list[Outcome]:
    corpora = table.load()
    outcomes = []
    with Session(url, corpora, source=args.model, predict=args.predict, key=args.key) as session:
        for example in examples:
            outcome = session.outcome(example)
            if outcome.example.scope == "in":
                print(f"{example.key}: {outcome.line()} ({outcome.seconds:.1f} s)", file=sys.stderr)
                if args.verbose and outcome.result == "failed":
                    print(outcome.output, file=sys.stderr)
            outcomes.append(outcome)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    examples = _chosen(table.load(), args)
    try:
        if args.url:
            outcomes = _run(args.url.rstrip("/"), args, examples)
        else:
            with (
                tempfile.TemporaryDirectory(prefix="localrun-examples-home-") as home,
                Serve(Path(home)) as serve,
            ):
                outcomes = _run(serve.url, args, examples)
    except (SetupError, RuntimeError) as exc:
        print(f"run_examples: {exc}", file=sys.stderr)
        return 1
    _print(outcomes, args.markdown)
    ran = [o for o in outcomes if o.example.scope == "in"]
    bad = [o for o in ran if not o.expected and o.result != "skipped"]
    print(
        f"\n{len(ran)} in scope: {sum(o.result == 'ran' for o in ran)} ran, "
        f"{sum(o.result == 'failed' and o.expected for o in ran)} failed for the model's size, "
        f"{len(bad)} failed otherwise, {sum(o.result == 'skipped' for o in ran)} skipped; "
        f"{len(outcomes) - len(ran)} not run (out of scope, or part of another program)",
        file=sys.stderr,
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
