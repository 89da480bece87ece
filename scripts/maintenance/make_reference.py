"""Write docs/reference/ from the code that declares what each page lists.

    .venv/bin/python scripts/maintenance/make_reference.py           # write the pages
    .venv/bin/python scripts/maintenance/make_reference.py --check   # exit 1 naming each stale page

The pages (scripts/refpages/ renders each): cli.md (every command and option), settings.md
(every LOCALRUN_* setting, upstreams.toml), modelfile-parameters.md (instructions,
PARAMETERs and the API fields that set them) and errors.md (the error tree, codes, HTTP
statuses). Nothing is written by hand twice: the text a page needs lives beside the code it
describes, and rendering fails, naming what to write there, where it is missing.
tests/unit/scripts/test_reference_docs.py renders every page in memory and fails when a
committed one differs (as llama.cpp's generated help and simonw/llm's cog do).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "reference"
# The checkout's localrun, whatever the environment has installed: the pages describe this code.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # scripts/: what they share

from refpages.cli import cli_page
from refpages.errors import errors_page
from refpages.markdown import COMMAND, MissingText
from refpages.modelfile import modelfile_page
from refpages.settings import settings_page

PAGES: dict[str, Callable[[], str]] = {
    "cli.md": cli_page,
    "settings.md": settings_page,
    "modelfile-parameters.md": modelfile_page,
    "errors.md": errors_page,
}


def stale(name: str, committed: str | None, fresh: str, context: int = 3) -> str:
    """Why a committed page is stale: its first differing lines and the command to run."""
    if committed is None:
        return f"docs/reference/{name} is missing; run `{COMMAND}` and commit it"
    diff = difflib.unified_diff(
        committed.splitlines(),
        fresh.splitlines(),
        f"docs/reference/{name} (committed)",
        f"docs/reference/{name} (from the code)",
        n=context,
        lineterm="",
    )
    shown = list(diff)[:40]
    return (
        f"docs/reference/{name} is stale; run `{COMMAND}` and commit it. First differences:\n"
        + "\n".join(shown)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say which pages are stale")
    args = parser.parse_args(argv)
    try:
        pages = {name: render() for name, render in PAGES.items()}
    except MissingText as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    problems = []
    for name, text in pages.items():
        path = OUT / name
        committed = path.read_text(encoding="utf-8") if path.exists() else None
        if committed == text:
            continue
        if args.check:
            problems.append(stale(name, committed, text))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
