"""The real server in the test's process: the app on uvicorn in a thread, on a port the system
picks, with real runners; models added to a store as `create` adds them; a request body or two
the hostile-request tests share."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from localrun.recipes import create, modelfile
from localrun.scheduler import RunningModel, Scheduler
from localrun.store import names
from localrun.store.models import Store

from support import PATIENCE_S

SMOL = "smollm2:135m"


class LiveServer:
    """The real app on uvicorn in a thread, on a port the system picks (bound here first)."""

    def __init__(
        self, store: Store, scheduler: Scheduler | None = None, host: str = "127.0.0.1", **kw: Any
    ) -> None:
        from localrun.server import create_app
        from localrun.server.app import Settings

        self.store = store
        self.scheduler = scheduler or Scheduler(store, max_queue=64)
        app = create_app(Settings(store=store, host=host, **kw), self.scheduler)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        self.wait_for(lambda: self.server.started, "the server to start")

    def running(self) -> dict[str, RunningModel]:
        return {m.name: m for m in self.scheduler.running()}

    def wait_for(
        self, condition: Callable[[], Any], what: str, timeout: float = PATIENCE_S
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            if not self.thread.is_alive():
                raise AssertionError(f"the server thread died while waiting for {what}")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive(), "the server did not stop"


def add_model(store: Store, name: str, gguf: Path, extra: str = "") -> None:
    mf = modelfile.parse(f"FROM {gguf}\n{extra}")
    create.create(store, names.parse(name), mf, gguf.parent)


def pulled_again(updates: list[Any], store: Store, name: str) -> None:
    """`updates` (the `ollama` client's ProgressResponse objects) are what Ollama streams for a
    pull of a model it has, told from the model's manifest in `store`: "pulling manifest", a
    line a layer (the config last) with its digest and total = completed, "verifying sha256
    digest", "writing manifest", "success"."""
    manifest = store.read_manifest(names.parse(name))
    layers = [(f"pulling {x.digest[7:19]}", x.digest, x.size, x.size)
              for x in [*manifest.layers, manifest.config]]  # fmt: skip
    lines = ["pulling manifest", *layers, "verifying sha256 digest", "writing manifest", "success"]
    expected = [x if isinstance(x, tuple) else (x, None, None, None) for x in lines]
    assert [(u.status, u.digest, u.total, u.completed) for u in updates] == expected


def post(live: LiveServer, path: str, body: Any) -> httpx.Response:
    """POST `body` (bytes as they are, anything else as JSON) to the live server's `path`."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(live.url + path, content=content, timeout=PATIENCE_S)


def chat(**extra: Any) -> dict[str, Any]:
    """A short /api/chat body for `tiny`, with `extra` fields."""
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": "the a"}],
        "stream": False,
        "options": {"num_predict": 3},
        **extra,
    }


def vision_server(folder: Path, vision: tuple[Path, Path], tiny_model: Path) -> LiveServer:
    """The real server with `vis` (the tiny vision model and its projector) and `tiny`."""
    model, projector = vision
    store = Store(folder / "models")
    # Greedy by default, so that every dialect's answer is the model's one answer.
    add_model(store, "vis", model, f"PROJECTOR {projector}\nPARAMETER temperature 0\n")
    add_model(store, "tiny", tiny_model)
    return LiveServer(store, Scheduler(store, num_parallel=2, max_loaded=2, max_queue=16))


# A scripted model answers in tokens of its own, one a byte, never in its tokenizer's
# spelling: a forced call's text is left to it to spell (what a grammar allows is the same).
SCRIPTED = "PARAMETER grammar_forcing false"
