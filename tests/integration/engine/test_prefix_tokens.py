"""A long prompt tokenized again only past what a recent one shared (engine.prompts.prefix_tokens):
the tokens are llama.cpp's own for the whole text, on a BPE vocabulary (SmolLM2) and a
SentencePiece one (Gemma 3), through a chat's new turns, regenerates, edits early and late,
special tokens' texts and their parts inside messages, and text that is no chat at all."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import pytest

from localrun.engine.types import LoadOptions
from localrun.engine.weights import Weights

pytestmark = [pytest.mark.model]

FORMATS = {
    "smollm2": ("<|im_start|>{role}\n{text}<|im_end|>\n", "<|im_start|>assistant\n"),
    "gemma3": ("<start_of_turn>{role}\n{text}<end_of_turn>\n", "<start_of_turn>model\n"),
}
PIECES = ["the lighthouse", "  two  spaces", "tab\there", "naïve café 東京", "1234 5678",
          "\n\nnew paragraph", "<|im_", "end_of_turn>", "<start_of", "a<b>c", "emoji 🌊🚢",
          "def f(x):\n    return x", "“quoted”", " ", "\u2581word"]  # fmt: skip


@pytest.fixture(scope="module", params=sorted(FORMATS))
def model(
    request: pytest.FixtureRequest, smollm2_path: str, gemma3_path: str
) -> Iterator[tuple[str, Weights]]:
    path = smollm2_path if request.param == "smollm2" else gemma3_path
    weights = Weights(path, LoadOptions(num_ctx=256))
    yield request.param, weights
    weights.close()


def message(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(PIECES) + rng.choice([" ", "", "\n"]) for _ in range(length))


@contextlib.contextmanager
def reads(weights: Weights) -> Iterator[list[int]]:
    """The lengths of the texts the prefix tokenizer hands llama.cpp while inside."""
    prefix = weights._prefix
    assert prefix is not None
    read: list[int] = []
    whole = prefix._tokenize

    def counted(text: str) -> list[int]:
        read.append(len(text))
        return whole(text)

    prefix._tokenize = counted
    try:
        yield read
    finally:
        prefix._tokenize = whole


def render(kind: str, turns: list[tuple[str, str]]) -> str:
    turn, opening = FORMATS[kind]
    bos = "<bos>" if kind == "gemma3" else ""
    return bos + "".join(turn.format(role=r, text=t) for r, t in turns) + opening


def test_the_tokens_are_llama_cpps_for_the_whole_text(model: tuple[str, Weights]) -> None:
    kind, weights = model
    rng = random.Random(93)
    turns: list[tuple[str, str]] = [("system", "You answer briefly. " * 20)]
    checked = 0
    with reads(weights) as read:
        for step in range(24):
            turns.append(("user", message(rng, rng.randint(5, 60))))
            texts = [render(kind, turns)]
            turns.append(("assistant", message(rng, rng.randint(5, 80))))
            texts.append(render(kind, turns[:-1]))  # regenerate: the same prompt again
            edited = list(turns[:-1])
            edited[-1] = ("user", edited[-1][1] + " (edited)")
            texts.append(render(kind, edited))  # edit the last question
            early = list(turns)
            early[min(2, len(early) - 1)] = ("user", message(rng, 10))
            texts.append(render(kind, early[:-1]))  # edit further back
            texts.append(render(kind, turns)[:-7] + message(rng, 3))  # cut inside a marker
            for text in texts:
                for add in (False, True):
                    whole = weights._tokenize(text, add_special=add, parse_special=True)
                    assert weights.tokenize(text, add_special=add, parse_special=True) == whole, (
                        kind, step, text[-200:])  # fmt: skip
                    checked += 1
    assert checked == 24 * 5 * 2
    assert sum(n < 2000 for n in read) > checked // 4  # most read again only in part
    plain = "no special tokens at all, " * 400
    assert weights.tokenize(plain, add_special=False, parse_special=True) == weights._tokenize(
        plain, add_special=False, parse_special=True)  # fmt: skip


def test_a_long_chat_is_tokenized_again_only_past_its_shared_beginning(
    model: tuple[str, Weights],
) -> None:
    kind, weights = model
    rng = random.Random(7)
    turns = [("user", message(rng, 400)), ("assistant", message(rng, 400))] * 4
    weights.tokenize(render(kind, [*turns, ("user", "one more")]), add_special=False,
                     parse_special=True)  # fmt: skip
    with reads(weights) as read:
        again = render(kind, [*turns, ("user", "another question")])
        tokens = weights.tokenize(again, add_special=False, parse_special=True)
    assert tokens == weights._tokenize(again, add_special=False, parse_special=True)
    assert len(again) > 5000 and read and max(read) < 100  # the new turn alone
