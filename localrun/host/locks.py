"""An exclusive lock on an open file, held by this process until unlocked or the file is closed.

It is flock(2) on POSIX and msvcrt.locking (a lock on the first byte) on Windows. Where `fcntl`
is missing it is POSIX lockf (os.lockf), which locks between processes, not threads.

    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    if not locks.try_lock(fd): ...    # another process holds it
    locks.lock(fd)                    # or wait for it
"""

from __future__ import annotations

import os
import sys
import time

_WAIT_S = 0.1  # Windows' locking() cannot wait without end: it is asked again at this pace


def try_lock(fd: int) -> bool:
    """Lock `fd` exclusively if no other holds it; whether it was locked."""
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        import fcntl
    except ImportError:
        return _lockf(fd, os.F_TLOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def lock(fd: int) -> None:
    """Lock `fd` exclusively, waiting for whoever holds it."""
    if sys.platform == "win32":
        while not try_lock(fd):
            time.sleep(_WAIT_S)
        return
    try:
        import fcntl
    except ImportError:
        _lockf(fd, os.F_LOCK)
        return
    fcntl.flock(fd, fcntl.LOCK_EX)


def unlock(fd: int) -> None:
    """Give the lock up (closing the file does too)."""
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    try:
        import fcntl
    except ImportError:
        _lockf(fd, os.F_ULOCK)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


def _lockf(fd: int, how: int) -> bool:
    """os.lockf on the file's first byte (the whole file: length 0 from offset 0)."""
    if sys.platform == "win32":  # (for type checkers: POSIX's alone)
        return False
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        os.lockf(fd, how, 0)
    except OSError:
        return False
    return True
