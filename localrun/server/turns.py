"""What clients share: turns at a scarce worker given fairly, and each client's share of a thing.

`FairTurns` gives turns at the schema checker's children. A plain semaphore serves whoever asked
first: four connections looping a schema that runs to its deadline held both children, and
another client's check waited past its own deadline and was refused as busy (issue 90). Here a
turn that frees goes to the waiting client served least recently: first by address (many
connections from one address count as one client), then by connection within it, then in the
order they came. A newcomer waits for at most the next turn that frees, however many requests
others keep in line. `Shares` bounds how many of a thing each client holds at once.

    turns = FairTurns(2)
    async with turns.turn(("10.0.0.2", ("10.0.0.2", 51234)), timeout=10.0): ...

    share = Shares("retrievals", limits.x, "LOCALRUN_X").take("10.0.0.2")  # 429 past it
    ... share.release()   (idempotent; also when the object holding it is collected)
"""

from __future__ import annotations

import collections
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field

import anyio

from localrun.errors import TooManyRequestsError

# Who asks: (the address a per-client limit counts, the connection or None).
Whose = tuple[str, Hashable]
NOBODY: Whose = ("", None)  # no client told (a Unix socket's, a test's)
REMEMBERED = 4096  # clients whose last turn is remembered (a forgotten one counts as new)


@dataclass
class _Waiter:
    whose: Whose
    seq: int
    event: anyio.Event = field(default_factory=anyio.Event)
    granted: bool = False


class FairTurns:
    """`most` turns, each given to the waiting client served least recently.

    Used on one event loop; it is not thread-safe.
    """

    def __init__(self, most: int) -> None:
        self.most = most
        self.held = 0
        self._waiting: list[_Waiter] = []
        self._count = itertools.count(1)
        self._served: collections.OrderedDict[Hashable, int] = collections.OrderedDict()

    @contextlib.asynccontextmanager
    async def turn(self, whose: Whose, timeout: float) -> AsyncIterator[None]:
        """Hold a turn for the body; TimeoutError when none came within `timeout` s."""
        await self.acquire(whose, timeout)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, whose: Whose, timeout: float) -> None:
        if self.held < self.most and not self._waiting:
            self._give(whose)
            return
        waiter = _Waiter(whose, next(self._count))
        self._waiting.append(waiter)
        try:
            with anyio.fail_after(timeout):
                await waiter.event.wait()
        except BaseException:
            if waiter.granted:  # given a turn as it was cancelled: hand it on
                self.release()
            else:
                self._waiting.remove(waiter)
            raise

    def release(self) -> None:
        self.held -= 1
        while self.held < self.most and self._waiting:
            waiter = min(self._waiting, key=self._priority)
            self._waiting.remove(waiter)
            waiter.granted = True
            self._give(waiter.whose)
            waiter.event.set()

    def _priority(self, waiter: _Waiter) -> tuple[int, int, int]:
        address, _ = waiter.whose
        return (
            self._served.get(("address", address), 0),
            self._served.get(("connection", waiter.whose), 0),
            waiter.seq,
        )

    def _give(self, whose: Whose) -> None:
        self.held += 1
        tick = next(self._count)
        for key in (("address", whose[0]), ("connection", whose)):
            self._served[key] = tick
            self._served.move_to_end(key)
        while len(self._served) > REMEMBERED:
            self._served.popitem(last=False)


class Share:
    """One client's hold on one of its shares; `release` gives it back (once)."""

    def __init__(self, owner: Shares, client: str) -> None:
        self._owner, self._client, self._held = owner, client, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._owner._give_back(self._client)

    def __call__(self) -> None:
        self.release()


class Shares:
    """How many of something (`what`) each client holds at once, at most `most()`; one loop's.

    `most` reads a setting at each take, and the refusal names it as `setting`.
    """

    def __init__(self, what: str, most: Callable[[], int], setting: str) -> None:
        self.what, self.most, self.setting = what, most, setting
        self.held: dict[str, int] = {}

    def take(self, client: str) -> Share:
        """A share for `client`; TooManyRequestsError (429) when it holds all it may."""
        most = self.most()
        now = self.held.get(client, 0)
        if now >= most:
            raise TooManyRequestsError(
                f"this client already has {now} {self.what} open, the most {self.setting} allows",
                hint=f"finish reading one of them first, or raise {self.setting}",
                retry_after=1,
            )
        self.held[client] = now + 1
        return Share(self, client)

    def _give_back(self, client: str) -> None:
        left = self.held.get(client, 0) - 1
        if left > 0:
            self.held[client] = left
        else:
            self.held.pop(client, None)
