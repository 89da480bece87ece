"""Servers a benchmark starts and stops: localrun serve on a store of its own, llama-server and
llama-cpp-python's server, each on a free loopback port, with the process tree's memory.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchlib.common import Unavailable, run_command, say, tail
from benchlib.stacks.build import CXX_FIRST, OFFLOAD, server_args
from benchlib.stacks.store import Localrun, prepare_localrun, served_env
from benchlib.streams import (
    CTX_PER_SLOT,
    N_PREDICT,
    Stream,
    llama_cpp_python_stream,
    llama_server_stream,
    localrun_stream,
)
from benchlib.workloads import CTX

__all__ = [
    "SLOTS",
    "Server",
    "free_port",
    "llama_cpp_python_server",
    "llama_server",
    "llama_server_custom",
    "localrun_serve",
    "localrun_server",
    "localrun_store",
    "tree_pids",
    "tree_rss",
]

SLOTS = 4  # localrun and llama-server serve this many requests at once
START_TIMEOUT_S = 180.0


def free_port() -> int:
    """A loopback port free now (the server started on it binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_pids(pid: int) -> set[int]:
    """A process and all its descendants (localrun's runner is a child of the server)."""
    try:
        return {pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))}
    except psutil.Error:
        return set()


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    total = 0
    for each in tree_pids(pid):
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(each).memory_info().rss
    return total


@dataclass
class Server:
    """A server process this script started, and how to stream from it."""

    name: str
    cmd: list[str]
    port: int
    ready_path: str
    streamer: Callable[..., Stream]  # (port, model, n, n_predict[, text=])
    env: dict[str, str] | None = None
    model: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None
    failure: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def start(self, logdir: Path) -> None:
        self.log = open(logdir / f"{self.name.replace(' ', '_')}.log", "wb")  # noqa: SIM115
        say(f"starting {self.name}: {' '.join(self.cmd)}")
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"exited with {self.proc.returncode}: {self.tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", self.ready_path)
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return
            time.sleep(0.1)
        raise Unavailable(f"not ready within {START_TIMEOUT_S:.0f} s: {self.tail()}")

    def tail(self) -> str:
        if self.log is None:
            return "(no log)"
        self.log.flush()
        try:
            text = Path(self.log.name).read_bytes()[-4000:].decode(errors="replace")
        except OSError:
            return "(no log)"
        return tail(text)

    def rss(self) -> int:
        return tree_rss(self.proc.pid) if self.proc is not None else 0

    def stream(
        self, n: int, n_predict: int = N_PREDICT, text: str = "", into: Stream | None = None
    ) -> Stream:
        """Request `n`: prompt(n), or `text` where given, timed in `into` as it arrives where
        given (streamers that take them: localrun's and llama-server's)."""
        extra: dict[str, Any] = {"text": text} if text else {}
        if into is not None:
            extra["into"] = into
        try:
            return self.streamer(self.port, self.model, n, n_predict, **extra)
        except (OSError, http.client.HTTPException, RuntimeError, ValueError) as exc:
            failed = into or Stream()
            failed.error = f"{type(exc).__name__}: {exc}"
            return failed

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not None:
            self.log.close()


def localrun_server(home: Path, model: Path, name: str | None, threads: int) -> Server:
    """`localrun serve` on a fresh store with the model imported (not loaded)."""
    return localrun_serve(localrun_store(home, model, name, threads), threads)


def localrun_store(home: Path, model: Path, name: str | None, threads: int) -> Localrun:
    """A fresh store in `home` with the model imported (not loaded), for `localrun serve`."""
    env = served_env(home, LOCALRUN_NUM_PARALLEL=str(SLOTS))
    lr = prepare_localrun(home, model, name, threads)
    lr.env = env
    if lr.model:
        # Import the starter into the store now, outside every measurement.
        run_command([*lr.cmd, "show", lr.model], timeout=600, env=env)
    return lr


def localrun_serve(lr: Localrun, threads: int, name: str = "localrun serve") -> Server:
    """`localrun serve` of the store `localrun_store` prepared, on a port of its own."""
    port = free_port()
    server = Server(
        name,
        [*lr.cmd, "serve", "--host", "127.0.0.1", "--port", str(port)],
        port,
        "/api/version",
        functools.partial(localrun_stream, threads=threads),
        env={**lr.env, "LOCALRUN_HOST": f"127.0.0.1:{port}"},
        model=lr.model,
    )
    if not lr.model:
        server.failure = "`localrun create` failed for this model"
    return server


def llama_server(build_dir: Path, model: Path, threads: int) -> Server:
    """llama-server with SLOTS slots of CTX_PER_SLOT tokens each, as localrun serve has them."""
    slots = ["-np", str(SLOTS), "-c", str(CTX_PER_SLOT * SLOTS), "--no-kv-unified"]
    return _llama_server(build_dir, model, threads, "llama-server", slots)


def llama_server_with(build_dir: Path, model: Path, threads: int, spec: list[str]) -> Server:
    """llama-server with one slot of CTX tokens and `spec` (its speculation arguments, none for
    plain decoding), named after its --spec-type."""
    name = "llama-server" + (f" {spec[1]}" if spec else "")
    return _llama_server(build_dir, model, threads, name, ["-np", "1", "-c", str(CTX), *spec])


def llama_server_custom(
    build_dir: Path, model: Path, threads: int, name: str, args: list[str]
) -> Server:
    """llama-server with `args` (its slots and context) and the machine's model parameters."""
    return _llama_server(build_dir, model, threads, name, args)


def _llama_server(build_dir: Path, model: Path, threads: int, name: str, args: list[str]) -> Server:
    port = free_port()
    exe = build_dir / "bin" / "llama-server"
    cmd = [
        str(exe), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
        "-t", str(threads), "-tb", str(threads), "--no-webui", *OFFLOAD, *server_args(), *args,
    ]  # fmt: skip
    server = Server(name, cmd, port, "/health", llama_server_stream)
    if not exe.is_file():
        server.failure = f"no llama-server in {build_dir / 'bin'}"
    return server


def guidance_server(python: Path, model: Path, threads: int, ctx: int, timeout: float) -> Server:
    """Guidance on llama-cpp-python (benchlib/stacks/guidance_server.py), run by `python`: an
    environment with the `guidance` package (it pins its own llguidance)."""
    port = free_port()
    cmd = [
        str(python), str(Path(__file__).with_name("guidance_server.py")), "--model", str(model),
        "--port", str(port), "--threads", str(threads), "--ctx", str(ctx),
        "--timeout", str(max(1.0, timeout - 5)),  # it answers before its client gives up
    ]  # fmt: skip
    root = str(Path(__file__).resolve().parents[3])  # localrun's own checkout: its machine params
    env = {**os.environ, "PYTHONPATH": root}
    server = Server("Guidance", cmd, port, "/health", llama_server_stream, env=env)
    server.details["constrained only"] = True  # it serves json_schema requests alone
    server.details["exits after failing"] = True  # a stream left unfinished: started afresh
    if not Path(python).is_file():
        server.failure = f"no Python at {python}"
    return server


def llama_cpp_python_server(model: Path, threads: int) -> Server:
    port = free_port()
    cmd = [
        sys.executable, str(Path(__file__).with_name("llama_cpp_server.py")), "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port),
        "--n_threads", str(threads), "--n_threads_batch", str(threads),
        "--n_ctx", str(CTX_PER_SLOT),
    ]  # fmt: skip
    env = None
    if OFFLOAD:  # every layer on the GPU, and the C++ runtime first (CXX_FIRST)
        cmd += ["--n_gpu_layers", "-1"]
        env = {**os.environ, **CXX_FIRST}
    return Server("llama_cpp.server", cmd, port, "/v1/models", llama_cpp_python_stream, env=env)
