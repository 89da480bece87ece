"""A runner process (`python -m localrun.worker`) driven through its JSON-lines protocol: the
events of each request sorted by id, and a store of the models the runner tests load."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localrun.errors import (
    LocalrunError,
)
from localrun.model import stored as model_mod
from localrun.recipes import create, modelfile
from localrun.request.genrequest import GenRequest
from localrun.sources import obtain
from localrun.store import names, reference
from localrun.store.local import Store
from localrun.worker import protocol

DEADLINE = 120.0


class Reply:
    def __init__(
        self, pieces: list[str], final: dict[str, Any], groups: list[Any] | None = None
    ) -> None:
        self.pieces = pieces
        self.final = final
        self.groups = groups or []  # the "vectors" events of an embedding
        self.text = "".join(pieces)

    @property
    def reason(self) -> str:
        return str(self.final.get("reason"))

    @property
    def error(self) -> LocalrunError:
        assert self.final["event"] == protocol.ERROR, self.final
        return protocol.error_from_dict(self.final["error"])


class Worker:
    """A runner subprocess and the events it sends, sorted by request id."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localrun.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stderr: list[bytes] = []
        self.raw: list[bytes] = []
        self.pending: dict[Any, list[dict[str, Any]]] = {}
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)
            self.events.put(protocol.decode(line))
        self.events.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def send(self, message: dict[str, Any] | bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(message if isinstance(message, bytes) else protocol.encode(message))
        self.proc.stdin.flush()

    def event(self, timeout: float = DEADLINE) -> dict[str, Any] | None:
        return self.events.get(timeout=timeout)

    def id(self) -> int:
        self.next_id += 1
        return self.next_id

    def collect(self, id: Any, timeout: float = DEADLINE) -> Reply:
        """Events of request `id` up to its final one (others are kept for their readers)."""
        deadline = time.monotonic() + timeout
        mine = self.pending.setdefault(id, [])
        while not mine or mine[-1]["event"] not in protocol.FINAL_EVENTS:
            event = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            assert event is not None, "the worker exited: " + self.stderr_text()
            self.pending.setdefault(event.get("id"), []).append(event)
        del self.pending[id]
        pieces = [e["text"] for e in mine[:-1] if e["event"] == protocol.PIECE and "calls" not in e]
        told = [e["calls"] for e in mine[:-1] if e["event"] == protocol.PIECE and "calls" in e]
        calls = [call for found in told for call in found]
        groups = [e["embeddings"] for e in mine[:-1] if e["event"] == protocol.VECTORS]
        assert len(pieces) + len(groups) + len(told) == len(mine) - 1, mine
        # Calls go out as they are read; the final event repeats them all.
        assert calls == (mine[-1].get("tool_calls") or []), mine
        return Reply(pieces, mine[-1], groups)

    def chat(self, content: str, **fields: Any) -> Reply:
        return self.collect(self.start_chat(content, **fields))

    def start_chat(self, content: str, **fields: Any) -> int:
        id = self.id()
        messages = fields.pop("messages", [{"role": "user", "content": content}])
        self.send(protocol.generate_request(id, GenRequest("", messages=messages, **fields)))
        return id

    def close(self, timeout: float = 60) -> int:
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.proc.wait(timeout=timeout)

    def stderr_text(self) -> str:
        return b"".join(self.stderr).decode(errors="replace")


def runner_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALRUN_")}
    return {**env, "LOCALRUN_HOME": str(home), **extra}


def runner_root(path: Path, tiny_model: Path, tiny_long_model: Path) -> Path:
    """A folder with a store (models/) holding `tiny` (the generated model), `long` (the same,
    trained on 2**24 tokens) and SmolLM2, and a home for the runner (home/)."""
    store = Store(path / "models")
    folder = path / "src"
    folder.mkdir()
    for name, gguf in (("tiny", tiny_model), ("long", tiny_long_model)):
        (folder / f"{name}.gguf").write_bytes(gguf.read_bytes())
        create.create(store, names.parse(name), modelfile.parse(f"FROM {name}.gguf\n"), folder)
    obtain.find(store, reference.parse("smollm2:135m"))
    return path


def load_message(
    store: Path, model: str, options: dict[str, Any] | None = None, **load: Any
) -> dict[str, Any]:
    """The load message the scheduler sends for `model` in the store at `store`: the name
    found here, once; the runner is handed its LoadSpec."""
    spec = model_mod.load(Store(store), names.parse(model)).load_spec(options or {})
    return protocol.load_request(spec.to_wire(), **load)


@contextlib.contextmanager
def spawn(root: Path, model: str, **load: Any) -> Iterator[Worker]:
    """A loaded worker; on exit its input is closed and it must exit 0 without a traceback."""
    worker = Worker(runner_env(root / "home"))
    worker.send(load_message(root / "models", model, **load))
    ready = worker.event()
    assert ready is not None and ready["event"] == protocol.READY, (ready, worker.stderr_text())
    worker.ready = protocol.ReadyInfo.from_dict(ready["info"])  # type: ignore[attr-defined]
    yield worker
    assert worker.close() == 0, worker.stderr_text()
    assert "Traceback" not in worker.stderr_text()
