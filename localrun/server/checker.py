"""The checks of a schema and of an answer against it, run in child processes with a deadline.

What server.answer_schema checks takes time that the client chooses: jsonschema reads a
schema of 20,000 properties in 17 s, and a pattern such as `^(a|.)*b$` backtracks through a
27-character answer for 32 s (issue 76). On the event loop that froze every other client,
`/api/version` included. So a route awaits those checks of `Checker`: each runs in a child
process (`python -m localrun.server.checker`), which is killed when it
takes past LOCALRUN_CHECK_TIMEOUT, and the request is refused in its dialect's shape (a 400
for its schema, a 422 for its answer), naming the bound. The children are kept for the next
checks (they remember the schemas they found sound: an agent sends the same ones at every
turn); at most MOST_CHILDREN run at once, each talked to from a worker thread, and a check
waits for its turn without holding one: past the deadline it is refused as busy (503).

The child reads one JSON line a check and answers one: {"ok": true} or {"error": {...}} (a
LocalrunError as the wire carries it).
"""

from __future__ import annotations

import collections
import json
import sys
import threading
from typing import Any

import anyio

from localrun import asked
from localrun.errors import AnswerSchemaError, BadRequestError, BusyError, LocalrunError
from localrun.server import answer_schema
from localrun.settings import limits

MOST_CHILDREN = 2
MEMORY_BYTES = 1 << 30  # a child's data: a check past it fails as one that could not be done
_MODULE = "localrun.server.checker"
_HINT = "simplify the schema, or leave out the keywords the engine cannot enforce"


class Checker:
    """The checking children of one server. Its checks are awaited: one waits for a child
    without holding a thread, and talks to it from a worker thread."""

    def __init__(self, most: int = MOST_CHILDREN) -> None:
        self.most = most
        self._turns: anyio.Semaphore | None = None  # made on the server's loop
        self._lock = threading.Lock()
        self._idle: list[asked.Asked] = []
        self._closed = False

    async def schema(self, schema: dict[str, Any], what: str) -> None:
        """Raise BadRequestError unless `schema` can be checked answers against (a schema
        jsonschema takes, patterns that run in bounded time)."""
        await self._run({"op": "schema", "schema": schema, "what": what}, BadRequestError, what)

    async def value(self, value: Any, schema: dict[str, Any], what: str) -> None:
        """Raise AnswerSchemaError unless `value` validates against `schema` (one `schema`
        took); `what` names it ("the answer", "the call of f")."""
        await self._run({"op": "value", "value": value, "schema": schema, "what": what},
                        AnswerSchemaError, what)  # fmt: skip

    async def answer(self, text: str, schema: dict[str, Any]) -> None:
        """Raise AnswerSchemaError unless `text` is JSON that validates against `schema`."""
        await self._run({"op": "answer", "text": text, "schema": schema}, AnswerSchemaError,
                        "the answer")  # fmt: skip

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for child in idle:
            child.kill()

    async def _run(self, question: dict[str, Any], failure: type[LocalrunError], what: str) -> None:
        deadline = limits.check_timeout()
        if self._turns is None:
            self._turns = anyio.Semaphore(self.most)
        try:
            with anyio.fail_after(deadline):
                await self._turns.acquire()
        except TimeoutError:
            raise BusyError(
                f"the server is busy checking other schemas; {what} was not checked",
                hint="retry in a few seconds",
                retry_after=int(deadline) + 1,
            ) from None
        try:
            answer = await anyio.to_thread.run_sync(self._ask, question, deadline, failure, what)
        finally:
            self._turns.release()
        if isinstance(answer, dict) and answer.get("ok") is True:
            return
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, dict):
            raise failure(f"{what} could not be checked", hint=_HINT)
        raise LocalrunError.from_dict(error)

    def _ask(
        self, question: dict[str, Any], deadline: float, failure: type[LocalrunError], what: str
    ) -> Any:
        with self._lock:
            child = self._idle.pop() if self._idle else None
        try:
            if child is None or not child.alive():
                child = asked.Asked(_MODULE)
            answer = child.ask(question, deadline)
        except asked.NotStarted as exc:
            raise BusyError(
                f"the server cannot check {what} now ({exc})",
                hint="retry in a few seconds; the server's log may say why",
                retry_after=5,
            ) from None
        except (ValueError, TypeError, RecursionError):
            raise failure(f"{what} cannot be sent to be checked", hint=_HINT) from None
        except TimeoutError:
            raise failure(
                f"checking {what} against its schema took over {deadline:g} s; it was stopped",
                hint=f"{_HINT} (LOCALRUN_CHECK_TIMEOUT on the server)",
            ) from None
        except EOFError:
            raise failure(f"checking {what} against its schema failed", hint=_HINT) from None
        with self._lock:
            if self._closed:
                child.kill()
            else:
                self._idle.append(child)
        return answer


# -- the child ---------------------------------------------------------------------------------


REMEMBERED = 256  # schemas found sound, by their JSON text


def _check(question: Any, sound: collections.OrderedDict[str, None]) -> dict[str, Any]:
    """One check's answer: {"ok": true}, or the LocalrunError it raised, as the wire has it."""
    try:
        op = question["op"]
        if op == "schema":
            key = json.dumps(question["schema"], sort_keys=True)
            if key not in sound:
                answer_schema.check_schema(question["schema"], str(question["what"]))
                sound[key] = None
                while len(sound) > REMEMBERED:
                    sound.popitem(last=False)
            sound.move_to_end(key)
        elif op == "value":
            answer_schema.validate(question["value"], question["schema"], question["what"])
        elif op == "answer":
            answer_schema.check(str(question["text"]), question["schema"])
        else:
            raise BadRequestError(f"unknown check {op!r}")
    except LocalrunError as exc:
        return {"error": exc.to_dict()}
    except (ValueError, KeyError, TypeError, RecursionError, MemoryError) as exc:
        return {"error": BadRequestError(f"the check failed: {type(exc).__name__}").to_dict()}
    return {"ok": True}


def main() -> int:
    if sys.platform.startswith("linux"):  # a check past its memory fails, not the machine
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard == resource.RLIM_INFINITY or hard > MEMORY_BYTES:
            resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_BYTES, hard))
    import jsonschema  # noqa: F401  (before the child says it is ready: its start is not a check's)

    sound: collections.OrderedDict[str, None] = collections.OrderedDict()
    asked.serve(lambda question: _check(question, sound))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
