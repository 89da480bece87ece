#!/usr/bin/env python3
"""The shape of the localrun package: its import graph, its cycles, its longest modules and
functions; with --scripts, the same for scripts/ (its scripts and the packages they share).

Every import counts, those inside functions and under TYPE_CHECKING too: an import moved into a
function to dodge a cycle is still an arrow between two modules. `from localrun import config`
is an arrow to localrun.settings.config; `from localrun.engine.types import Timings` to
localrun.engine.types. Cycles are the strongly connected components of more than one module.

In scripts/ a module is a top-level script by its name (`bench`, as `python scripts/bench/decode.py`
imports it from scripts/) or a module of a package there (`benchlib.stacks.serve`; a package is its
__init__), and an arrow is an import of one of them (`from benchlib.stacks.serve import Server`).

Usage: .venv/bin/python scripts/maintenance/imports.py [--scripts] [--top N] [--json]
Exit status 0 whatever it finds (tests/unit/test_layout.py holds the rules); it only reports.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "localrun"
SCRIPTS = "scripts"
# The folders of scripts/ that hold scripts, one purpose each; every other package there is a
# library the scripts (and the tests) share.
SCRIPT_FOLDERS = ("bench", "setupbench", "measure", "corpora", "fuzz", "maintenance")


@dataclass(frozen=True)
class Function:
    module: str
    name: str  # Class.method or function
    lines: int


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package by its dotted name (a package is its __init__)."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def script_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module under scripts/ by the name it is imported by: a top-level script by its stem
    (`bench`), a module of a package there dotted (`benchlib.stacks.serve`; a package is its
    __init__). Folders that are no package (scripts/maintenance/ui and what npm put in it) are left
    out."""
    base = root / SCRIPTS
    found = {path.stem: path for path in sorted(base.glob("*.py"))}

    def package(folder: Path, name: str) -> None:
        found[name] = folder / "__init__.py"
        for path in sorted(folder.glob("*.py")):
            if path.name != "__init__.py":
                found[f"{name}.{path.stem}"] = path
        for sub in sorted(folder.iterdir()):
            if (sub / "__init__.py").is_file():
                package(sub, f"{name}.{sub.name}")

    for folder in sorted(base.iterdir()):
        if (folder / "__init__.py").is_file():
            package(folder, folder.name)
    return found


def scripts(root: Path = ROOT) -> set[str]:
    """The scripts among script_modules(): those run as `python scripts/NAME.py` and as
    `python scripts/FOLDER/NAME.py` in a folder of SCRIPT_FOLDERS (`bench.decode`)."""
    return {
        name
        for name, path in script_modules(root).items()
        if path.name != "__init__.py"
        and (path.parent == root / SCRIPTS or path.parent.name in SCRIPT_FOLDERS)
        and path.parent.parent in (root, root / SCRIPTS)
    }


def folder_sizes(root: Path = ROOT) -> dict[str, int]:
    """Each folder of localrun/ and scripts/ (its own modules, not its subfolders') by its path
    from the root, and how many modules it holds (a package's __init__ counts)."""
    sizes: dict[str, int] = {}
    for top in (PACKAGE, SCRIPTS):
        for path in (root / top).rglob("*.py"):
            if "node_modules" in path.parts:
                continue
            key = path.parent.relative_to(root).as_posix()
            sizes[key] = sizes.get(key, 0) + 1
    return sizes


def _targets(
    node: ast.AST, here: str, known: set[str], tops: set[str], is_package: bool = False
) -> Iterator[str]:
    """The known modules one import statement names (those whose first part is in `tops`)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] in tops:
                yield _nearest(alias.name, known)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from here's package (a package's __init__ is its own)
            parts = here.split(".")
            package = parts[: len(parts) - node.level + (1 if is_package else 0)]
            base = ".".join([*package, base] if base else package)
        if base.split(".")[0] not in tops:
            return
        for alias in node.names:
            full = f"{base}.{alias.name}"
            yield full if full in known else _nearest(base, known)


def _nearest(name: str, known: set[str]) -> str:
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in its text)."""
    return _edges(modules(root), {PACKAGE})


def script_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the scripts/ modules it imports (anywhere in its text): scripts and the modules
    of scripts/' packages, named as script_modules() names them."""
    found = script_modules(root)
    return _edges(found, {name.split(".")[0] for name in found})


def _edges(found: dict[str, Path], tops: set[str]) -> dict[str, set[str]]:
    known = set(found)
    edges: dict[str, set[str]] = {}
    for name, path in found.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        out = edges.setdefault(name, set())
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            for target in _targets(node, name, known, tops, is_package):
                # A module's own package is run first whatever it holds: no arrow worth drawing.
                if target != name and not name.startswith(target + "."):
                    out.add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's), largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for name in sorted(edges):
        if name not in index:
            visit(name)
    return sorted(found, key=len, reverse=True)


def functions(root: Path = ROOT, *, scripts: bool = False) -> list[Function]:
    """Every function and method with its length in lines (decorators and docstring included);
    of scripts/ with `scripts`."""
    out = []
    for name, path in (script_modules(root) if scripts else modules(root)).items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        out.extend(_functions(tree, name, ""))
    return out


def _functions(node: ast.AST, module: str, prefix: str) -> Iterator[Function]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
            end = child.end_lineno or child.lineno
            yield Function(module, prefix + child.name, end - first + 1)
            yield from _functions(child, module, f"{prefix}{child.name}.")
        elif isinstance(child, ast.ClassDef):
            yield from _functions(child, module, f"{prefix}{child.name}.")


def lengths(root: Path = ROOT, *, scripts: bool = False) -> dict[str, int]:
    """Every module's length in lines; of scripts/ with `scripts`."""
    return {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in (script_modules(root) if scripts else modules(root)).items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--top", type=int, default=10, help="longest modules and functions shown")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--scripts", action="store_true", help="scripts/ and its packages instead of localrun"
    )
    args = parser.parse_args(argv)
    edges = script_graph() if args.scripts else graph()
    found = cycles(edges)
    sizes = sorted(lengths(scripts=args.scripts).items(), key=lambda item: -item[1])
    funcs = sorted(functions(scripts=args.scripts), key=lambda f: -f.lines)
    report = {
        "modules": len(edges),
        "imports": sum(len(v) for v in edges.values()),
        "cycles": found,
        "longest_modules": sizes[: args.top],
        "longest_functions": [(f"{f.module}:{f.name}", f.lines) for f in funcs[: args.top]],
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(f"{report['modules']} modules, {report['imports']} imports between them")
    print(f"cycles: {len(found)}" + "".join(f"\n  {len(c)}: {' '.join(c)}" for c in found))
    print("longest modules:")
    for name, size in report["longest_modules"]:
        print(f"  {size:5d}  {name}")
    print("longest functions:")
    for name, size in report["longest_functions"]:
        print(f"  {size:5d}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
