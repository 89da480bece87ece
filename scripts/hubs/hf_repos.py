"""The fake Hugging Face Hub's repositories (hubs.hfhub): their files as the hub describes
them (HubFile: git blob sha1, LFS sha256), commits, and the faults a test arms on them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

CHUNK = 256 * 1024
LFS_MIN_SIZE = 10 * 1024 * 1024
LFS_SUFFIXES = frozenset(
    {
        *(".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gguf", ".gz", ".h5", ".joblib"),
        *(".lfs", ".mlmodel", ".model", ".msgpack", ".npy", ".npz", ".onnx", ".ot", ".parquet"),
        *(".pb", ".pickle", ".pkl", ".pt", ".pth", ".rar", ".safetensors", ".tar", ".tflite"),
        *(".tgz", ".wasm", ".xz", ".zip", ".zst"),
    }
)
RECORDED_HEADERS = ("Range", "Authorization", "Accept-Encoding", "If-None-Match")
_FLIP = bytes(range(255, -1, -1))  # maps every byte to a different one: same length, wrong bytes

Request = tuple[str, str, dict[str, str]]


@dataclass(frozen=True)
class HubFile:
    """One file of a commit, hashed once when it is added."""

    path: str
    source: bytes | Path
    size: int
    sha256: str
    blob_id: str  # git blob sha1 of the content, or of the LFS pointer for an LFS file
    lfs: bool
    pointer_size: int

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        """The bytes in [start, end), streamed from disk for a Path source."""
        if isinstance(self.source, bytes):
            for pos in range(start, end, CHUNK):
                yield self.source[pos : min(pos + CHUNK, end)]
            return
        with self.source.open("rb") as f:
            f.seek(start)
            left = end - start
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise OSError(f"{self.source} shrank while being served")
                left -= len(chunk)
                yield chunk


def _read_all(source: bytes | Path) -> Iterator[bytes]:
    if isinstance(source, bytes):
        yield source
        return
    with source.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            yield chunk


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def hash_file(path: str, source: bytes | Path) -> HubFile:
    """Hash a file's content in one pass, as the hub does when it is pushed."""
    size = len(source) if isinstance(source, bytes) else source.stat().st_size
    sha256 = hashlib.sha256()
    git = hashlib.sha1(b"blob %d\0" % size)
    for chunk in _read_all(source):
        sha256.update(chunk)
        git.update(chunk)
    lfs = PurePosixPath(path).suffix.lower() in LFS_SUFFIXES or size > LFS_MIN_SIZE
    pointer = (
        "version https://git-lfs.github.com/spec/v1\n"
        f"oid sha256:{sha256.hexdigest()}\nsize {size}\n"
    ).encode()
    return HubFile(
        path=path,
        source=source,
        size=size,
        sha256=sha256.hexdigest(),
        blob_id=_git_sha1(pointer) if lfs else git.hexdigest(),
        lfs=lfs,
        pointer_size=len(pointer) if lfs else 0,
    )


@dataclass(frozen=True)
class _Commit:
    sha: str
    date: str
    files: dict[str, HubFile]


@dataclass
class _Repo:
    repo_id: str
    created: str
    license: str | None = None
    gated: bool = False
    private: bool = False
    token: str | None = None
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    commits: dict[str, _Commit] = field(default_factory=dict)

    def commit(self, revision: str) -> _Commit | None:
        revision = revision.removeprefix("refs/heads/")
        return self.commits.get(self.branches.get(revision, revision))


@dataclass
class _Fault:
    kind: Literal["cut", "corrupt", "slow", "whole"]
    filename: str
    value: int
    times: int


@dataclass
class _Failure:
    fragment: str
    status: int
    times: int
    method: str | None


@dataclass
class _Faults:
    """The faults that apply to one response."""

    cut: int | None = None
    corrupt: bool = False
    rate: int | None = None
    whole: bool = False  # ignore a Range request: 200 and the whole file
