"""Files that hold what people said, kept to their owner: 0600 files in 0700 folders.

Stored Responses, the terminal chat's history, the disk prompt cache (its entries hold the
prompt's tokens) and the logs of servers started for an agent hold conversations. On a shared
machine (a lab server, a family laptop), files written with the default umask are anyone's to
read. The model store's blobs are not private: they may stay readable.

localrun makes the folders it owns 0700 whenever it writes into them, and creates LOCALRUN_HOME
0700. A home folder that already exists is the person's to change, so `localrun info` says when
one of these folders is open to others (`exposed`) rather than changing it silently.

The files localrun keeps of its own under LOCALRUN_HOME are written here, never through a link
planted where the file or its folder should be (issue 76). What is refused raises `Planted`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from localrun.host import files

FILE_MODE = 0o600
DIR_MODE = 0o700
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


# Issue 76: `launch` overwrote, appended to and made 0600 whatever a link in logs/ or launch/
# named. So localrun's own files (launch's settings files and server log, the chat history,
# upstreams.toml, markers) go through here. A whole file is written beside its place and renamed
# over it (`write`), so a link there is replaced, not followed. A log is opened to append with
# O_NOFOLLOW, and only when it is a regular file of one name (`open_log`). A folder of
# localrun's own is entered without following a link (`_close_dir`).


class Planted(OSError):
    """A link, or another kind of file, where localrun keeps a file or a folder of its own.

    It is not followed, and not written through. It is an OSError, so that what writes only
    when it can (the prompt cache) goes on without. The CLI names the path and says to remove it.
    """


def private_dir(path: Path, *, owned: bool = True) -> Path:
    """Make `path` (and its missing parents, 0700 too) a folder only its owner can enter.

    `owned`: the folder is localrun's alone (responses/, cache/prompts/, logs/), so an existing
    one is made 0700 as well, and one that is a link is refused (Planted); else only a folder
    created here is (LOCALRUN_HOME may be a link to another disk)."""
    missing = []
    parent = path
    while not os.path.lexists(parent) and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=DIR_MODE)
        _close_dir(folder)  # mkdir's mode is masked by the umask
    if owned and not missing:
        _close_dir(path)
    return path


def _close_dir(folder: Path) -> None:
    """Make `folder` 0700, entered without following a link.

    Raises Planted when it is a link or not a folder.
    """
    if not _NOFOLLOW or not _DIRECTORY:  # Windows: no modes to set, no such flags
        return
    try:
        fd = os.open(folder, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
            where = "a link or a file where localrun keeps a folder"
            raise Planted(exc.errno, where, str(folder)) from None
        raise
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != DIR_MODE:
            with contextlib.suppress(OSError):
                files.fchmod(fd, DIR_MODE)
    finally:
        os.close(fd)


def create(path: Path) -> int:
    """Create a new file at `path`, which must not exist, and return its descriptor.

    The file is open for writing, and 0600 from its first byte whatever the umask.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    with contextlib.suppress(OSError):
        files.fchmod(fd, FILE_MODE)
    return fd


def restrict(path: Path) -> None:
    """Make an existing file 0600, such as one another library wrote (readline's history).

    A link there is left alone, and its target never changed.
    """
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | files.NONBLOCK | _CLOEXEC)
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != FILE_MODE:
                files.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)


def write(path: Path, data: bytes) -> None:
    """Replace `path` with a 0600 file holding `data`, never writing through a link there.

    The file is written beside `path`, fsynced and renamed over it, so that a link planted at
    `path` is replaced, never followed. OSError is raised as it comes.
    """
    tmp = _beside(path)
    fd = create(tmp)
    try:
        with open(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Replace `path` with what `writer` writes into the new, empty 0600 file it is given.

    That file lies beside `path` and is renamed over it after, so a link planted at `path` is
    replaced, never followed. It serves a library that writes by name (readline's history).
    """
    tmp = _beside(path)
    os.close(create(tmp))
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def open_log(path: Path) -> BinaryIO:
    """Open `path` to append, creating it 0600 when missing and making it 0600 when not.

    Only a regular file with no other name is opened. A link, a FIFO or a hard link planted
    there is refused (Planted), never followed or written through.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | files.NONBLOCK | _CLOEXEC
    try:
        fd = os.open(path, flags, FILE_MODE)
    except OSError as exc:
        # ELOOP: a link (EMLINK on the BSDs); ENXIO: a FIFO no one reads; EISDIR: a folder.
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EISDIR):
            raise _planted(path) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise _planted(path)
        if stat.S_IMODE(st.st_mode) != FILE_MODE:
            files.fchmod(fd, FILE_MODE)
        return open(fd, "ab")
    except BaseException:
        os.close(fd)
        raise


def _planted(path: Path) -> Planted:
    where = "a link or another kind of file where localrun keeps a log"
    return Planted(errno.ELOOP, where, str(path))


def touch(path: Path) -> None:
    """Create `path` empty and 0600 if it does not exist.

    A library writing it later then never makes it readable to others, even for a moment.
    """
    with contextlib.suppress(FileExistsError, OSError):
        os.close(create(path))


def exposed(folders: Iterable[Path]) -> list[tuple[Path, str]]:
    """List the folders among `folders` that exist and that others may enter or read.

    Each comes with its mode as `ls -l` writes it. A folder inside another of `folders` that
    others cannot enter is out of their reach whatever its mode, so it is not named. After
    `chmod 700` on LOCALRUN_HOME, the subfolders an older version made need no warning.
    """
    modes: dict[Path, int] = {}
    for folder in folders:
        with contextlib.suppress(OSError):
            mode = folder.stat().st_mode
            if stat.S_ISDIR(mode):
                modes[folder] = mode
    shut = [folder for folder, mode in modes.items() if not mode & 0o011]  # no one else enters
    return [
        (folder, stat.filemode(mode))
        for folder, mode in modes.items()
        if mode & 0o077 and not any(folder != out and folder.is_relative_to(out) for out in shut)
    ]
