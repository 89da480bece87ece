"""Store jobs through the real server: concurrent creates wait their turn, and a client that leaves
a quantization leaves no temporary file in the store."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from localrun.scheduler import Scheduler
from localrun.store.blobs import TMP_PREFIX
from localrun.store.local import Store

from support import PATIENCE_S
from support.server import LiveServer, add_model


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
