"""`localrun pull`, `push` and `search`: move models between the store and where they come from.

`pull MODEL` fetches a model from a registry (Ollama's library, any OCI registry), Hugging Face,
ModelScope or the catalog. `push MODEL` uploads one to a registry. `search [WORD]` lists the
catalog's names and says where a name comes from.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer

from localrun.cli.common import open_store
from localrun.cli.output import CreateProgress, columns, human_size
from localrun.errors import LocalrunError

if TYPE_CHECKING:
    from localrun.store.local import Store
    from localrun.store.names import ModelName

QUIET = typer.Option(False, "--quiet", "-q", help="Print nothing but errors.")
INSECURE = typer.Option(
    False, "--insecure", help="Reach the registry over plain HTTP (a loopback one always is)."
)


def pull(
    model: str = typer.Argument(
        ...,
        help="A name of Ollama's library (name[:tag], namespace/name[:tag]), of a registry "
        "(host/namespace/name[:tag]), hf.co/ORG/REPO[:TAG], modelscope.cn/ORG/REPO[:TAG], or a "
        "catalog name.",
    ),
    quiet: bool = QUIET,
    insecure: bool = INSECURE,
) -> None:
    """Download a model into the store (resumable, verified by sha256)."""
    import sys

    from localrun.sources import obtain
    from localrun.sources.hosts import Reach
    from localrun.store import reference

    store = open_store(cleanup=True)
    ref = reference.parse(model)
    name = ref.name
    before = _manifest(store, name)
    progress = CreateProgress(quiet)
    try:
        obtain.pull_ref(store, ref, progress, reach=Reach(insecure=insecure))
    finally:
        progress.close()
    if quiet:
        return
    if before is not None and before == _manifest(store, name):
        print(f"'{name}' is up to date", file=sys.stderr, flush=True)
    elif ref.hub is None and ref.entry is not None:  # a catalog model: no success line
        print(f"success: '{name}' is in the store", flush=True)


def _manifest(store: Store, name: ModelName) -> bytes | None:
    """The manifest `name` has in the store (None: none)."""
    try:
        return store.manifest_path(name).read_bytes()
    except OSError:
        return None


def push(
    model: str = typer.Argument(
        ...,
        help="A model of the store, named as its registry has it: host/namespace/name[:tag], "
        "or namespace/name[:tag] for Ollama's library.",
    ),
    quiet: bool = QUIET,
    insecure: bool = INSECURE,
) -> None:
    """Upload a model to its registry in Ollama's format (`ollama pull` takes it back)."""
    from localrun.sources.hosts import Reach
    from localrun.sources.registry import push as push_mod
    from localrun.store import names

    store = open_store(cleanup=True)
    progress = CreateProgress(quiet)
    try:
        push_mod.push(store, names.parse(model), report=progress, reach=Reach(insecure=insecure))
    finally:
        progress.close()


def search(
    word: str = typer.Argument(
        "", help="A word of the name or description, or a capability (vision, tools, embedding)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the model names localrun knows, with their sizes, and where a name comes from.

    `pull` and `run` take these names. A name comes from the store, the catalog, a registry or hub.
    """
    from localrun.sources import obtain
    from localrun.store import catalog, reference

    found = catalog.search(word)
    where = None
    if word.strip() and (not found or any(c in word for c in ":/")):  # a name, not a word
        try:
            where = obtain.origin(open_store(), reference.parse(word))
        except LocalrunError:  # a word that is no name: the catalog's matches alone
            where = None
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
        print(json.dumps({"models": out, "origin": where} if where else out, indent=2))
        return
    if where:
        print(f"{word.strip()}: from {where}")
    if not found:
        print(f"no catalog name matches {word!r}; any GGUF on Hugging Face can be pulled "
              "as hf.co/ORG/REPO[:QUANT], and Ollama's library by its names")  # fmt: skip
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
