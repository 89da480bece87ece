"""The decode thread count under load (engine.threads): fewer threads while other processes
keep cores busy, back when they stop, never changed when num_thread was set."""

from __future__ import annotations

from localrun.engine.threads import INTERVAL_S, Governor


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
