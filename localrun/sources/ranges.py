"""One blob downloaded in parallel ranges, resumable, and verified by its digest as it lands.

The blob is cut into pieces of PIECE bytes; STREAMS connections take the pieces in order, each
with a Range request (as Ollama's downloader splits a blob into parts), and write them where
they belong in one preallocated file (`data`). Beside them a hasher follows the pieces in
order, reading each back from the page cache as soon as it is whole, so the digest is known
moments after the last byte arrives rather than after a second pass over the file.

Resuming: `state.json` beside the file lists the pieces that are whole (written atomically
after each one). A new try keeps them, hashes them again from the disk and fetches the rest; a
piece cut off midway is fetched again from its start. A state of another blob or size, or a
file of another size, starts over.

A server that ignores Range (a 200 for a piece past the first) is read in one stream from the
start. Whatever the server does, no more than the blob's size is read (an endless body is cut
and refused), every piece must come whole (a short one is retried, RETRIES times, the count
starting again whenever a try gets further), and a digest that differs deletes the download.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from localrun.errors import DownloadError, LocalrunError
from localrun.sources.base import download_os_error

PIECE = 64 << 20  # bytes a Range request asks for
STREAMS = 4  # connections at once for a blob of several pieces
RETRIES = 4  # tries of a piece that gets no further, with 0.5, 1, 2, 4 s pauses
BLOCK = 1 << 20  # bytes a write takes at most

Opener = Callable[[int, int], AbstractContextManager["Body"]]
"""Opens bytes [start, end] of the blob (inclusive, as Range says): a Body."""
Progress = Callable[[int, int], None]


@dataclass
class Body:
    """An answer to a Range request: whether it honoured it, and its bytes."""

    ranged: bool  # a 206 for the range asked (False: the whole blob from its start)
    chunks: Iterator[bytes]


class _Cancelled(Exception):
    pass


class _NoRanges(Exception):
    """The server sent the whole blob for a piece past the first."""


def download(
    opener: Opener,
    digest: str,
    size: int,
    folder: Path,
    progress: Progress,
    *,
    what: str,
    streams: int | None = None,
    piece: int | None = None,
) -> tuple[Path, str]:
    """Fetch the blob into `folder/data`, resuming what an earlier try left; returns the path
    and its sha256 ('sha256:<hex>'). DownloadError when the digest is not `digest` (the
    download is deleted then)."""
    folder.mkdir(parents=True, exist_ok=True)
    streams, piece = max(1, streams or STREAMS), max(1, piece or PIECE)
    if size == 0:
        path = folder / "data"
        path.write_bytes(b"")
        return path, "sha256:" + hashlib.sha256(b"").hexdigest()
    job = _Job(opener, digest, size, folder, progress, what, streams, piece)
    try:
        found = job.run()
    except OSError as exc:
        raise download_os_error(what, exc) from exc
    if found != digest:
        job.discard()
        raise DownloadError(
            f"{what}: the registry sent bytes whose digest is {found}, not {digest}; the "
            "download was deleted",
            hint="pull again; if it repeats, the registry (or a proxy between) is damaged",
        )
    return job.path, found


def kept(folder: Path, digest: str, size: int) -> int:
    """Bytes of the blob an earlier try left whole in `folder` (what a resumed pull skips)."""
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        if state.get("digest") != digest or state.get("size") != size:
            return 0
        piece = int(state["piece"])
        done = {i for i in state.get("done") or [] if isinstance(i, int)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0
    return sum(min(piece, size - i * piece) for i in done if 0 <= i * piece < size)


class _Job:
    def __init__(
        self,
        opener: Opener,
        digest: str,
        size: int,
        folder: Path,
        progress: Progress,
        what: str,
        streams: int,
        piece: int,
    ) -> None:
        self.opener, self.digest, self.size, self.what = opener, digest, size, what
        self.path, self.state = folder / "data", folder / "state.json"
        self.progress = progress
        self.piece = piece
        self.count = max(1, -(-size // piece))
        self.streams = min(streams, self.count)
        self.done = [False] * self.count
        self.got = [0] * self.count  # bytes of each piece written so far
        self.lock = threading.Condition()
        self.stop = False  # everything ends: the hasher too
        self.halt = False  # the pieces' connections end
        self.next = 0
        self.last_report = 0.0
        self.reporting = threading.Lock()  # one thread at a time tells the caller
        self.saving = threading.Lock()

    # -- the plan

    def run(self) -> str:
        self._resume()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            if os.fstat(fd).st_size != self.size:
                os.ftruncate(fd, self.size)
            hasher = ThreadPoolExecutor(1, thread_name_prefix="localrun-hash")
            hashed = hasher.submit(self._hash, fd)
            try:
                self._fetch_all(fd)
            except BaseException:
                with self.lock:
                    self.stop = self.halt = True
                    self.lock.notify_all()
                raise
            finally:
                hasher.shutdown(wait=True)
            digest = hashed.result()
            os.fsync(fd)
        finally:
            os.close(fd)
        self._report(force=True)
        return digest

    def discard(self) -> None:
        for path in (self.path, self.state, self.state.with_suffix(".tmp")):
            with contextlib.suppress(OSError):
                path.unlink()

    def _resume(self) -> None:
        try:
            state = json.loads(self.state.read_text(encoding="utf-8"))
            on_disk = self.path.stat().st_size
        except (OSError, ValueError):
            return
        if (
            not isinstance(state, dict)
            or state.get("digest") != self.digest
            or state.get("size") != self.size
            or state.get("piece") != self.piece
            or on_disk != self.size
        ):
            self.discard()
            return
        for index in state.get("done") or []:
            if isinstance(index, int) and 0 <= index < self.count:
                self.done[index] = True
                self.got[index] = self._length(index)

    def _save(self) -> None:
        with self.saving:  # one writer of the state at a time
            with self.lock:
                done = [i for i, whole in enumerate(self.done) if whole]
            data = {"digest": self.digest, "size": self.size, "piece": self.piece, "done": done}
            tmp = self.state.with_suffix(".tmp")
            tmp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(tmp, self.state)

    def _length(self, index: int) -> int:
        return min(self.piece, self.size - index * self.piece) if self.size else 0

    def _take(self) -> int | None:
        with self.lock:
            while self.next < self.count and self.done[self.next]:
                self.next += 1
            if self.next >= self.count or self.halt:
                return None
            self.next += 1
            return self.next - 1

    # -- fetching

    def _fetch_all(self, fd: int) -> None:
        if all(self.done):
            return
        try:
            with ThreadPoolExecutor(self.streams, thread_name_prefix="localrun-pull") as pool:
                futures = [pool.submit(self._worker, fd) for _ in range(self.streams)]
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                failed = [f for f in finished if f.exception() is not None]
                if failed:
                    self.halt = True
                    wait(futures)
                    error = failed[0].exception()
                    assert error is not None
                    raise error
        except _NoRanges:
            self.halt = False
            self._whole(fd)

    def _worker(self, fd: int) -> None:
        while (index := self._take()) is not None:
            self._piece(fd, index)

    def _piece(self, fd: int, index: int) -> None:
        """One piece, whole, or an exception after RETRIES tries that got no further."""
        start, length = index * self.piece, self._length(index)
        attempt, best = 0, 0
        while True:
            self.got[index] = 0
            try:
                self._read_range(fd, index, start, length)
                break
            except (LocalrunError, _NoRanges, _Cancelled):
                raise
            except Exception as exc:
                if self.got[index] > best:
                    best, attempt = self.got[index], 0
                if attempt >= RETRIES:
                    raise DownloadError(
                        f"{self.what}: the download broke off ({_reason(exc)}); run the pull "
                        "again to resume it"
                    ) from None
                time.sleep(0.5 * 2**attempt)
                attempt += 1
        with self.lock:
            self.done[index] = True
            self.lock.notify_all()
        self._save()
        self._report()

    def _read_range(self, fd: int, index: int, start: int, length: int) -> None:
        with self.opener(start, start + length - 1) as body:
            if not body.ranged and start > 0:
                raise _NoRanges()
            at = start
            for chunk in body.chunks:
                if self.halt:
                    raise _Cancelled()
                if at + len(chunk) > start + length:
                    if body.ranged:
                        raise DownloadError(
                            f"{self.what}: the registry sent more bytes than the range asked for",
                            hint="the registry is misbehaving; nothing was saved",
                        )
                    chunk = chunk[: start + length - at]  # a whole blob: the first piece only
                _write_at(fd, chunk, at)
                at += len(chunk)
                self.got[index] = at - start
                self._report()
                if at == start + length and not body.ranged:
                    break
            if at != start + length:
                raise ConnectionError(f"{at - start} of {length} bytes of a piece arrived")

    def _whole(self, fd: int) -> None:
        """A server without ranges: the blob in one stream from its start."""
        with self.lock:
            self.done = [False] * self.count
            self.got = [0] * self.count
            self.lock.notify_all()
        with self.opener(0, self.size - 1) as body:
            at = 0
            for chunk in body.chunks:
                if at + len(chunk) > self.size:
                    raise DownloadError(
                        f"{self.what}: the registry sent more than the manifest's "
                        f"{self.size} bytes",
                        hint="the registry is misbehaving; nothing was saved",
                    )
                _write_at(fd, chunk, at)
                at += len(chunk)
                with self.lock:
                    while (index := at // self.piece) > 0 and not self.done[index - 1]:
                        self.done[index - 1] = True
                        self.got[index - 1] = self._length(index - 1)
                    self.lock.notify_all()
                self._report()
            if at != self.size:
                raise DownloadError(
                    f"{self.what}: {at} of {self.size} bytes arrived; run the pull again"
                )
        with self.lock:
            self.done[-1] = True
            self.got[-1] = self._length(self.count - 1)
            self.lock.notify_all()

    # -- hashing and progress

    def _hash(self, fd: int) -> str:
        hasher = hashlib.sha256()
        buffer = bytearray(BLOCK)
        view = memoryview(buffer)
        for index in range(self.count):
            with self.lock:
                while not self.done[index] and not self.stop:
                    self.lock.wait()
                if self.stop and not self.done[index]:
                    return ""
            at, end = index * self.piece, index * self.piece + self._length(index)
            while at < end:
                got = os.preadv(fd, [view[: min(BLOCK, end - at)]], at)
                if got <= 0:
                    raise OSError(f"the download's file ended at {at}")
                hasher.update(view[:got])
                at += got
            if hasattr(os, "posix_fadvise"):  # read once, kept out of everyone's cache
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, index * self.piece, end - index * self.piece,
                                     os.POSIX_FADV_DONTNEED)  # fmt: skip
        return "sha256:" + hasher.hexdigest()

    def _report(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_report <= 0.1:
            return
        with self.reporting:
            self.last_report = now
            self.progress(min(sum(self.got), self.size), self.size)


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:120] if str(exc) else ""
    return text or type(exc).__name__
