"""`localrun verify`: hash every blob of the store again, and say what that means for models.

A model's blob may be corrupt or missing, or a hard-linked original edited in place. An original
that moved on since it was linked in is a notice, not damage.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from localrun.errors import StoreError
from localrun.store import links
from localrun.store.blobs import hash_fd
from localrun.store.manifest import DIGEST_RE, Manifest, check_digest
from localrun.store.names import ModelName


class Store(Protocol):
    """What verifying reads of the store (store.local.Store, which calls it)."""

    root: Path
    blobs: Path

    def names(self) -> list[ModelName]: ...

    def read_manifest(self, name: ModelName) -> Manifest: ...


@dataclass
class VerifyReport:
    checked: int = 0
    corrupt: dict[str, list[str]] = field(default_factory=dict)  # digest -> models using it
    missing: dict[str, list[str]] = field(default_factory=dict)
    bad_manifests: list[str] = field(default_factory=list)
    # digest -> the user's file it is hard-linked to (create --link), edited in place since
    edited: dict[str, str] = field(default_factory=dict)
    # digest -> ("gone" or "changed", the user's file it was linked from, models using it):
    # the blob is intact, its original moved on (store.links.drifted); a notice, not damage
    drifted: dict[str, tuple[str, str, list[str]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.missing or self.bad_manifests)


def rehash(store: Store, progress: Callable[[str, int, int], None] | None) -> VerifyReport:
    """Hash every blob again, and report what that says of the models using it.

    The caller holds the store shared: a concurrent rm or prune would delete files between
    listing and hashing.
    """
    report = VerifyReport()
    users: dict[str, list[str]] = {}
    for name in store.names():
        try:
            manifest = store.read_manifest(name)
        except StoreError:
            report.bad_manifests.append(str(name))
            continue
        for digest in manifest.digests():
            users.setdefault(digest, []).append(str(name))
    blobs = (
        sorted(p for p in store.blobs.iterdir() if DIGEST_RE.match(p.name))
        if (store.blobs.is_dir())
        else []
    )
    present = set()
    for path in blobs:
        digest = check_digest(path.name)
        present.add(digest)
        size = path.stat().st_size

        def tick(done: int, total: int, digest: str = digest) -> None:
            if progress:
                progress(digest, done, total)

        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            report.corrupt[digest] = users.get(digest, [])
            continue
        try:
            actual = hash_fd(fd, size, tick)
        finally:
            os.close(fd)
        report.checked += 1
        if actual != digest:
            report.corrupt[digest] = users.get(digest, [])
            found = links.recorded(links.folder(store.root), path.name)
            if found is not None and found[0] == "hard link":
                report.edited[digest] = found[1]
        elif digest in users and (drift := links.drifted(links.folder(store.root), path)):
            # An unused blob is prune's: an old version left by a re-import says nothing.
            report.drifted[digest] = (*drift, users[digest])
    for digest, models in users.items():
        if digest not in present:
            report.missing[digest] = models
    return report
