"""Store jobs (create, quantize, pull, import) take turns (issue 57): at most LOCALRUN_MAX_JOBS
run at once, each with its share of the cores, the next wait in line (a 503 past the line's
bound), and a job stopped mid-write leaves no temporary file in the store."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from localrun.errors import BusyError
from localrun.scheduler import Scheduler
from localrun.server import jobs
from localrun.store.blobs import TMP_PREFIX
from localrun.store.models import Store

from support import PATIENCE_S
from support.server import LiveServer, add_model


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


@pytest.mark.server
@pytest.mark.model
def test_concurrent_creates_wait_their_turn(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALRUN_MAX_JOBS", "1")
    store = Store(tmp_path / "models")
    add_model(store, "base", tiny_model)
    live = LiveServer(store, Scheduler(store, max_queue=8))
    statuses: dict[int, list[str]] = {}

    def create(n: int) -> None:
        body: Any = {"model": f"q{n}", "from": "base", "quantize": "q4_0", "stream": True}
        with httpx.stream("POST", f"{live.url}/api/create", json=body, timeout=PATIENCE_S) as r:
            statuses[n] = [json.loads(x).get("status", x) for x in r.iter_lines() if x]

    try:
        threads = [threading.Thread(target=create, args=(n,)) for n in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PATIENCE_S * 2)
        assert all(s[-1] == "success" for s in statuses.values()), statuses
        waited = [n for n, s in statuses.items() if any(x.startswith("waiting for") for x in s)]
        assert len(waited) >= 1, statuses  # one ran at a time
        assert not list(store.blobs.glob(TMP_PREFIX + "*"))
    finally:
        live.close()


@pytest.mark.server
@pytest.mark.model
def test_a_client_that_leaves_a_quantization_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-streamed quantize whose client hangs up: the job is stopped and the file it was
    writing removed (the cleanup ran under the request's cancellation, which its first await
    re-raised, so the file stayed until `prune`)."""
    from testmodels.text import write_tiny_model

    store = Store(tmp_path / "models")
    add_model(store, "f16", write_tiny_model(tmp_path / "f16.gguf", dtype="f16",
                                             extra_bytes=48 << 20))  # fmt: skip
    live = LiveServer(store, Scheduler(store, max_queue=8))
    body = json.dumps({"model": "q", "from": "f16", "quantize": "q8_0", "stream": False})
    try:
        with socket.create_connection(("127.0.0.1", live.port)) as client:
            client.sendall(
                f"POST /api/create HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
            )
            deadline = time.monotonic() + 60
            while not list(store.blobs.glob(TMP_PREFIX + "*")):
                assert time.monotonic() < deadline, "the quantization never started writing"
                time.sleep(0.01)
        deadline = time.monotonic() + 20
        while list(store.blobs.glob(TMP_PREFIX + "*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not list(store.blobs.glob(TMP_PREFIX + "*"))
        assert [str(n) for n in store.names()] == ["f16:latest"]
    finally:
        live.close()


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
