"""Files kept in place: a GGUF the user already has becomes a blob without a second copy.

`create --link` asks for it (ollama#7254: 40 GB of GGUFs from LM Studio or the Hugging Face
cache should not need 40 GB more). In order of preference:

- a reflink (Linux FICLONE on btrfs, XFS, bcachefs; clonefile on APFS): a copy-on-write clone,
  a file of its own from then on, so an edit of the original never reaches the store;
- a hard link: the same file under a second name, so an edit of the original in place *is* an
  edit of the blob. `verify` finds it by hashing, and names the original (the link record);
- where neither works (another file system, a file system without links), a copy, said so.

Removing a model unlinks the store's name for the file only: the user's original is never
deleted. A link record (links/sha256-<hex>: how, the original's path, and the original's
identity then: device, inode, size, mtime) lives as long as its blob. `drifted` tells `verify`
when the original moved on while the blob did not.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from localrun.errors import StoreError
from localrun.store.blobs import hash_file, open_new, unlink_quietly, write_atomic

# Linux's FICLONE ioctl (_IOW(0x94, 9, int)): clone the whole of a file into another.
FICLONE = 0x40049409

# What os.link raises where a hard link cannot be made (rather than a failure to report).
_NO_LINK = frozenset(
    {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES}
)  # fmt: skip

_CHANGED = "the file changed while it was being added; nothing was stored"


def folder(store_root: Path) -> Path:
    """Where a store keeps its link records (one file a linked blob)."""
    return store_root / "links"


def clone(fd: int, source: Path, target: Path) -> bool:
    """Make `target`, which must not exist, a reflink of the open file `fd` (`source`).

    Returns False where the file system or the platform has none.
    """
    if sys.platform == "linux":
        try:
            import fcntl
        except ImportError:
            return False
        out = open_new(target)
        try:
            fcntl.ioctl(out, FICLONE, fd)
        except OSError:
            os.close(out)
            unlink_quietly(target)
            return False
        os.close(out)
        return True
    if sys.platform == "darwin":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.clonefile(os.fsencode(source), os.fsencode(target), 0) == 0)
    return False


def link(fd: int, source: Path, target: Path, digest: str, before: os.stat_result) -> str | None:
    """Put the open file `fd` (`source`) at `target` without copying it, and say how.

    `fd` was hashed to `digest` and seen as `before` when its hashing began. It returns
    "reflink" or "hard link", or None where neither can be made. Raises StoreError when the
    file changed since it was hashed.
    """
    if clone(fd, source, target):
        if hash_file(target) != digest:  # the clone is a snapshot: its hash is the truth
            unlink_quietly(target)
            raise StoreError(_CHANGED, hint="run the command again once the file is complete")
        return "reflink"
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno in _NO_LINK:
            return None
        raise
    linked = os.stat(target)
    same = (linked.st_dev, linked.st_ino) == (before.st_dev, before.st_ino)
    if not same or (linked.st_size, linked.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        # Another file took the name since it was opened, or this one was written to since
        # it was hashed: the blob would not be what was hashed.
        unlink_quietly(target)
        raise StoreError(_CHANGED, hint="run the command again once the file is complete")
    return "hard link"


def record(links: Path, blob_name: str, source: Path, how: str) -> None:
    """Remember which file of the user's a blob is linked to, and what that file was."""
    links.mkdir(exist_ok=True)
    real = source.resolve()
    try:
        st = os.stat(real)
        stamp = f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns}\n"
    except OSError:  # gone already: `verify` will say so by the path alone
        stamp = ""
    write_atomic(links / blob_name, [f"{how}\n{real}\n{stamp}".encode()], sync_dir=False)


def _record(links: Path, blob_name: str) -> list[str] | None:
    """Return the lines of a linked blob's record, or None where none can be read.

    The lines are how, the original's path, then what the original was when linked. A record
    that is missing, unreadable or short gives None.
    """
    try:
        lines = (links / blob_name).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    return lines if len(lines) >= 2 else None


def recorded(links: Path, blob_name: str) -> tuple[str, str] | None:
    """(how, original path) of a linked blob, or None."""
    lines = _record(links, blob_name)
    return (lines[0], lines[1]) if lines is not None else None


def original(links: Path, blob_name: str) -> str | None:
    """Return the user's file a blob is a hard link of, or None for a blob of the store's own.

    A hard link is the same file: an edit of one in place is an edit of the other. The store's
    own blobs are copies or reflinks.
    """
    found = recorded(links, blob_name)
    return found[1] if found is not None and found[0] == "hard link" else None


def original_in(store_root: Path | None, blob_name: str) -> str | None:
    """`original` for a blob of the store at `store_root` (None: a model read from no store)."""
    return original(folder(store_root), blob_name) if store_root is not None else None


# The original can move on while the blob does not. A rename over it (what downloaders and
# editors that save a new file do) leaves the blob as it was. It can be gone from its path
# (another runner deleted it: `ollama rm`, a pull that replaced it and pruned the old blob), or a
# different file or content can be there now (a re-download renamed over it; a reflink's original
# edited). The store's content is intact either way, so this is a notice, not damage. A hard link
# keeps the data (and its space) until no model uses the blob, and importing or creating the model
# again takes the new file. A hard-linked original edited in place is the blob edited: that is
# damage, which hashing finds.
def drifted(links: Path, blob: Path) -> tuple[str, str] | None:
    """Tell whether the user's file that `blob` was linked from has moved on since.

    It returns ("gone", path) when the file is no longer at its path, and ("changed", path)
    when another file or other content is there. It returns None while it is the file that
    was linked, or where no record says (a blob of the store's own).
    """
    lines = _record(links, blob.name)
    if lines is None:
        return None
    how, path = lines[0], lines[1]
    try:
        now = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "gone", path
    except OSError:  # unreadable: nothing to tell
        return None
    if how == "hard link":  # the same file, or not: its inode says
        try:
            mine = os.stat(blob)
        except OSError:
            return None
        same = (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)
        return None if same else ("changed", path)
    try:  # a reflink: a file of its own, compared with what the original was when linked
        then = tuple(int(x) for x in lines[2].split()) if len(lines) > 2 else ()
    except ValueError:
        return None
    if len(then) != 4:  # recorded before records kept it
        return None
    same = then == (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns)
    return None if same else ("changed", path)


def forget_missing(links: Path, blobs: Path) -> None:
    """Drop the records of blobs that are gone."""
    if not links.is_dir():
        return
    for entry in links.iterdir():
        if not (blobs / entry.name).exists():
            unlink_quietly(entry)
