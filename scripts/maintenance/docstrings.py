#!/usr/bin/env python3
"""Report the package's docstrings that break the style guide's rule.

The rule (docs/development.md): a docstring opens with one line that says what the thing does,
and stays short. Here that means:

- the summary (everything before the first blank line) is a single line;
- a module's docstring has at most MODULE_LINES lines, a class's or function's FUNCTION_LINES;
  a package's __init__ may be longer, for the map of its modules (tests/unit/test_layout.py
  checks that the map names modules that are there).

With --same-code REV it checks instead that the working tree differs from REV in docstrings only:
each changed module's syntax tree, docstrings removed, must equal REV's.

Usage: .venv/bin/python scripts/maintenance/docstrings.py [--stats] [--same-code REV]
Exit status 1 when a docstring breaks the rule, or when --same-code finds a change to code.
"""

from __future__ import annotations

import argparse
import ast
import re
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "localrun"
MODULE_LINES = 15
FUNCTION_LINES = 10

_HOLDERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class Docstring:
    path: str
    line: int
    name: str
    module: bool
    text: str

    @property
    def lines(self) -> int:
        return len(self.text.splitlines())

    @property
    def summary_lines(self) -> int:
        return len(self.text.split("\n\n")[0].splitlines())

    @property
    def longest_sentence(self) -> int:
        """The number of words in the longest sentence."""
        flat = " ".join(self.text.split())
        return max(len(s.split()) for s in re.split(r"(?<=[.;:!?])\s+", flat) if s)

    def problem(self) -> str | None:
        if self.summary_lines > 1:
            return f"the summary takes {self.summary_lines} lines; make it one"
        if self.module and self.path.endswith("__init__.py"):
            return None  # the package's map of its modules
        limit = MODULE_LINES if self.module else FUNCTION_LINES
        if self.lines > limit:
            return f"{self.lines} lines, over {limit}"
        return None


def docstrings(package: Path = PACKAGE) -> Iterator[Docstring]:
    """Every docstring of the package, in file order."""
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, _HOLDERS):
                continue
            text = ast.get_docstring(node, clean=True)
            if text:
                line = 1 if isinstance(node, ast.Module) else node.body[0].lineno
                name = getattr(node, "name", "<module>")
                rel = path.relative_to(package.parent).as_posix()
                yield Docstring(rel, line, name, isinstance(node, ast.Module), text)


def problems(package: Path = PACKAGE) -> list[str]:
    """One line for each docstring that breaks the rule."""
    out = []
    for doc in docstrings(package):
        why = doc.problem()
        if why:
            out.append(f"{doc.path}:{doc.line}: {doc.name}: {why}")
    return out


def stats(package: Path = PACKAGE) -> dict[str, float]:
    docs = list(docstrings(package))
    return {
        "docstrings": len(docs),
        "median words": statistics.median(len(d.text.split()) for d in docs),
        "summaries over one line": sum(d.summary_lines > 1 for d in docs),
        "over the length limit": sum(
            d.problem() is not None and d.summary_lines == 1 for d in docs
        ),
        "sentences over 30 words": sum(d.longest_sentence > 30 for d in docs),
        "module docstrings over 15 lines": sum(d.module and d.lines > 15 for d in docs),
    }


def _without_docstrings(source: str) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, _HOLDERS) and ast.get_docstring(node, clean=False) is not None:
            node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_changes(rev: str) -> list[str]:
    """The modules whose code (not their docstrings) differs between `rev` and the tree."""
    names = subprocess.run(
        ["git", "diff", "--name-only", rev, "--", "localrun"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    changed = []
    for name in names:
        if not name.endswith(".py") or not (ROOT / name).exists():
            continue
        old = subprocess.run(
            ["git", "show", f"{rev}:{name}"], cwd=ROOT, capture_output=True, text=True
        )
        if old.returncode != 0:
            continue
        new = (ROOT / name).read_text(encoding="utf-8")
        if _without_docstrings(old.stdout) != _without_docstrings(new):
            changed.append(name)
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stats", action="store_true", help="print counts, not each problem")
    parser.add_argument("--same-code", metavar="REV", help="check that only docstrings changed")
    args = parser.parse_args()
    if args.same_code:
        changed = code_changes(args.same_code)
        for name in changed:
            print(f"{name}: code changed, not only docstrings")
        return 1 if changed else 0
    if args.stats:
        for key, value in stats().items():
            print(f"{key}: {value:g}")
        return 0
    found = problems()
    print("\n".join(found) if found else "every docstring keeps the rule")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
