"""RPC workers asked what they offer (hardware.workers) against servers on loopback that answer
as llama.cpp's rpc-server does, or wrongly: one line and bounded time for each wrong answer. The
real workers are in tests/system/test_workers.py."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from localrun.errors import WorkerError
from localrun.hardware import workers
from localrun.hardware.workers import Device, Worker

from support.rpc import GiB, Serve, garbage, listening, worker_like


@pytest.fixture
def listener() -> Iterator[Callable[[Serve], str]]:
    """Loopback servers (support.rpc.listening) for the test: each call gives an endpoint."""
    with contextlib.ExitStack() as stack:
        yield lambda serve: stack.enter_context(listening(serve))


def test_a_worker_that_answers_as_llama_cpp_does_reports_its_devices(listener) -> None:
    endpoint = listener(worker_like(devices=2, memory=8 * GiB))
    found = workers.probe(endpoint)
    assert found == Worker(endpoint, "7.0.0", (Device(8 * GiB, 8 * GiB), Device(7 * GiB, 8 * GiB)))
    assert found.free_bytes == 15 * GiB


def _silent(conn: socket.socket) -> None:
    time.sleep(2)


def _closes(conn: socket.socket) -> None:
    conn.recv(100)


@pytest.mark.parametrize(
    ("serve", "said"),
    [
        (garbage, "does not speak llama.cpp's RPC protocol"),
        (_closes, "does not speak llama.cpp's RPC protocol (it closed the connection)"),
        (worker_like(version=3), "speaks llama.cpp RPC 3.0.0, this llama.cpp speaks 7.0"),
        (worker_like(minor=1), "speaks llama.cpp RPC 7.1.0, this llama.cpp speaks 7.0"),
        (worker_like(devices=0), "(it reports 0 devices)"),
        (worker_like(devices=5000), "(it reports 5000 devices)"),
        (_silent, "did not answer within 0.5 s"),
    ],
    ids=["garbage", "closes", "old-version", "newer-minor", "no-device", "too-many", "silent"],
)
def test_a_worker_that_answers_otherwise_is_refused_in_one_line_in_bounded_time(
    listener, serve: Callable[[socket.socket], None], said: str
) -> None:
    endpoint = listener(serve)
    started = time.monotonic()
    with pytest.raises(WorkerError) as caught:
        workers.probe(endpoint, timeout_s=0.5)
    assert time.monotonic() - started < 2
    assert said in caught.value.message and endpoint in caught.value.message
    assert "\n" not in caught.value.message and caught.value.hint


def test_a_survey_keeps_the_workers_that_answer_and_says_why_of_the_rest(listener) -> None:
    good = listener(worker_like())
    bad = listener(garbage)
    with socket.create_server(("127.0.0.1", 0)) as closed:
        down = f"127.0.0.1:{closed.getsockname()[1]}"
    again = good.replace("127.0.0.1", "localhost")  # the same worker by another name
    found, problems = workers.survey((good, bad, down, again), timeout_s=1)
    assert [w.endpoint for w in found] == [good]
    assert len(problems) == 3 and all(p.endswith(": loading without it") for p in problems[:2])
    assert "cannot be reached" in problems[1] and down in problems[1]
    assert problems[2] == f"worker {again} is named twice: it serves once"
