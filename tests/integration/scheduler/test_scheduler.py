"""The scheduler with real runner subprocesses (`python -m localrun.worker`).

Content checks use the real llama.cpp engine on the tiny model; queueing, keep-alive, eviction,
cancellation and crash tests use the worker's scripted "fake" engine (it still reads the real
GGUF to plan the load), slowed down per token where a slot must stay busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from localrun.errors import (
    BadRequestError,
    BusyError,
    ContextOverflowError,
    InvalidParameterError,
    ModelLoadError,
    ModelNotFoundError,
    RunnerDiedError,
)
from localrun.recipes import create, modelfile
from localrun.request.genrequest import GenRequest
from localrun.scheduler import Scheduler, Stream
from localrun.store import names
from localrun.store.local import Store
from localrun.worker import process as runner_process
from localrun.worker import protocol

from support import PATIENCE_S

pytestmark = pytest.mark.model

T = TypeVar("T")
HI = [{"role": "user", "content": "hi"}]


def chat(sched: Scheduler, name: str, **fields: Any) -> Coroutine[Any, Any, Stream]:
    return sched.generate(GenRequest(name, **fields))


def complete(sched: Scheduler, name: str, **fields: Any) -> Coroutine[Any, Any, Stream]:
    return sched.generate(GenRequest(name, **fields))


# About 10 s per answer: a slot stays busy until the test closes the stream.
SLOW: dict[str, Any] = {"replies": ["abcdefghijklmnopqrstuvwxyz" * 20], "delay": 0.02}


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def models(store: Store, tmp_path: Path, tiny_model: Path, tiny_long_model: Path) -> Store:
    """Models "a", "b" and "c" in the store, all the tiny GGUF (trained on 256 tokens), and
    "long", the tiny GGUF trained on 2**24."""
    (tmp_path / "tiny.gguf").write_bytes(tiny_model.read_bytes())
    (tmp_path / "long.gguf").write_bytes(tiny_long_model.read_bytes())
    for name in ("a", "b", "c"):
        create.create(store, names.parse(name), modelfile.parse("FROM tiny.gguf\n"), tmp_path)
    create.create(store, names.parse("long"), modelfile.parse("FROM long.gguf\n"), tmp_path)
    return store


@contextlib.asynccontextmanager
async def scheduler(store: Store, **kwargs: Any) -> AsyncIterator[Scheduler]:
    sched = Scheduler(store, **kwargs)
    await sched.start()
    try:
        yield sched
    finally:
        await sched.close()
    assert children() == []


def fake(store: Store, options: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """A scheduler on the fake engine (replies "Hello!" unless `options` say otherwise)."""
    return scheduler(store, backend="fake", backend_options=options or {}, **kwargs)


def children() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


async def text(stream: Stream) -> str:
    return "".join([chunk.text async for chunk in stream])


async def until(check: Callable[[], bool], timeout: float = 10) -> None:
    """Wait (bounded) for `check` to hold."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def pid_of(sched: Scheduler, name: str) -> int:
    return next(m.pid for m in sched.running() if m.name == name)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def first_piece(stream: Stream) -> str:
    return (await anext(aiter(stream))).text


# -- real engine ------------------------------------------------------------------------------


def test_streams_from_the_real_engine_and_serves_concurrent_requests(models: Store) -> None:
    options = {"num_predict": 6, "temperature": 0, "seed": 1}

    async def main() -> None:
        async with scheduler(models, num_parallel=4) as sched:
            stream = await chat(sched, "a", messages=HI, options=options)
            answer = await text(stream)
            assert answer and stream.done_reason == "length"
            assert stream.timings.eval_tokens == 6 and stream.load_s > 0
            [shown] = sched.running()
            assert shown.name == "a:latest" and shown.busy == 0 and shown.pid > 0
            assert shown.context_length > 0 and shown.size > 0 and shown.processor
            assert shown.details["architecture"] == "llama"
            assert time.time() < shown.expires_at < time.time() + 301

            # 8 requests on 4 slots: all complete, each with the answer it gets alone.
            prompts = [f"{i} and {i * 7}" for i in range(8)]
            alone = [
                await text(await complete(sched, "a", prompt=p, options=options)) for p in prompts
            ]
            streams = await asyncio.gather(
                *(complete(sched, "a", prompt=p, options=options) for p in prompts)
            )
            answers = await asyncio.gather(*(text(s) for s in streams))
            assert answers == alone and len(set(answers)) > 1
            assert all(s.done_reason == "length" and s.timings.eval_tokens == 6 for s in streams)
            # Loaded already: the time to get a slot, as Ollama reports it (never 0).
            assert all(0 < s.load_s < 0.5 for s in streams)
            assert pid_of(sched, "a:latest") == shown.pid  # one runner served them all

            vectors = await sched.embed("a", ["one", "two"])
            assert len(vectors.vectors) == 2 and vectors.prompt_tokens > 0

    run(main())


def test_tokenize_counts_what_a_chat_would_evaluate(models: Store) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]

    async def main() -> None:
        async with scheduler(models, num_parallel=2) as sched:
            asked = GenRequest("a", messages=messages, system="Be brief.")
            counted = await sched.tokenize("a", request=asked)
            stream = await chat(
                sched, "a", messages=messages, system="Be brief.", options={"num_predict": 1}
            )
            await text(stream)
            t = stream.timings
            assert len(counted) == t.prompt_tokens + t.cached_tokens > 10
            plain = await sched.tokenize("a", text="What is", add_special=False)
            assert (await sched.detokenize("a", plain)).strip() == "What is"  # SPM: " What"
            with pytest.raises(BadRequestError, match="vocabulary"):
                await sched.detokenize("a", [10**9])
            # Any runner of the model serves it: no reload for another's load options.
            loaded = await sched.load("a", options={"num_ctx": 64})
            assert await sched.tokenize("a", text="What is", add_special=False) == plain
            assert pid_of(sched, "a:latest") == loaded.pid and sched.running()[0].busy == 0

    run(main())


def test_a_runner_killed_while_loading_gives_a_load_error(
    models: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Python's import timings give the runner something to say on stderr from its start.
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    caplog.set_level(logging.INFO, logger="localrun.runner")

    def said() -> bool:
        return any(r.name == "localrun.runner" for r in caplog.records)

    async def main() -> None:
        async with scheduler(models) as sched:
            loading = asyncio.ensure_future(sched.load("a"))
            await until(said)
            children()[0].kill()
            with pytest.raises(ModelLoadError) as failed:
                await loading
            # The message carries the exit signal; the runner's last stderr lines (native
            # backtraces, paths) go to the server log, not to the client.
            assert "SIGKILL" in failed.value.message and "a:latest" in failed.value.message
            assert "import time" not in failed.value.message
            assert any("import time" in r.getMessage() for r in caplog.records)
            assert sched.running() == []

    run(main())


# -- fake engine: content and errors ----------------------------------------------------------


def test_concurrent_requests_get_their_own_answers(models: Store) -> None:
    replies = [f"answer number {i}." for i in range(8)]

    async def main() -> None:
        async with fake(models, {"replies": replies, "delay": 0.005}, num_parallel=3) as sched:
            streams = await asyncio.gather(*(chat(sched, "a", messages=HI) for _ in range(8)))
            assert [s.load_s > 0 for s in streams].count(True) >= 1
            answers = await asyncio.gather(*(text(s) for s in streams))
            assert sorted(answers) == sorted(replies)
            assert all(s.done_reason == "stop" for s in streams)
            assert len(children()) == 1  # the first requests shared one load

    run(main())


def test_names_options_and_runner_errors_are_typed(models: Store) -> None:
    async def main() -> None:
        async with fake(models) as sched:
            with pytest.raises(ModelNotFoundError) as missing:
                await chat(sched, "nope", messages=HI)
            assert "nope" in str(missing.value) and "localrun pull" in (missing.value.hint or "")
            with pytest.raises(InvalidParameterError):
                await chat(sched, "a", messages=HI, options={"temprature": 1})
            # The fake engine's context is num_ctx tokens (characters).
            stream = await complete(sched, "a", prompt="x" * 500, options={"num_ctx": 64})
            with pytest.raises(ContextOverflowError):
                await text(stream)
            assert await text(await complete(sched, "a", prompt="ok", options={"num_ctx": 64}))
        # A load the worker refuses: its typed error, for every request that waited on it.
        async with fake(models, {"delay": -1}) as sched:
            results = await asyncio.gather(
                chat(sched, "a", messages=HI), chat(sched, "a", messages=HI), return_exceptions=True
            )
            assert all(isinstance(r, BadRequestError) for r in results), results
            assert results[0] is not results[1]
            assert sched.running() == []

    run(main())


# -- queueing ---------------------------------------------------------------------------------


def test_a_full_queue_refuses_at_once_and_aclose_frees_the_slot(models: Store) -> None:
    async def main() -> None:
        async with fake(models, SLOW, num_parallel=1, max_queue=1) as sched:
            first = await chat(sched, "a", messages=HI)
            assert await first_piece(first) == "a"
            waiting = asyncio.ensure_future(chat(sched, "a", messages=HI))
            await until(lambda: sched.waiting == 1)
            started = time.monotonic()
            with pytest.raises(BusyError) as busy:
                await chat(sched, "a", messages=HI)
            assert time.monotonic() - started < 1 and busy.value.retry_after >= 1
            assert sched.running()[0].busy == 1

            # The client of the first request goes away: its slot goes to the waiting one.
            await first.aclose()
            assert first.done_reason == "cancelled"
            second = await asyncio.wait_for(waiting, 5)
            assert await first_piece(second) == "a"
            await second.aclose()
            third = await chat(sched, "a", messages=HI, options={"num_predict": 3})
            assert await text(third) == "abc" and third.done_reason == "length"

    run(main())


def test_a_freed_slot_goes_to_the_oldest_waiting_request(models: Store) -> None:
    async def main() -> None:
        async with fake(models, SLOW, num_parallel=1) as sched:
            holder = await chat(sched, "a", messages=HI)
            await first_piece(holder)
            served: list[str] = []

            async def ask(label: str, after: int = 0) -> None:
                await until(lambda: sched.waiting == after)
                stream = await chat(sched, "a", messages=HI, options={"num_predict": 2})
                served.append(label)
                assert await text(stream) == "ab"

            async def free_the_holder() -> None:
                await until(lambda: sched.waiting == 3)
                await holder.aclose()

            # In line: "first", then this test's load(), then "second".
            first = asyncio.ensure_future(ask("first"))
            await until(lambda: sched.waiting == 1)
            second = asyncio.ensure_future(ask("second", after=2))
            closer = asyncio.ensure_future(free_the_holder())
            await sched.load("a")
            # load() freed its slot as it returned: it is already "second"'s, so nothing
            # arriving from now on can take it.
            assert sched.waiting == 0 and sched.running()[0].busy == 1
            late = asyncio.ensure_future(ask("late"))
            await asyncio.gather(first, second, closer, late)
            assert served == ["first", "second", "late"]

    run(main())


def test_a_dropped_stream_releases_its_slot(models: Store) -> None:
    async def main() -> None:
        async with fake(models, SLOW, num_parallel=1) as sched:
            stream = await chat(sched, "a", messages=HI)
            await first_piece(stream)
            del stream  # never closed: __del__ still cancels it
            nxt = await asyncio.wait_for(
                chat(sched, "a", messages=HI, options={"num_predict": 2}), 5
            )
            assert await text(nxt) == "ab"

    run(main())


# -- keep-alive and eviction ------------------------------------------------------------------


def test_keep_alive_expires_and_zero_unloads_at_once(models: Store) -> None:
    async def main() -> None:
        async with fake(models) as sched:
            await text(await chat(sched, "a", messages=HI, keep_alive=0.3))
            [shown] = sched.running()
            assert shown.expires_at <= time.time() + 0.3
            await until(lambda: not sched.running(), timeout=5)
            await until(lambda: gone(shown.pid))

            stream = await chat(sched, "a", messages=HI, keep_alive=0)
            pid = pid_of(sched, "a:latest")
            await text(stream)
            await until(lambda: gone(pid))
            assert sched.running() == []

            forever = await sched.load("b", keep_alive=math.inf)
            assert forever.expires_at == math.inf
            assert sched.running()[0].expires_at == math.inf
            assert await sched.unload("b") and gone(forever.pid)
            assert not await sched.unload("b")

    run(main())


def test_least_recently_used_idle_models_are_evicted(models: Store) -> None:
    async def main() -> None:
        async with fake(models, max_loaded=1) as sched:
            a = await sched.load("a")
            b = await sched.load("b")
            assert [m.name for m in sched.running()] == ["b:latest"] and gone(a.pid)
            assert b.pid != a.pid
        async with fake(models, max_loaded=2) as sched:
            await sched.load("a")
            b = await sched.load("b")
            await text(await chat(sched, "a", messages=HI))  # a is now the most recent
            await sched.load("c")
            assert sorted(m.name for m in sched.running()) == ["a:latest", "c:latest"]
            assert gone(b.pid)
        # The memory budget evicts too: here it holds one model (the tiny one plans ~11 MB).
        async with fake(models, memory_budget=20_000_000) as sched:
            a = await sched.load("a")
            await sched.load("b")
            assert [m.name for m in sched.running()] == ["b:latest"]
            await until(lambda: gone(a.pid))

    run(main())


def test_a_busy_model_is_not_evicted_the_request_waits(models: Store) -> None:
    async def main() -> None:
        async with fake(models, SLOW, max_loaded=1) as sched:
            busy = await chat(sched, "a", messages=HI)
            await first_piece(busy)
            other = asyncio.ensure_future(chat(sched, "b", messages=HI, options={"num_predict": 1}))
            await asyncio.sleep(0.3)
            assert not other.done() and [m.name for m in sched.running()] == ["a:latest"]
            await busy.aclose()
            assert await text(await asyncio.wait_for(other, 10)) == "a"
            assert [m.name for m in sched.running()] == ["b:latest"]

    run(main())


def test_other_load_options_reload_once_idle(models: Store) -> None:
    async def main() -> None:
        async with fake(models) as sched:
            first = await sched.load("a", options={"num_ctx": 128})
            assert first.context_length == 128
            same = await sched.load("a", options={"num_ctx": 128, "temperature": 0.1})
            assert same.pid == first.pid == pid_of(sched, "a:latest")
            in_force = await sched.load("a", options={"num_ctx": first.context_length})
            assert in_force.pid == first.pid  # the value in force never reloads
            # A smaller context is answered by the larger runner (held to its own context).
            smaller = await sched.load("a", options={"num_ctx": 64})
            assert smaller.pid == first.pid and smaller.context_length == 128
            again = await sched.load("a", options={"num_ctx": 128, "num_batch": 64})
            assert again.pid != first.pid  # another load option reloads
            assert gone(first.pid) and len(sched.running()) == 1
            # No load option: the model's own values, not those another request loaded with.
            plain = await chat(sched, "a", messages=HI)
            await text(plain)
            own = sched.running()[0]
            assert own.pid != again.pid and own.context_length > 128
            asked = await sched.load("a", options={"num_ctx": own.context_length})
            assert asked.pid == own.pid  # asking for the model's own value in force: no reload
            await text(await chat(sched, "a", messages=HI))
            assert pid_of(sched, "a:latest") == own.pid

    run(main())


# -- crashes and shutdown ---------------------------------------------------------------------


def test_a_killed_runner_fails_only_its_requests(models: Store) -> None:
    async def main() -> None:
        async with fake(models, SLOW) as sched:
            victim = await chat(sched, "a", messages=HI)
            bystander = await chat(sched, "b", messages=HI, options={"num_predict": 30})
            await first_piece(victim)
            pid = pid_of(sched, "a:latest")
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(RunnerDiedError) as died:
                await text(victim)
            assert "SIGKILL" in died.value.message and "server log" in (died.value.hint or "")
            assert await text(bystander) == SLOW["replies"][0][:30]
            await until(lambda: "a:latest" not in [m.name for m in sched.running()])
            fresh = await chat(sched, "a", messages=HI, options={"num_predict": 2})
            assert await text(fresh) == "ab" and pid_of(sched, "a:latest") != pid

    run(main())


def test_close_stops_busy_runners_and_leaves_no_children(models: Store) -> None:
    async def main() -> None:
        sched = Scheduler(models, backend="fake", backend_options=SLOW)
        await sched.start()
        streams = [await chat(sched, n, messages=HI) for n in ("a", "b")]
        await asyncio.gather(*(first_piece(s) for s in streams))
        assert len(children()) == 2
        started = time.monotonic()
        await sched.close()
        assert time.monotonic() - started < 5
        assert children() == []
        for stream in streams:  # the answers end (cancelled or with the shutdown error)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(text(stream), 5)
        with pytest.raises(Exception, match="shutting down"):
            await chat(sched, "a", messages=HI)

    run(main())


@pytest.mark.slow
def test_the_packaged_model_is_imported_in_a_child_process(models: Store) -> None:
    async def main() -> None:
        async with fake(models) as sched:
            stream = await chat(sched, "smollm2", messages=HI)
            assert await text(stream) == "Hello!"
            assert [m.name for m in sched.running()] == ["smollm2:135m"]

    run(main(), timeout=PATIENCE_S)


# -- wedged runners, embeddings, oversized contexts -------------------------------------------


def test_a_runner_that_gets_to_a_cancel_late_but_answers_others_is_not_killed(
    models: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen on a loaded machine: a runner killed for not ending a cancelled request within
    10 s while it served another client, who lost the answer. Busy is not wedged: the fake
    honours the cancel after 1.5 s (three times the wait), streaming the other slot meanwhile."""
    monkeypatch.setattr(runner_process, "CANCEL_WAIT_S", 0.5)
    options = {"delay": 0.05, "deaf": 1.5, "replies": ["x" * 100]}

    async def main() -> None:
        async with fake(models, options, num_parallel=2) as sched:
            leaving = await chat(sched, "a", messages=HI)
            staying = await chat(sched, "a", messages=HI)
            assert await first_piece(leaving) == "x"
            pid = pid_of(sched, "a:latest")
            await leaving.aclose()
            assert leaving.done_reason == "cancelled"
            assert await text(staying) == "x" * 100  # whole, on the same runner
            assert pid_of(sched, "a:latest") == pid

    run(main())


# The fake engine stops after its first piece: no more pieces, cancels ignored, no final event.
HANG: dict[str, Any] = {"hang": True}


def test_a_runner_that_ignores_a_cancel_is_killed(
    models: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_process, "CANCEL_WAIT_S", 0.5)

    async def main() -> None:
        async with fake(models, HANG, num_parallel=2) as sched:
            stuck = await chat(sched, "a", messages=HI)
            assert await first_piece(stuck) == "H"
            other = await chat(sched, "a", messages=HI)  # on the same runner, never answered
            pid = pid_of(sched, "a:latest")
            started = time.monotonic()
            await stuck.aclose()
            assert time.monotonic() - started < 3 and stuck.done_reason == "cancelled"
            with pytest.raises(RunnerDiedError) as died:
                await asyncio.wait_for(text(other), 5)
            assert "sent nothing for 0.5s after a cancel" in died.value.message
            assert "out of memory" not in died.value.message
            await until(lambda: gone(pid))
            fresh = await chat(sched, "a", messages=HI)  # a new runner answers
            assert await first_piece(fresh) == "H" and pid_of(sched, "a:latest") != pid

    run(main())


def test_unload_cancels_a_busy_model_and_kills_it_when_wedged(
    models: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_process, "CANCEL_WAIT_S", 0.5)

    async def main() -> None:
        async with fake(models, SLOW) as sched:
            busy = await chat(sched, "a", messages=HI)
            await first_piece(busy)
            pid = pid_of(sched, "a:latest")
            started = time.monotonic()
            assert await sched.unload("a")
            assert time.monotonic() - started < 3 and gone(pid) and sched.running() == []
            await text(busy)
            assert busy.done_reason == "cancelled"
        async with fake(models, HANG) as sched:
            stuck = await chat(sched, "a", messages=HI)
            await first_piece(stuck)
            pid = pid_of(sched, "a:latest")
            started = time.monotonic()
            assert await sched.unload("a")
            assert time.monotonic() - started < 3 and gone(pid) and sched.running() == []
            with pytest.raises(RunnerDiedError, match="still busy"):
                await text(stuck)

    run(main())


def test_embeddings_come_in_groups_and_an_event_over_the_limit_costs_only_its_request(
    models: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = [f"text number {i}" for i in range(40)]

    async def main() -> None:
        # 40 vectors of 4096 values are about 3.4 MB of JSON: more than one line may hold.
        monkeypatch.setattr(protocol, "LINE_LIMIT", 2 * 1024 * 1024)
        async with fake(models, {"dims": 4096}) as sched:
            found = await sched.embed("a", inputs)
            assert len(found.vectors) == 40 and {len(v) for v in found.vectors} == {4096}
            last = await sched.embed("a", inputs[-1:])
            assert found.vectors[-1] == last.vectors[0]  # in order
            assert found.prompt_tokens == sum(len(t) for t in inputs)
        # One vector is more than a line may hold: the runner sends its request's error in
        # place of the event (the scheduler would kill a runner for a longer line), and serves
        # the next request.
        monkeypatch.setattr(protocol, "LINE_LIMIT", 64 * 1024)
        async with fake(models, {"dims": 4096}) as sched:
            await sched.load("a")
            pid = pid_of(sched, "a:latest")
            with pytest.raises(BadRequestError) as refused:
                await sched.embed("a", ["x"])
            assert "more than a runner sends in one event" in refused.value.message
            answer = await chat(sched, "a", messages=HI, options={"num_predict": 2})
            assert await text(answer) == "He" and pid_of(sched, "a:latest") == pid

    run(main())


def test_a_cancelled_embedding_frees_its_slot(models: Store) -> None:
    async def main() -> None:
        # 0.02 s per input: 2000 inputs would hold the only slot for 40 s.
        async with fake(models, {"delay": 0.02}, num_parallel=1) as sched:
            await sched.load("a")
            embedding = asyncio.ensure_future(sched.embed("a", ["x"] * 2000))
            await until(lambda: sched.running()[0].busy == 1)
            await asyncio.sleep(0.2)
            embedding.cancel()
            nxt = await asyncio.wait_for(
                chat(sched, "a", messages=HI, options={"num_predict": 2}), 3
            )
            assert await text(nxt) == "He"

    run(main())


def test_a_context_that_cannot_fit_leaves_the_loaded_runner_alone(models: Store) -> None:
    async def main() -> None:
        async with fake(models, memory_budget=1_000_000_000) as sched:
            loaded = await sched.load("long")
            started = time.monotonic()
            with pytest.raises(InvalidParameterError) as refused:
                await chat(sched, "long", messages=HI, options={"num_ctx": 2**24})
            assert time.monotonic() - started < 1 and "num_ctx" in refused.value.message
            assert pid_of(sched, "long:latest") == loaded.pid
            assert await text(await chat(sched, "long", messages=HI)) == "Hello!"
            assert pid_of(sched, "long:latest") == loaded.pid
            # A larger context that fits still reloads.
            bigger = await sched.load("long", options={"num_ctx": loaded.context_length * 2})
            assert bigger.pid != loaded.pid

    run(main())


def test_num_ctx_is_held_to_the_context_the_model_was_trained_on(models: Store) -> None:
    """Ollama's rule: a num_ctx past the trained context loads the trained one (SmolLM2 at
    65536 made a 6 GB runner), and asking for it again does not reload."""

    async def main() -> None:
        async with fake(models) as sched:
            held = await sched.load("a", options={"num_ctx": 65536})
            assert held.context_length == 256 and held.size < 64 * 1024**2
            again = await sched.load("a", options={"num_ctx": 1 << 24})
            trained = await sched.load("a", options={"num_ctx": 256})
            assert again.pid == trained.pid == held.pid

    run(main())


def _planned(store: Store, name: str, num_ctx: int, slots: int) -> int:
    from localrun.hardware import fit
    from localrun.model import stored as model_mod

    parsed = names.parse(name)
    found = model_mod.load(store, parsed, store.read_manifest(parsed))
    return fit.footprint(found).bytes({"num_ctx": num_ctx}, slots)


def test_a_load_counts_what_the_busy_models_hold(models: Store) -> None:
    """A model is planned at the context it asks for before its runner starts: one that fits
    only without a busy model waits for it (then unloads it); one that cannot fit at all is a
    400 at once, with no runner started."""
    num_ctx, slots = 1 << 16, 2
    big = _planned(models, "long", num_ctx, slots)
    small = _planned(models, "a", 256, slots)
    assert big > 20 * small

    async def main() -> None:
        async with fake(models, SLOW, num_parallel=slots, memory_budget=big + small // 2) as sched:
            busy = await chat(sched, "a", messages=HI)
            await first_piece(busy)
            started = len(children())
            with pytest.raises(InvalidParameterError) as refused:
                await chat(sched, "long", messages=HI, options={"num_ctx": 4 * num_ctx})
            assert "num_ctx 262144" in refused.value.message and len(children()) == started
            waiting = asyncio.ensure_future(sched.load("long", options={"num_ctx": num_ctx}))
            await asyncio.sleep(0.5)
            assert not waiting.done() and [m.name for m in sched.running()] == ["a:latest"]
            await busy.aclose()
            loaded = await asyncio.wait_for(waiting, 10)
            assert [m.name for m in sched.running()] == ["long:latest"]
            assert loaded.context_length == num_ctx and loaded.size == big

    run(main())


def _unstored_target(weights: int) -> Any:
    """A Target for a budget's sums: a model whose files are never read (no runner starts)."""
    from localrun.model.stored import Model
    from localrun.scheduler.targets import Target
    from localrun.store.manifest import MEDIA_CONFIG, Layer, Manifest

    digest = "sha256:" + "0" * 64
    manifest = Manifest(Layer(MEDIA_CONFIG, digest, 2))
    model = Model(names.parse("m:latest"), digest, manifest, {}, Path("/nonexistent.gguf"))
    return Target("m:latest", model, weights)


def test_unloading_gives_back_what_a_runner_holds_but_its_mapped_weights() -> None:
    """The weights a runner maps are page cache, which the kernel already counts as available:
    counting them again as what unloading frees would let a model load over another's."""
    from localrun.scheduler.budget import Budget
    from localrun.scheduler.runners import Runner
    from localrun.worker.protocol import ReadyInfo

    gib = 1024**3

    async def main() -> None:
        target = _unstored_target(8 * gib)
        runner = Runner(target, {}, 1, 60.0)
        runner.info = ReadyInfo(
            n_ctx=2048, n_ctx_train=32768, slots=1, size=9 * gib, size_vram=0, gpu_layers=0,
            layers=31, processor="100% CPU", load_s=0.1, runtime=0,
        )  # fmt: skip
        runner.state = "ready"
        budget = Budget(None)
        alone = budget.available([])
        assert abs(budget.available([runner]) - (alone + gib)) < 256 * 1024**2
        unmapped = Runner(target, {"use_mmap": False}, 1, 60.0)
        unmapped.info, unmapped.state = runner.info, "ready"
        assert abs(budget.available([unmapped]) - (alone + 9 * gib)) < 256 * 1024**2

    asyncio.run(main())


def test_the_gpu_runtime_is_not_scaled_with_the_context() -> None:
    """A runner's size holds the GPU runtime (600 MiB on CUDA), which does not grow with
    num_ctx: a four times larger context costs four times the KV cache, not the runtime."""
    from localrun.scheduler.budget import Budget
    from localrun.scheduler.runners import Runner
    from localrun.worker.protocol import ReadyInfo

    mib = 1024**2

    async def main() -> None:
        target = _unstored_target(100 * mib)
        runner = Runner(target, {}, 1, 60.0)
        runner.info = ReadyInfo(
            n_ctx=2048, n_ctx_train=32768, slots=1, size=(100 + 50 + 600) * mib,
            size_vram=(100 + 50 + 600) * mib, gpu_layers=31, layers=31,
            processor="100% GPU", load_s=0.1, runtime=600 * mib,
        )  # fmt: skip
        budget = Budget(limit=2 * 1024 * mib)
        budget.check_fits(runner, target, {"num_ctx": 4 * 2048}, [runner])  # 900 MiB: fits
        with pytest.raises(InvalidParameterError):
            budget.check_fits(runner, target, {"num_ctx": 128 * 2048}, [runner])

    asyncio.run(main())


def test_with_workers_a_model_larger_than_this_machine_is_left_to_its_runner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Split across RPC workers, only a share of a model stays here: the scheduler's estimate
    (the whole model) is no reason to refuse it, and the runner, which asks the workers and
    plans the split, refuses what does not fit (tests/system/test_workers.py)."""
    from localrun.errors import ModelLoadError
    from localrun.scheduler.budget import Budget

    gib = 1024**3
    target = _unstored_target(40 * gib)
    budget = Budget(limit=8 * gib)
    assert budget.estimate(target, {}, 1, []) == 40 * gib
    with pytest.raises((InvalidParameterError, ModelLoadError)):
        budget.check_alone(target, 40 * gib, {}, 1, [])
    monkeypatch.setenv("LOCALRUN_WORKERS", "10.0.0.2:50052,10.0.0.3:50052")
    estimate = budget.estimate(target, {}, 1, [])
    assert estimate == 8 * gib
    budget.check_alone(target, estimate, {}, 1, [])
