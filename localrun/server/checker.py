"""The checks of a schema and of an answer against it, run in child processes with a deadline.

What server.answer_schema checks takes time that the client chooses: jsonschema reads a
schema of 20,000 properties in 17 s, and a pattern such as `^(a|.)*b$` backtracks through a
27-character answer for 32 s (issue 76). On the event loop that froze every other client,
`/api/version` included. So a route hands those checks to `Checker`, from a worker thread:
each runs in a child process (`python -m localrun.server.checker`), which is killed when it
takes past LOCALRUN_CHECK_TIMEOUT, and the request is refused in its dialect's shape (a 400
for its schema, a 422 for its answer), naming the bound. The children are kept for the next
checks (they remember the schemas they found sound: an agent sends the same ones at every
turn); at most MOST_CHILDREN run at once, and a check that cannot have one within the
deadline is refused as busy (503).

The child reads one JSON line a check and answers one: {"ok": true} or {"error": {...}} (a
LocalrunError as the wire carries it).
"""

from __future__ import annotations

import collections
import json
import os
import resource
import sys
import threading
from typing import IO, Any

from localrun import selfexec
from localrun.errors import AnswerSchemaError, BadRequestError, BusyError, LocalrunError
from localrun.settings import limits

MOST_CHILDREN = 2
MEMORY_BYTES = 1 << 30  # a child's data: a check past it fails as one that could not be done
_MODULE = "localrun.server.checker"
_HINT = "simplify the schema, or leave out the keywords the engine cannot enforce"


class Checker:
    """The checking children of one server; `schema` and `value` block (call them from a
    worker thread, never on the event loop)."""

    def __init__(self, most: int = MOST_CHILDREN) -> None:
        self._turns = threading.BoundedSemaphore(most)
        self._lock = threading.Lock()
        self._idle: list[selfexec.Asked] = []
        self._closed = False

    def schema(self, schema: dict[str, Any], what: str) -> None:
        """Raise BadRequestError unless `schema` can be checked answers against (a schema
        jsonschema takes, patterns that run in bounded time)."""
        self._run({"op": "schema", "schema": schema, "what": what}, BadRequestError, what)

    def value(self, value: Any, schema: dict[str, Any], what: str) -> None:
        """Raise AnswerSchemaError unless `value` validates against `schema` (one `schema`
        took); `what` names it ("the answer", "the call of f")."""
        self._run({"op": "value", "value": value, "schema": schema, "what": what},
                  AnswerSchemaError, what)  # fmt: skip

    def answer(self, text: str, schema: dict[str, Any]) -> None:
        """Raise AnswerSchemaError unless `text` is JSON that validates against `schema`."""
        self._run({"op": "answer", "text": text, "schema": schema}, AnswerSchemaError,
                  "the answer")  # fmt: skip

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for child in idle:
            child.kill()

    def _run(self, question: dict[str, Any], failure: type[LocalrunError], what: str) -> None:
        deadline = limits.check_timeout()
        if not self._turns.acquire(timeout=deadline):
            raise BusyError(
                f"the server is busy checking other schemas; {what} was not checked",
                hint="retry in a few seconds",
                retry_after=int(deadline) + 1,
            )
        try:
            answer = self._ask(question, deadline, failure, what)
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
        if child is None or not child.alive():
            child = selfexec.Asked(_MODULE)
        try:
            answer = child.ask(question, deadline)
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


def _serve(out: IO[bytes]) -> None:
    from localrun.server import answer_schema

    sound: collections.OrderedDict[str, None] = collections.OrderedDict()
    for raw in sys.stdin.buffer:
        try:
            question = json.loads(raw)
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
            answer: dict[str, Any] = {"ok": True}
        except LocalrunError as exc:
            answer = {"error": exc.to_dict()}
        except (ValueError, KeyError, TypeError, RecursionError, MemoryError) as exc:
            answer = {"error": BadRequestError(f"the check failed: {type(exc).__name__}").to_dict()}
        out.write(json.dumps(answer).encode() + b"\n")
        out.flush()


def main() -> int:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything else printing goes to stderr
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard == resource.RLIM_INFINITY or hard > MEMORY_BYTES:
        resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_BYTES, hard))
    _serve(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
