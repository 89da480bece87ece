"""How much of a slot's KV cache a prompt keeps (engine.types.reusable): the common prefix of
the two, never the prompt's last token, found with slices compared in C."""

from __future__ import annotations

import random

import pytest

from localrun.engine.types import reusable


def _naive(cache: list[int], prompt: list[int]) -> int:
    keep = 0
    while keep < min(len(cache), len(prompt) - 1) and cache[keep] == prompt[keep]:
        keep += 1
    return keep


@pytest.mark.parametrize("seed", range(40))
def test_the_common_prefix_less_the_last_prompt_token(seed: int) -> None:
    rng = random.Random(seed)
    shared = [rng.randrange(5) for _ in range(rng.choice([0, 1, 2, 7, 300, 4096]))]
    cache = shared + [rng.randrange(5) for _ in range(rng.randrange(0, 40))]
    prompt = shared + [rng.randrange(5) for _ in range(rng.randrange(0, 40))]
    assert reusable(cache, prompt) == _naive(cache, prompt)
    assert reusable(tuple(cache), prompt) == _naive(cache, prompt)  # any sequences


def test_edges() -> None:
    assert reusable([], [1]) == 0
    assert reusable([1, 2, 3], []) == 0
    assert reusable([1, 2, 3], [1, 2, 3]) == 2  # the last prompt token is always read
    assert reusable([1, 2, 3], [1, 2, 3, 4]) == 3
    assert reusable([9, 2, 3], [1, 2, 3, 4]) == 0
