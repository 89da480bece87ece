#!/usr/bin/env python3
"""The shape of the localrun package: its import graph, its cycles, its longest modules and
functions.

Every import counts, those inside functions and under TYPE_CHECKING too: an import moved into a
function to dodge a cycle is still an arrow between two modules. `from localrun import config`
is an arrow to localrun.settings.config; `from localrun.engine.types import Timings` to
localrun.engine.types. Cycles are the strongly connected components of more than one module.

Usage: .venv/bin/python scripts/imports.py [--top N] [--json]
Exit status 0 whatever it finds (tests/test_layout.py holds the rules); it only reports.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "localrun"


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


def _targets(node: ast.AST, here: str, known: set[str]) -> Iterator[str]:
    """The package's modules one import statement names."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] == PACKAGE:
                yield _nearest(alias.name, known)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from here's package
            package = here.split(".")[: len(here.split(".")) - node.level]
            base = ".".join([*package, base] if base else package)
        if base.split(".")[0] != PACKAGE:
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
    found = modules(root)
    known = set(found)
    edges: dict[str, set[str]] = {}
    for name, path in found.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        out = edges.setdefault(name, set())
        for node in ast.walk(tree):
            for target in _targets(node, name, known):
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


def functions(root: Path = ROOT) -> list[Function]:
    """Every function and method with its length in lines (decorators and docstring included)."""
    out = []
    for name, path in modules(root).items():
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


def lengths(root: Path = ROOT) -> dict[str, int]:
    return {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in modules(root).items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--top", type=int, default=10, help="longest modules and functions shown")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    edges = graph()
    found = cycles(edges)
    sizes = sorted(lengths().items(), key=lambda item: -item[1])
    funcs = sorted(functions(), key=lambda f: -f.lines)
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
