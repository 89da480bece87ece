"""llama.cpp's RPC backend (ggml-rpc): found or loaded, then served (`localrun worker`) or joined.

The backend is llama_cpp's own when pip built it with GGML_RPC=ON; otherwise the `rpc` runtime
(`localrun runtime install rpc`: ggml-rpc alone, a loadable module of some 20 s to build) is loaded
into the process's ggml as the GPU runtimes are. A worker calls `serve`, which never returns; a
runner calls `join` for each worker, once the worker has answered a probe (hardware.workers):
llama.cpp's client aborts its process on a worker it cannot reach. `bound` then gives the
runner's connections to the workers a deadline, so that a worker that stops answering ends the
runner (and the answer, with one line) instead of holding it forever.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import sys
from typing import Any

from localrun.errors import ConfigError, WorkerError
from localrun.hardware import workers
from localrun.runtimes import ggml, layout
from localrun.runtimes.layout import Runtime

BACKEND = "rpc"
TARGET = "ggml-rpc"
NAME = "RPC"  # the name ggml registers the backend under
INSTALL_HINT = "install it: localrun runtime install rpc"

_START = ctypes.CFUNCTYPE(
    None,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_void_p),
)
_ADD = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
_joined: dict[str, list[int]] = {}  # endpoint -> its devices, registered with ggml


def installed(version: str) -> Runtime | None:
    """The newest rpc runtime built for llama-cpp-python `version`, or None."""
    found = [r for r in layout.installed() if r.backend == BACKEND]
    usable = [r for r in found if r.llama_cpp_version == version]
    return usable[-1] if usable else None


def registry(lib: Any, version: str) -> int:
    """The RPC backend's registration in `lib` (the process's ggml), loaded if it must be."""
    reg = lib.ggml_backend_reg_by_name(NAME.encode())
    if reg:
        return int(reg)
    runtime = installed(version)
    if runtime is None:
        raise ConfigError(  # the server's setup, not a worker, fails: no load works until fixed
            "llama.cpp's RPC backend is not installed here, which workers need",
            hint=INSTALL_HINT,
        )
    from localrun.runtimes.activate import checked

    module, problem = checked(runtime)
    if module is None:
        raise ConfigError(problem or f"runtime {runtime.name} is damaged", hint=INSTALL_HINT)
    reg = lib.ggml_backend_load(str(module).encode())
    if not reg:
        raise ConfigError(f"runtime {runtime.name} did not load", hint=INSTALL_HINT)
    return int(reg)


def serve(lib: Any, reg: int, endpoint: str, devices: list[int], threads: int) -> None:
    """Serve `devices` (ggml device handles) at `endpoint` until the process ends.

    It returns only when the server could not start (the address is taken).
    """
    start = _START(lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_start_server"))
    handles = (ctypes.c_void_p * len(devices))(*devices)
    start(endpoint.encode(), None, threads, len(devices), handles)


def join(lib: Any, reg: int, endpoint: str) -> list[int]:
    """Register the devices of the worker at `endpoint` (it answered a probe) with ggml, once.

    Returns its device handles, for a load's explicit device list (`devices`).
    """
    if endpoint in _joined:
        return _joined[endpoint]
    add = _ADD(lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server"))
    added = add(endpoint.encode())
    if not added:
        raise WorkerError(f"worker {endpoint} offers no device", hint="see its own output")
    lib.ggml_backend_register(added)
    count = lib.ggml_backend_reg_dev_count(added)
    _joined[endpoint] = [int(lib.ggml_backend_reg_dev_get(added, i)) for i in range(count)]
    return _joined[endpoint]


def joined() -> bool:
    """Whether this process registered a worker's devices (every later load names its own)."""
    return bool(_joined)


def devices(lib: Any, endpoints: tuple[str, ...]) -> list[int]:
    """A load's devices in tensor_split's order: the workers' (joined), then this machine's GPUs.

    That is how hardware.split plans them. Without the list llama.cpp would pick every
    registered device, the RPC ones of an earlier load's workers included.
    """
    from localrun.runtimes.activate import GPU_KINDS

    handles = [h for endpoint in endpoints for h in _joined[endpoint]]
    local = [h for h, d in ggml.described(lib) if d.kind in GPU_KINDS and d.backend != NAME]
    return handles + local


def bound(endpoints: tuple[str, ...], seconds: float) -> int:
    """Give this process's connections to `endpoints` a deadline on every send and receive.

    llama.cpp's client then fails (and ends the process) where it would wait for ever. The
    sockets are found through psutil; Windows gives no descriptor, so there nothing is bound.
    Returns the number of connections bound.
    """
    import psutil

    wanted = {workers.address(endpoint) for endpoint in endpoints}
    count = 0
    process = psutil.Process()
    listing = getattr(process, "net_connections", None) or process.connections  # psutil < 6
    with contextlib.suppress(psutil.Error, OSError):
        for conn in listing(kind="tcp"):
            if conn.fd < 0 or not conn.raddr or (conn.raddr.ip, conn.raddr.port) not in wanted:
                continue
            with contextlib.suppress(OSError):
                _set_deadline(conn.fd, seconds)
                count += 1
    return count


def _set_deadline(fd: int, seconds: float) -> None:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        if sys.platform == "win32":
            value = struct.pack("<I", int(seconds * 1000))
        else:
            whole = int(seconds)
            value = struct.pack("ll", whole, int((seconds - whole) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    finally:
        sock.close()
