"""`localrun serve`: the HTTP API on uvicorn (see localrun.server).

fastapi, uvicorn and the scheduler are imported inside the command, so other commands never pay
for them. So are logging and socket, a few milliseconds of every other command's start. The
socket is bound and listening before the URL is printed: a client that reads the line can
connect at once, and `--port 0` prints the port the system picked.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import typer

from localrun import __version__
from localrun.cli.common import open_store
from localrun.errors import ConfigError, ServerError
from localrun.settings import config

if TYPE_CHECKING:
    import socket

    from uvicorn import Server

    from localrun.scheduler import Scheduler
    from localrun.server.app import Settings
    from localrun.server.http.connections import Limits

GRACEFUL_SHUTDOWN_S = 3  # streams still open after Ctrl-C / SIGTERM get this long


WORKERS_OPTION = typer.Option(
    None,
    "--workers",
    help="host:port of `localrun worker`s, comma-separated, that each model is split across by "
    "their memory (default: LOCALRUN_WORKERS, none).",
)


def _address(host: str | None, port: int | None) -> tuple[str, int]:
    """--host HOST[:PORT] and --port over LOCALRUN_HOST."""
    bind_host, bind_port = config.host()
    if host is not None:
        try:
            bind_host, given_port = config.parse_host(host)
        except ValueError as exc:
            raise ConfigError(
                str(exc), hint="write --host ADDRESS[:PORT] or LOCALRUN_HOST=host:port"
            ) from None
        bare = host.strip().split("://")[-1].rstrip("/")
        if "]:" in bare or (not bare.startswith("[") and bare.count(":") == 1):
            bind_port = given_port
    return bind_host, bind_port if port is None else port


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot listen on {host}: {exc.strerror}", hint="pass an address with --host"
        ) from None
    sock = socket.socket(family, kind, proto)
    try:
        if sys.platform != "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServerError(
                f"port {port} on {host} is already in use",
                hint="is `localrun serve` already running? Pick another port with --port",
            ) from None
        raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(False)
    return sock


def _url(sock: socket.socket, scheme: str) -> str:
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def serve(
    host: str | None = typer.Option(
        None, "--host", help="Address to listen on (default: LOCALRUN_HOST, 127.0.0.1)."
    ),
    port: int | None = typer.Option(
        None, "--port", "-p", help="Port to listen on (default 11435; 0 picks a free one)."
    ),
    insecure_no_auth: bool = typer.Option(
        False,
        "--insecure-no-auth",
        help="Listen beyond loopback without LOCALRUN_API_KEY (anyone who can reach the port "
        "can use it).",
    ),
    tls_cert: Path | None = typer.Option(
        None,
        "--tls-cert",
        help="Serve HTTPS with this certificate (PEM; default: LOCALRUN_TLS_CERT).",
    ),
    tls_key: Path | None = typer.Option(
        None,
        "--tls-key",
        help="The certificate's private key (PEM, unencrypted, mode 600; default: "
        "LOCALRUN_TLS_KEY).",
    ),
    workers: str | None = WORKERS_OPTION,
) -> None:
    """Serve the Ollama-, OpenAI- and Anthropic-compatible APIs."""
    from localrun.host.limits import raise_open_files
    from localrun.scheduler import Scheduler
    from localrun.server.app import Settings
    from localrun.server.http.connections import Limits
    from localrun.settings import tls
    from localrun.sources.hosts import is_loopback

    _check_settings(workers)
    bind_host, bind_port = _address(host, port)
    env_cert, env_key = config.tls_pair()
    pair = tls.server_pair(tls_cert or env_cert, tls_key or env_key)
    store = open_store(cleanup=True)
    settings = Settings.from_env(bind_host, store)
    if not is_loopback(bind_host) and not settings.api_key and not insecure_no_auth:
        raise ConfigError(
            f"refusing to listen on {bind_host} without an API key",
            hint="set LOCALRUN_API_KEY (clients send it as a Bearer token), or pass "
            "--insecure-no-auth to serve anyone who can reach the port",
        )
    limits = Limits.from_env()
    debug = config.debug()
    _configure_logging(debug)
    # Every connection holds a file descriptor: allow as many as the system lets us, then keep
    # the connection cap below that.
    fd_limit = raise_open_files()
    if fd_limit is not None:
        limits = limits.within(fd_limit)
    sock = _bind(bind_host, bind_port, limits.backlog)
    from localrun.settings import upstreams

    scheduler = Scheduler(store, upstreams=upstreams.load())
    server = _server(settings, scheduler, limits, debug, pair)
    url = _url(sock, "https" if pair else "http")
    print(f"localrun {__version__} listening on {url}", flush=True)
    print(f"chat in a browser: {url}/ui/", flush=True)
    _say_workers()
    _advise()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise ServerError("the server could not start", hint="see the messages above")


def _say_workers() -> None:
    """A line for each worker: what it offers, or why it cannot serve (asked in bounded time)."""
    endpoints = config.workers()
    if not endpoints:
        return
    from localrun.hardware import workers

    found, problems = workers.survey(endpoints)
    for worker in found:
        size = f"{worker.free_bytes / 2**30:.1f} GiB"
        print(f"worker {worker.endpoint}: {size} free, RPC {worker.version}", flush=True)
    for problem in problems:
        print(f"warning: {problem.removesuffix(': loading without it')}", flush=True)


def _check_settings(workers: str | None = None) -> None:
    """Read every setting once, before the socket is bound, so a bad value stops the start.

    The start then ends with the value's one-line ConfigError. Most settings are read again where
    they are used (a route, a runner before llama.cpp loads). There a bad value would fail every
    request, or only log or warn.
    """
    from localrun.settings import parse, upstreams

    if workers is not None:  # --workers: the runners read it as the setting, checked here
        import os

        try:
            parse.parse_endpoints(workers)
        except ValueError as exc:
            raise ConfigError(
                f"--workers: {exc}",
                hint="give host:port of each `localrun worker`, comma-separated "
                "(192.168.1.20:50052,192.168.1.21:50052)",
            ) from None
        os.environ["LOCALRUN_WORKERS"] = workers
    for setting in config.SETTINGS.values():
        setting.value()
    upstreams.Settings.read()  # the LOCALRUN_UPSTREAM_* bounds, read when a request routes


def _advise() -> None:
    """Print the advice of each start: a GPU nothing installed can use, and exact answers.

    The GPU is named once. The other line says how to make greedy answers exact where they can
    depend on the batch.
    """
    from localrun.runtimes.advice import detected_gpus, exact_line, say_once

    say_once(detected_gpus, lambda line: print(line, flush=True))
    note = exact_line()
    if note is not None:
        print(note, flush=True)


def _configure_logging(debug: bool) -> None:
    """Log to stderr, each message on one line, with what a client sent escaped.

    uvicorn's and httpx's routine lines show only with LOCALRUN_DEBUG.
    """
    import logging

    from localrun.server.http.escape import OneLineFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler])
    logging.getLogger("uvicorn.error").setLevel(logging.INFO if debug else logging.WARNING)
    # One line per upstream request and health check is noise (the failures are logged).
    logging.getLogger("httpx").setLevel(logging.INFO if debug else logging.WARNING)


def _server(
    settings: Settings,
    scheduler: Scheduler,
    limits: Limits,
    debug: bool,
    tls_pair: tuple[Path, Path] | None,
) -> Server:
    """Return uvicorn's server for the app, its HTTP protocol held to `limits`.

    It serves HTTPS when `tls_pair` (certificate, key) is given.
    """
    import uvicorn

    from localrun.server import create_app
    from localrun.server.http.connections import protocol

    # uvicorn believes X-Forwarded-For from loopback by default, and every per-client bound
    # (connections, background runs, checker turns) would count the address a client names.
    proxies = config.trusted_proxies()
    uv_config = uvicorn.Config(
        create_app(settings, scheduler),
        proxy_headers=bool(proxies),
        forwarded_allow_ips=list(proxies) or None,
        http=protocol(limits),
        ws="none",  # no WebSocket routes; an upgraded connection would escape the limits
        backlog=limits.backlog,
        log_config=None,
        access_log=debug,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        ssl_certfile=str(tls_pair[0]) if tls_pair else None,
        ssl_keyfile=str(tls_pair[1]) if tls_pair else None,
    )

    class CleanExit(uvicorn.Server):
        """Run uvicorn's server without re-raising Ctrl-C / SIGTERM after its clean shutdown.

        Re-raised, the signal would kill the process instead of letting it exit 0.
        """

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.should_exit:
                self.force_exit = True  # a second Ctrl-C: stop waiting for open streams
            else:
                # Open streams end with their dialect's error line, not a cut connection
                # (the signal handler runs on the event loop's thread, between callbacks).
                import asyncio

                with contextlib.suppress(RuntimeError):
                    asyncio.get_running_loop().call_soon_threadsafe(scheduler.interrupt)
            self.should_exit = True

    return CleanExit(uv_config)
