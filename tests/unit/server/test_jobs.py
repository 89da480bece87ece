"""Store jobs (create, quantize, pull, import) take turns (issue 57): at most LOCALRUN_MAX_JOBS
run at once, each with its share of the cores, the next wait in line (a 503 past the line's
bound), and a job stopped mid-write leaves no temporary file in the store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from localrun.errors import BusyError
from localrun.server.ollama import jobs
from localrun.store.blobs import TMP_PREFIX
from localrun.store.local import Store


def test_jobs_take_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALRUN_MAX_JOBS", "1")
    monkeypatch.setattr(jobs, "MAX_WAITING", 2)

    async def main() -> None:
        line = jobs.Turns()
        first = [e async for e in line.take()]
        assert first == [] and line.running == 1 and line.threads() >= 1
        second = line.take()
        waiting = await second.__anext__()
        assert waiting["status"] == "waiting for 1 other jobs to end"
        pending = asyncio.ensure_future(second.__anext__())
        await asyncio.sleep(0)
        # One that leaves while waiting gives up its place, and holds no turn.
        third = line.take()
        await third.__anext__()
        gone = asyncio.ensure_future(third.__anext__())
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert len(line.waiting) == 1
        # The line is bounded: past it, busy at once.
        line.waiting.append(asyncio.get_running_loop().create_future())
        with pytest.raises(BusyError):
            line.check()
        line.waiting.pop()
        line.give()  # the first ends: the second runs
        with pytest.raises(StopAsyncIteration):
            await pending
        assert line.running == 1 and line.waiting == []
        line.give()
        assert line.running == 0

    asyncio.run(main())


def test_a_stopped_jobs_temporary_files_are_removed(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    store.blobs.mkdir(parents=True)
    mine = store.blobs / f"{TMP_PREFIX}4242-abcd"
    other = store.blobs / f"{TMP_PREFIX}4243-abcd"
    mine.write_bytes(b"x" * 1024)
    other.write_bytes(b"y")
    assert store.remove_temp_files(4242) == 1
    assert not mine.exists() and other.exists()  # another's may be being written


def test_network_and_local_jobs_take_turns_in_lines_of_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pull a registry holds never keeps a create waiting (issue 76: two stalled pulls held
    both turns, and another client's create waited 45 s); the server's test of it is in
    test_registry.py (test_a_stalled_registry_never_holds_another_clients_create)."""
    monkeypatch.setenv("LOCALRUN_MAX_JOBS", "1")

    async def main() -> None:
        network, local = jobs.turns({"op": "pull"}), jobs.turns({"op": "create"})
        assert jobs.turns({"op": "push"}) is network and jobs.turns({"op": "import"}) is local
        assert network is not local
        assert [e async for e in network.take()] == []  # the one network turn, held
        assert [e async for e in local.take()] == []  # a create still runs at once
        waiting = jobs.turns({"op": "push"}).take()
        assert (await waiting.__anext__())["status"] == "waiting for 1 other jobs to end"
        await waiting.aclose()

    asyncio.run(main())


def test_an_allocation_that_failed_past_the_cap_is_read_as_the_cap() -> None:
    """A job past its memory cap fails wherever it next allocates: a MemoryError, an ENOMEM, or
    OpenSSL's "malloc failure" when an SSL context loads its certificates (seen in a full run:
    the pull then answered "SSLError: [CRYPTO] malloc failure" instead of the cap's line), also
    when another error was raised from it."""
    import errno
    import ssl

    malloc = ssl.SSLError(12, "[CRYPTO] malloc failure (_ssl.c:3098)")
    assert jobs.out_of_memory(malloc)
    assert jobs.out_of_memory(MemoryError())
    assert jobs.out_of_memory(OSError(errno.ENOMEM, "Cannot allocate memory"))
    try:
        try:
            raise malloc
        except ssl.SSLError as exc:
            raise ConnectionError("connect failed") from exc
    except ConnectionError as wrapped:
        assert jobs.out_of_memory(wrapped)
    assert not jobs.out_of_memory(ssl.SSLError(1, "[SSL: CERTIFICATE_VERIFY_FAILED]"))
    assert not jobs.out_of_memory(OSError(errno.ECONNREFUSED, "refused"))
