"""examples.toml read: every program of the example corpora, in or out of scope, and what its run
needs. The file's header says what each field means; `load` refuses a row it cannot read, so a
typo never turns a program into one that is silently not run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tomlkit  # localrun's own dependency (tomllib is Python 3.11's)

__all__ = ["KINDS", "PROGRAMS", "Corpus", "Example", "TableError", "load", "programs"]

TABLE = Path(__file__).with_name("examples.toml")
KINDS = ("text", "vision", "fim", "thinking")  # the models a program's names can stand for
PROGRAMS = (".py", ".ts", ".sh")  # the files of an examples/ folder that are programs
SCOPES = ("in", "out", "part")
RUNNERS = ("python", "tsx")
RUN_FIELDS = {"model", "predict", "stdin", "args", "ends", "size", "test", "replace", "timeout"}
DEFAULT_TIMEOUT_S = 120.0


class TableError(ValueError):
    """examples.toml holds a row this module cannot read; the message names it."""


@dataclass(frozen=True)
class Example:
    """One program: in scope (`what` it exercises), out (`what`: why not) or part of another."""

    corpus: str
    path: str  # below the corpus's examples/
    scope: str  # "in", "out" or "part"
    what: str
    model: str = "text"  # the model its model names stand for (KINDS)
    predict: int | None = None  # that model's answer cap for this program (None: the run's)
    stdin: str = ""  # its standard input; "{image}" becomes a PNG's path
    args: tuple[str, ...] = ()
    ends: str = ""  # a last error line that is its ordinary end (EOFError at input())
    size: str = ""  # why it fails for the model's size only (never a localrun gap)
    test: bool = False  # in the representative subset the system test runs
    replace: tuple[tuple[str, str], ...] = ()  # placeholders of its text set for the run
    timeout: float = DEFAULT_TIMEOUT_S

    @property
    def key(self) -> str:
        return f"{self.corpus}/{self.path}"


@dataclass(frozen=True)
class Corpus:
    """A fetched corpus (scripts/corpora/fetch.py's name), and how its programs run."""

    name: str
    runner: str  # "python" (the venv's interpreter) or "tsx" (node, with the npm packages)
    client: str  # the client package its programs use
    version: str  # the client version the programs were published with
    names: tuple[str, ...]  # the model names its programs use
    packages: tuple[str, ...] = ()  # npm packages a tsx corpus installs (pinned)
    replace: tuple[tuple[str, str], ...] = ()  # placeholders set in every program
    examples: tuple[Example, ...] = field(default=())


def _pairs(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in value
    ):
        raise TableError(f"{where}: replace is a list of [old, new] string pairs")
    return tuple((p[0], p[1]) for p in value)


def _strings(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise TableError(f"{where}: a list of strings")
    return tuple(value)


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise TableError(f"{where}: a positive number")
    return value


def _example(corpus: str, path: str, row: object) -> Example:
    where = f"examples.toml [{corpus}.examples] {path!r}"
    if not isinstance(row, dict):
        raise TableError(f"{where}: a row is an inline table, {{ in = ... }}")
    scopes = [s for s in SCOPES if s in row]
    if len(scopes) != 1 or not isinstance(row[scopes[0]], str) or not row[scopes[0]]:
        raise TableError(f"{where}: give exactly one of in, out, part, with its text")
    scope = scopes[0]
    extra = set(row) - {scope} - RUN_FIELDS
    if extra or (scope != "in" and set(row) != {scope}):
        raise TableError(f"{where}: unexpected {sorted(set(row) - {scope})} for a {scope} row")
    model = row.get("model", "text")
    if model not in KINDS:
        raise TableError(f"{where}: model is one of {', '.join(KINDS)}")
    return Example(
        corpus=corpus,
        path=path,
        scope=scope,
        what=str(row[scope]),
        model=str(model),
        predict=int(_number(row["predict"], where)) if "predict" in row else None,
        stdin=str(row.get("stdin", "")),
        args=_strings(row.get("args", []), where),
        ends=str(row.get("ends", "")),
        size=str(row.get("size", "")),
        test=row.get("test", False) is True,
        replace=_pairs(row.get("replace", []), where),
        timeout=_number(row.get("timeout", DEFAULT_TIMEOUT_S), where),
    )


def _corpus(name: str, table: dict[str, object]) -> Corpus:
    where = f"examples.toml [{name}]"
    rows = table.get("examples")
    if not isinstance(rows, dict):
        raise TableError(f"{where} has no examples table")
    missing = {"runner", "client", "version"} - set(table)
    if missing:
        raise TableError(f"{where} lacks {', '.join(sorted(missing))}")
    if table["runner"] not in RUNNERS:
        raise TableError(f"{where}: runner is one of {', '.join(RUNNERS)}")
    return Corpus(
        name=name,
        runner=str(table["runner"]),
        client=str(table["client"]),
        version=str(table["version"]),
        names=_strings(table.get("names", []), where),
        packages=_strings(table.get("packages", []), where),
        replace=_pairs(table.get("replace", []), where),
        examples=tuple(_example(name, path, row) for path, row in rows.items()),
    )


def load(path: Path = TABLE) -> dict[str, Corpus]:
    """Every corpus of the table, by name, its rows in the file's order."""
    data = tomlkit.parse(path.read_text(encoding="utf-8")).unwrap()
    return {name: _corpus(name, table) for name, table in data.items()}


def programs(folder: Path) -> list[str]:
    """The programs of a fetched corpus: its examples/ files that are programs, by path below
    examples/, sorted."""
    root = folder / "examples"
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix in PROGRAMS
    )
