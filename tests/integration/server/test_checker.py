"""The schema checker's children (server.schema.checker) held to issue 90: a check that ran to its
deadline is refused at once when it comes again (four clients looping such a schema starved
everyone's checks), and a child grown past its bound is not kept for the next check."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from localrun.errors import BadRequestError
from localrun.server.schema import checker
from localrun.server.schema.checker import Checker

pytestmark = [pytest.mark.slow]


def slow_schema(n: int) -> dict[str, Any]:
    return {"type": "object", "not": {"required": ["never"]},
            "properties": {f"p{i}": {"type": "string"} for i in range(n)}}  # fmt: skip


def test_a_check_that_ran_to_its_deadline_is_refused_at_once_next_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCALRUN_CHECK_TIMEOUT", "0.5")
    schema = slow_schema(20_000)  # jsonschema reads it for seconds

    async def main() -> None:
        checks = Checker()
        try:
            await checks.schema({"type": "object"}, "a warm-up")  # the child started
            asked: list[Any] = []
            real_ask = checks._ask
            monkeypatch.setattr(checks, "_ask", lambda *a: asked.append(a) or real_ask(*a))
            with pytest.raises(BadRequestError, match=r"took over 0\.5 s; it was stopped"):
                await checks.schema(schema, "the format's schema")
            with pytest.raises(BadRequestError, match=r"took over 0\.5 s before; it is refused"):
                await checks.schema(schema, "the format's schema")
            assert len(asked) == 1  # the second was not sent to a child
            await checks.schema({"type": "object", "title": "t"}, "another")  # others go on
        finally:
            checks.close()

    asyncio.run(main())


def test_a_grown_child_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main(most: int) -> int:
        checks = Checker()
        monkeypatch.setattr(checker, "CHILD_RSS_BYTES", most)
        try:
            await checks.schema({"type": "object", "uniqueItems": True}, "the format's schema")
            return len(checks._idle)
        finally:
            checks.close()

    assert asyncio.run(main(256 << 20)) == 1
    assert asyncio.run(main(1 << 20)) == 0  # every child is larger than 1 MiB
