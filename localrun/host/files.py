"""Calls on open files that POSIX and Windows make differently, each with its fallback.

- `fchmod`: a file's mode through its descriptor. Windows has no owner/group/other modes
  (a file's access is its ACL, inherited from its folder under the user's profile): a no-op.
- `NONBLOCK` and `blocking`: an open that must not wait on a FIFO (POSIX), then blocking reads.
  Windows has no FIFOs in the file system: 0, nothing to undo.
- `pread_into` and `pwrite`: reads and writes at an offset, from several threads at once.
  Windows has neither: a seek and a read (or write) under one lock.
- `fdatasync` (fsync where there is none, as on macOS and Windows) and `drop_cache`
  (posix_fadvise's DONTNEED where there is one; advisory).
- `reopened`: a path that opens an open file anew (Linux's /proc/self/fd), else None.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_AT = threading.Lock()  # a seek and its read or write, on a system without pread and pwrite


def fchmod(fd: int, mode: int) -> None:
    """Set the mode of the open file `fd` (POSIX); OSError as raised."""
    change = getattr(os, "fchmod", None)
    if change is not None:
        change(fd, mode)


def blocking(fd: int) -> None:
    """Make reads of `fd`, opened with NONBLOCK, wait again."""
    if sys.platform != "win32" and NONBLOCK:
        os.set_blocking(fd, True)


def pread_into(fd: int, buffer: memoryview, offset: int) -> int:
    """Read into `buffer` from `offset` of `fd`, and return the bytes read (0 at the end).

    On POSIX the descriptor's position stays untouched.
    """
    preadv = getattr(os, "preadv", None)
    if preadv is not None:
        return int(preadv(fd, [buffer], offset))
    with _AT:
        os.lseek(fd, offset, os.SEEK_SET)
        data = os.read(fd, len(buffer))
    buffer[: len(data)] = data
    return len(data)


def pwrite(fd: int, data: memoryview | bytes, offset: int) -> int:
    """Write `data` at `offset` of `fd`; the bytes written."""
    call = getattr(os, "pwrite", None)
    if call is not None:
        return int(call(fd, data, offset))
    with _AT:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.write(fd, data)


def fdatasync(fd: int) -> None:
    """Write `fd`'s data to the disk (its metadata too where fdatasync is missing)."""
    getattr(os, "fdatasync", os.fsync)(fd)


def drop_cache(fd: int, offset: int, length: int) -> None:
    """Drop a range of `fd` that is on disk from the page cache.

    It is advice the kernel may ignore, and does nothing on Windows and macOS.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        with contextlib.suppress(OSError):
            advise(fd, offset, length, getattr(os, "POSIX_FADV_DONTNEED", 4))


def reopened(fd: int) -> str | None:
    """Return a path that opens the file of `fd` anew, with its own offset, or None.

    Linux has /proc/self/fd/N. Elsewhere it is None and the caller opens the file by its name:
    macOS's /dev/fd/N shares the descriptor's offset, and Windows has no such path.
    """
    path = f"/proc/self/fd/{fd}"
    return path if sys.platform != "win32" and os.path.exists(path) else None
