"""How the model store writes and hashes files, so that a file in it is complete or absent.

Content is written to a process-unique temporary file (TMP_PREFIX) in the folder it will live in,
fsynced, moved into place with os.replace and the folder fsynced: a crash leaves a stale
temporary file (prune removes it), never half a blob or half a manifest. OSErrors are translated
here into StoreError (DiskFullError for a full disk) with the next thing to try.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

from localrun.errors import DiskFullError, StoreError

TMP_PREFIX = ".tmp-"
CHUNK = 4 * 1024 * 1024

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) while a large file is hashed or copied."""


def temp_path(folder: Path) -> Path:
    """A process-unique temporary file name in `folder` (not created)."""
    return folder / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"


def open_new(path: Path) -> int:
    """Open a new file for writing; fails if it exists."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)


def write_atomic(path: Path, chunks: list[bytes], *, sync_dir: bool) -> None:
    """Write `path` whole or not at all (a temporary file, fsynced, then os.replace)."""
    tmp = temp_path(path.parent)
    try:
        fd = open_new(tmp)
        try:
            for chunk in chunks:
                write_all(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if sync_dir:
            fsync_dir(path.parent)
    except OSError as exc:
        unlink_quietly(tmp)
        raise os_error(exc, "could not write to the model store") from exc


def copy_hashed(fd: int, target: Path, size: int, progress: Progress | None) -> str:
    """Copy an open file, from its start, into the new file `target`, and return its digest.

    `target` is fsynced; the digest is that of the bytes copied.
    """
    hasher = hashlib.sha256()
    done = 0
    last = 0.0
    out = open_new(target)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        while chunk := os.read(fd, CHUNK):
            hasher.update(chunk)
            write_all(out, chunk)
            done += len(chunk)
            if progress and (time.monotonic() - last > 0.1 or done == size):
                last = time.monotonic()
                progress(done, size)
        os.fsync(out)
    finally:
        os.close(out)
    return "sha256:" + hasher.hexdigest()


def hash_file(path: Path) -> str:
    """The digest ('sha256:<hex>') of a file's content."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return hash_fd(fd, os.fstat(fd).st_size, None)
    finally:
        os.close(fd)


def hash_fd(fd: int, size: int, progress: Progress | None) -> str:
    """The digest of an open file's content, read from its start."""
    hasher = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    done = 0
    last = 0.0
    while chunk := os.read(fd, CHUNK):
        hasher.update(chunk)
        done += len(chunk)
        if progress and (time.monotonic() - last > 0.1 or done == size):
            last = time.monotonic()
            progress(done, size)
    return "sha256:" + hasher.hexdigest()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    if os.name == "nt":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def os_error(exc: OSError, what: str) -> StoreError:
    """The StoreError for an OSError met while `what` (a full disk, a permission, the rest)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return DiskFullError(
            f"{what}: no space left on the device",
            hint="free some disk space (`localrun prune` removes unused blobs) "
            "or move the store with LOCALRUN_MODELS",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(
            f"{what}: permission denied ({exc.filename or ''})".replace(" ()", ""),
            hint="check the permissions of the store folder or set LOCALRUN_MODELS",
        )
    if _too_long(exc):
        return StoreError(
            f"{what}: the path is longer than Windows allows ({exc.filename})",
            hint="turn on Windows' long paths (LongPathsEnabled, in Group Policy or the "
            "registry) or move the store to a shorter folder with LOCALRUN_MODELS",
        )
    return StoreError(f"{what}: {exc.strerror or exc}")


_FILENAME_EXCED_RANGE = 206  # Windows' error for a path past MAX_PATH (260)


def _too_long(exc: OSError) -> bool:
    """Whether `exc` is Windows refusing a path past MAX_PATH (long paths not turned on)."""
    if getattr(exc, "winerror", None) == _FILENAME_EXCED_RANGE:
        return True
    name = exc.filename
    return (
        sys.platform == "win32"
        and exc.errno in (errno.ENOENT, errno.EINVAL)
        and isinstance(name, str)
        and len(name) >= 260
    )
