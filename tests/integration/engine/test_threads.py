"""The decode thread count under real load (engine.threads): a real busy loop is seen, and the
engine starts an answer with the cores left now."""

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
