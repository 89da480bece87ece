#!/usr/bin/env python3
"""Hold a running server's answers to the published documents of the dialects it speaks.

Sends the request set (scripts/speclib/cases.py: every route of OpenAI's, Anthropic's and
Ollama's APIs, asked as their official clients ask, greedy and short) to the server at --url and
checks every answer and streamed event against OpenAI's and Anthropic's OpenAPI documents and
ollama-python's response types (the corpora scripts/corpora/fetch.py fetches). Prints the
violations counted by dialect and route, then each one; "required but nullable" (a field the
document requires, whose schema allows null, left out) is counted apart. Exit status 1 when any
other violation was found.

    python scripts/corpora/spec_documents.py --url http://127.0.0.1:11435
    python scripts/corpora/spec_documents.py --url http://127.0.0.1:8080 --model chat=m \\
        --model tools=m --model think=m --model text=m --model embed=m --dialect openai

localrun's tests serve `tools` (a model that calls get_weather), `think` (one that reasons),
and `text` (one that says cases.TEXT) from scripted models; against another server, name its
models with --model ROLE=NAME (roles: chat, tools, think, text, embed).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the server's address")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="ROLE=NAME",
        help="the model playing a role (chat, tools, think, text, embed)",
    )
    parser.add_argument(
        "--dialect",
        action="append",
        choices=["openai", "responses", "anthropic", "ollama"],
        help="only these dialects' requests (all)",
    )
    parser.add_argument("--corpora", type=Path, help="the corpora's folder (corpora/fetch.py's)")
    args = parser.parse_args(argv)

    from speclib.cases import CASES, Models
    from speclib.check import FETCH, Specs, corpora_dir
    from speclib.report import failing, table
    from speclib.run import run

    roles = {f.name for f in dataclasses.fields(Models)}
    chosen = dict(item.partition("=")[::2] for item in args.model)
    unknown = sorted(set(chosen) - roles)
    if unknown or not all(chosen.values()):
        parser.error(f"--model takes ROLE=NAME, a role of {', '.join(sorted(roles))}")
    corpora = args.corpora or corpora_dir()
    if Specs.missing(corpora):
        print(
            f"check_spec_conformance: the documents are not in {corpora}: run {FETCH}",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    specs = Specs.read(corpora)
    cases = [c for c in CASES if not args.dialect or c.dialect in args.dialect]
    results = run(args.url, specs, Models(**chosen), cases)
    print(table(results))
    print(f"\n{len(results)} requests in {time.monotonic() - started:.1f} s")
    return 1 if failing(results) else 0


if __name__ == "__main__":
    sys.exit(main())
