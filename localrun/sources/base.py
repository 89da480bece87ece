"""What every model hub provides to `localrun pull`, and how a tag picks the GGUF files.

A hub lists a repository's files with their sizes and sha256 (`RemoteFile`), and downloads one
file, resumably, into a folder of the store. Choosing which GGUF a tag means is the same for
every hub and lives here: `pick(files, tag)`. So does `translated`, the frame in which each hub
turns its library's exceptions into localrun's, where the library is called.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from localrun.errors import DiskFullError, DownloadError, LocalrunError, ModelNotFoundError

# The quantization a bare `pull hf.co/org/repo` takes, in order of preference (Ollama's habit:
# Q4_K_M is the usual balance of size and quality; then the nearest alternatives).
PREFERENCE = (
    "Q4_K_M", "Q4_K_S", "Q5_K_M", "Q5_K_S", "Q4_0", "IQ4_XS", "IQ4_NL", "Q6_K", "Q8_0",
    "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q4_1", "Q5_0", "Q5_1", "IQ3_M", "IQ3_XS", "Q2_K",
    "BF16", "F16", "F32",
)  # fmt: skip

_QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])(I?Q[1-8](?:_[0-9A-Z]{1,2}){0,2}|BF16|F16|F32|FP16|FP32|MXFP4|TQ[12]_0)"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)
# The name gguf-split gives each part of a split model.
SPLIT = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) while a file downloads."""


def download_os_error(what: str, exc: OSError) -> LocalrunError:
    """What an OSError met while downloading `what` means: a full disk or a failed download."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"{what}: no space left on the device",
            hint="free some space (`localrun prune` removes unused blobs); the download "
            "resumes where it stopped",
        )
    return DownloadError(f"{what}: {exc}")


def reason(exc: BaseException) -> str:
    """An exception's first line, bounded, for a one-line error (its type when it has none)."""
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    return text or type(exc).__name__


@contextmanager
def translated(translate: Callable[[Exception], LocalrunError | None]) -> Iterator[None]:
    """Raise what `translate` makes of an exception in the block, where the hub's library is called.

    The new error is raised from the exception. LocalrunErrors, and exceptions `translate`
    returns None for, pass unchanged.
    """
    try:
        yield
    except LocalrunError:
        raise
    except Exception as exc:
        error = translate(exc)
        if error is None:
            raise
        raise error from exc


@dataclass(frozen=True)
class RemoteFile:
    """A file of a hub repository: its path there, size and sha256 (hex)."""

    path: str
    size: int
    sha256: str | None


@dataclass
class Choice:
    """The GGUF file(s) a tag picked: one file, or every part of a split model, in order."""

    quant: str | None
    files: list[RemoteFile]
    available: list[str] = field(default_factory=list)
    projector: RemoteFile | None = None  # the repository's mmproj, pulled with the model

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files) + (self.projector.size if self.projector else 0)


@dataclass
class Repo:
    """A repository as a hub describes it."""

    hub: str  # "hf" or "modelscope"
    repo_id: str
    revision: str  # the commit the files were listed at
    files: list[RemoteFile]
    license: str | None = None
    gated: bool = False


class Hub(Protocol):
    """A model hub: list a repository, fetch one file of it."""

    name: str

    def repo(self, repo_id: str, revision: str | None = None) -> Repo: ...

    def download(
        self, repo: Repo, file: RemoteFile, folder: Path, progress: Progress
    ) -> tuple[Path, str | None]:
        """Fetch `file` into `folder`, resuming what an earlier try left there.

        It returns the file's path and, when the hub computed it on the way, its sha256
        ('sha256:<hex>', else None). The caller verifies the sha256 and moves the file into
        the store.
        """
        ...


def quant_of(path: str) -> str | None:
    """The quantization named in a GGUF file name ("model.Q4_K_M.gguf" -> "Q4_K_M")."""
    name = path.rsplit("/", 1)[-1]
    split = SPLIT.match(name)
    stem = split.group("stem") if split else name.removesuffix(".gguf").removesuffix(".GGUF")
    found = _QUANT_RE.findall(stem)
    if not found:
        return None
    quant = str(found[-1]).upper()
    return {"FP16": "F16", "FP32": "F32"}.get(quant, quant)


def _is_model_gguf(path: str) -> bool:
    name = path.rsplit("/", 1)[-1].lower()
    # Vision projectors ship beside the model in the same repo; they are not models.
    return name.endswith(".gguf") and not name.startswith("mmproj") and "mmproj" not in name


def _groups(files: list[RemoteFile]) -> dict[str, list[RemoteFile]]:
    """GGUF files grouped into models: a plain file alone, a split model's parts together."""
    groups: dict[str, list[RemoteFile]] = {}
    for f in files:
        if not _is_model_gguf(f.path):
            continue
        split = SPLIT.match(f.path)
        key = split.group("stem") if split else f.path
        groups.setdefault(key, []).append(f)
    for parts in groups.values():
        parts.sort(key=lambda f: f.path)
    return groups


def pick(repo: Repo, tag: str | None, reference: str) -> Choice:
    """The files `tag` means in `repo`: a quantization (any case), a file name, or the default.

    Raises ModelNotFoundError naming what exists when nothing matches.
    """
    groups = _groups(repo.files)
    if not groups:
        raise ModelNotFoundError(
            reference,
            hint=f"the repository {repo.repo_id} has no GGUF files; localrun runs GGUF models",
        )
    by_quant: dict[str, list[str]] = {}
    for group, members in groups.items():
        quant = quant_of(members[0].path)
        if quant:
            by_quant.setdefault(quant, []).append(group)
    available = sorted(by_quant) or sorted(groups)
    key: str | None = None
    if tag in (None, "", "latest"):
        for quant in PREFERENCE:
            if quant in by_quant:
                key = by_quant[quant][0]
                break
        if key is None:
            key = sorted(groups)[0]
    else:
        wanted = tag.strip()
        if wanted.upper() in by_quant:
            key = by_quant[wanted.upper()][0]
        else:
            lowered = wanted.lower()
            for candidate, parts in groups.items():
                names = {p.path.lower() for p in parts} | {
                    p.path.rsplit("/", 1)[-1].lower() for p in parts
                }
                names |= {n.removesuffix(".gguf") for n in names} | {candidate.lower()}
                if lowered in names or lowered.removesuffix(".gguf") in names:
                    key = candidate
                    break
        if key is None:
            raise ModelNotFoundError(
                f"{reference}",
                hint=f"{repo.repo_id} has no GGUF for tag '{tag}'; available: "
                + ", ".join(available),
            )
    parts = groups[key]
    split = SPLIT.match(parts[0].path)
    if split and len(parts) != int(split.group("count")):
        raise ModelNotFoundError(
            reference,
            hint=f"{repo.repo_id} lists {len(parts)} of the {int(split.group('count'))} parts of "
            f"{split.group('stem')}; the split model is incomplete",
        )
    return Choice(quant_of(parts[0].path), parts, available, projector_of(repo.files))


# The projector's precision when a repository offers several: llama.cpp's converters write F16
# by default, and the encoders are small enough that quantizing them costs more than it saves.
PROJECTOR_PREFERENCE = ("F16", "BF16", "Q8_0", "F32")


def projector_of(files: list[RemoteFile]) -> RemoteFile | None:
    """The repository's projector (an `mmproj` GGUF), F16 when there is a choice."""
    found = [
        f
        for f in files
        if f.path.lower().endswith(".gguf") and "mmproj" in f.path.rsplit("/", 1)[-1].lower()
    ]
    if not found:
        return None

    def rank(f: RemoteFile) -> tuple[int, str]:
        quant = quant_of(f.path.rsplit("/", 1)[-1].lower().replace("mmproj", ""))
        order = PROJECTOR_PREFERENCE.index(quant) if quant in PROJECTOR_PREFERENCE else 99
        return order, f.path

    return min(found, key=rank)
