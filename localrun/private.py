"""Files that hold what people said, kept to their owner: 0600 files in 0700 folders.

Stored Responses, the terminal chat's history, the disk prompt cache (its entries hold the
prompt's tokens) and the logs of servers started for an agent hold conversations; on a shared
machine (a lab server, a family laptop) files written with the default umask are anyone's to
read. The model store's blobs are not private: they may stay readable.

localrun makes the folders it owns 0700 whenever it writes into them, and creates LOCALRUN_HOME
0700; a home folder that already exists is the person's to change, so `localrun info` says when
one of these folders is open to others (`exposed`) rather than changing it silently.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path, *, owned: bool = True) -> Path:
    """Make `path` (and its missing parents, 0700 too) a folder only its owner can enter.

    `owned`: the folder is localrun's alone (responses/, cache/prompts/, logs/), so an existing
    one is made 0700 as well; else only a folder created here is."""
    missing = []
    parent = path
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=DIR_MODE)
        with contextlib.suppress(OSError):  # mkdir's mode is masked by the umask
            os.chmod(folder, DIR_MODE)
    if owned and not missing:
        with contextlib.suppress(OSError):
            if stat.S_IMODE(path.stat().st_mode) != DIR_MODE:
                os.chmod(path, DIR_MODE)
    return path


def create(path: Path) -> int:
    """A new file at `path`, which must not exist, open for writing and 0600 from its first
    byte (whatever the umask); its descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    with contextlib.suppress(OSError):
        os.fchmod(fd, FILE_MODE)
    return fd


def restrict(path: Path) -> None:
    """Make an existing file 0600 (one another library wrote, such as readline's history)."""
    with contextlib.suppress(OSError):
        if stat.S_IMODE(path.stat().st_mode) != FILE_MODE:
            os.chmod(path, FILE_MODE)


def touch(path: Path) -> None:
    """Create `path` empty and 0600 if it does not exist, so that a library writing it later
    never makes it readable to others, even for a moment."""
    with contextlib.suppress(FileExistsError, OSError):
        os.close(create(path))


def exposed(folders: Iterable[Path]) -> list[tuple[Path, str]]:
    """The folders among `folders` that exist and that others may enter or read, with their
    mode as `ls -l` writes it. One inside another of `folders` that others cannot enter is out
    of their reach whatever its mode, so it is not named (after `chmod 700` on LOCALRUN_HOME,
    the subfolders an older version made are not worth a warning of their own)."""
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
