"""llama.cpp's download cache: what `llama-cli -hf ORG/REPO[:QUANT]` fetched, as `pull` names it.

The cache (see `root`) was flat until March 2026:

    manifest=ORG=REPO=TAG.json       the hub's registry manifest for ORG/REPO:TAG (PR #17073 on;
                                     PR #13202 named it manifest=ORG_REPO=TAG.json): its
                                     ggufFile.rfilename and mmprojFile.rfilename name the files,
                                     lfs.sha256 their content (a split model's first part only)
    ORG_REPO_PATH.gguf               a file of the repository, every / of its PATH made a _
    *.etag, *.json, *.lastModified   what it knew of each download (not read)
    NAME.gguf.downloadInProgress     a download under way: skipped and said so
    NAME.gguf                        a file `-mu URL` fetched, with no manifest

Since PR #20775 llama.cpp keeps the Hugging Face cache's layout (models--ORG--REPO; in
LLAMA_CACHE when it is set): such folders here are read as the `hf` source reads the hub cache.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from localrun.errors import ImportSourceError
from localrun.sources.base import SPLIT
from localrun.sources.runners.folders import (
    MAX_PARTS,
    hub_models,
    is_later_part,
    model_of,
    tag_of,
)
from localrun.sources.runners.found import HEX, MAX_JSON, PART, Found, inside, read_json, refused

SOURCE = "llama.cpp"
DOWNLOADING = ".downloadInProgress"
_MANIFEST = re.compile(r"manifest=(?P<body>.+)\.json")


def root() -> Path:
    """Return llama.cpp's cache folder, as llama.cpp finds it (common.cpp's fs_get_cache_directory).

    It is LLAMA_CACHE, else ~/Library/Caches/llama.cpp on macOS, %LOCALAPPDATA%\\llama.cpp on
    Windows, and XDG_CACHE_HOME/llama.cpp or ~/.cache/llama.cpp elsewhere.
    """
    configured = os.environ.get("LLAMA_CACHE")
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "llama.cpp"
    if sys.platform == "win32":  # common.cpp's fs_get_cache_directory: %LOCALAPPDATA%
        local = os.environ.get("LOCALAPPDATA")
        return (Path(local) if local else Path.home() / "AppData" / "Local") / "llama.cpp"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "llama.cpp"


def models(folder: Path | None = None) -> list[Found]:
    """Return the models of llama.cpp's cache: the flat layout's and the hub layout's.

    A manifest's model is named `hf.co/ORG/REPO:QUANT` with its projector
    (sources.runners.folders), and a split model by its first part with every part. A file no
    manifest names is listed under its own name (`gemma-3-270m-it-qat-q4_0`). A manifest is
    read with a bound on its size. A file name it gives must be a path inside a repository (no
    `..`, no absolute path), and the file must be in the cache, not a link out of it.
    """
    folder = folder if folder is not None else root()
    if not folder.is_dir():
        return []
    found = hub_models(folder, source=SOURCE)
    entries = sorted(p for p in folder.iterdir() if not p.is_dir())
    claimed: set[str] = set()
    for path in entries:
        match = _MANIFEST.fullmatch(path.name)
        repo = _repository(match.group("body")) if match else None
        if repo is None:
            continue
        org, name, prefix = repo
        try:
            found.append(_from_manifest(folder, path, org, name, prefix, claimed))
        except ImportSourceError as exc:
            found.append(refused(f"hf.co/{org}/{name}".lower(), path, SOURCE, str(exc)))
    return found + _unlisted(folder, entries, claimed)


def _repository(body: str) -> tuple[str, str, str] | None:
    """Return (ORG, REPO, the prefix of its files' names) of a manifest's name, or None.

    An older manifest's ORG_REPO is split at its first `_`: Hugging Face account names have none.
    """
    parts = body.split("=")
    if len(parts) == 3:  # manifest=ORG=REPO=TAG.json
        org, repo, prefix = parts[0], parts[1], f"{parts[0]}_{parts[1]}"
    elif len(parts) == 2:  # manifest=ORG_REPO=TAG.json
        prefix = parts[0]
        org, _, repo = prefix.partition("_")
    else:
        return None
    if not all(PART.fullmatch(p) for p in (org, repo, parts[-1])):
        return None
    return org, repo, prefix


def _from_manifest(
    folder: Path, path: Path, org: str, repo: str, prefix: str, claimed: set[str]
) -> Found:
    """The model a manifest names, with its parts and projector (their names `claimed`)."""
    data = read_json(path, MAX_JSON, "manifest")
    model = _named(data, "ggufFile", path)
    if model is None:
        raise ImportSourceError(f"{path}: the manifest names no GGUF file (ggufFile)")
    projector = _named(data, "mmprojFile", path)
    first = folder / _flat(prefix, model[0])
    claimed.update(_part_names(first.name))
    name = f"hf.co/{org}/{repo}:{tag_of(model[0].rsplit('/', 1)[-1])}".lower()
    found = model_of(name, _present(first), [], SOURCE, within=folder)
    found.location = path
    assert found.modelfile is not None
    digests = {str(inside(first, folder)): model[1]} if model[1] else {}
    if projector is not None:
        file = folder / _flat(prefix, projector[0])
        claimed.add(file.name)
        real = inside(_present(file), folder)
        found.modelfile.projector = str(real)
        found.size += real.stat().st_size
        digests.update({str(real): projector[1]} if projector[1] else {})
    found.digests = digests
    return found


def _named(data: Any, key: str, manifest: Path) -> tuple[str, str | None] | None:
    """(path in the repository, "sha256:<hex>" or None) of a manifest's `key` file."""
    entry = data.get(key) if isinstance(data, dict) else None
    if entry is None:
        return None
    path = entry.get("rfilename") if isinstance(entry, dict) else None
    parts = path.split("/") if isinstance(path, str) else []
    if (
        not parts
        or not all(PART.fullmatch(p) for p in parts)
        or not parts[-1].lower().endswith(".gguf")
    ):
        raise ImportSourceError(
            f"{manifest}: {key} names {path!r:.80}, not a GGUF file inside the cache"
        )
    lfs = entry.get("lfs")
    sha = lfs.get("sha256") if isinstance(lfs, dict) else None
    return "/".join(parts), f"sha256:{sha}" if isinstance(sha, str) and HEX.fullmatch(sha) else None


def _flat(prefix: str, path: str) -> str:
    """The cache's name for a repository's file: ORG_REPO_PATH, every / a _ (arg.cpp)."""
    return f"{prefix}_{path}".replace("/", "_")


def _part_names(first: str) -> list[str]:
    """Return the names of every part of the split model whose first part is `first`.

    A model in one file gives `first` alone.
    """
    match = SPLIT.match(first)
    count = int(match.group("count")) if match else 1
    if match is None or not 1 < count <= MAX_PARTS:
        return [first]
    stem, total, suffix = match.group("stem"), match.group("count"), first[-5:]
    return [f"{stem}-{i:05d}-of-{total}{suffix}" for i in range(1, count + 1)]


def _present(file: Path) -> Path:
    """`file`, which must be there: one still downloading, or missing, is said so."""
    if file.is_file():
        return file
    if (file.parent / (file.name + DOWNLOADING)).exists():
        raise ImportSourceError(f"{file}: still downloading (skipped)")
    raise ImportSourceError(f"{file}: the file its manifest names is missing")


def _unlisted(folder: Path, entries: list[Path], claimed: set[str]) -> list[Found]:
    """The GGUFs no manifest names (fetched by URL), under their own names."""
    found = []
    for path in entries:
        file = path.name.removesuffix(DOWNLOADING)
        if file in claimed or not file.lower().endswith(".gguf") or is_later_part(file):
            continue
        if "mmproj" in file.lower():
            continue
        split = SPLIT.match(file)
        name = (split.group("stem") if split else file[:-5]).lower()
        if path.name.endswith(DOWNLOADING):
            found.append(refused(name, path, SOURCE, "still downloading (skipped)"))
            continue
        try:
            found.append(model_of(name, path, [], SOURCE, within=folder))
        except ImportSourceError as exc:
            found.append(refused(name, path, SOURCE, str(exc)))
        except OSError as exc:
            found.append(refused(name, path, SOURCE, f"{path}: {exc.strerror}"))
    return found
