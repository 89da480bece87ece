"""RPC workers (`localrun worker`, llama.cpp's rpc-server) asked what they offer, in bounded time.

Before a runner hands an endpoint to llama.cpp's RPC client, which aborts its process on any
answer it does not expect, the endpoint is asked here in Python: the HELLO of llama.cpp's RPC
protocol (its version), the number of devices, and each device's memory. A worker that is down,
slow, speaks another version or sends anything else is left out with one line that says why.
A worker serves one client at a time: one that a runner holds answers no probe until it is free.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass

from localrun.errors import WorkerError

# llama.cpp's ggml-rpc.h and ggml-rpc.cpp (protocol 7): the commands and sizes asked here.
PROTOCOL_MAJOR, PROTOCOL_MINOR = 7, 0  # llama.cpp refuses another major or a newer minor
HELLO, DEVICE_COUNT, DEVICE_MEMORY = 14, 15, 11
CAPS_SIZE = 24  # rpc_msg_hello_req: the transport's capabilities, all zero (plain TCP)
MAX_DEVICES = 16  # GGML_RPC_MAX_SERVERS: more devices than that is not a worker's answer
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Device:
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class Worker:
    """A worker that answered: its endpoint, protocol version and devices."""

    endpoint: str
    version: str
    devices: tuple[Device, ...]

    @property
    def free_bytes(self) -> int:
        return sum(d.free_bytes for d in self.devices)


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


def address(endpoint: str) -> tuple[str, int]:
    """`endpoint` as (IPv4 address, port): its host looked up, or as named where it is not found.

    UnicodeError: a name the lookup cannot encode (an empty or overlong label).
    """
    host, port = split_endpoint(endpoint)
    with contextlib.suppress(OSError, UnicodeError):
        host = socket.gethostbyname(host)
    return host, port


def probe(endpoint: str, timeout_s: float = PROBE_TIMEOUT_S) -> Worker:
    """Ask the worker at `endpoint` its version and devices; WorkerError says why it cannot."""
    host, port = split_endpoint(endpoint)
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            major, minor, patch = _hello(sock, deadline, endpoint)
            count = _unpack("<I", _call(sock, DEVICE_COUNT, b"", 4, deadline, endpoint))[0]
            if not 0 < count <= MAX_DEVICES:
                raise _garbage(endpoint, f"it reports {count} devices")
            devices = []
            for index in range(count):
                body = _call(sock, DEVICE_MEMORY, struct.pack("<I", index), 16, deadline, endpoint)
                free, total = _unpack("<QQ", body)
                devices.append(Device(min(free, total), total))
    except TimeoutError:
        raise WorkerError(
            f"worker {endpoint} did not answer within {timeout_s:g} s",
            hint="it may be serving another localrun, or be stopped; `localrun worker` runs one",
        ) from None
    except (OSError, UnicodeError) as exc:  # UnicodeError: a name the lookup cannot encode
        raise WorkerError(
            f"worker {endpoint} cannot be reached "
            f"({exc.strerror if isinstance(exc, OSError) and exc.strerror else exc})",
            hint="start it there with `localrun worker`, or take it out of --workers",
        ) from None
    return Worker(endpoint, f"{major}.{minor}.{patch}", tuple(devices))


def survey(endpoints: tuple[str, ...], timeout_s: float = PROBE_TIMEOUT_S) -> tuple[
    list[Worker], list[str]
]:  # fmt: skip
    """The workers that answered, in the order given, and a line for each that did not.

    Two names of one worker (localhost and 127.0.0.1) count once: a second client would wait
    for the first.
    """
    found, problems, seen = [], [], set()
    for endpoint in endpoints:
        host, port = address(endpoint)
        if (host, port) in seen:
            problems.append(f"worker {endpoint} is named twice: it serves once")
            continue
        seen.add((host, port))
        try:
            found.append(probe(endpoint, timeout_s))
        except WorkerError as exc:
            problems.append(f"{exc}: loading without it")
    return found, problems


def _hello(sock: socket.socket, deadline: float, endpoint: str) -> tuple[int, int, int]:
    body = _call(sock, HELLO, bytes(CAPS_SIZE), 4 + CAPS_SIZE, deadline, endpoint)
    major, minor, patch = body[0], body[1], body[2]
    if major != PROTOCOL_MAJOR or minor > PROTOCOL_MINOR:
        raise WorkerError(
            f"worker {endpoint} speaks llama.cpp RPC {major}.{minor}.{patch}, this llama.cpp "
            f"speaks {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}",
            hint="run the same localrun and llama-cpp-python version on every machine",
        )
    return major, minor, patch


def _call(
    sock: socket.socket, command: int, payload: bytes, size: int, deadline: float, endpoint: str
) -> bytes:
    """Send one command; its answer must be exactly `size` bytes."""
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    sock.sendall(bytes([command]) + struct.pack("<Q", len(payload)) + payload)
    length = _unpack("<Q", _read(sock, 8, deadline, endpoint))[0]
    if length != size:
        raise _garbage(endpoint, f"it answered {length} bytes where {size} were due")
    return _read(sock, size, deadline, endpoint)


def _read(sock: socket.socket, size: int, deadline: float, endpoint: str) -> bytes:
    data = b""
    while len(data) < size:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise _garbage(endpoint, "it closed the connection")
        data += chunk
    return data


def _unpack(layout: str, data: bytes) -> tuple[int, ...]:
    return struct.unpack(layout, data)


def _garbage(endpoint: str, why: str) -> WorkerError:
    return WorkerError(
        f"worker {endpoint} does not speak llama.cpp's RPC protocol ({why})",
        hint="--workers must name `localrun worker`s (or llama.cpp rpc-servers) only",
    )
