"""Blobs a runner holds: kept from garbage collection while the process that holds them lives.

A runner loads the blobs of the manifest it was admitted by, which a `create` may meanwhile
replace under the same name; an `rm` or `prune` then finds those blobs used by no manifest.
A lease keeps them: `leases/<id>.json` lists their digests and `leases/<id>.lock` is locked by
the holder for as long as it holds them. Garbage collection (under the store's exclusive lock)
keeps every digest of a lease whose lock is held and removes the files of one whose holder
has gone: a process that dies releases its lock with it, so a crash leaves nothing held.

A lease is taken under the store's shared lock, after checking that its blobs are there: no
collection can run between the check and the lease, and a lease taken too late (the blobs were
collected after the name was resolved) is MissingBlobError, never a runner loading nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Collection
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from localrun.errors import MissingBlobError
from localrun.store.blobs import TMP_PREFIX, os_error, unlink_quietly, write_atomic
from localrun.store.manifest import check_digest

FOLDER = "leases"


class Holder(Protocol):
    """The store a lease is taken in (store.local.Store, which imports this module)."""

    @property
    def root(self) -> Path: ...

    def blob_path(self, digest: str) -> Path: ...

    def writing(self) -> AbstractContextManager[None]: ...


class Lease:
    """Blobs kept from garbage collection until `release` (or this process's end)."""

    def __init__(self, record: Path, lock: Any, digests: frozenset[str]) -> None:
        self.record = record
        self.digests = digests
        self._lock = lock

    def release(self) -> None:
        """Let the blobs go (idempotent): collection may remove them from now on."""
        if self._lock is None:
            return
        lock, self._lock = self._lock, None
        with contextlib.suppress(OSError):
            self.record.unlink()
            self.record.with_suffix(".lock").unlink()
        lock.release()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def take(store: Holder, digests: Collection[str], what: str) -> Lease:
    """Hold the blobs `digests` of `what` until the lease is released.

    `what` is a model's name, for the error. Raises MissingBlobError if a blob is gone already.
    """
    from filelock import FileLock

    wanted = frozenset(check_digest(d) for d in digests)
    folder = store.root / FOLDER
    with store.writing():
        for digest in sorted(wanted):
            if not store.blob_path(digest).is_file():
                raise MissingBlobError(
                    f"the files of {what} were removed from the store as it was loaded "
                    f"(blob {digest[:19]})",
                    hint="retry: the model is loaded as it is now",
                )
        record = folder / f"{os.getpid()}-{secrets.token_hex(8)}.json"
        try:
            folder.mkdir(exist_ok=True)
            # One lock per lease, across threads: the scheduler takes it in a worker thread
            # and releases it on its event loop.
            lock = FileLock(record.with_suffix(".lock"), thread_local=False)
            lock.acquire()
            write_atomic(record, [json.dumps(sorted(wanted)).encode()], sync_dir=False)
        except OSError as exc:
            raise os_error(exc, f"could not hold the files of {what}") from exc
    return Lease(record, lock, wanted)


def held(root: Path) -> set[str] | None:
    """Return the digests held by a live lease in the store at `root`.

    It returns None when a live lease cannot be read, and then collection removes nothing. The
    records of leases whose holder has gone are removed. Garbage collection calls it while it
    holds the store alone.
    """
    from filelock import FileLock, Timeout

    folder = root / FOLDER
    found: set[str] = set()
    if not folder.is_dir():
        return found
    for partial in folder.glob(TMP_PREFIX + "*"):  # no lease is being written: the store is ours
        unlink_quietly(partial)
    for record in folder.glob("*.json"):
        lock = FileLock(record.with_suffix(".lock"), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except (Timeout, OSError):  # its holder lives (or it cannot be told): kept
            digests = _digests(record)
            if digests is None:
                return None
            found |= digests
            continue
        try:
            with contextlib.suppress(OSError):
                record.unlink()
                record.with_suffix(".lock").unlink()
        finally:
            lock.release()
    return found


def _digests(record: Path) -> set[str] | None:
    try:
        listed = json.loads(record.read_bytes())
    except FileNotFoundError:
        return set()  # released since it was listed
    except (OSError, ValueError):
        return None
    if not isinstance(listed, list) or not all(isinstance(d, str) for d in listed):
        return None
    return set(listed)
