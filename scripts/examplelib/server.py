"""A `localrun serve` of the run's own: a temporary home, port 0, no registry and no hub, so that
no example can reach past it (a model name it does not know is a 404, never a download).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["Serve", "served_env"]

START_TIMEOUT_S = 180.0  # the first line comes before any model loads; this bounds a hang


def served_env(home: Path) -> dict[str, str]:
    """The server's environment: its own home, nothing fetched from anywhere, and none of the
    caller's store, key or address."""
    env = {
        **os.environ,
        "LOCALRUN_HOME": str(home),
        "LOCALRUN_REGISTRY": "off",
        "LOCALRUN_OTHER_RUNNERS": "0",
        "HF_HUB_OFFLINE": "1",
        # It listens where --host and --port say; whatever reads LOCALRUN_HOST finds a closed
        # port, never a server someone else started (tests/conftest.py checks it).
        "LOCALRUN_HOST": "127.0.0.1:9",
    }
    for unset in ("LOCALRUN_MODELS", "LOCALRUN_API_KEY"):
        env.pop(unset, None)
    return env


class Serve:
    """`localrun serve --port 0` in `home`; `url` is what it printed. Its stderr goes to
    home/serve.log (read it when an example fails in a way the client does not explain)."""

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / "serve.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "localrun", "serve", "--host", "127.0.0.1", "--port", "0"],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
                env=served_env(home),
            )
        self.url = self._first_url()
        # Drained so that the server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _first_url(self) -> str:
        assert self.proc.stdout is not None
        timer = threading.Timer(START_TIMEOUT_S, self.proc.kill)
        timer.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            timer.cancel()
        found = re.search(r"https?://\S+", line)
        if found is None:
            self.stop()
            raise RuntimeError(f"localrun serve did not start: {line.strip() or self._tail()}")
        return found.group(0).rstrip("/")

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def _tail(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit {self.proc.poll()}"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not ended within 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> Serve:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
