"""The hostile registries of fuzzlib.replay's runs (scripts/fuzz/registries.py), on loopback:
scripts/hubs/registries.py's scripted one (FakeOllamaRegistry) in each of issue 76's modes, a port
that speaks no HTTP (Listener) and one that is closed; `env` names them in the server's settings
(those listed for API clients, and the login the server holds for every one of them).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from hubs import registries

__all__ = ["LOGIN", "Registries", "registries"]

LOGIN = ("owner", "owners-secret")  # the server's stored login for every registry here


class Registries:
    """The hostile registries of the run, started before the server (its settings name them)."""

    def __init__(self) -> None:
        fake = registries.FakeOllamaRegistry
        self.bombs = fake(bomb=3 << 30)  # listed: the job reaches it, its decoding is bounded
        self.stalling = fake(stall=threading.Event())  # listed
        self.limited = fake(rate_limited=1 << 30, retry_after="999999")  # listed
        self.models = fake()  # listed: a real model to pull, six at once
        self.unlisted = fake(token="tok", login=LOGIN)  # not listed: behind the owner's login
        self.admin = fake()  # what a hostile realm points at: it records what reaches it
        self.realm = fake(token="tok", realm=f"{self.admin.url}/admin/delete-all?confirm=yes")
        self.foreign = fake(token="t\u00f6k\u00e9n")  # its token service answers non-ASCII
        self.service = registries.Listener()  # a port that speaks no HTTP
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            self.closed = f"127.0.0.1:{closed.getsockname()[1]}"
        self.fakes = [self.bombs, self.stalling, self.limited, self.models, self.unlisted,
                      self.admin, self.realm, self.foreign]  # fmt: skip

    @staticmethod
    def host(fake: Any) -> str:
        return str(fake.url).removeprefix("http://")

    def env(self) -> dict[str, str]:
        listed = [self.bombs, self.stalling, self.limited, self.models, self.foreign]
        auth = " ".join(f"{self.host(f)}={LOGIN[0]}:{LOGIN[1]}" for f in self.fakes)
        return {"LOCALRUN_API_REGISTRIES": ",".join(self.host(f) for f in listed),
                "LOCALRUN_REGISTRY_AUTH": auth}  # fmt: skip

    def close(self) -> None:
        assert self.stalling.stall is not None
        self.stalling.stall.set()
        for fake in self.fakes:
            fake.close()
        self.service.close()
