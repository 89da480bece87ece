"""The disk prompt cache: entries written atomically and found only for their exact prefix, bad
files ignored and removed, the folder bounded. With a real model (a SYSTEM prompt restored by
a second process and by a restarted server): tests/integration/engine/test_prompt_cache.py."""

from __future__ import annotations

import json
import os
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from localrun.engine.prompts import disk_cache as prompt_cache
from localrun.engine.prompts.disk_cache import PromptCache
from localrun.errors import ConfigError
from localrun.settings import limits

from support import PATIENCE_S

IDENTITY = {"model": ["sha256:" + "0" * 64], "adapters": [], "llama_cpp": "x", "n_ctx": 512}
PREFIX = list(range(100, 200))


def cache(root: Path, max_bytes: int = 10**9, **identity: Any) -> PromptCache:
    return PromptCache({**IDENTITY, **identity}, root, max_bytes)


def saved(c: PromptCache, prefix: list[int], state: bytes) -> Path:
    c.save(prefix, state)
    c.flush()
    (entry,) = [p for p in c.root.iterdir() if p.name == c._key(prefix)[1].name]
    return entry


def test_an_entry_is_found_for_its_exact_prefix_only(tmp_path: Path) -> None:
    c = cache(tmp_path)
    saved(c, PREFIX, b"state" * 100)
    assert c.load(PREFIX) == b"state" * 100
    assert c.load(PREFIX[:-1]) is None
    assert c.load([*PREFIX, 1]) is None
    assert c.load([*PREFIX[:-1], 7]) is None
    assert cache(tmp_path, n_ctx=1024).load(PREFIX) is None  # another context size
    assert cache(tmp_path, llama_cpp="y").load(PREFIX) is None  # another llama.cpp
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


@pytest.mark.parametrize(
    "damage", ["truncate", "flip", "grow", "empty", "garbage", "magic", "old", "nested"]
)
def test_a_damaged_entry_is_ignored_and_removed(tmp_path: Path, damage: str) -> None:
    c = cache(tmp_path)
    entry = saved(c, PREFIX, bytes(range(256)) * 40)
    data = entry.read_bytes()
    damaged = {
        "truncate": data[: len(data) - 100],
        "flip": data[:-10] + bytes([data[-10] ^ 1]) + data[-9:],
        "grow": data + b"x",
        "empty": b"",
        "garbage": os.urandom(len(data)),
        "magic": prompt_cache.MAGIC + b"\xff\xff\xff\xff" + data[len(prompt_cache.MAGIC) + 4 :],
        "nested": prompt_cache.MAGIC + struct.pack("<I", 60000) + b"[" * 30000 + b"]" * 30000,
        "old": b"LRKV1\n" + data[6:],  # the SHA-256 format before
    }[damage]
    entry.write_bytes(damaged)
    assert c.load(PREFIX) is None
    assert not entry.exists()


def test_a_header_claiming_more_than_the_file_holds_allocates_nothing(tmp_path: Path) -> None:
    c = cache(tmp_path)
    entry = saved(c, PREFIX, b"state" * 100)
    data = entry.read_bytes()
    start = len(prompt_cache.MAGIC) + 4
    (size,) = struct.unpack("<I", data[start - 4 : start])
    header = json.loads(data[start : start + size])
    header["size"] = len(data) + (64 << 20)  # more than the file holds
    text = json.dumps(header).encode()
    entry.write_bytes(
        prompt_cache.MAGIC + struct.pack("<I", len(text)) + text + data[start + size :]
    )
    tracemalloc.start()
    try:
        assert c.load(PREFIX) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # refused before a buffer of that size was made
    assert not entry.exists()


def test_an_entry_made_for_something_else_is_not_used(tmp_path: Path) -> None:
    c = cache(tmp_path)
    other = saved(c, [*PREFIX, 5], b"other state")
    mine = c._key(PREFIX)[1]
    os.replace(other, mine)  # the right name, a foreign header
    assert c.load(PREFIX) is None
    assert not mine.exists()


def test_the_folder_keeps_the_most_recently_used_within_its_bound(tmp_path: Path) -> None:
    size = 10_000
    c = cache(tmp_path, max_bytes=3 * size + 2000)
    prefixes = [[i, *PREFIX] for i in range(3)]
    for prefix in prefixes:
        saved(c, prefix, os.urandom(size))
    entries = {p.name: p for p in tmp_path.iterdir()}
    for age, prefix in enumerate(prefixes):  # entry 0 oldest; then entry 0 is read again
        os.utime(c._key(prefix)[1], (1000 + age, 1000 + age))
    assert c.load(prefixes[0]) is not None
    saved(c, [9, *PREFIX], os.urandom(size))
    assert len(entries) == 3
    assert c.load(prefixes[1]) is None  # the least recently used went
    assert c.load(prefixes[0]) is not None and c.load(prefixes[2]) is not None
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= c.max_bytes


def test_a_state_larger_than_the_bound_is_not_written(tmp_path: Path) -> None:
    c = cache(tmp_path, max_bytes=1000)
    c.save(PREFIX, os.urandom(5000))
    c.flush()
    assert list(tmp_path.iterdir()) == []


def test_an_entry_over_the_bound_of_the_process_reading_it_is_not_read(tmp_path: Path) -> None:
    saved(cache(tmp_path), PREFIX, os.urandom(5000))  # another process, with a larger bound
    assert cache(tmp_path, max_bytes=1000).load(PREFIX) is None


def test_a_folder_that_cannot_be_written_costs_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    c = cache(blocker / "prompts")
    c.save(PREFIX, b"state")
    c.flush()  # the write failed quietly: a full disk or a read-only home is no error
    assert c.load(PREFIX) is None


def test_clear_and_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = cache(tmp_path)
    for i in range(3):
        saved(c, [i, *PREFIX], b"s" * 10)
    files, freed = prompt_cache.clear(tmp_path)
    assert files == 3 and freed > 30
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("LOCALRUN_PROMPT_CACHE_MAX_BYTES", "0")
    assert PromptCache.from_config(IDENTITY) is None
    monkeypatch.setenv("LOCALRUN_PROMPT_CACHE_MAX_BYTES", "many")
    with pytest.raises(ConfigError, match="LOCALRUN_PROMPT_CACHE_MAX_BYTES"):
        limits.prompt_cache_max_bytes()


def test_identity_of_a_blob_is_its_digest(tmp_path: Path) -> None:
    blob = tmp_path / ("sha256-" + "ab" * 32)
    blob.write_bytes(b"x")
    assert prompt_cache.file_identity(str(blob)) == "sha256:" + "ab" * 32
    plain = tmp_path / "model.gguf"
    plain.write_bytes(b"x")
    first = prompt_cache.file_identity(str(plain))
    plain.write_bytes(b"xy")
    assert prompt_cache.file_identity(str(plain)) != first


# -- across processes, on SmolLM2 -------------------------------------------------------------


def entries() -> list[Path]:
    return sorted(prompt_cache.folder().glob("*" + prompt_cache.SUFFIX))


# -- entries that are not regular files, and states past what the model can have --------------


def _loads_in_time(c: PromptCache, prefix: list[int], most: int | None = None) -> Any:
    import threading

    result: list[Any] = []
    reader = threading.Thread(target=lambda: result.append(c.load(prefix, most)), daemon=True)
    reader.start()
    reader.join(PATIENCE_S)
    assert not reader.is_alive(), "loading the entry never returned"
    return result[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_in_place_of_an_entry_is_not_waited_on(tmp_path: Path) -> None:
    c = cache(tmp_path)
    path = c._key(PREFIX)[1]
    tmp_path.mkdir(exist_ok=True)
    os.mkfifo(path)
    assert _loads_in_time(c, PREFIX) is None
    assert not path.exists()  # removed, as a damaged entry is


def test_a_symlinked_entry_is_not_followed(tmp_path: Path) -> None:
    c = cache(tmp_path)
    entry = saved(c, PREFIX, b"state" * 100)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-outside.kv"
    entry.rename(elsewhere)
    entry.symlink_to(elsewhere)
    assert _loads_in_time(c, PREFIX) is None
    assert not entry.is_symlink() and elsewhere.read_bytes()  # the link went, not its target


def test_an_entry_past_the_models_state_size_is_not_read(tmp_path: Path) -> None:
    import resource

    c = cache(tmp_path)
    entry = saved(c, PREFIX, b"state" * 100)
    assert c.load(PREFIX, most=499) is None  # the model's state cannot be that large
    assert not entry.exists()
    # A sparse file of 1.9 GB whose header says so: refused before it is read.
    entry = saved(c, PREFIX, b"state" * 100)
    data = entry.read_bytes()
    start = len(prompt_cache.MAGIC) + 4
    (size,) = struct.unpack("<I", data[start - 4 : start])
    header = json.loads(data[start : start + size])
    header["size"] = 1900 << 20
    text = json.dumps(header).encode()
    with entry.open("wb") as fh:
        fh.write(prompt_cache.MAGIC + struct.pack("<I", len(text)) + text)
        fh.truncate(len(prompt_cache.MAGIC) + 4 + len(text) + (1900 << 20))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert c.load(PREFIX, most=64 << 20) is None
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB on Linux
    assert grown < 100 * 1024, f"reading it grew the process by {grown} KiB"


def test_a_process_ending_right_after_a_save_from_its_loop_leaves_the_entry(
    tmp_path: Path,
) -> None:
    """The engine's loop, a daemon thread, saves; a one-shot `localrun run` then exits without
    closing the engine. The write must still land (a writer inheriting the loop's daemon flag
    died with the process: the next run read the whole prompt again)."""
    import subprocess
    import sys

    script = f"""
import threading, time
from localrun.engine.prompts.disk_cache import PromptCache
c = PromptCache({IDENTITY!r}, __import__("pathlib").Path({str(tmp_path)!r}), 10**9)
slow = c._write
def write(*args):
    time.sleep(0.5)  # a loaded machine: the writer is not done when the main thread ends
    slow(*args)
c._write = write
loop = threading.Thread(target=c.save, args=({PREFIX!r}, bytearray(b"state" * 100)), daemon=True)
loop.start()
loop.join()
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=PATIENCE_S)
    assert cache(tmp_path).load(PREFIX) == b"state" * 100
