"""What clients share, held to issue 90: the checker's turns given fairly (server.turns), a
client's share of stored responses read at once, a body written as it is read (a scored
prompt's entries kept compact and written an item at a time), a hosted tool's echo bounded,
and the checker child remembering schemas by digest."""

from __future__ import annotations

import asyncio
import collections
import json
import math
from typing import Any

import pytest

from localrun.errors import BadRequestError, TooManyRequestsError
from localrun.request.genrequest import GenRequest
from localrun.server import streaming
from localrun.server.generation import choices_of
from localrun.server.logprobs import Budget, Scored, legacy_logprobs, vllm_prompt_logprobs
from localrun.server.responses import tools as responses_tools
from localrun.server.schema import checker
from localrun.server.turns import FairTurns, Shares


def test_a_freed_turn_goes_to_the_client_served_least_recently() -> None:
    async def main() -> list[str]:
        turns = FairTurns(1)
        order: list[str] = []
        a1, a2, b = ("a", ("a", 1)), ("a", ("a", 2)), ("b", ("b", 9))
        await turns.acquire(a1, 1.0)  # a's first connection holds the one turn

        async def wait(whose: Any, name: str) -> None:
            await turns.acquire(whose, 5.0)
            order.append(name)
            await asyncio.sleep(0)
            turns.release()

        waiters = [asyncio.create_task(wait(a1, "a1 again")), asyncio.create_task(wait(a2, "a2"))]
        await asyncio.sleep(0)
        waiters.append(asyncio.create_task(wait(b, "b")))  # came last, never served
        await asyncio.sleep(0)
        turns.release()
        await asyncio.gather(*waiters)
        assert turns.held == 0
        return order

    # b's address was never served; then a's connection that was not (a2) before a1's second.
    assert asyncio.run(main()) == ["b", "a2", "a1 again"]


def test_a_turn_not_come_in_time_is_a_timeout_and_leaves_the_line() -> None:
    async def main() -> None:
        turns = FairTurns(1)
        await turns.acquire(("a", 1), 1.0)
        with pytest.raises(TimeoutError):
            await turns.acquire(("b", 2), 0.05)
        assert not turns._waiting
        # One cancelled just as it was handed the turn hands it on.
        late = asyncio.create_task(turns.acquire(("c", 3), 5.0))
        await asyncio.sleep(0)
        turns.release()
        late.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late
        assert turns.held == 0
        async with turns.turn(("d", 4), 1.0):
            assert turns.held == 1

    asyncio.run(main())


def test_shares_are_bounded_per_client_and_given_back_once() -> None:
    shares = Shares("streams", lambda: 2, "LOCALRUN_X")
    one, two = shares.take("a"), shares.take("a")
    shares.take("b")  # another client's are its own
    with pytest.raises(TooManyRequestsError, match="LOCALRUN_X") as refused:
        shares.take("a")
    assert refused.value.retry_after == 1
    one.release()
    one.release()  # twice gives back one
    three = shares.take("a")
    with pytest.raises(TooManyRequestsError):
        shares.take("a")
    two(), three()
    assert shares.held == {"b": 1}


def test_a_body_is_written_with_its_lazy_arrays_an_item_at_a_time() -> None:
    made: list[int] = []

    def items() -> Any:
        for n in range(3):
            made.append(n)
            yield {"n": n}

    # The text a client sends cannot stand for an array (a marker has a random nonce).
    obj = {"a": streaming.Lazy(items), "b": "\x00 0\x00", "c": [streaming.Lazy(list)]}
    pieces = streaming.pieces_of(obj)
    first = next(pieces)
    assert first == b'{"a":' and made == []
    body = first + b"".join(pieces)
    assert json.loads(body) == {"a": [{"n": 0}, {"n": 1}, {"n": 2}], "b": "\x00 0\x00", "c": [[]]}
    assert made == [0, 1, 2]


ENTRIES = [
    {"id": 1, "token": "<s>", "bytes": [60, 115, 62], "logprob": None, "rank": None, "top": [],
     "added": True},
    {"id": 7, "token": " hi", "bytes": [32, 104, 105], "logprob": -1.5, "rank": 2,
     "top": [{"id": 9, "token": "!", "bytes": [33], "logprob": -0.25},
             {"id": 7, "token": " hi", "bytes": [32, 104, 105], "logprob": -1.5}]},
    {"id": 9, "token": "!", "bytes": [33], "logprob": -0.5, "rank": 1,
     "top": [{"id": 9, "token": "!", "bytes": [33], "logprob": -0.5}]},
]  # fmt: skip


def test_scored_entries_are_kept_compact_and_read_back_the_same() -> None:
    scored = Scored()
    assert scored.extend(ENTRIES[:1]) == 1 and scored.extend(ENTRIES[1:]) == 5
    assert list(scored) == ENTRIES and len(scored) == 3
    assert [e["token"] for e in scored.shown()] == [" hi", "!"]
    assert vllm_prompt_logprobs(scored) == vllm_prompt_logprobs(ENTRIES)
    assert legacy_logprobs(list(scored.shown()), 0)["text_offset"] == [0, 3]
    assert math.isnan(scored.logprobs[0]) and scored.spelled[9] == ("!", b"!")


def test_a_requests_scoring_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALRUN_MAX_PROMPT_LOGPROBS", "100")
    budget = Budget()
    budget.check(50, 1)  # 100: within
    with pytest.raises(BadRequestError, match="LOCALRUN_MAX_PROMPT_LOGPROBS"):
        budget.check(34, 2)
    budget.spend(60)
    with pytest.raises(BadRequestError):
        budget.spend(41)


def test_a_large_hosted_tool_is_echoed_by_its_type_alone() -> None:
    small = {"type": "web_search", "search_context_size": "low"}
    large = {"type": "web_search", "junk": ["x" * 100] * 100}
    function = {"type": "function", "name": "f", "description": "d" * 10_000}
    assert responses_tools.echoed([small, large, function, "odd"]) == [
        small, {"type": "web_search"}, function, "odd"]  # fmt: skip


def test_the_checker_child_remembers_schemas_by_digest() -> None:
    sound: collections.OrderedDict[bytes, None] = collections.OrderedDict()
    for n in range(3):
        schema = {"type": "object", "description": f"{n}" + "d" * 100_000}
        question = {"op": "schema", "schema": schema, "what": "the format's schema"}
        assert checker._check(question, sound) == {"ok": True}
    assert [len(key) for key in sound] == [32, 32, 32]


def test_a_prompt_is_scored_by_its_first_choice_alone() -> None:
    asked = GenRequest("m", prompt="x", prompt_logprobs=2, options={"seed": 5})
    choices = choices_of(asked, 3)
    assert [c.prompt_logprobs for c in choices] == [2, None, None]
    assert [c.options["seed"] for c in choices] == [5, 6, 7]
