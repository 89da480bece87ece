"""The decode thread count under load (engine.threads): fewer threads while other processes
keep cores busy, back when they stop, never changed when num_thread was set."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from benchlib.load import BUSY_LOOP

from localrun.engine.batch import BatchEngine
from localrun.engine.threads import INTERVAL_S, Governor
from localrun.engine.types import LoadOptions, SamplingOptions

from support import PATIENCE_S


class Clock:
    """CPU seconds and wall time made up by the test: what the system and this process
    used (the layer above is the OS's accounting)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.busy = 0.0
        self.mine = 0.0

    def tick(self, seconds: float, others: float, mine: float) -> None:
        self.now += seconds
        self.busy += (others + mine) * seconds
        self.mine += mine * seconds

    def sample(self) -> tuple[float, float]:
        return self.busy, self.mine


def _governor(clock: Clock, most: int = 2, logical: int = 2, adaptive: bool = True) -> Governor:
    return Governor(
        most, adaptive=adaptive, logical=logical, sample=clock.sample, clock=lambda: clock.now
    )


def test_a_busy_core_takes_a_thread_at_once_and_gives_it_back_slowly() -> None:
    clock = Clock()
    gov = _governor(clock)
    assert gov.current() == 2  # the first look has nothing to compare with
    clock.tick(INTERVAL_S, others=1.0, mine=2.0)
    assert gov.current() == 1  # one core busy elsewhere: one thread, at once
    clock.tick(INTERVAL_S / 2, others=0.0, mine=1.0)
    assert gov.current() == 1  # not looked at again within the interval
    clock.tick(INTERVAL_S, others=0.0, mine=1.0)
    assert gov.current() == 1  # the first quiet look only allows it
    clock.tick(INTERVAL_S, others=0.0, mine=1.0)
    assert gov.current() == 2  # the second one takes it back
    clock.tick(INTERVAL_S, others=0.2, mine=2.0)
    assert gov.current() == 2  # a light load leaves both


def test_what_others_did_while_the_engine_slept_is_not_held_against_it() -> None:
    """Another runner answering, or the client working, between two requests: the first look
    after a pause starts a new window; a load still there is seen at the next one."""
    clock = Clock()
    gov = _governor(clock)
    gov.current()
    clock.tick(INTERVAL_S, others=0.0, mine=2.0)
    assert gov.current() == 2
    gov.pause()
    clock.tick(5.0, others=2.0, mine=0.0)  # both cores taken while it slept, then freed
    assert gov.current() == 2  # the window spanning the pause is not judged
    clock.tick(INTERVAL_S, others=0.0, mine=2.0)
    assert gov.current() == 2
    gov.pause()
    clock.tick(5.0, others=1.0, mine=0.0)  # a load that began while it slept and goes on
    assert gov.current() == 2
    clock.tick(INTERVAL_S, others=1.0, mine=1.0)
    assert gov.current() == 1  # seen at the next look
    gov.pause()
    clock.tick(5.0, others=0.0, mine=0.0)
    assert gov.current() == 1  # the count is kept over a pause
    clock.tick(INTERVAL_S, others=0.0, mine=1.0)
    assert gov.current() == 1  # and taken back as ever: two quiet looks
    clock.tick(INTERVAL_S, others=0.0, mine=1.0)
    assert gov.current() == 2


def test_cores_are_counted_by_physical_core_and_never_below_one() -> None:
    clock = Clock()
    gov = _governor(clock, most=4, logical=8)  # 4 cores, 8 hyper-threads
    gov.current()
    clock.tick(INTERVAL_S, others=2.0, mine=4.0)  # two hyper-threads busy: one core's worth
    assert gov.current() == 3
    clock.tick(INTERVAL_S, others=8.0, mine=0.5)
    assert gov.current() == 1


def test_num_thread_set_is_kept() -> None:
    clock = Clock()
    gov = _governor(clock, adaptive=False)
    gov.current()
    clock.tick(INTERVAL_S, others=2.0, mine=2.0)
    assert gov.current() == 2


def _loops(count: int, seconds: float) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(s=seconds)]) for _ in range(count)
    ]


def _stop(loops: list[subprocess.Popen[bytes]]) -> None:
    for process in loops:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_a_real_busy_loop_is_seen() -> None:
    import psutil

    cores = psutil.cpu_count(logical=True) or 1
    if cores < 2:
        pytest.skip("one core: there is nothing to give up")
    gov = Governor(cores, adaptive=True, logical=cores)
    busy = _loops(cores - 1, PATIENCE_S)
    try:
        deadline = time.monotonic() + PATIENCE_S
        while gov.current() != 1:
            assert time.monotonic() < deadline, "the busy cores were not seen"
            time.sleep(INTERVAL_S / 2)
    finally:
        _stop(busy)
    # The cores come back once they are free: the wait counts only the time the machine was
    # quiet (less than half a core used by anything), as on a shared machine other work may
    # hold them for as long as it likes, and the governor is right to leave them then.
    psutil.cpu_percent()
    quiet_s, started = 0.0, time.monotonic()
    while gov.current() != cores:
        assert quiet_s < 10, "the cores were not taken back"
        if quiet_s == 0 and time.monotonic() - started > 60:
            pytest.skip("other work kept the cores busy for a minute: nothing to take back")
        time.sleep(INTERVAL_S / 2)
        if psutil.cpu_percent() * cores / 100 < 0.5:
            quiet_s += INTERVAL_S / 2


@pytest.mark.model
@pytest.mark.slow
def test_the_engine_starts_an_answer_with_the_cores_left_now(smollm2_path: str) -> None:
    """The real engine, the OS's own accounting: every core kept busy while the engine has
    nothing to do (a second runner answering) does not cost the next answer a thread; a load
    that stays is seen while it answers."""
    import psutil

    cores = psutil.cpu_count(logical=True) or 1
    physical = psutil.cpu_count(logical=False) or cores
    if physical < 2:
        pytest.skip("one core: there is nothing to give up")
    options = LoadOptions(num_ctx=512, num_thread=physical, adapt_threads=True)
    engine = BatchEngine(smollm2_path, options, 1)
    prompt = engine.tokenize(
        "<|im_start|>user\nTell me a story.<|im_end|>\n", add_special=False, parse_special=True
    )

    def answer(tokens: int) -> None:
        sampling = SamplingOptions(temperature=0, num_predict=tokens, speculate="off")
        assert "".join(engine.generate(prompt, sampling))

    try:
        answer(4)
        if engine._threads.threads != physical:
            pytest.skip("this machine is busy already")
        _stop_after(_loops(cores, 30), 1.5)  # every core taken while the engine sleeps
        answer(2)  # one look, right at the start: the window it opens is the answer's
        assert engine._threads.threads == physical
        busy = _loops(cores - 1, 30)
        try:
            time.sleep(0.5)
            answer(160)  # over a second: several looks with the load there
            assert engine._threads.threads < physical
        finally:
            _stop(busy)
    finally:
        engine.close()


def _stop_after(loops: list[subprocess.Popen[bytes]], seconds: float) -> None:
    time.sleep(seconds)
    _stop(loops)
