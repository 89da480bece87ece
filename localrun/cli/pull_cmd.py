"""`localrun pull MODEL`: fetch a model from Hugging Face, ModelScope or the catalog; `localrun
search [WORD]`: the catalog's names."""

from __future__ import annotations

import json

import typer

from localrun.cli.common import open_store
from localrun.cli.output import CreateProgress, columns, human_size


def pull(
    model: str = typer.Argument(
        ..., help="hf.co/ORG/REPO[:TAG], modelscope.cn/ORG/REPO[:TAG], or a catalog name."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Download a model into the store (resumable, verified by sha256)."""
    from localrun.errors import ModelNotFoundError
    from localrun.sources import obtain
    from localrun.sources import pull as pull_mod
    from localrun.store import reference

    store = open_store(cleanup=True)
    ref = reference.resolve(model)
    progress = CreateProgress(quiet)
    try:
        if ref.hub is not None:
            pull_mod.pull(store, ref.hub, report=progress)
            return
        if ref.entry is None:
            raise ModelNotFoundError(str(ref.name))  # the hint names the nearest known names
        if store.exists(ref.name):
            if not quiet:
                print(f"'{ref.name}' is already in the store", flush=True)
            return
        obtain.find(store, ref, progress, others=False)  # a pull downloads, whatever is local
        if not quiet:
            print(f"success: '{ref.name}' is in the store", flush=True)
    finally:
        progress.close()


def search(
    word: str = typer.Argument(
        "", help="A word of the name or description, or a capability (vision, tools, embedding)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the model names localrun knows (`pull` and `run` take them), with their sizes."""
    from localrun.store import catalog

    found = catalog.search(word)
    if as_json:
        out = [
            {
                "name": str(e.name),
                "description": e.description,
                "size": e.size,
                "parameter_size": e.details.get("parameter_size"),
                "quantization": e.details.get("quantization"),
                "capabilities": list(e.capabilities),
                "source": next((s.get("reference") for s in e.sources if "reference" in s), None),
            }
            for e in found
        ]
        print(json.dumps(out, indent=2))
        return
    if not found:
        print(f"no catalog name matches {word!r}; any GGUF on Hugging Face can be pulled as "
              "hf.co/ORG/REPO[:QUANT]")  # fmt: skip
        return
    rows = [["NAME", "PARAMS", "QUANT", "SIZE", "CAPABILITIES"]]
    for e in found:
        rows.append(
            [
                str(e.name),
                str(e.details.get("parameter_size") or ""),
                str(e.details.get("quantization") or ""),
                f"~{human_size(e.size)}" if e.size else "",
                ", ".join(c for c in e.capabilities if c != "completion"),
            ]
        )
    print(columns(rows))
