"""`localrun worker`: llama.cpp's RPC server, offering this machine's GPU or CPU to a `serve`.

A worker runs whatever tensors and graphs the process that connects sends it, with no
authentication: it listens on loopback unless told otherwise, and on another address only with
--allow-network (a network the user trusts). It serves one client at a time.
"""

from __future__ import annotations

from typing import Any

import typer

from localrun.errors import ConfigError, LocalrunError

DEFAULT_PORT = 50052  # llama.cpp's rpc-server's


def worker(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(DEFAULT_PORT, "--port", "-p", min=1, max=65535, help="Port."),
    allow_network: bool = typer.Option(
        False,
        "--allow-network",
        help="Listen on an address beyond loopback. Anyone who reaches the port can run "
        "computations on this machine and read what it holds: use it on a trusted network only.",
    ),
    device: str = typer.Option(
        "auto", "--device", help="What to offer: gpu, cpu, or auto (the GPUs if any)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", "-t", min=1, help="CPU threads (default: the physical cores)."
    ),
) -> None:
    """Offer this machine's GPU or CPU to `localrun serve --workers` (llama.cpp's RPC server)."""
    from localrun.sources.hosts import is_loopback

    device = device.lower()
    if device not in ("auto", "gpu", "cpu"):
        raise typer.BadParameter("expected gpu, cpu or auto")
    host = _address(host)
    if not is_loopback(host) and not allow_network:
        raise ConfigError(
            f"refusing to listen on {host}: a worker runs what anyone who connects sends it",
            hint="on a network you trust, add --allow-network (`localrun help workers`)",
        )
    _check_free(host, port)
    import threading

    from localrun.engine import weights
    from localrun.engine.library import native
    from localrun.hardware import system
    from localrun.runtimes import ggml, rpc

    weights.ready()  # llama.cpp's log kept, as every process that runs models keeps it
    lib = ggml.library(native.libllama_path())
    reg = rpc.registry(lib, native.lc.__version__)
    handles, offered = _devices(lib, device)
    endpoint = f"{host}:{port}"
    print(f"localrun worker on {endpoint} offers {offered}", flush=True)
    count = threads or system.default_threads()
    serving = threading.Thread(
        target=rpc.serve, args=(lib, reg, endpoint, handles, count), daemon=True
    )
    serving.start()
    while serving.is_alive():
        serving.join(0.5)  # Ctrl-C ends the process here, between two waits
    raise LocalrunError(f"the worker could not listen on {endpoint}", hint="see the lines above")


def _address(host: str) -> str:
    """`host` as the IPv4 address llama.cpp's server binds (it takes no name, and no IPv6)."""
    import socket  # not at import: every command's start would pay for it

    if ":" in host:
        raise ConfigError(f"{host!r} is not an IPv4 address or a name", hint="llama.cpp's RPC "
                          "server takes no IPv6 address; pass --host 127.0.0.1")  # fmt: skip
    try:
        return socket.gethostbyname(host)
    except (OSError, UnicodeError) as exc:  # UnicodeError: an empty or overlong label
        raise ConfigError(
            f"cannot find the address of {host!r} ({exc})", hint="pass --host an IPv4 address"
        ) from None


_WSA_IN_USE, _WSA_ACCESS = 10048, 10013  # WSAEADDRINUSE, WSAEACCES


def _check_free(host: str, port: int) -> None:
    """Refuse at once a port another process holds (llama.cpp's server would only print it)."""
    import errno
    import socket
    import sys

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sys.platform != "win32":  # as llama.cpp's server binds (and create_server)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        # Windows names a socket's errors by their WSA numbers.
        taken = exc.errno in (errno.EADDRINUSE, errno.EACCES, _WSA_IN_USE, _WSA_ACCESS)
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="pick another --port, or stop what holds it"
            if taken
            else "pass --host an address of this machine (`ip addr` or `ipconfig` lists them)",
        ) from None


def _devices(lib: Any, wanted: str) -> tuple[list[int], str]:
    """The ggml devices to serve, and a line that names them with their memory."""
    from localrun.runtimes import ggml, rpc
    from localrun.runtimes.activate import GPU_KINDS

    described = ggml.described(lib)
    gpus = [(h, d) for h, d in described if d.kind in GPU_KINDS and d.backend != rpc.NAME]
    cpus = [(h, d) for h, d in described if d.kind == "CPU"]
    if wanted == "gpu" and not gpus:
        raise LocalrunError(
            "this machine has no GPU that llama.cpp can use",
            hint="`localrun info` says why; --device cpu offers the CPU",
        )
    chosen = gpus if gpus and wanted != "cpu" else cpus
    names = ", ".join(f"{d} ({d.free_bytes / 2**30:.1f} GiB free)" for _, d in chosen)
    return [h for h, _ in chosen], names
