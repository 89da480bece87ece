"""`localrun pull MODEL`: fetch a model from Hugging Face, ModelScope or the catalog."""

from __future__ import annotations

import typer

from localrun.cli.common import open_store
from localrun.cli.output import CreateProgress


def pull(
    model: str = typer.Argument(
        ..., help="hf.co/ORG/REPO[:TAG], modelscope.cn/ORG/REPO[:TAG], or a catalog name."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Download a model into the store (resumable, verified by sha256)."""
    from localrun import catalog
    from localrun import pull as pull_mod
    from localrun.errors import ModelNotFoundError

    store = open_store(cleanup=True)
    name, ref = pull_mod.resolve_name(model)
    progress = CreateProgress(quiet)
    try:
        if ref is not None:
            pull_mod.pull(store, ref, report=progress)
            return
        entry = catalog.lookup(name)
        if entry is None:
            raise ModelNotFoundError(
                str(name),
                hint="pull from a hub with `localrun pull hf.co/ORG/REPO[:TAG]` or "
                "`localrun pull modelscope.cn/ORG/REPO[:TAG]`",
            )
        if store.exists(entry.name):
            if not quiet:
                print(f"'{entry.name}' is already in the store", flush=True)
            return
        catalog.ensure(store, entry.name, progress)
        if not quiet:
            print(f"success: '{entry.name}' is in the store", flush=True)
    finally:
        progress.close()
