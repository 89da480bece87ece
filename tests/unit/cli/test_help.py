"""`localrun help`: the pages of docs/ in the terminal, for users who installed with pip and have
no docs/ folder; and the hints that send users to a page name it the way they can open it."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

from localrun.cli.commands import help as help_cmd

from support import ROOT
from support.cli import CLI, assert_one_line_error


def test_help_lists_every_page_and_prints_one_by_its_topic(cli: CLI) -> None:
    """`localrun help` lists each page of docs/ with its title; `help TOPIC` prints the page,
    found by its whole topic or by its last part (`openai` is api/openai); a folder's README is
    the folder's topic."""
    listed = cli("help")
    assert listed.code == 0, listed
    pages = sorted(p for p in (ROOT / "docs").rglob("*.md"))
    topics = [line.split()[0] for line in listed.stdout.splitlines()[: len(pages)]]
    assert topics == [help_cmd.topic_of(p, ROOT / "docs") for p in pages]
    assert "api " in listed.stdout and "api/README" not in listed.stdout
    page = cli("help", "modelfile")
    assert page.code == 0 and page.stdout == (ROOT / "docs" / "modelfile.md").read_text()
    assert cli("help", "openai").stdout == (ROOT / "docs" / "api" / "openai.md").read_text()
    assert cli("help", "docs/quickstart.md").stdout.startswith("# Quick start")


def test_an_unknown_topic_is_one_line_with_the_nearest_pages(cli: CLI) -> None:
    result = cli("help", "modelfil")
    assert_one_line_error(result, "no help page is called 'modelfil'", "`modelfile`")


def test_the_build_copies_every_page_into_the_wheel(tmp_path: Path) -> None:
    """setup.py's build step puts docs/ in the wheel as localrun/_docs, which `help` reads
    first: the same topics as the checkout's docs/, the same text."""
    spec = importlib.util.spec_from_file_location("localrun_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)  # not run as __main__: defines, builds nothing
    written = setup.copy_docs(tmp_path)
    copied = tmp_path / "localrun" / "_docs"
    assert len(written) == len(list((ROOT / "docs").rglob("*.md"))) > 30
    for page in (ROOT / "docs").rglob("*.md"):
        twin = copied / page.relative_to(ROOT / "docs")
        assert twin.read_bytes() == page.read_bytes()
        assert help_cmd.topic_of(twin, copied) == help_cmd.topic_of(page, ROOT / "docs")


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """The string constants of a module that are not docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        holders = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        if isinstance(node, holders) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if id(node) not in docstrings
    ]


def test_hints_name_pages_as_localrun_help_and_every_one_exists() -> None:
    """A message may send the user to a page only as `localrun help TOPIC` (a pip install has
    no docs/ folder), and every topic named that way is a page."""
    topics = set(help_cmd.pages())
    by_path, unknown = [], []
    for path in sorted((ROOT / "localrun").rglob("*.py")):
        rel = path.relative_to(ROOT)
        for line, text in _strings(ast.parse(path.read_text(encoding="utf-8"))):
            if re.search(r"docs/[\w/-]+\.md", text):
                by_path.append(f"{rel}:{line}: {text[:80]!r}")
            for topic in re.findall(r"localrun help ([\w/-]+)", text):
                if topic not in topics and topic != "TOPIC":
                    unknown.append(f"{rel}:{line}: {topic}")
    assert by_path == [], "name the page as `localrun help TOPIC`"
    assert unknown == []
    assert len(topics) > 30
