"""A response the server stores is its owner's alone: 0600 in a 0700 folder."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest

from localrun.scheduler import Scheduler
from localrun.settings import config
from localrun.store.local import Store

from support import PATIENCE_S
from support.server import LiveServer, add_model


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.server
def test_a_stored_response_is_private(home: Path, tiny_model: Path) -> None:
    store = Store(home / "models")
    add_model(store, "tiny", tiny_model)
    server = LiveServer(store, Scheduler(store, backend="fake"))
    try:
        answer = httpx.post(
            server.url + "/v1/responses",
            json={"model": "tiny", "input": "my secret question", "store": True},
            timeout=PATIENCE_S,
        )
        assert answer.status_code == 200, answer.text
    finally:
        server.close()
    folder = config.responses_dir()
    (record,) = folder.iterdir()
    assert "my secret question" in record.read_text()
    assert mode(record) == 0o600 and mode(folder) == 0o700
