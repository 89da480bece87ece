"""PartialFile: the file a download streams into (localrun/sources/partial.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from localrun.sources import partial
from localrun.sources.partial import BLOCK, WINDOW, PartialFile


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_writes_of_any_size_land_in_order_and_are_hashed(tmp_path: Path) -> None:
    data = os.urandom(2 * WINDOW + BLOCK + 12345)  # several write-back windows and a tail
    path = tmp_path / "f.partial"
    sizes = [1, 65536, BLOCK - 1, BLOCK + 7, 3, 1 << 20]
    with PartialFile(path) as out:
        at = i = 0
        while at < len(data):
            piece = data[at : at + sizes[i % len(sizes)]]
            assert out.write(piece) == len(piece)
            at += len(piece)
            i += 1
        assert out.size == len(data)
        assert out.finish() == _sha(data)
    assert path.read_bytes() == data


def test_a_resumed_file_hashes_what_was_there(tmp_path: Path) -> None:
    path = tmp_path / "f.partial"
    before = os.urandom(BLOCK + 99)
    path.write_bytes(before)
    with PartialFile(path) as out:
        assert out.size == len(before)
        out.write(b"and the rest")
        assert out.finish() == _sha(before + b"and the rest")
    assert path.read_bytes() == before + b"and the rest"


def test_restart_empties_the_file_and_the_hash(tmp_path: Path) -> None:
    path = tmp_path / "f.partial"
    path.write_bytes(b"an earlier try")
    with PartialFile(path) as out:
        out.write(b"junk")
        out.restart()  # the server ignored the Range request: the body is the whole file
        assert out.size == 0
        out.write(b"whole file")
        assert out.finish() == _sha(b"whole file")
    assert path.read_bytes() == b"whole file"


def test_close_keeps_every_byte_received(tmp_path: Path) -> None:
    """An interrupted download (no finish) leaves what it got, for the next pull to resume."""
    path = tmp_path / "f.partial"
    data = os.urandom(BLOCK + 500)
    out = PartialFile(path)
    out.write(data)
    out.close()
    out.close()  # twice is harmless
    assert path.read_bytes() == data
    with pytest.raises(ValueError):
        out.write(b"more")


def test_a_write_error_is_raised_by_finish_not_by_close(tmp_path: Path) -> None:
    """A full disk: /dev/full fails every write with ENOSPC."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    out = PartialFile(Path("/dev/full"))
    out.write(b"x" * (BLOCK + 1))  # the first block fails on the helper thread
    with pytest.raises(OSError) as info:
        out.finish()
    assert info.value.errno == 28  # ENOSPC
    out.close()


def test_write_back_drops_what_reached_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past a window, write-back starts and the window before is waited for and dropped."""
    if partial.sync_file_range() is None:
        pytest.skip("sync_file_range is Linux's")
    calls: list[tuple[str, int, int]] = []
    real_sync = partial.sync_file_range()
    assert real_sync is not None

    def sync(fd: int, offset: int, length: int, flags: int) -> None:
        calls.append(("sync", offset, offset + length))
        real_sync(fd, offset, length, flags)

    monkeypatch.setattr(partial, "sync_file_range", lambda: sync)
    monkeypatch.setattr(
        partial, "drop", lambda fd, offset, length: calls.append(("drop", offset, offset + length))
    )
    data = os.urandom(3 * WINDOW)
    with PartialFile(tmp_path / "f.partial") as out:
        out.write(data)
        assert out.finish() == _sha(data)
    drops = [(a, b) for kind, a, b in calls if kind == "drop"]
    assert drops == [(0, WINDOW), (WINDOW, 2 * WINDOW)]
    assert ("sync", 2 * WINDOW, 3 * WINDOW) in calls  # the last window: started, then fsync
