"""What every other runner's store yields (`Found`), and reading such a store without trusting it.

Another runner's folders are read as they are, not as they should be. Every file is read with a
bound on its size (`read_json`, `read_text`). A folder's entries are walked without following
links out of it (`dirs`). A file a link names must stay inside the folder it belongs to
(`inside`). A value for a PARAMETER is kept only when localrun's own rules take it
(`parameter`). Each problem is an ImportSourceError that names the file, so that it becomes one
line in `localrun import`'s listing for that model alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localrun.errors import ImportSourceError, InvalidParameterError
from localrun.recipes import params as params_mod
from localrun.recipes.modelfile import Modelfile
from localrun.sources.base import quant_of

# A name another runner gives a folder or a file it writes (a host, an org, a repository, a
# tag, a revision): anything else is not its and is left alone.
PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
HEX = re.compile(r"[0-9a-f]{64}")
MAX_JSON = 1 << 20  # bytes: a manifest or a settings file is a few kilobytes
MAX_TEXT = 4 << 20  # bytes: a template, a system prompt, parameters, messages


@dataclass
class Found:
    """A model another runner keeps: its name here, its size, where it is, and what it holds."""

    name: str
    size: int
    location: Path  # the manifest (Ollama, llama.cpp's cache) or the model's file
    source: str  # "ollama", "hf", "lmstudio", "llama.cpp"
    modelfile: Modelfile | None = None  # None: it cannot be imported (see `problem`)
    digests: dict[str, str] = field(default_factory=dict)  # file path -> "sha256:<hex>"
    problem: str = ""  # why it is skipped (a partial download, a hostile manifest)
    # Every part of a split model, in order (the first is FROM); empty for a model in one file.
    parts: list[Path] = field(default_factory=list)

    @property
    def quantization(self) -> str:
        """The quantization its name says (`hf.co/org/repo:q4_k_m` -> Q4_K_M), else ''."""
        return quant_of(self.name.rpartition(":")[2] + ".gguf") or ""


def refused(name: str, location: Path, source: str, problem: str) -> Found:
    """A model that is listed with the reason it is not imported."""
    return Found(name, 0, location, source, problem=problem)


def read_json(path: Path, most: int, what: str) -> Any:
    """The JSON in `path`, read with a bound; ImportSourceError when it is larger or not JSON."""
    return parse_json(_read(path, most, what), path, what)


def parse_json(data: bytes, path: Path, what: str) -> Any:
    """The JSON in `data` (read from `path`); ImportSourceError when it is not JSON."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise ImportSourceError(f"{path}: the {what} is not JSON") from None


def read_text(path: Path, most: int = MAX_TEXT) -> str:
    """The text of a small file (a template, a system prompt), read with a bound."""
    return _read(path, most, "text file").decode("utf-8", "replace")


def _read(path: Path, most: int, what: str) -> bytes:
    """At most `most` bytes of `path`; ImportSourceError when it cannot be read or is larger."""
    try:
        with path.open("rb") as handle:
            data = handle.read(most + 1)
    except OSError as exc:
        raise ImportSourceError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    if len(data) > most:
        raise ImportSourceError(f"{path}: the {what} is larger than {most} bytes")
    return data


def dirs(path: Path) -> list[Path]:
    """Return the folders in `path` a runner would have written, sorted.

    Links to folders are left out: they may be a link loop, or a way out of the store.
    """
    return sorted(
        p for p in path.iterdir() if p.is_dir() and not p.is_symlink() and PART.fullmatch(p.name)
    )


def inside(path: Path, folder: Path | None) -> Path:
    """Return `path` with its links resolved, which must be a file, inside `folder` if given.

    The hub cache's snapshot links point into the repository's blobs, while LM Studio's
    `lms import --symbolic-link` links to a file anywhere. A link loop or a way out is refused.
    """
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise ImportSourceError(f"{path}: a broken link or a link loop") from None
    if folder is not None and not real.is_relative_to(folder.resolve()):
        raise ImportSourceError(f"{path}: links outside {folder}")
    if not real.is_file():
        raise ImportSourceError(f"{path}: not a file")
    return real


def parameter(key: str, value: Any) -> tuple[str, params_mod.Value] | None:
    """Return (PARAMETER name, `value`) as localrun's rules take it, or None where they refuse it.

    Another runner has knobs and ranges of its own: those are left out, not fatal.
    """
    try:
        spec = params_mod.spec(key)
        return spec.name, spec.check(value)
    except InvalidParameterError:
        return None
