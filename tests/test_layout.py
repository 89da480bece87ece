"""The package's shape (scripts/imports.py): imports run one way, counting those inside
functions too, and modules and functions stay of a size a reader can hold."""

from __future__ import annotations

from pathlib import Path

import imports

# Past these a module or a function is overdue for a split (STYLE.md: most modules 150-400
# lines, about 600 at most; a function readable on one screen).
MODULE_LINES = 650
FUNCTION_LINES = 70


def test_the_package_has_no_import_cycle() -> None:
    assert imports.cycles(imports.graph()) == []


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


def test_modules_and_functions_stay_readable() -> None:
    long_modules = {m: n for m, n in imports.lengths().items() if n > MODULE_LINES}
    assert long_modules == {}, "split these modules by concern"
    long_functions = [f for f in imports.functions() if f.lines > FUNCTION_LINES]
    assert long_functions == [], "split these functions into helpers"
