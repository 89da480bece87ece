"""llama.cpp's RPC protocol as the tests' fake workers speak it: a loopback listener, a worker's
handshake (HELLO, DEVICE_COUNT, GET_DEVICE_MEMORY), and what it does with anything else."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator

from localrun.hardware import workers

GiB = 2**30
Serve = Callable[[socket.socket], None]


def _recv(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError
        data += chunk
    return data


def worker_like(
    version: int = workers.PROTOCOL_MAJOR,
    devices: int = 2,
    memory: int = 8 * GiB,
    *,
    minor: int = 0,
    then_garbage: bool = False,
) -> Serve:
    """Answer the handshake as llama.cpp's rpc-server does (device N reports N GiB less free);
    any other command closes the connection, or with `then_garbage` gets random bytes."""

    def serve(conn: socket.socket) -> None:
        while True:
            command = _recv(conn, 1)[0]
            size = struct.unpack("<Q", _recv(conn, 8))[0]
            payload = _recv(conn, size)
            if command == workers.HELLO:
                body = bytes([version, minor, 0, 0]) + bytes(workers.CAPS_SIZE)
            elif command == workers.DEVICE_COUNT:
                body = struct.pack("<I", devices)
            elif command == workers.DEVICE_MEMORY and len(payload) == 4:
                index = struct.unpack("<I", payload)[0]
                body = struct.pack("<QQ", memory - index * GiB, memory)
            else:
                if then_garbage:
                    conn.sendall(os.urandom(4096))
                return
            conn.sendall(struct.pack("<Q", len(body)) + body)

    return serve


def garbage(conn: socket.socket) -> None:
    """Read a little, answer random bytes."""
    conn.recv(64)
    conn.sendall(os.urandom(4096))


@contextlib.contextmanager
def listening(serve: Serve) -> Iterator[str]:
    """A loopback server handing each connection to `serve`, one at a time; yields host:port."""
    server = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError, struct.error):
                serve(conn)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
