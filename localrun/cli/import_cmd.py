"""`localrun import`: the models other runners keep on this machine, imported in place."""

from __future__ import annotations

import typer

from localrun.cli.common import open_store
from localrun.cli.output import CreateProgress, columns, human_size
from localrun.errors import ImportSourceError, InvalidNameError, LocalrunError


def import_(
    source: str = typer.Argument(
        ...,
        help="Where to look: ollama (OLLAMA_MODELS, else ~/.ollama/models), hf (the Hugging "
        "Face cache), lmstudio (~/.lmstudio/models), or all.",
    ),
    models: list[str] = typer.Argument(
        None, help="The models to import, by their name there (default: every one found)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be imported; stop."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Import another runner's models in place: linked into the store, never copied or moved."""
    from localrun.recipes import create as create_mod
    from localrun.sources import runners
    from localrun.store import names

    if source not in runners.SOURCES:
        raise InvalidNameError(
            f"unknown source {source!r}", hint=f"use one of: {', '.join(runners.SOURCES)}"
        )
    found = runners.find(source)
    wanted = {m.lower() for m in models or []}
    chosen = [f for f in found if not wanted or f.name in wanted or _short(f.name) in wanted]
    missing = wanted - {f.name for f in chosen} - {_short(f.name) for f in chosen}
    if missing:
        raise InvalidNameError(
            f"{source} has no model {sorted(missing)[0]!r}",
            hint=f"localrun import {source} --dry-run lists what it has",
        )
    rows = [["NAME", "SIZE", "FROM", "STATUS"]]
    for f in chosen:
        status = f"skipped: {f.problem}" if f.problem else "to import"
        rows.append([f.name, human_size(f.size), str(f.location), status])
    if not quiet or dry_run:
        print(columns(rows) if chosen else f"no models found ({source})")
    if dry_run:
        return
    store = open_store(cleanup=True)
    failed: list[tuple[str, LocalrunError]] = []
    for f in chosen:
        if f.modelfile is None:
            continue
        progress = CreateProgress(quiet)
        try:
            create_mod.create(
                store,
                names.parse(f.name),
                f.modelfile,
                f.location.parent,
                report=progress,
                expected=f.digests,
                link=True,
            )
        except LocalrunError as exc:  # one bad model does not stop the others
            failed.append((f.name, exc))
        finally:
            progress.close()
    if failed:
        name, first = failed[0]
        raise ImportSourceError(
            f"{len(failed)} of {len(chosen)} not imported; {name}: {first}",
            hint=first.hint
            or "import the others by name, or pull this one again with the runner that made it",
        )


def _short(name: str) -> str:
    """`llama3.2` for `llama3.2:latest`: the name as a user types it."""
    return name.removesuffix(":latest")
