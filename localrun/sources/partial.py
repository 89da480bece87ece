"""The `.partial` file a download streams into: hashed on the way, written in large blocks.

It is on disk by the time the last byte arrives. Why not hand huggingface_hub's `http_get` a
file object: it re-chunks the body into a fresh 10 MB buffer (io.BytesIO) at a time. Every fresh
buffer and every new page-cache page is memory the kernel must fault in, which cost more than
the transfer itself here (bench_pull). PartialFile takes the body through a few reused buffers
instead. A helper thread hashes and writes each full buffer (hashlib and os.write release the
GIL, so that runs beside the socket reads). It also starts write-back of what it wrote, then
waits for the window before and drops it from the page cache (Linux; `dd oflag=nocache` does
the same). So a 40 GB pull neither fills memory with dirty pages nor evicts everyone else's
cache, and the fsync before the manifest has almost nothing left to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from localrun.host import files, locks

BLOCK = 4 << 20  # bytes a buffer holds: one write, one hash update
BUFFERS = 3  # one filling, one being written, one spare, so neither side waits on the other
WINDOW = 32 << 20  # write-back starts every WINDOW bytes; the window before is then dropped

WAIT_BEFORE, WRITE, WAIT_AFTER = 1, 2, 4  # sync_file_range(2) flags


def sync_file_range() -> Callable[[int, int, int, int], None] | None:
    """Linux's sync_file_range(fd, offset, length, flags); None elsewhere."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]

    def sync(fd: int, offset: int, length: int, flags: int) -> None:
        call(fd, offset, length, flags)  # advisory: the fsync at the end is what counts

    return sync


@contextlib.contextmanager
def claim(folder: Path) -> Iterator[None]:
    """Hold the partial download `folder` alone; a second pull of the same file waits here.

    The waiter then finds the blob in place. An empty `folder` goes on the way out, and so does
    the lock file beside it (`folder`.lock); a failed download's pieces stay for the resume.
    The lock file is removed while still held. A waiter that finds, once it holds its file,
    that the path is no longer that file takes the new one instead. When the lock file was
    removed after its release (filelock's way), six pulls at once left a lock behind, and held
    two at once.
    """
    path = folder.parent / f"{folder.name}.lock"
    folder.parent.mkdir(parents=True, exist_ok=True)
    if os.name == "nt":  # no flock: filelock's, its file left to `localrun prune`
        from filelock import FileLock

        with FileLock(str(path)):
            yield
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | files.CLOEXEC, 0o644)
        try:
            locks.lock(fd)
            held = os.fstat(fd)
            try:
                now: os.stat_result | None = os.stat(path)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)  # removed by the holder before us: the path is someone else's now
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            folder.rmdir()
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def drop(fd: int, offset: int, length: int) -> None:
    """Drop a range that is on disk from the page cache (advisory)."""
    files.drop_cache(fd, offset, length)


class PartialFile:
    """A file a download appends to, picking up whatever an earlier try left in it.

    `size` counts the bytes in the file plus those accepted by `write`. `finish()` waits for
    the writes, fsyncs and returns the sha256 of the whole file. `restart()` empties it (a server
    that ignored the Range request sends the file from its start). `close()` writes out what is
    buffered, so an interrupted download keeps every byte it received. A write error (a full
    disk) is raised by the next `write` or by `finish`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        self.size = self._on_disk = os.lseek(self._fd, 0, os.SEEK_END)
        self._hasher = hashlib.sha256()
        self._sync = sync_file_range()
        self._started = self._dropped = 0
        self._error: OSError | None = None
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(BUFFERS):
            self._free.put(bytearray(BLOCK))
        self._jobs: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        if self._on_disk:
            # A job like the writes, so restart() and finish() wait for it too.
            self._jobs.put((bytearray(), -1))
        self._current: bytearray | None = self._free.get()
        self._fill = 0
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="localrun-partial", daemon=True)
        self._thread.start()

    # -- the download's side

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        n, at = len(view), 0
        while at < n:
            if self._current is None:
                raise ValueError("write to a closed PartialFile")
            take = min(n - at, BLOCK - self._fill)
            self._current[self._fill : self._fill + take] = view[at : at + take]
            self._fill += take
            at += take
            if self._fill == BLOCK:
                self._submit()
        self.size += n
        return n

    def restart(self) -> None:
        """Empty the file and the hash."""
        self._flush()
        self._jobs.join()
        self._raise()
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._hasher = hashlib.sha256()
        self.size = self._on_disk = self._started = self._dropped = 0

    def finish(self) -> str:
        """Wait for every write, fsync; the sha256 of the file as 'sha256:<hex>'."""
        self._flush()
        self._jobs.join()
        self._raise()
        os.fsync(self._fd)
        return "sha256:" + self._hasher.hexdigest()

    def close(self) -> None:
        """Write out what is buffered and stop the helper thread; errors wait for `finish`."""
        if self._closed:
            return
        self._closed = True
        self._flush()
        self._current = None
        self._jobs.put(None)
        self._thread.join()
        os.close(self._fd)

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _submit(self) -> None:
        # Hand the buffer over before waiting for a free one: if that wait is interrupted
        # (Ctrl-C), close() must not submit the same bytes a second time.
        full, fill = self._current, self._fill
        self._current, self._fill = None, 0
        assert full is not None
        self._jobs.put((full, fill))
        self._current = self._free.get()
        self._raise()

    def _flush(self) -> None:
        if self._current is not None and self._fill:
            self._submit()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    # -- the helper thread

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            buffer, fill = job
            if fill < 0:
                self._guard(self._hash_existing)
            else:
                if self._error is None:
                    self._guard(self._write_out, memoryview(buffer)[:fill])
                self._free.put(buffer)
            self._jobs.task_done()
        self._jobs.task_done()

    def _guard(self, step: Callable[..., None], *args: object) -> None:
        try:
            step(*args)
        except OSError as exc:
            self._error = exc

    def _hash_existing(self) -> None:
        """Hash what an earlier try left (the download appends after it meanwhile)."""
        buffer = bytearray(BLOCK)
        view = memoryview(buffer)
        with open(self.path, "rb", buffering=0) as fh:
            done = 0
            while done < self._on_disk:
                got = fh.readinto(view[: min(BLOCK, self._on_disk - done)])
                if not got:
                    break
                self._hasher.update(view[:got])
                done += got
            drop(fh.fileno(), 0, done)
        self._started = self._dropped = self._on_disk

    def _write_out(self, view: memoryview) -> None:
        self._hasher.update(view)
        at = 0
        while at < len(view):
            at += os.write(self._fd, view[at:])
        self._on_disk += len(view)
        if self._sync is None or self._on_disk - self._started < WINDOW:
            return
        self._sync(self._fd, self._started, self._on_disk - self._started, WRITE)
        previous, self._started = self._started, self._on_disk
        if previous > self._dropped:
            length = previous - self._dropped
            self._sync(self._fd, self._dropped, length, WAIT_BEFORE | WRITE | WAIT_AFTER)
            drop(self._fd, self._dropped, length)
            self._dropped = previous
