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
from localrun.store.local import Store

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
        self.app = app  # its state, for a test that reads what the server holds
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


# Conversations of text turns, the same for every model the round trip checks.
TURNS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Name a colour."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And another?"},
    ],
]


def prompts(url: str, model: str, tools: list[Any] | None = None) -> list[str]:
    """The prompts `model` is given for TURNS (llama-server's /apply-template)."""
    out = []
    for messages in TURNS:
        body = {"model": model, "messages": messages, "tools": tools}
        answer = httpx.post(f"{url}/apply-template", json=body, timeout=PATIENCE_S)
        assert answer.status_code == 200, answer.text
        out.append(answer.json()["prompt"])
    return out


def show_round_trip(url: str, model: str, tools: list[Any]) -> dict[str, Any]:
    """/api/show's template is a Go template and its modelfile's TEMPLATE is that one; the
    model created again from that modelfile, and from the model with the Go template edited
    (as Open WebUI's editor sends it: kept, a Go template), is given the prompts `model` is
    given (with `tools` too, where the template is the model's own). Returns what show said."""
    import ollama

    from localrun.formats import template
    from localrun.formats.ollama.template import check

    def show(name: str) -> dict[str, Any]:
        answer = httpx.post(f"{url}/api/show", json={"model": name}, timeout=PATIENCE_S)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    shown = show(model)
    go = shown["template"]
    assert go and template.is_go(go) and go != shown["chat_template"]
    check(go)  # parses and renders as Ollama's text/template would
    assert modelfile.parse(shown["modelfile"]).template == go
    expected, with_tools = prompts(url, model), prompts(url, model, tools)
    copy = {"model": f"{model}-copy", "modelfile": shown["modelfile"], "stream": False}
    made = httpx.post(f"{url}/api/create", json=copy, timeout=PATIENCE_S)
    assert made.status_code == 200, made.text
    assert prompts(url, copy["model"]) == expected
    assert prompts(url, copy["model"], tools) == with_tools  # the model's own template kept
    again = show(copy["model"])
    assert again["template"] == go and again["chat_template"] == shown["chat_template"]
    edited = "{{/* edited */}}" + go
    client = ollama.Client(host=url, timeout=PATIENCE_S)
    assert client.create(f"{model}-go", from_=model, template=edited).status == "success"
    assert prompts(url, f"{model}-go") == expected  # rendered by the Go template now
    assert show(f"{model}-go")["template"] == edited == show(f"{model}-go")["chat_template"]
    for name in (copy["model"], f"{model}-go"):
        client.delete(name)
    return shown


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
