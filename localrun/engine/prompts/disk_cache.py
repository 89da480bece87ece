"""Prompt prefixes evaluated once and kept on disk, so that the next process restores them.

An entry is llama.cpp's state for a model's SYSTEM prompt and MESSAGE turns, or for a conversation a
process's slots held when it closed. It is one file, `<tokens>-<key>.kv`: the prefix's length and a
hash of everything its state depends on (the model and adapter identities and scales, the llama.cpp
build, the context size, the KV cache's type and layout, the exact prefix tokens). Its header holds
the same description, so a file serves exactly its own prefix:

    b"LRKV2\\n" | header length (4 bytes, little-endian) | header JSON | state

A file that is truncated, damaged or made for something else is removed and ignored: the prefix is
then evaluated as if there were no cache. LOCALRUN_PROMPT_CACHE_MAX_BYTES bounds the folder, the
least recently used entries going first; `localrun prune` empties it. No llama.cpp here: the engines
hand over a buffer and take a bytearray.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from localrun.errors import ConfigError
from localrun.host import private
from localrun.settings import config, limits

log = logging.getLogger("localrun.engine")

MAGIC = b"LRKV2\n"  # LRKV1 (SHA-256) files have other names now: evicted as they age
SUFFIX = ".kv"
MIN_TOKENS = 64  # shorter prefixes evaluate faster than a file is read
_MAX_HEADER = 64 * 1024
State = bytes | bytearray | memoryview  # a KV state as the engines hand it over, sized by nbytes
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # POSIX: never through a symlink
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO opens at once (and is then refused)
_BLOB_NAME = re.compile(r"sha256[-:]([0-9a-f]{64})")
_ENTRY_NAME = re.compile(r"([0-9]{1,9})-[0-9a-f]{40}" + re.escape(SUFFIX))
MAX_TRIED = 32  # prefix lengths `longest` hashes a prompt at, at most


def folder() -> Path:
    return config.home() / "cache" / "prompts"


def file_identity(path: str) -> str:
    """What identifies a model file's content.

    That is its digest for a blob of the store (named by it), else its real path, size and
    modification time.
    """
    name = os.path.basename(path)
    found = _BLOB_NAME.fullmatch(name)
    if found:
        return "sha256:" + found.group(1)
    real = os.path.realpath(path)
    st = os.stat(real)
    return f"file:{real}:{st.st_size}:{st.st_mtime_ns}"


def prefix_digest(tokens: Sequence[int]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(tokens)}i", *tokens)).hexdigest()


class PromptCache:
    """The entries of one loaded model's contexts.

    `identity` holds what every entry shares (model, adapters, build, context); each entry adds
    its prefix.
    """

    def __init__(self, identity: dict[str, Any], root: Path, max_bytes: int) -> None:
        self.identity = identity
        self.root = root
        self.max_bytes = max_bytes
        self._writers: list[threading.Thread] = []

    @classmethod
    def from_config(cls, identity: dict[str, Any]) -> PromptCache | None:
        """The cache as LOCALRUN_PROMPT_CACHE_MAX_BYTES sets it; None when it is 0."""
        try:
            max_bytes = limits.prompt_cache_max_bytes()
        except ConfigError:
            return None  # a bad value is reported where settings are checked (`env`, start)
        if max_bytes <= 0:
            return None
        return cls(identity, folder(), max_bytes)

    def _key(self, prefix: Sequence[int]) -> tuple[dict[str, Any], Path]:
        material = {
            **self.identity,
            "format": MAGIC.decode().strip(),  # another version's files have other names
            "tokens": len(prefix),
            "prefix": prefix_digest(prefix),
        }
        text = json.dumps(material, sort_keys=True, separators=(",", ":"))
        # The prefix's length leads the name: `longest` finds what a prompt may continue.
        name = f"{len(prefix)}-{hashlib.sha256(text.encode()).hexdigest()[:40]}{SUFFIX}"
        return material, self.root / name

    def longest(
        self, prompt: Sequence[int], most: Callable[[int], int]
    ) -> tuple[int, bytearray] | None:
        """The longest entry for a prefix of `prompt` and its state, or None.

        It is never the whole prompt: its last token is read for its logits. So a conversation saved
        by an earlier process (`save` at its close) continues where it was. `most(n)` is the largest
        state a prefix of n tokens can have. At most MAX_TRIED lengths are looked at, longest first.
        """
        lengths: set[int] = set()
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.root):
                found = _ENTRY_NAME.fullmatch(entry.name)
                if found and MIN_TOKENS <= int(found.group(1)) < len(prompt):
                    lengths.add(int(found.group(1)))
        for n in sorted(lengths, reverse=True)[:MAX_TRIED]:
            prefix = prompt[:n]
            if self._key(prefix)[1].exists():
                state = self.load(prefix, most(n))
                if state is not None:
                    return n, state
        return None

    def load(self, prefix: Sequence[int], most: int | None = None) -> bytearray | None:
        """The state saved for exactly `prefix`, or None; a bad file is removed.

        It is read straight into a buffer the engine hands to llama.cpp as it is (no copy). `most`
        is the largest state the model can have for the prefix; a larger entry is not read.

        Only a regular file is an entry: a symlink is not followed and a FIFO is not waited on
        (seen: a FIFO in the folder held `localrun run` forever).
        """
        material, path = self._key(prefix)
        bound = self.max_bytes if most is None else min(self.max_bytes, most)
        try:
            with _open_entry(path) as fh:
                state = None if fh is None else _read(fh, material, bound)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, struct.error, RecursionError, MemoryError):
            state = None  # RecursionError: a header of deeply nested JSON
        if state is None:
            log.warning(
                "a prompt cache entry was damaged or not this model's: %s removed", path.name
            )
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # least recently used goes first
        return state

    def discard(self, prefix: Sequence[int]) -> None:
        """Remove the entry for `prefix` (llama.cpp refused its state)."""
        log.warning("llama.cpp refused a prompt cache entry of %d tokens; removed", len(prefix))
        with contextlib.suppress(OSError):
            self._key(prefix)[1].unlink()

    def save(self, prefix: Sequence[int], state: State) -> None:
        """Write the state of `prefix` in a background thread.

        The process waits for it at exit, so a one-shot `localrun run` still leaves its entry
        behind. `state` is the cache's from then on: the caller must not change it.
        """
        if memoryview(state).nbytes + 4096 > self.max_bytes:  # with room for its header
            return
        material, path = self._key(prefix)
        # Not a daemon, said outright: a thread inherits the flag of the one starting it, and
        # the engine's loop, which saves, is a daemon. A daemon writer died with a one-shot
        # `localrun run` that exited before it wrote (seen on a loaded CI machine).
        thread = threading.Thread(
            target=self._write,
            args=(path, material, state),
            name="prompt-cache-write",
            daemon=False,
        )
        self._writers = [t for t in self._writers if t.is_alive()]
        self._writers.append(thread)
        thread.start()

    def flush(self) -> None:
        """Wait for the writes in progress."""
        for thread in self._writers:
            thread.join()
        self._writers = []

    def _write(self, path: Path, material: dict[str, Any], state: State) -> None:
        # CRC-32 checks against damage, not tampering (the folder is the user's own). The state
        # is read in the time to first token: where that was measured, CRC-32 read 35 MB in 6 ms,
        # SHA-256 in 20.
        header = json.dumps(
            {**material, "size": memoryview(state).nbytes, "crc32": zlib.crc32(state)},
            sort_keys=True,
        ).encode()
        # Written beside the entry, then renamed into place: a reader never sees half a file.
        tmp = path.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}")
        try:
            private.private_dir(path.parent)  # entries hold prompts' tokens: 0600 in 0700
            with open(private.create(tmp), "wb") as fh:
                fh.write(MAGIC + struct.pack("<I", len(header)) + header)
                fh.write(state)
            os.replace(tmp, path)
        except OSError:  # a full disk or a read-only home: no entry, no harm
            with contextlib.suppress(OSError):
                tmp.unlink()
            return
        evict(self.root, self.max_bytes, keep=path)


@contextlib.contextmanager
def _open_entry(path: Path) -> Iterator[BinaryIO | None]:
    """An entry opened for reading, or None when it is not a regular file.

    None stands for a symlink, a FIFO or a device. FileNotFoundError means there is none.
    """
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError:  # ELOOP: a symlink
        yield None
        return
    with open(fd, "rb") as fh:
        yield fh if stat.S_ISREG(os.fstat(fd).st_mode) else None


def _read(fh: Any, material: dict[str, Any], max_bytes: int) -> bytearray | None:
    if fh.read(len(MAGIC)) != MAGIC:
        return None
    (size,) = struct.unpack("<I", fh.read(4))
    if size > _MAX_HEADER:
        return None
    header = json.loads(fh.read(size))
    if not isinstance(header, dict):
        return None
    if {k: header.get(k) for k in material} != material:
        return None  # made for another model, build, context or prefix
    length = header.get("size")
    if not isinstance(length, int) or length <= 0:
        return None
    if length > min(max_bytes, os.fstat(fh.fileno()).st_size):
        return None  # truncated, or more than the cache holds (checked before the buffer)
    state = bytearray(length)
    if fh.readinto(state) != length or fh.read(1):
        return None  # truncated, or longer than it says
    if zlib.crc32(state) != header.get("crc32"):
        return None
    return state


def evict(root: Path, max_bytes: int, keep: Path | None = None) -> None:
    """Remove the least recently used entries until the folder holds at most `max_bytes`."""
    entries = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            if entry.name.endswith(SUFFIX) and not entry.name.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)  # a link's own size, not its target's
                    entries.append((st.st_mtime_ns, st.st_size, Path(entry.path)))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        if path == keep:
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            total -= size


def clear(root: Path | None = None) -> tuple[int, int]:
    """Remove every entry (and leftover temporary file): (files, bytes) removed."""
    root = root or folder()
    files = freed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            if entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    size = entry.stat().st_size
                    os.unlink(entry.path)
                    files += 1
                    freed += size
    return files, freed
