"""sources/ranges.py on its own: a blob in Range pieces from an opener that misbehaves as
servers do (no Range support midway, altered bytes, 429s, a full disk, Ctrl-C), checked for
what lands on disk, what the digest check catches and how long it takes."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from localrun.errors import DiskFullError, DownloadError
from localrun.sources import ranges

PIECE = 1 << 12


def _blob(tmp_path: Path, data: bytes) -> ranges.Blob:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return ranges.Blob(digest, len(data), tmp_path / "partial", "the test blob")


class Server:
    """An opener over `data`: ranged (206) unless told otherwise, with faults to order."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls: list[tuple[int, int]] = []
        self.whole_after = -1  # from this call on, Range is ignored (a 200 from byte 0)
        self.altered = False  # ... and the bytes sent whole differ
        self.busy = 0  # calls answered with a 429 first
        self.delay = 0.0  # seconds a chunk takes
        self.lock = threading.Lock()

    @contextmanager
    def __call__(self, start: int, end: int) -> Iterator[ranges.Body]:
        with self.lock:
            self.calls.append((start, end))
            call = len(self.calls)
            if self.busy:
                self.busy -= 1
                raise ranges.Retry("429", after=0.01)
        if 0 <= self.whole_after < call:
            body = b"E" * len(self.data) if self.altered else self.data
            yield ranges.Body(False, self._chunks(body))
            return
        yield ranges.Body(True, self._chunks(self.data[start : end + 1]))

    def _chunks(self, body: bytes) -> Iterator[bytes]:
        for at in range(0, len(body), 1000):
            if self.delay:
                time.sleep(self.delay)
            yield body[at : at + 1000]


def test_pieces_come_in_parallel_and_land_whole(tmp_path: Path) -> None:
    data = bytes(range(256)) * 200
    server = Server(data)
    blob = _blob(tmp_path, data)
    path, digest = ranges.download(blob, server, lambda d, t: None, piece=PIECE)
    assert path.read_bytes() == data and digest == blob.digest
    assert sorted(server.calls) == [(i, min(i + PIECE, len(data)) - 1)
                                    for i in range(0, len(data), PIECE)]  # fmt: skip


def test_a_server_that_stops_honouring_range_is_hashed_from_its_first_byte(
    tmp_path: Path,
) -> None:
    data = bytes(range(256)) * 200
    server = Server(data)
    server.whole_after = 3  # three pieces ranged, then the whole blob
    path, digest = ranges.download(_blob(tmp_path, data), server, lambda d, t: None,
                                   piece=PIECE, streams=1)  # fmt: skip
    assert path.read_bytes() == data and digest == _blob(tmp_path, data).digest
    # The same, but the bytes sent whole are not the blob's: refused, whatever came ranged.
    server = Server(data)
    server.whole_after, server.altered = 3, True
    with pytest.raises(DownloadError, match="digest"):
        ranges.download(_blob(tmp_path, data), server, lambda d, t: None, piece=PIECE, streams=1)
    assert not (tmp_path / "partial" / "data").exists()


def test_a_429_is_waited_for_and_a_full_disk_stops_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytes(range(256)) * 40
    server = Server(data)
    server.busy = 3
    path, _ = ranges.download(_blob(tmp_path / "a", data), server, lambda d, t: None, piece=PIECE)
    assert path.read_bytes() == data

    def full(fd: int, chunk: bytes, offset: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ranges, "_write_at", full)
    server = Server(data)
    started = time.monotonic()
    with pytest.raises(DiskFullError):
        ranges.download(_blob(tmp_path / "b", data), server, lambda d, t: None, piece=PIECE)
    assert time.monotonic() - started < 2  # no retries with pauses
    assert len(server.calls) <= 3  # the pieces begun when the disk filled, no more


def test_ctrl_c_stops_every_connection(tmp_path: Path) -> None:
    data = bytes(range(256)) * 400  # 25 pieces of 4 KB, each chunk 50 ms: 1.6 s in all
    server = Server(data)
    server.delay = 0.05
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()  # as a terminal does
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        ranges.download(_blob(tmp_path, data), server, lambda d, t: None, piece=PIECE)
    assert time.monotonic() - started < 2
    assert len(server.calls) < 25


def test_a_resume_fetches_what_is_missing_and_an_empty_blob_is_one(tmp_path: Path) -> None:
    data = bytes(range(256)) * 100
    blob = _blob(tmp_path, data)
    server = Server(data)
    server.whole_after, server.altered = 4, True  # cut short: the first pieces are whole
    with pytest.raises(DownloadError):
        ranges.download(blob, server, lambda d, t: None, piece=PIECE, streams=1)
    server = Server(data)
    blob.folder.mkdir(parents=True, exist_ok=True)
    (blob.folder / "data").write_bytes(data[: 4 * PIECE] + b"\0" * (len(data) - 4 * PIECE))
    (blob.folder / "state.json").write_text(
        f'{{"digest": "{blob.digest}", "size": {len(data)}, "piece": {PIECE}, "whole": 4}}'
    )
    assert ranges.kept(blob) == 4 * PIECE
    path, _ = ranges.download(blob, server, lambda d, t: None, piece=PIECE, streams=1)
    assert path.read_bytes() == data
    assert min(start for start, _ in server.calls) == 4 * PIECE
    empty = _blob(tmp_path / "empty", b"")
    path, digest = ranges.download(empty, Server(b""), lambda d, t: None)
    assert path.read_bytes() == b"" and digest == empty.digest
