"""`localrun serve` as a user runs it: a subprocess that prints its URL, alone or as a gateway
in front of upstream servers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from support import PATIENCE_S


class Serve:
    """A `localrun serve --port 0` subprocess and the URL it printed (https:// with TLS)."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localrun", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "LOCALRUN_HOME": str(home), **(env or {})},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded: the process prints it or exits
        found = re.search(r"https?://\S+", line)
        assert found, (line, self.proc.communicate(timeout=PATIENCE_S))
        self.url = found.group(0)
        self.address = self.url.split("://", 1)[1]

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = PATIENCE_S) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


FAST = {  # health checks and ejection on a test's time scale
    "LOCALRUN_UPSTREAM_HEALTH_INTERVAL": "0.3s",
    "LOCALRUN_UPSTREAM_COOLDOWN": "1s",
    "LOCALRUN_UPSTREAM_EJECT_AFTER": "2",
    "LOCALRUN_UPSTREAM_READ_TIMEOUT": "3s",
}


def _toml(upstreams: dict[str, dict[str, object]]) -> str:
    lines = []
    for name, table in upstreams.items():
        lines.append(f"[upstreams.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
        lines.append("")
    return "\n".join(lines)


def gateway(home: Path, upstreams: dict[str, dict[str, object]], **env: str) -> Serve:
    home.mkdir(parents=True, exist_ok=True)
    (home / "upstreams.toml").write_text(_toml(upstreams))
    return Serve(home, env={**FAST, **env})
