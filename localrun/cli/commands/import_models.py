"""`localrun import`: the models other runners keep on this machine, imported in place."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from localrun.cli.common import open_store
from localrun.cli.output import CreateProgress, columns, human_size
from localrun.errors import ImportSourceError, InvalidNameError, LocalrunError

if TYPE_CHECKING:
    from localrun.sources.runners.found import Found


def import_(
    source: str = typer.Argument(
        ...,
        help="Where to look: ollama (OLLAMA_MODELS, else ~/.ollama/models), hf (the Hugging "
        "Face cache), lmstudio (LM Studio's models folder, with its per-model settings), "
        "llama.cpp (LLAMA_CACHE, else ~/.cache/llama.cpp), or all.",
    ),
    models: list[str] = typer.Argument(
        None, help="The models to import, by their name there (default: every one found)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be imported; stop."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Import another runner's models in place: linked into the store, never copied or moved.

    A model imported before is imported again after its runner updated it (a new blob, a new
    snapshot, new settings): the model points at the new files. One the store holds as it is
    is skipped."""
    from localrun.sources.runners import importing as runners

    if source not in runners.SOURCES:
        raise InvalidNameError(
            f"unknown source {source!r}", hint=f"use one of: {', '.join(runners.SOURCES)}"
        )
    found = runners.find(source)
    absent = runners.absent(source) if source != "all" and not found else None
    if absent is not None:
        raise absent
    wanted = {m.lower() for m in models or []}
    chosen = [f for f in found if not wanted or f.name in wanted or _short(f.name) in wanted]
    missing = wanted - {f.name for f in chosen} - {_short(f.name) for f in chosen}
    if missing:
        raise InvalidNameError(
            f"{source} has no model {sorted(missing)[0]!r}",
            hint=f"localrun import {source} --dry-run lists what it has",
        )
    store = open_store(cleanup=not dry_run)
    # What the store holds as an import would leave it: said so, and not imported again.
    held = {f.name for f in chosen if runners.held(store, f)}
    if not quiet or dry_run:
        print(_listing(chosen, held) if chosen else _nothing(source))
    if dry_run:
        return
    failed: list[tuple[str, LocalrunError]] = []
    for f in chosen:
        if f.modelfile is None:
            if wanted:  # asked for by name: not importing it is a failure, not a listing
                failed.append((f.name, ImportSourceError(f.problem)))
            continue
        if f.name in held:
            continue
        progress = CreateProgress(quiet)
        try:
            runners.adopt(store, f, progress)
        except LocalrunError as exc:  # one bad model does not stop the others
            failed.append((f.name, exc))
        finally:
            progress.close()
    if failed:
        name, first = failed[0]
        tried = sum(1 for f in chosen if (f.modelfile is not None or wanted) and f.name not in held)
        raise ImportSourceError(
            f"{len(failed)} of {tried} not imported; {name}: {first}",
            hint=first.hint
            or "import the others by name, or pull this one again with the runner that made it",
        )


def _listing(chosen: list[Found], held: set[str]) -> str:
    """The table of what an import takes, and what it skips and why."""
    rows = [["NAME", "SIZE", "FROM", "STATUS"]]
    for f in chosen:
        # The FROM column names the file already; "(skipped)" is what the status says.
        problem = f.problem.removeprefix(f"{f.location}: ").removesuffix(" (skipped)")
        if f.problem:
            status = f"skipped: {problem}"
        else:
            status = "skipped: already in the store" if f.name in held else "to import"
        rows.append([f.name, human_size(f.size), str(f.location), status])
    return columns(rows)


def _nothing(source: str) -> str:
    """What an import that found no model says: where it looked, and what moves each folder."""
    from localrun.sources.runners import importing as runners

    places = [s for s in runners.SOURCES if s != "all"] if source == "all" else [source]
    lines = []
    for place in places:
        absent = runners.absent(place)
        said = f"{absent}; {absent.hint}" if absent is not None else None
        lines.append(said or f"no {place} models in {runners.folder(place)}")
    return "\n".join(lines)


def _short(name: str) -> str:
    """`llama3.2` for `llama3.2:latest`: the name as a user types it."""
    return name.removesuffix(":latest")
