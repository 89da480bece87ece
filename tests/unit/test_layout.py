"""The package's shape (scripts/maintenance/imports.py): imports run one way, counting those inside
functions too, wing by wing in the order docs/architecture.md's Layout gives, and modules and
functions stay of a size a reader can hold."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from maintenance import docstrings, imports

from support import ROOT

# Past these a module or a function is overdue for a split (the style guide in docs/development.md:
# most modules 150-400 lines, about 600 at most; a function readable on one screen).
MODULE_LINES = 600
FUNCTION_LINES = 70

# The wings and the modules every wing shares, lowest first: each imports only those before it
# (docs/architecture.md, "Layout"). A top-level module is a wing of its own here.
WINGS = [
    "errors",
    "host",
    "settings",
    "request",
    "formats",
    "gguf",
    "store",
    "recipes",
    "model",
    "sources",
    "hardware",
    "runtimes",
    "engine",
    "worker",
    "scheduler",
    "server",
    "ui",
    "cli",
    "__main__",
]


def _wing(module: str) -> str:
    return module.split(".")[1]


def test_the_package_has_no_import_cycle() -> None:
    assert imports.cycles(imports.graph()) == []


def test_imports_run_down_the_wings() -> None:
    edges = imports.graph()
    wings = {_wing(m) for m in edges if m != "localrun"}
    unplaced = wings - set(WINGS)
    assert not unplaced, f"place these in WINGS and docs/architecture.md's Layout: {unplaced}"
    upward = sorted(
        f"{a} -> {b}"
        for a, targets in edges.items()
        for b in targets
        if a != "localrun" and WINGS.index(_wing(a)) < WINGS.index(_wing(b))
    )
    assert upward == [], "a lower wing imports a higher one"


def test_the_architecture_page_lists_the_wings_in_order() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    layout = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z_]+)/?` \|", layout, re.M)
    assert listed == WINGS


def test_the_architecture_page_names_every_module_of_each_wing() -> None:
    """The Layout is the one map of the package: each wing's row names every module and every
    folder in it (`name` or `name/`), so a module added or moved without its line fails here."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    layout = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z_]+)/` \| (.*)$", layout, re.M))
    package = ROOT / "localrun"
    missing = []
    for wing, row in rows.items():
        named = set(re.findall(r"`([a-z_0-9]+)/?`", row))
        for path in sorted((package / wing).iterdir()):
            if path.name.startswith(("_", ".")):
                continue
            module = path.suffix == ".py" or (path / "__init__.py").is_file()
            if module and path.stem not in named:
                missing.append(f"{wing}/{path.name}")
    assert missing == [], "name these in docs/architecture.md's Layout, in their wing's row"


def test_each_packages_own_map_names_its_modules() -> None:
    """A package's docstring that lists its modules (`name.py` or `name/` opening an indented
    line) lists ones that are there, in it or in one of its folders."""
    stale = []
    for init in sorted((ROOT / "localrun").rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        for name in re.findall(r"^\s{2,}([a-z_0-9]+(?:\.py|/))\s", doc, re.M):
            if not any(init.parent.rglob(name.rstrip("/"))):
                stale.append(f"{init.parent.relative_to(ROOT)}: {name}")
    assert stale == []


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _anchors(page: Path) -> set[str]:
    prose = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {_slug(heading) for heading in re.findall(r"^#{1,6} (.+)$", prose, re.M)}


def test_every_link_between_the_pages_finds_its_page_and_heading() -> None:
    """README.md and docs/: a link to a file names one that exists; one to a heading, a heading
    of that page (links outside the repository are not followed)."""
    broken = []
    for page in _pages():
        prose = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


def test_every_page_of_docs_is_linked_from_the_readme() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {(ROOT / target).resolve() for target in re.findall(r"\]\((docs/[^)#]+)", text)}
    pages = set(_pages()[1:])
    assert sorted(str(p.relative_to(ROOT)) for p in pages - linked) == []


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_an_import_inside_a_function_counts(tmp_path: Path) -> None:
    package = tmp_path / "localrun"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from localrun import b\n")
    (package / "b.py").write_text("def f() -> None:\n    from localrun.a import x\n")
    (package / "c.py").write_text("from localrun.b import f\n")
    edges = imports.graph(tmp_path)
    assert edges["localrun.b"] == {"localrun.a"} and edges["localrun.c"] == {"localrun.b"}
    assert imports.cycles(edges) == [["localrun.a", "localrun.b"]]


def test_docstrings_open_with_one_line_and_stay_short() -> None:
    """docs/development.md's rule, as scripts/maintenance/docstrings.py reads it: a one-line
    summary, then at most 15 lines for a module (a package's map aside) and 10 for the rest."""
    assert docstrings.problems() == []


def test_the_docstring_rule_reads_a_summary_and_a_length(tmp_path: Path) -> None:
    package = tmp_path / "localrun"
    package.mkdir()
    (package / "a.py").write_text(
        '"""One line.\n\nA body."""\n\n\ndef f() -> None:\n    """Two\n    lines."""\n'
    )
    (package / "__init__.py").write_text('"""The map.\n\n' + "    x.py  a line\n" * 20 + '"""\n')
    long_body = "\n".join(["x"] * 11)
    (package / "b.py").write_text(f'def g() -> None:\n    """Fine.\n\n{long_body}\n    """\n')
    found = docstrings.problems(package)
    assert found == [
        "localrun/a.py:7: f: the summary takes 2 lines; make it one",
        "localrun/b.py:2: g: 14 lines, over 10",
    ]


def test_modules_and_functions_stay_readable() -> None:
    long_modules = {m: n for m, n in imports.lengths().items() if n > MODULE_LINES}
    assert long_modules == {}, "split these modules by concern"
    long_functions = [f for f in imports.functions() if f.lines > FUNCTION_LINES]
    assert long_functions == [], "split these functions into helpers"


# scripts/ (imports.script_graph): scripts in folders by purpose (imports.SCRIPT_FOLDERS); what
# they share lives in a package they import (benchlib/, testmodels/, hubs/, ...), never in another
# script (docs/development.md). The tests import scripts/, never the reverse.

MOST_MODULES = 15  # in one folder of localrun/ or scripts/: past it, a folder by concern


def test_scripts_have_no_import_cycle() -> None:
    assert imports.cycles(imports.script_graph()) == []


def test_no_script_imports_a_script() -> None:
    scripts = imports.scripts()
    found = sorted(
        f"{a} -> {b}" for a, targets in imports.script_graph().items() for b in targets & scripts
    )
    assert found == [], "move what they share into a package under scripts/"


def test_scripts_never_import_the_tests() -> None:
    """tests/ and scripts/ lean one way: a test imports what scripts/ holds (the test models,
    the hubs, a script it checks), and nothing under scripts/ imports tests/support."""
    found = []
    for path in sorted((ROOT / "scripts").rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        # Nor by the path: a sys.path that reaches into tests/ (a child's code included).
        found += [
            f"{path.relative_to(ROOT)}: {line.strip()}"
            for line in text.splitlines()
            if "sys.path" in line and "tests" in line
        ]
        for node in ast.walk(ast.parse(text)):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            found += [
                f"{path.relative_to(ROOT)}: {n}"
                for n in names
                if n.split(".")[0] in ("support", "tests", "conftest")
            ]
    assert found == [], "what a script needs from the tests goes into a package under scripts/"


def test_no_folder_holds_more_than_fifteen_modules() -> None:
    crowded = {f: n for f, n in imports.folder_sizes().items() if n > MOST_MODULES}
    assert crowded == {}, "give these folders subfolders by concern"


def test_scripts_stay_readable() -> None:
    long_modules = {m: n for m, n in imports.lengths(scripts=True).items() if n > MODULE_LINES}
    assert long_modules == {}, "split these scripts/ modules by concern"


def test_the_script_graph_counts_imports_in_functions_and_packages(tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    (scripts / "lib").mkdir(parents=True)
    (scripts / "ui").mkdir()  # no package: left out
    (scripts / "ui" / "gyp.py").write_text("import a\n")
    (scripts / "lib" / "__init__.py").write_text("from . import core\n")
    (scripts / "lib" / "core.py").write_text("def f() -> None:\n    from lib.extra import g\n")
    (scripts / "lib" / "extra.py").write_text("from .core import f\n")
    (scripts / "a.py").write_text("import lib.core\n\n\ndef main() -> None:\n    import b\n")
    (scripts / "b.py").write_text("from lib import extra\n")
    edges = imports.script_graph(tmp_path)
    assert set(edges) == {"a", "b", "lib", "lib.core", "lib.extra"}
    assert edges["a"] == {"lib.core", "b"} and edges["b"] == {"lib.extra"}
    assert edges["lib"] == {"lib.core"} and edges["lib.core"] == {"lib.extra"}
    assert imports.cycles(edges) == [["lib.core", "lib.extra"]]
    (scripts / "bench").mkdir()
    (scripts / "bench" / "__init__.py").write_text("")
    (scripts / "bench" / "decode.py").write_text("from lib import core\n")
    assert imports.scripts(tmp_path) == {"a", "b", "bench.decode"}


# tests/ (docs/development.md, "Tests"): tiers as folders, each wing's tests in a folder
# named for it; what the tests share lives in tests/support and their fixtures in conftest.py; a
# test file never imports another test file, nor conftest.


def _folders(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}


def test_the_tests_mirror_the_package() -> None:
    tests = ROOT / "tests"
    assert _folders(tests) == {"data", "integration", "support", "system", "unit"}
    assert sorted(p.name for p in tests.glob("*.py")) == ["conftest.py"], "tests live in a tier"
    wings = {w for w in WINGS if (ROOT / "localrun" / w).is_dir()} | {"scripts"}
    for tier in ("unit", "integration"):
        assert _folders(tests / tier) <= wings, f"tests/{tier}/<wing>, as localrun/<wing>"
    assert _folders(tests / "system") == set()
    assert not list((tests / "support").glob("test_*.py")), "support holds no tests"


def _test_imports(root: Path) -> list[str]:
    """`file -> module` for each import, anywhere in a file under `root`, of a test module
    (test_*), of conftest, or of tests/ as a package."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if "data" in path.relative_to(root).parts:
            continue  # other projects' files (tests/data/corpora)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top.startswith("test_") or top in ("conftest", "tests"):
                    found.append(f"{path.relative_to(root)} -> {module}")
    return found


def test_no_test_file_imports_another() -> None:
    assert _test_imports(ROOT / "tests") == [], "move what they share into tests/support"


def test_the_test_import_check_sees_imports_in_functions(tmp_path: Path) -> None:
    (tmp_path / "test_a.py").write_text("def f() -> None:\n    from test_b import x\n")
    (tmp_path / "test_b.py").write_text("from conftest import PATIENCE_S\nimport support.cli\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test_c.py").write_text("import test_d\n")
    assert _test_imports(tmp_path) == ["test_a.py -> test_b", "test_b.py -> conftest"]
