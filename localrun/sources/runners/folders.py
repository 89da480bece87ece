"""Folders of GGUF files named as `pull` names them, and the Hugging Face cache that holds such.

A repository's GGUFs in a folder are models named `hf.co/ORG/REPO:QUANT`, the name `pull` gives
the same file, so a later `pull` finds it there. The folder may be a Hugging Face cache
snapshot, LM Studio's `ORG/REPO/`, or a llama.cpp cache that took the hub's layout. A split
model is named by its first part and imported with every part (`-00001-of-00003.gguf` ...).
The repository's projector (an `mmproj` GGUF, F16 where there is a choice, as `pull` takes it)
comes with it.

The Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`)
keeps `models--ORG--REPO/snapshots/REV/` of links into `blobs/`, each named by its sha256. The
snapshot `refs/main` names is the one read (a new download moves it). Each file's content must
have the digest its blob's name claims, and a link leaving the repository or looping is refused.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from localrun.errors import ImportSourceError
from localrun.recipes.modelfile import Modelfile
from localrun.sources.base import SPLIT, RemoteFile, projector_of, quant_of
from localrun.sources.runners.found import HEX, PART, Found, inside, read_text, refused

# gguf-split writes at most a few hundred parts; a name claiming more is not one of its.
MAX_PARTS = 1000


def hub_root() -> Path:
    """The Hugging Face cache: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "huggingface") / "hub"


def hub_models(root: Path | None = None, source: str = "hf") -> list[Found]:
    """The GGUF models of a Hugging Face cache's snapshots (models--ORG--REPO), as `source`."""
    root = root if root is not None else hub_root()
    if not root.is_dir():
        return []
    found: list[Found] = []
    for repo in sorted(p for p in root.iterdir() if p.name.startswith("models--") and p.is_dir()):
        parts = repo.name.split("--")
        if len(parts) != 3 or not all(PART.fullmatch(p) for p in parts[1:]):
            continue
        name = f"hf.co/{parts[1]}/{parts[2]}".lower()
        try:
            found += _repo_models(repo, parts[1], parts[2], source)
        except (OSError, RecursionError) as exc:  # unreadable, or nested past reason
            found.append(refused(name, repo, source, f"{repo}: cannot read it ({exc})"))
        except ImportSourceError as exc:  # a snapshot far larger than a repository's
            found.append(refused(name, repo, source, str(exc)))
    return found


def _repo_models(repo: Path, org: str, name: str, source: str) -> list[Found]:
    found = []
    snapshot = _snapshot(repo)
    if snapshot is not None:
        files = snapshot_ggufs(snapshot)
        found += gguf_models(files, org, name, source, within=repo)
    for partial in sorted((repo / "blobs").glob("*.incomplete")):
        found.append(refused(f"hf.co/{org}/{name}".lower(), partial, source,
                             "still downloading (skipped)"))  # fmt: skip
    return found


# A hub snapshot is a repository's tree: a few folders deep, of links to blobs. A walk goes no
# deeper, reads no more entries, and follows no link to a folder (one to /usr would be walked on
# every scan).
MAX_DEPTH = 8
MAX_ENTRIES = 20_000


def snapshot_ggufs(snapshot: Path) -> list[Path]:
    """Return the GGUF files (or links to them) of a snapshot, sorted.

    Its folders are walked without following links, at most MAX_DEPTH deep. Past MAX_ENTRIES
    entries it raises ImportSourceError.
    """
    found: list[Path] = []
    seen = 0
    base = len(snapshot.parts)
    for folder, subfolders, files in os.walk(snapshot, followlinks=False):
        seen += len(subfolders) + len(files)
        if seen > MAX_ENTRIES:
            raise ImportSourceError(f"{snapshot}: more than {MAX_ENTRIES} files and folders")
        if len(Path(folder).parts) - base >= MAX_DEPTH:
            subfolders[:] = []
        found += [Path(folder) / f for f in files if f.lower().endswith(".gguf")]
    return sorted(found)


def _snapshot(repo: Path) -> Path | None:
    """The snapshot refs/main names, else the newest."""
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        try:
            revision = read_text(ref, 256).strip()
        except ImportSourceError:
            revision = ""
        if PART.fullmatch(revision) and (snapshots / revision).is_dir():
            return snapshots / revision
    revisions = [p for p in snapshots.iterdir() if p.is_dir() and not p.is_symlink()]
    return max(revisions, key=lambda p: p.stat().st_mtime) if revisions else None


def is_later_part(name: str) -> bool:
    """Whether a file is part 2 or later of a split model (imported with its first part)."""
    match = SPLIT.match(name)
    return match is not None and int(match.group("index")) > 1


def tag_of(file_name: str) -> str:
    """Return the tag `pull` gives a GGUF: its quantization, else its name without `.gguf`.

    The name also loses a split model's part number.
    """
    split = SPLIT.match(file_name)
    stem = split.group("stem") if split else re.sub(r"\.gguf$", "", file_name, flags=re.I)
    return quant_of(file_name) or stem


def gguf_models(
    files: list[Path], org: str, repo: str, source: str, within: Path | None
) -> list[Found]:
    """List each model GGUF of a repository folder, with its projector, as `pull` names it.

    The name is hf.co/ORG/REPO:QUANT; a split model is found by its first part. Links must stay
    in `within`, or with None, may lead anywhere.
    """
    projectors = [f for f in files if "mmproj" in f.name.lower()]
    models = [f for f in files if f not in projectors and not is_later_part(f.name)]
    out = []
    for path in models:
        name = f"hf.co/{org}/{repo}:{tag_of(path.name)}".lower()
        try:
            out.append(model_of(name, path, projectors, source, within))
        except ImportSourceError as exc:
            out.append(refused(name, path, source, str(exc)))
        except OSError as exc:
            out.append(refused(name, path, source, f"{path}: {exc.strerror}"))
    return out


def model_of(
    name: str, path: Path, projectors: list[Path], source: str, within: Path | None
) -> Found:
    """Return the model whose (first) file is `path`, with every part and the preferred projector.

    A hub cache's blob, named by its sha256, must have that digest when it is imported.
    """
    real = inside(path, within)
    parts = [inside(p, within) for p in split_parts(path)]
    files = parts or [real]
    modelfile = Modelfile(from_=str(real))
    if projectors:
        by_name = {p.name: p for p in projectors}
        chosen = projector_of([RemoteFile(n, 0, None) for n in sorted(by_name)])
        assert chosen is not None
        projector = inside(by_name[chosen.path], within)
        modelfile.projector = str(projector)
        files = [*files, projector]
    digests = {str(f): f"sha256:{f.name}" for f in files if HEX.fullmatch(f.name)}
    size = sum(f.stat().st_size for f in files)
    return Found(name, size, path, source, modelfile, digests, parts=parts)


def split_parts(first: Path) -> list[Path]:
    """Return every part of the split model whose first part is `first`, in order.

    The parts come from its folder; a model in one file gives []. Raises ImportSourceError when
    a part is missing or downloading.
    """
    match = SPLIT.match(first.name)
    count = int(match.group("count")) if match else 1
    if match is None or count <= 1:
        return []
    if count > MAX_PARTS:
        raise ImportSourceError(f"{first}: a split model of {count} parts (at most {MAX_PARTS})")
    suffix = first.name[-5:]  # .gguf as it is written
    parts = []
    for index in range(1, count + 1):
        part = first.with_name(f"{match.group('stem')}-{index:05d}-of-{match.group('count')}"
                               f"{suffix}")  # fmt: skip
        if not part.is_file():
            if part.with_name(part.name + ".downloadInProgress").exists():
                raise ImportSourceError(f"{part}: still downloading (skipped)")
            raise ImportSourceError(f"{first}: part {index} of {count} ({part.name}) is missing")
        parts.append(part)
    return parts
