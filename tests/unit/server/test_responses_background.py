"""Background runs (responses_background), without a model: a generation stands in for the
scheduler's (the HTTP flows with a real model are in tests/integration/server/test_responses.py).

- A stored background response whose run is gone reads as failed, not queued forever: its
  server process gone, or its pid now another process's (a container's server restarts as the
  same pid), or this process under another Runs, or this Runs with no such run left; one whose
  run lives, or that finished, reads as it was stored.
- A run ends once: after its last event, a cancel or a stop changes nothing (no second last
  event, no other status), and a cancel never cuts its generation's close short.
- Each client has at most LOCALRUN_RESPONSES_BACKGROUND_MAX_PER_CLIENT runs queued or running.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from localrun.errors import ServerError, TooManyRequestsError
from localrun.server.responses import background as responses_background
from localrun.server.responses.background import TERMINAL, Run, Runs
from localrun.server.responses.events import Event, EventStream
from localrun.server.responses.store import ResponseStore, new_id


def record(status: str, owner: dict[str, Any] | None) -> dict[str, Any]:
    created = {"type": "response.created", "sequence_number": 0, "response": {}}
    response = {"id": "resp_" + "1" * 24, "status": status, "background": True, "error": None}
    return {"response": response, "owner": owner, "events": [created]}


def gone_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    return int(child.stdout)


def status_of(runs: Runs, stored: dict[str, Any]) -> str:
    return str(runs.settled(stored)["response"]["status"])


def test_a_run_whose_server_is_gone_is_failed(tmp_path: Path) -> None:
    runs = Runs(ResponseStore(tmp_path))
    found = runs.settled(record("in_progress", {"pid": gone_pid(), "started": 1.0}))
    assert found["response"]["status"] == "failed"
    assert "server stopped" in found["response"]["error"]["message"]
    last = found["events"][-1]
    assert last["type"] == "response.failed" and last["sequence_number"] == 1
    assert status_of(runs, record("queued", {"pid": 0})) == "failed"
    assert status_of(runs, record("queued", None)) == "failed"


def test_a_record_of_an_earlier_process_with_this_pid_is_failed(tmp_path: Path) -> None:
    """A server that crashed and came back as the same pid (pid 1 in a container): the record
    names this pid, but not this Runs; or this pid, but when another process of it started."""
    runs = Runs(ResponseStore(tmp_path))
    me = runs.owner
    assert me["pid"] == os.getpid()
    assert status_of(runs, record("in_progress", {**me, "instance": "0" * 16})) == "failed"
    assert status_of(runs, record("queued", {**me, "started": me["started"] - 60})) == "failed"
    # Another Runs in this process (an app made again) is not this one's either.
    other = Runs(ResponseStore(tmp_path))
    assert status_of(other, record("queued", me)) == "failed"


def test_a_reused_pid_of_another_process_is_failed(tmp_path: Path) -> None:
    """A record of another server sharing the folder reads as stored while that process runs;
    once its pid belongs to a process that started at another time, the record is failed."""
    runs = Runs(ResponseStore(tmp_path))
    parent = os.getppid()
    started = psutil.Process(parent).create_time()
    live = record("in_progress", {"pid": parent, "started": started, "instance": "0" * 16})
    assert runs.settled(live) == live
    reused = record("in_progress", {"pid": parent, "started": started - 5, "instance": "0" * 16})
    assert status_of(runs, reused) == "failed"
    assert status_of(runs, record("in_progress", {"pid": parent})) == "failed"


def test_a_finished_run_reads_as_stored(tmp_path: Path) -> None:
    runs = Runs(ResponseStore(tmp_path))
    done = record("completed", {"pid": gone_pid()})
    assert runs.settled(done) == done


# -- runs, with a stand-in generation ---------------------------------------------------------


class Generation:
    """What a run needs of server.generation.Generation: `finished`, and a close that takes a
    while (held until `gate` is set), shielded as the real one's is."""

    def __init__(self, held: bool) -> None:
        self.finished = False
        self.closing = asyncio.Event()
        self.gate = asyncio.Event()
        if not held:
            self.gate.set()
        self.closed = False

    async def close(self) -> None:
        self.finished = True
        self.closing.set()
        with anyio.CancelScope(shield=True):
            await self.gate.wait()
        self.closed = True


Body = Callable[[Any], AsyncGenerator[Event, None]]


class Harness:
    """A Runs over a store in `root`, its generations stand-ins."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.store = ResponseStore(root)
        self.runs = Runs(self.store)
        self.generations: list[Generation] = []
        self.held = True  # each generation's close waits for its gate

        async def start(ctx: Any, req: Any, whose: Any = None) -> Generation:
            self.generations.append(Generation(self.held))
            return self.generations[-1]

        monkeypatch.setattr(responses_background, "start_detached", start)

    async def launch(self, body: Callable[[EventStream], Body], client: str = "c") -> Run:
        obj = {"id": new_id(), "object": "response", "status": "in_progress", "output": []}
        stream = EventStream({**obj, "background": True, "error": None})

        def saved() -> dict[str, Any]:
            return {"response": stream.obj, "messages": [], "input_items": []}

        ctx: Any = None  # the stand-in start needs neither a context nor a request
        return await self.runs.launch(ctx, ctx, stream, saved, body(stream), client)

    async def closing(self) -> Generation:
        """The first run's generation, once its close has begun."""
        while not self.generations:
            await asyncio.sleep(0.001)
        await self.generations[0].closing.wait()
        return self.generations[0]


def failing_with_its_last_event(stream: EventStream) -> Body:
    """An answer that an error ends as answer_events ends one: its last event response.failed."""

    async def body(generation: Any) -> AsyncGenerator[Event, None]:
        for event in stream.delta("text", "Hello"):
            yield event
        yield stream.failed(ServerError("the runner failed"))

    return body


def raising(stream: EventStream) -> Body:
    """An answer whose events stop with an error, no last event logged yet."""

    async def body(generation: Any) -> AsyncGenerator[Event, None]:
        for event in stream.delta("text", "Hello"):
            yield event
        raise ServerError("the runner failed")

    return body


def ended_once(harness: Harness, run: Run, status: str) -> None:
    """The run's log and its stored record agree: at most one last event, at the end, and the
    response's status the one it says."""
    kinds = [kind for kind, _ in run.events]
    last = [kind for kind in kinds if kind in TERMINAL]
    assert last == ([f"response.{status}"] if status != "cancelled" else [])
    assert not last or kinds[-1] == last[0]
    assert run.snapshot()["status"] == status
    stored = harness.store.load(run.id)
    assert stored["response"]["status"] == status
    assert [event["type"] for event in stored["events"]] == kinds
    assert harness.generations[0].closed  # its close ran to its end


async def while_closing(harness: Harness, run: Run, stop: Awaitable[Any]) -> Any:
    """`stop` started while the run's generation is closing, then the close let finish."""
    generation = await asyncio.wait_for(harness.closing(), 5)
    stopping = asyncio.ensure_future(stop)
    await asyncio.sleep(0.05)  # the stop has reached the run
    generation.gate.set()
    return await asyncio.wait_for(stopping, 5)


@pytest.mark.parametrize("by", ["cancel", "server stopping"])
def test_after_its_last_event_a_run_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by: str
) -> None:
    """response.failed is logged, then the generation closes: a cancel or the server stopping
    meanwhile neither cancels it nor logs a second last event."""

    async def main() -> None:
        harness = Harness(tmp_path, monkeypatch)
        run = await harness.launch(failing_with_its_last_event)
        stop = run.cancel() if by == "cancel" else harness.runs.close()
        answer = await while_closing(harness, run, stop)
        await run.wait()
        if by == "cancel":
            assert answer["status"] == "failed"
        ended_once(harness, run, "failed")
        assert harness.runs.get(run.id) is None

    asyncio.run(main())


def test_a_cancel_does_not_cut_a_generations_close_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error before the last event, a cancel while the generation closes: the close runs to
    its end (asyncio's task.cancel() goes through anyio's shield), then the run is cancelled."""

    async def main() -> None:
        harness = Harness(tmp_path, monkeypatch)
        run = await harness.launch(raising)
        answer = await while_closing(harness, run, run.cancel())
        assert answer["status"] == "cancelled"
        ended_once(harness, run, "cancelled")

    asyncio.run(main())


def test_a_clients_background_runs_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past LOCALRUN_RESPONSES_BACKGROUND_MAX_PER_CLIENT queued or running, a client's next is
    refused (429, nothing stored); another client's is not, and one ending makes room."""
    monkeypatch.setenv("LOCALRUN_RESPONSES_BACKGROUND_MAX_PER_CLIENT", "1")

    async def main() -> None:
        harness = Harness(tmp_path, monkeypatch)
        harness.held = False
        # Each launch counts before its first await: `first` is still queued for the next two.
        first = await harness.launch(raising, client="a")
        with pytest.raises(TooManyRequestsError) as refused:
            await harness.launch(raising, client="a")
        assert "LOCALRUN_RESPONSES_BACKGROUND_MAX_PER_CLIENT" in refused.value.message
        assert len(list(harness.store.root.glob("resp_*.json"))) == 1
        other = await harness.launch(raising, client="b")
        await first.wait()
        await other.wait()
        assert first.snapshot()["status"] == "failed"
        again = await harness.launch(raising, client="a")
        await again.wait()

    asyncio.run(main())


def test_a_run_that_ended_unsaved_reads_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a run lives its record reads as stored (queued); once it has ended, a record of
    this Runs still unfinished (its last save failed) reads as failed."""

    async def main() -> None:
        harness = Harness(tmp_path, monkeypatch)
        run = await harness.launch(raising)
        queued = harness.store.load(run.id)
        assert harness.runs.settled(queued) == queued
        failing = ResponseStore(tmp_path / "a-file")
        (tmp_path / "a-file").write_text("not a folder")
        harness.runs.store = failing  # its end cannot be stored
        (await asyncio.wait_for(harness.closing(), 5)).gate.set()
        await run.wait()
        ended = harness.runs.settled(queued)
        assert ended["response"]["status"] == "failed"
        assert "could not be stored" in ended["response"]["error"]["message"]

    asyncio.run(main())


def test_a_record_whose_log_does_not_fit_is_kept_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its response is saved marked `events_lost`, so that no client resumes its stream from
    events made again (numbered otherwise)."""

    async def main() -> None:
        harness = Harness(tmp_path, monkeypatch)
        run = await harness.launch(failing_with_its_last_event)
        generation = await asyncio.wait_for(harness.closing(), 5)
        monkeypatch.setenv("LOCALRUN_RESPONSES_MAX_RECORD_BYTES", str(run.size))
        generation.gate.set()
        await run.wait()
        stored = harness.store.load(run.id)
        assert stored["response"]["status"] == "failed"
        assert "events" not in stored and stored["events_lost"] is True

    asyncio.run(main())
