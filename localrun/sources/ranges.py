"""One blob downloaded in parallel ranges, resumable, and verified by its digest as it lands.

The blob is cut into pieces of PIECE bytes. STREAMS connections take the pieces in order, each
with a Range request (as Ollama's downloader splits a blob into parts), and write them where
they belong in one file (`data`). A hasher follows the pieces in order. Once a piece is whole,
it reads it back and hashes it. It has it written to the disk (sync_file_range on Linux, else
fdatasync) and dropped from the page cache, and only then records it in `state.json`. So the
digest is known moments after the last byte arrives, and a 40 GB pull neither fills memory nor
evicts everyone else's cache. What the state file says is whole is on the disk.

Whatever the server does, no more than a piece is read for a piece, so an endless body is
refused. A short piece is fetched again, up to RETRIES times, the count starting over whenever
a try gets further. A digest that differs deletes the download. A full disk stops at once;
Ctrl-C stops every connection at its next chunk. Comments beside the code explain resuming,
Retry-After, a server that ignores Range, and a digest that differs after a resume.
"""

from __future__ import annotations

import contextlib
import errno
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

from localrun.errors import DownloadError, HubError, LocalrunError
from localrun.host import files
from localrun.sources.base import download_os_error, reason
from localrun.sources.partial import WAIT_AFTER, WAIT_BEFORE, WRITE, drop, sync_file_range

PIECE = 64 << 20  # bytes a Range request asks for
STREAMS = 4  # connections at once for a blob of several pieces
RETRIES = 4  # tries of a piece that gets no further, with 0.5, 1, 2, 4 s pauses
BLOCK = 1 << 20  # bytes the hasher reads at a time
SETTLE_LAG = 2  # pieces whose write-back runs while the hasher goes on (then it waits for it)
MAX_RETRY_AFTER = 5.0  # seconds a Retry-After may ask for (past it: fail at once, say when)
RETRY_AFTER_BUDGET = 10.0  # seconds a download (or one registry request) waits on them in all
_LOCAL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG)  # never retried


@dataclass(frozen=True)
class Blob:
    """What is downloaded: its digest and size, where to, and how it is named in errors."""

    digest: str
    size: int
    folder: Path
    what: str


@dataclass
class Body:
    """An answer to a Range request: whether it honoured it, and its bytes."""

    ranged: bool  # a 206 for the range asked (False: the whole blob from its start)
    chunks: Iterator[bytes]


# A 429 or 5xx waits as its Retry-After says only up to MAX_RETRY_AFTER, and RETRY_AFTER_BUDGET
# for the whole blob. Asked for more, the download ends at once saying when to try again: a
# registry must not hold a job's turn for a day.
class Retry(ConnectionError):
    """The server asks to try again later (a 429 or 5xx), after `after` seconds at least.

    `after` is its Retry-After, None where it said none.
    """

    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


def wait_refused(answered: str, after: float, waited: float) -> HubError:
    """Return the error for a server that asks to wait longer than localrun waits.

    localrun waits MAX_RETRY_AFTER at most, and RETRY_AFTER_BUDGET in all. The error is one
    line that says when to try again. `answered` reads like 'HOST answered 429'.
    """
    already = f", after {waited:.0f} s of waiting already" if waited else ""
    bound = (
        f"{MAX_RETRY_AFTER:.0f} s at most"
        if after > MAX_RETRY_AFTER
        else f"{RETRY_AFTER_BUDGET:.0f} s in all"
    )
    return HubError(
        f"{answered} and asks to wait {_duration(after)} before the next request{already}; "
        f"localrun waits {bound}",
        hint=f"try again in {_duration(after)}; a pull resumes where it stopped",
    )


def _duration(seconds: float) -> str:
    seconds = min(seconds, 1e9)  # inf, or a date centuries off
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{max(seconds, 1):.0f} s"


Sync = Callable[[int, int, int, int], None]  # sync_file_range(fd, offset, length, flags)
Opener = Callable[[int, int], AbstractContextManager[Body]]
"""Opens bytes [start, end] of the blob (inclusive, as Range says): a Body."""
Progress = Callable[[int, int], None]


class _Halted(Exception):
    pass


# A server that ignores Range (a 200 for a piece past the first) is read in one stream from the
# start and hashed as it comes. Nothing of it is kept for a resume: without ranges there is none.
class _NoRanges(Exception):
    """The server sent the whole blob for a piece past the first."""


def download(
    blob: Blob,
    opener: Opener,
    progress: Progress,
    *,
    streams: int | None = None,
    piece: int | None = None,
) -> tuple[Path, str]:
    """Fetch the blob into `blob.folder/data`, resuming what an earlier try left.

    It returns the path and its sha256 ('sha256:<hex>'). Raises DownloadError when the digest
    is not `blob.digest`, and deletes the download then.
    """
    blob.folder.mkdir(parents=True, exist_ok=True)
    job = _Job(blob, opener, progress, max(1, streams or STREAMS), max(1, piece or PIECE))
    found = _run(job)
    again = ""
    if found != blob.digest and job.resumed:
        # A digest that differs after a resume may be this disk's fault, not the server's: the
        # pieces an earlier try left were read back from the file, which something may have
        # damaged since. So they are discarded and the blob fetched again from nothing, once;
        # only a fresh download that differs too blames the server.
        job.discard()
        job = _Job(blob, opener, progress, job.streams, job.piece)
        found = _run(job)
        again = (
            " (also when fetched whole again: the partial download kept from an earlier try "
            "was discarded first)"
        )
    if found != blob.digest:
        job.discard()
        raise DownloadError(
            f"{blob.what}: the registry sent bytes whose digest is {found}, not {blob.digest}"
            f"{again}; the download was deleted",
            hint="pull again; if it repeats, the registry (or a proxy between) is damaged",
        )
    return job.path, found


def _run(job: _Job) -> str:
    try:
        return job.run()
    except OSError as exc:
        raise download_os_error(job.blob.what, exc) from exc


def kept(blob: Blob) -> int:
    """Bytes of the blob an earlier try left whole (what a resumed pull skips)."""
    state = _state(blob.folder / "state.json", blob)
    if state is None:
        return 0
    piece, whole = state
    return min(piece * whole, blob.size)


def _state(path: Path, blob: Blob, piece: int | None = None) -> tuple[int, int] | None:
    """(piece size, whole pieces) of a state file that is this blob's, else None."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        found = (int(state["piece"]), int(state["whole"]))
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    if state.get("digest") != blob.digest or state.get("size") != blob.size:
        return None
    if found[0] <= 0 or found[1] < 0 or (piece is not None and found[0] != piece):
        return None
    return found


class _Job:
    def __init__(
        self, blob: Blob, opener: Opener, progress: Progress, streams: int, piece: int
    ) -> None:
        self.blob, self.opener, self.progress = blob, opener, progress
        self.path, self.state = blob.folder / "data", blob.folder / "state.json"
        self.piece = piece
        self.count = max(1, -(-blob.size // piece))
        self.streams = min(streams, self.count)
        self.done = [blob.size == 0] * self.count  # an empty blob has nothing to fetch
        self.got = [0] * self.count  # bytes of each piece written so far
        self.lock = threading.Condition()
        self.stop = False  # everything ends: the hasher too
        self.halt = False  # the pieces' connections end
        self.next = 0
        self.last_report = 0.0
        self.reporting = threading.Lock()  # one thread at a time tells the caller
        self.waited = 0.0  # seconds the connections waited as Retry-After asked
        self.resumed = 0  # whole pieces an earlier try left, read back from the disk

    # -- the plan

    def run(self) -> str:
        whole = self._resume()
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.path, flags, 0o644)
        try:
            if os.fstat(fd).st_size != self.blob.size:
                os.ftruncate(fd, self.blob.size)
            hasher = ThreadPoolExecutor(1, thread_name_prefix="localrun-hash")
            hashed = hasher.submit(self._hash, fd, whole)
            streamed: str | None = None
            try:
                streamed = self._fetch_all(fd)
            finally:
                with self.lock:  # the hasher finishes the whole pieces it has, then ends
                    self.stop = self.halt = True
                    self.lock.notify_all()
                hasher.shutdown(wait=True)
            digest = streamed or hashed.result()
            os.fsync(fd)
        finally:
            os.close(fd)
        self._report(force=True)
        return digest

    def discard(self) -> None:
        for path in (self.path, self.state, self.state.with_suffix(".tmp")):
            with contextlib.suppress(OSError):
                path.unlink()

    # A new try keeps the whole pieces the state names, hashes them again from the disk and
    # fetches the rest. Pieces that arrived out of order after the last recorded one come again.
    # A state of another blob, size or piece size starts over.
    def _resume(self) -> int:
        """The whole pieces an earlier try left (marked done), or 0 after clearing its files."""
        try:
            on_disk = self.path.stat().st_size
        except OSError:
            on_disk = -1
        found = _state(self.state, self.blob, self.piece)
        if found is None or on_disk != self.blob.size:
            self.discard()
            return 0
        whole = min(found[1], self.count)
        for index in range(whole):
            self.done[index] = True
            self.got[index] = self._length(index)
        self.resumed = whole
        return whole

    def _save(self, whole: int) -> None:
        blob = self.blob
        data = {"digest": blob.digest, "size": blob.size, "piece": self.piece, "whole": whole}
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, self.state)

    def _length(self, index: int) -> int:
        return max(0, min(self.piece, self.blob.size - index * self.piece))

    def _take(self) -> int | None:
        with self.lock:
            while self.next < self.count and self.done[self.next]:
                self.next += 1
            if self.next >= self.count or self.halt:
                return None
            self.next += 1
            return self.next - 1

    # -- fetching

    def _fetch_all(self, fd: int) -> str | None:
        """Every piece; the digest when the server sent the blob whole instead (None else)."""
        if all(self.done) or self.blob.size == 0:
            return None
        pool = ThreadPoolExecutor(self.streams, thread_name_prefix="localrun-pull")
        futures = [pool.submit(self._worker, fd) for _ in range(self.streams)]
        try:
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f.exception() for f in finished if f.exception() is not None]
        except BaseException:  # Ctrl-C: every connection stops at its next chunk
            self.halt = True
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        self.halt = bool(failed)
        pool.shutdown(wait=True, cancel_futures=True)
        if not failed:
            return None
        error = next((e for e in failed if not isinstance(e, _Halted)), failed[0])
        if isinstance(error, _NoRanges):
            self.halt = False
            return self._whole(fd)
        assert error is not None
        raise error

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
            except (LocalrunError, _NoRanges, _Halted):
                raise
            except OSError as exc:
                if exc.errno in _LOCAL:  # this machine's disk: trying again changes nothing
                    raise
                if self.got[index] > best:
                    best, attempt = self.got[index], 0
                if attempt >= RETRIES or self.halt:
                    raise DownloadError(
                        f"{self.blob.what}: the download broke off ({reason(exc)}); run the "
                        "pull again to resume it"
                    ) from None
                after = exc.after if isinstance(exc, Retry) else None
                if after is not None:
                    with self.lock:  # the pieces' connections share one budget
                        if after > MAX_RETRY_AFTER or self.waited + after > RETRY_AFTER_BUDGET:
                            raise wait_refused(str(exc), after, self.waited) from None
                        self.waited += after
                time.sleep(0.5 * 2**attempt if after is None else after)
                attempt += 1
        with self.lock:
            self.done[index] = True
            self.lock.notify_all()
        self._report()

    def _read_range(self, fd: int, index: int, start: int, length: int) -> None:
        with self.opener(start, start + length - 1) as body:
            if not body.ranged and start > 0:
                raise _NoRanges()
            at, end = start, start + length
            for chunk in body.chunks:
                if self.halt:
                    raise _Halted()
                if at + len(chunk) > end:
                    if body.ranged:
                        raise DownloadError(
                            f"{self.blob.what}: the registry sent more bytes than the range "
                            "asked for",
                            hint="the registry is misbehaving; nothing was saved",
                        )
                    chunk = chunk[: end - at]  # a whole blob: this first piece of it only
                _write_at(fd, chunk, at)
                at += len(chunk)
                self.got[index] = at - start
                self._report()
                if at == end and not body.ranged:
                    break
            if at != end:
                raise ConnectionError(f"{at - start} of {length} bytes of a piece arrived")

    def _whole(self, fd: int) -> str:
        """A server without ranges: the blob in one stream from its start, hashed as it comes."""
        hasher = hashlib.sha256()
        with self.lock:
            self.got = [0] * self.count
            self.resumed = 0  # nothing kept is read back: the digest is the stream's
        with self.opener(0, self.blob.size - 1) as body:
            at = 0
            for chunk in body.chunks:
                if at + len(chunk) > self.blob.size:
                    raise DownloadError(
                        f"{self.blob.what}: the registry sent more than the manifest's "
                        f"{self.blob.size} bytes",
                        hint="the registry is misbehaving; nothing was saved",
                    )
                hasher.update(chunk)
                _write_at(fd, chunk, at)
                at += len(chunk)
                self.got[0] = at
                self._report()
        if at != self.blob.size:
            raise DownloadError(
                f"{self.blob.what}: {at} of {self.blob.size} bytes arrived; run the pull again"
            )
        return "sha256:" + hasher.hexdigest()

    # -- hashing, the disk and progress

    def _hash(self, fd: int, recorded: int) -> str:
        """Hash the pieces in order and return the digest, or '' when the job ended first.

        Each piece is written out to the disk while the next SETTLE_LAG are hashed, and recorded
        as whole once it is there. When the job ends first, what was hashed is settled for the
        next try.
        """
        hasher = hashlib.sha256()
        buffer = memoryview(bytearray(BLOCK))
        sync = sync_file_range()
        settled = 0  # pieces on the disk and in the state
        for index in range(self.count):
            with self.lock:
                while not self.done[index] and not self.stop:
                    self.lock.wait()
                if not self.done[index]:
                    for earlier in range(settled, index):
                        self._settle(fd, earlier, recorded, sync)
                    return ""
            at, end = index * self.piece, index * self.piece + self._length(index)
            while at < end:
                got = files.pread_into(fd, buffer[: min(BLOCK, end - at)], at)
                if got <= 0:
                    raise OSError(f"the download's file ended at {at}")
                hasher.update(buffer[:got])
                at += got
            if sync is not None:
                sync(fd, index * self.piece, self._length(index), WRITE)  # starts, no wait
            if index - settled >= SETTLE_LAG:
                self._settle(fd, settled, recorded, sync)
                settled += 1
        for earlier in range(settled, self.count):
            self._settle(fd, earlier, recorded, sync)
        return "sha256:" + hasher.hexdigest()

    def _settle(self, fd: int, index: int, recorded: int, sync: Sync | None) -> None:
        """Piece `index` on the disk, out of the page cache (read once) and in the state."""
        start, length = index * self.piece, self._length(index)
        if index >= recorded:
            if sync is not None:
                sync(fd, start, length, WAIT_BEFORE | WRITE | WAIT_AFTER)
            else:
                files.fdatasync(fd)
            self._save(index + 1)
        drop(fd, start, length)

    def _report(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_report <= 0.1:
            return
        with self.reporting:
            self.last_report = now
            self.progress(min(sum(self.got), self.blob.size), self.blob.size)


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = files.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
