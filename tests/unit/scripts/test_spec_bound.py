"""scripts/measure/lookup_bound.py's oracle (scripts/benchlib/bound.py), on token lists: what a
prompt lookup could draft, and the cheapest split of an answer into verification batches."""

from __future__ import annotations

from benchlib import bound


def test_a_lookup_drafts_only_what_follows_a_three_token_match() -> None:
    history = [1, 2, 3, 4, 5, 6, 9, 2, 3]
    assert bound.copyable(history, [4, 5, 6, 7]) == 0  # the last three (9, 2, 3) never occurred
    assert bound.copyable([*history, 4], [5, 6, 7]) == 2  # (2, 3, 4) did: then 5, 6
    assert bound.copyable([1, 2, 3, 4, 5, 6, 1, 2, 3], [4, 5, 6, 7]) == 3
    assert bound.copyable([1, 2, 3], [4]) == 0


def test_costs_between_measured_sizes_are_interpolated() -> None:
    costs = {1: 1.0, 2: 2.0, 3: 2.5, 5: 3.5}
    assert bound.interpolate(costs, 4) == 3.0
    assert bound.interpolate(costs, 10) == 7.0  # past the largest: in proportion


def test_the_oracle_batches_a_copy_and_decodes_the_rest_one_by_one() -> None:
    prompt = list(range(100, 140))
    copy = prompt[:30]
    fresh = [7, 8, 9, 10]
    linear = {1: 1.0, 2: 2.0, 65: 65.0}  # a batch costs its tokens: nothing to gain
    assert bound.oracle_seconds(prompt, copy + fresh, linear, 64) == len(copy + fresh)
    cheap = {1: 1.0, 2: 1.1, 65: 7.4}  # batches cost little more than one token
    time = bound.oracle_seconds(prompt, copy + fresh, cheap, 64)
    # Two tokens one by one (no 3-token match yet), the third with the other 27 of the copy in
    # one batch, then the fresh tokens one by one.
    assert time == 2 + bound.interpolate(cheap, 28) + len(fresh)
    # At most draft_max tokens per batch.
    assert bound.oracle_seconds(prompt, copy, cheap, 8) > bound.oracle_seconds(
        prompt, copy, cheap, 64
    )


def test_the_drafter_replayed_on_an_answer_gains_on_a_copy_only() -> None:
    prompt = list(range(100, 200))
    cheap = {1: 1.0, 2: 1.1, 65: 7.4}

    def never(token: int) -> bool:
        return False

    fresh = list(range(300, 340))  # nothing a lookup could find
    assert bound.replay(prompt, fresh, never, cheap, 256) == len(fresh)
    copy = prompt[:80]
    drafted = bound.replay(prompt, copy, never, cheap, 256)
    assert bound.oracle_seconds(prompt, copy, cheap, 64) <= drafted < len(copy) / 3
