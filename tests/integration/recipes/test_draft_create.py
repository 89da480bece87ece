"""Modelfile DRAFT through the server's /api/create: a draft given by name or by blob, never by a
path on the server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localrun.scheduler import Scheduler
from localrun.store import names
from localrun.store.local import Store

from support import PATIENCE_S
from support.server import LiveServer, add_model


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("draft-server") / "models")
    add_model(store, "tiny", tiny_model)
    server = LiveServer(store, Scheduler(store, backend="fake"))
    yield server
    server.close()


def _post(live: LiveServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{live.url}{path}", json=body, timeout=PATIENCE_S)


@pytest.mark.server
def test_api_create_takes_a_draft_by_name_or_blob_never_by_server_path(
    live: LiveServer, draft_project: Path
) -> None:
    body = {"model": "d", "stream": False, "modelfile": "FROM tiny\nDRAFT tiny\n"}
    created = _post(live, "/api/create", body)
    assert created.status_code == 200, created.text
    shown = _post(live, "/api/show", {"model": "d"}).json()
    tiny_layer = live.store.read_manifest(names.parse("tiny")).of_kind("model")[0]
    assert shown["draft"] == {
        "model": "tiny:latest",
        "digest": tiny_layer.digest,
        "details": {**shown["details"], "parent_model": ""},
    }
    # The Modelfile names the draft by digest, which /api/create takes back.
    assert f"DRAFT sha256:{tiny_layer.digest[7:]}\n" in shown["modelfile"]
    body = {"model": "e", "stream": False, "modelfile": shown["modelfile"]}
    again = _post(live, "/api/create", body)
    assert again.status_code == 200, again.text
    assert "draft" not in _post(live, "/api/show", {"model": "tiny"}).json()

    answers = set()
    for path in (
        str(draft_project / "small.gguf"),
        "/etc/passwd",
        str(draft_project / "missing.gguf"),
    ):
        body = {"model": "x", "stream": False, "modelfile": f"FROM tiny\nDRAFT {path}\n"}
        refused = _post(live, "/api/create", body)
        answers.add((refused.status_code, refused.json()["error"].replace(path, "PATH")))
    assert len(answers) == 1 and next(iter(answers))[0] == 400, answers
    assert "x:latest" not in [str(n) for n in live.store.names()]
