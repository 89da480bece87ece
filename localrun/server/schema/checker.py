"""The checks of a schema and of an answer against it, run in child processes with a deadline.

What server.schema.answer checks takes time that the client chooses: jsonschema reads a schema
of 20,000 properties in 17 s, and a pattern such as `^(a|.)*b$` backtracks through a
27-character answer for 32 s (issue 76). On the event loop that froze every other client,
`/api/version` included. So a route awaits those checks of `Checker`: each runs in a child
process (`python -m localrun.server.schema.checker`), killed past LOCALRUN_CHECK_TIMEOUT. The
request is then refused in its dialect's shape (a 400 for its schema, a 422 for its answer),
naming the bound. The children are kept for the next checks: they remember the schemas they
found sound, since an agent sends the same ones at every turn. `Checker` holds the turns, the
bounds and the memory of checks that ran to their deadline.

The child reads one JSON line a check and answers one: {"ok": true} or {"error": {...}} (a
LocalrunError as the wire carries it).
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
import threading
import time
from typing import Any

import anyio

from localrun.errors import AnswerSchemaError, BadRequestError, BusyError, LocalrunError
from localrun.host import asked
from localrun.host import limits as host_limits
from localrun.server.schema import answer as answer_schema
from localrun.server.turns import NOBODY, FairTurns, Whose
from localrun.settings import limits

MOST_CHILDREN = 2
MEMORY_BYTES = 1 << 30  # a child's data: a check past it fails as one that could not be done
CHILD_RSS_BYTES = 256 << 20  # a child larger than this after a check is replaced
WAIT_TURNS = 3  # a check waits this many check deadlines for its turn, then is refused (503)
STOPPED_FOR_S = 600.0  # how long a check that ran to its deadline is refused at once
STOPPED_REMEMBERED = 1024  # such checks remembered (digests)
_MODULE = "localrun.server.schema.checker"
_HINT = "simplify the schema, or leave out the keywords the engine cannot enforce"


class Checker:
    """The checking children of one server, at most MOST_CHILDREN, used from worker threads.

    A check waits for its turn without holding a thread. Turns go fairly between clients
    (server.turns): a client that keeps both children busy with slow schemas delays another's check
    by at most one deadline. Past WAIT_TURNS deadlines of waiting, a check is refused as busy (503).
    A check that ran to its deadline is remembered by digest (issue 90). The same check is then
    refused at once for STOPPED_FOR_S, without taking a turn.
    """

    def __init__(self, most: int = MOST_CHILDREN) -> None:
        self.most = most
        self._turns = FairTurns(most)  # used on the server's loop alone
        self._lock = threading.Lock()
        self._idle: list[asked.Asked] = []
        # Checks that ran to their deadline: digest -> (when, the deadline).
        self._stopped: collections.OrderedDict[bytes, tuple[float, float]] = (
            collections.OrderedDict()
        )
        self._closed = False

    async def schema(self, schema: dict[str, Any], what: str, whose: Whose = NOBODY) -> None:
        """Raise BadRequestError unless answers can be checked against `schema`.

        It must be a schema jsonschema takes, with patterns that run in bounded time. `whose` is the
        client asking.
        """
        await self._run({"op": "schema", "schema": schema, "what": what}, BadRequestError, what,
                        whose)  # fmt: skip

    async def value(
        self, value: Any, schema: dict[str, Any], what: str, whose: Whose = NOBODY
    ) -> None:
        """Raise AnswerSchemaError unless `value` validates against `schema`, one `schema` took.

        `what` names the value: "the answer", "the call of f".
        """
        await self._run({"op": "value", "value": value, "schema": schema, "what": what},
                        AnswerSchemaError, what, whose)  # fmt: skip

    async def answer(self, text: str, schema: dict[str, Any], whose: Whose = NOBODY) -> None:
        """Raise AnswerSchemaError unless `text` is JSON that validates against `schema`."""
        await self._run({"op": "answer", "text": text, "schema": schema}, AnswerSchemaError,
                        "the answer", whose)  # fmt: skip

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for child in idle:
            child.kill()

    async def _run(
        self, question: dict[str, Any], failure: type[LocalrunError], what: str, whose: Whose
    ) -> None:
        deadline = limits.check_timeout()
        try:  # a large schema takes a while to encode: off the loop
            line, key = await anyio.to_thread.run_sync(_encoded, question)
        except (ValueError, TypeError, RecursionError):
            raise failure(f"{what} cannot be sent to be checked", hint=_HINT) from None
        stopped = self._stopped_at(key)
        if stopped is not None:
            raise failure(
                f"checking {what} against its schema took over {stopped:g} s before; it is "
                "refused without being checked again",
                hint=f"{_HINT} (LOCALRUN_CHECK_TIMEOUT on the server)",
            )
        try:
            await self._turns.acquire(whose, WAIT_TURNS * deadline)
        except TimeoutError:
            raise BusyError(
                f"the server is busy checking other schemas; {what} was not checked",
                hint="retry in a few seconds",
                retry_after=int(deadline) + 1,
            ) from None
        try:
            answer = await anyio.to_thread.run_sync(self._ask, line, key, deadline, failure, what)
        finally:
            self._turns.release()
        if isinstance(answer, dict) and answer.get("ok") is True:
            return
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, dict):
            raise failure(f"{what} could not be checked", hint=_HINT)
        raise LocalrunError.from_dict(error)

    def _stopped_at(self, key: bytes) -> float | None:
        """The deadline a check ran to within STOPPED_FOR_S (None: it did not)."""
        now = time.monotonic()
        with self._lock:
            found = self._stopped.get(key)
            if found is not None and now - found[0] > STOPPED_FOR_S:
                del self._stopped[key]
                found = None
            return None if found is None else found[1]

    def _stop(self, key: bytes, deadline: float) -> None:
        with self._lock:
            self._stopped[key] = (time.monotonic(), deadline)
            self._stopped.move_to_end(key)
            while len(self._stopped) > STOPPED_REMEMBERED:
                self._stopped.popitem(last=False)

    def _ask(
        self, line: bytes, key: bytes, deadline: float, failure: type[LocalrunError], what: str
    ) -> Any:
        with self._lock:
            child = self._idle.pop() if self._idle else None
        try:
            if child is None or not child.alive():
                child = asked.Asked(_MODULE)
            answer = child.ask_line(line, deadline)
        except asked.NotStarted as exc:
            raise BusyError(
                f"the server cannot check {what} now ({exc})",
                hint="retry in a few seconds; the server's log may say why",
                retry_after=5,
            ) from None
        except TimeoutError:
            self._stop(key, deadline)
            raise failure(
                f"checking {what} against its schema took over {deadline:g} s; it was stopped",
                hint=f"{_HINT} (LOCALRUN_CHECK_TIMEOUT on the server)",
            ) from None
        except EOFError:
            raise failure(f"checking {what} against its schema failed", hint=_HINT) from None
        # A child that grew (a large schema's parse, patterns compiled) is not kept for more.
        keep = child.rss() <= CHILD_RSS_BYTES
        with self._lock:
            if self._closed or not keep:
                child.kill()
            else:
                self._idle.append(child)
        return answer


def _encoded(question: dict[str, Any]) -> tuple[bytes, bytes]:
    """The question as one line of JSON, and the digest a check is remembered by.

    The digest is that line's: the operation, the schema, its subject.
    """
    line = json.dumps(question).encode()
    return line, hashlib.sha256(line).digest()


# -- the child ---------------------------------------------------------------------------------


REMEMBERED = 256  # schemas found sound, by the digest of their JSON text
PURGE_PATTERNS = 64 << 10  # a check whose patterns pass this many characters empties re's cache


def _check(question: Any, sound: collections.OrderedDict[bytes, None]) -> dict[str, Any]:
    """One check's answer: {"ok": true}, or the LocalrunError it raised, as the wire has it.

    Schemas found sound are remembered by digest: a key of their whole text grew a child by 123 MB
    with 40 schemas of 3 MB each. The patterns a check compiled leave re's cache when they were
    large.
    """
    try:
        op = question["op"]
        schema = question["schema"]
        if op == "schema":
            text = json.dumps(schema, sort_keys=True).encode()
            key = hashlib.sha256(text).digest()
            if key not in sound:
                answer_schema.check_schema(schema, str(question["what"]))
                sound[key] = None
                while len(sound) > REMEMBERED:
                    sound.popitem(last=False)
            sound.move_to_end(key)
        elif op == "value":
            answer_schema.validate(question["value"], schema, question["what"])
        elif op == "answer":
            answer_schema.check(str(question["text"]), schema)
        else:
            raise BadRequestError(f"unknown check {op!r}")
    except LocalrunError as exc:
        return {"error": exc.to_dict()}
    except (ValueError, KeyError, TypeError, RecursionError, MemoryError) as exc:
        return {"error": BadRequestError(f"the check failed: {type(exc).__name__}").to_dict()}
    finally:
        _forget_patterns(question)
    return {"ok": True}


def _forget_patterns(question: Any) -> None:
    schema = question.get("schema") if isinstance(question, dict) else None
    try:
        size = sum(len(p) for p in answer_schema.patterns(schema))
    except (RecursionError, TypeError):
        size = PURGE_PATTERNS
    if size >= PURGE_PATTERNS:
        re.purge()


def main() -> int:
    # A check past its memory fails, not the machine (no cap on macOS: host.limits).
    host_limits.cap_memory(MEMORY_BYTES)
    import jsonschema  # noqa: F401  (before the child says it is ready: its start is not a check's)

    sound: collections.OrderedDict[bytes, None] = collections.OrderedDict()
    asked.serve(lambda question: _check(question, sound))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
