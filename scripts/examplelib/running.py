"""One example program run as its users run it: from a copy of its corpus (`python
examples/NAME.py` in the copy's root, as the clients' READMEs say), with the clients' own
environment variables pointed at the server, its input given, and a deadline; its outcome is
read from its exit status and its last error line.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from examplelib.table import Corpus, Example

__all__ = ["Outcome", "client_env", "client_too_old", "prepare", "run", "skipped", "write_png"]

# The clients' variables: a program that reads none of them is pointed at localrun by the
# corpus's `replace` in examples.toml.
CLIENT_PREFIXES = ("OPENAI_", "ANTHROPIC_", "OLLAMA_", "AZURE_OPENAI_", "AWS_", "GOOGLE_")
KEY = "localrun"  # any key: a loopback server without LOCALRUN_API_KEY reads none
# An exception's line: `openai.NotFoundError: ...`, `AssertionError`, node's `TypeError: ...` and
# `DOMException [AbortError]: ...` (not node's own source lines that merely name one).
ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)( \[\w+\])?(:|$)")


@dataclass(frozen=True)
class Outcome:
    """What one program did: ran, failed (why), or was not run (out, part, skipped: why)."""

    example: Example
    result: str  # "ran", "failed", "out", "part" or "skipped"
    why: str = ""
    seconds: float = 0.0
    output: str = ""  # the end of what it wrote (stdout, then stderr): to read why

    @property
    def expected(self) -> bool:
        """It ran, or it failed where examples.toml says the model's size makes it fail."""
        return self.result == "ran" or (self.result == "failed" and bool(self.example.size))

    def line(self) -> str:
        """The table's result column."""
        if self.result == "failed" and self.example.size:
            return f"failed for the model's size: {self.example.size} ({self.why})"
        if self.result == "ran" and self.example.size:
            return f"ran (marked as failing for the model's size: {self.example.size})"
        return f"{self.result}: {self.why}" if self.why else self.result


def skipped(example: Example) -> Outcome | None:
    """The outcome of a program that is not run (out of scope, or part of another), or None."""
    if example.scope == "in":
        return None
    return Outcome(example, example.scope, example.what)


def client_too_old(corpus: Corpus) -> str | None:
    """Why a Python corpus's programs cannot run on the installed client, or None."""
    if corpus.runner != "python":
        return None
    try:
        installed = importlib.metadata.version(corpus.client)
    except importlib.metadata.PackageNotFoundError:
        return f"{corpus.client} is not installed"

    def numbers(version: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", version)[:3])

    if numbers(installed) < numbers(corpus.version):
        return f"{corpus.client} {installed} is older than the examples' {corpus.version}"
    return None


def write_png(path: Path, size: int = 64) -> Path:
    """A small RGB gradient PNG (an image for the programs that ask for one's path)."""
    rows = b"".join(
        b"\x00" + bytes(v for x in range(size) for v in (4 * x % 256, 4 * y % 256, 128))
        for y in range(size)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    png += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


def prepare(corpus: Corpus, source: Path, into: Path, url: str) -> Path:
    """A copy of the fetched corpus at `source` under `into`, its placeholders set for `url`;
    its root is where the programs run."""
    root = into / corpus.name
    shutil.copytree(source, root, dirs_exist_ok=True)
    for example in corpus.examples:
        pairs = corpus.replace + example.replace
        if example.scope != "in" or not pairs:
            continue
        path = root / "examples" / example.path
        text = path.read_text()
        for old, new in pairs:
            if old not in text:
                raise ValueError(f"{example.key}: {old!r} is not in it (examples.toml replace)")
            text = text.replace(old, new.replace("{url}", url))
        path.write_text(text)
    write_png(root / "image.png")
    return root


def client_env(url: str, key: str = KEY) -> dict[str, str]:
    """The environment of a program: the clients' variables pointed at the server, and none of
    the caller's (a key, a base URL or a cloud's credentials)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLIENT_PREFIXES)}
    env.update(
        OPENAI_BASE_URL=f"{url}/v1",
        OPENAI_API_KEY=key,
        ANTHROPIC_BASE_URL=url,
        ANTHROPIC_API_KEY=key,
        OLLAMA_HOST=url,
        NO_PROXY="127.0.0.1,localhost,::1",
        no_proxy="127.0.0.1,localhost,::1",
        PYTHONUNBUFFERED="1",
        PYTHONIOENCODING="utf-8",
        NO_COLOR="1",
    )
    return env


def _why(stderr: str, node: bool) -> str:
    """The line that says why a program failed: Python's last exception line, node's first."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    if errors:
        return (errors[0] if node else errors[-1])[:400]
    return lines[-1][:400] if lines else ""


def _command(corpus: Corpus, root: Path, example: Example) -> list[str]:
    program = str(Path("examples") / example.path)
    if corpus.runner == "tsx":
        return [str(root / "node_modules" / ".bin" / "tsx"), program, *example.args]
    return [sys.executable, program, *example.args]


def run(corpus: Corpus, example: Example, root: Path, env: dict[str, str]) -> Outcome:
    """Run one in-scope program from its corpus's copy at `root`, within its deadline."""
    stdin = example.stdin.replace("{image}", str(root / "image.png"))
    started = time.monotonic()
    proc = subprocess.Popen(
        _command(corpus, root, example),
        cwd=root,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=True,  # its children too are stopped at its deadline
    )
    try:
        stdout, stderr = proc.communicate(stdin + "\n" if stdin else "", timeout=example.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        why = f"no end within {example.timeout:.0f} s"
        return Outcome(example, "failed", why, time.monotonic() - started, _tail(stdout, stderr))
    seconds = time.monotonic() - started
    output = _tail(stdout, stderr)
    why = _why(stderr, corpus.runner == "tsx")
    if proc.returncode == 0 or (example.ends and why.startswith(example.ends)):
        return Outcome(example, "ran", "", seconds, output)
    return Outcome(example, "failed", why or f"exit {proc.returncode}", seconds, output)


def _tail(stdout: str, stderr: str, size: int = 4000) -> str:
    return (stdout[-size:] + ("\n--- stderr ---\n" + stderr[-size:] if stderr else "")).strip()
