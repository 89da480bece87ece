"""Log-probabilities: how many alternatives a request asks for, and the entries in each shape.

The shapes are OpenAI's chat and Ollama's, the legacy completions' parallel lists, and vLLM's
`prompt_logprobs` of a prompt's own tokens (engine.scoring's entries).

A prompt's entries are kept compact (`Scored`: arrays, and each token's spelling once) and
bounded per request (`Budget`, LOCALRUN_MAX_PROMPT_LOGPROBS): as dicts, 4,000 tokens with 20
alternatives each held 57 MB of the server's memory (issue 90). Their shapes are written one
entry at a time (`vllm_entries`, `legacy_lists`), for a body made as it is sent.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from localrun.errors import BadRequestError
from localrun.server.body import Body
from localrun.settings import limits

# The most alternatives per token a request may ask for (OpenAI's bound, and the engine's).
MAX_TOP_LOGPROBS = 20


def top_logprobs(value: Any, key: str = "top_logprobs", most: int = MAX_TOP_LOGPROBS) -> int:
    """A count of alternatives per token, checked (a 400 in the request's dialect if bad)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise BadRequestError(f"{key} must be a whole number from 0 to {most}")
    return value


def logprob_items(entries: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Entries as OpenAI's chat `logprobs.content` and Ollama's `logprobs` write them."""
    return [
        {
            "token": e["token"],
            "logprob": e["logprob"],
            "bytes": e["bytes"],
            "top_logprobs": [
                {"token": t["token"], "logprob": t["logprob"], "bytes": t["bytes"]}
                for t in e.get("top") or []
            ],
        }
        for e in entries or []
    ]


def prompt_logprobs_of(body: Body) -> int | None:
    """vLLM's `prompt_logprobs`: alternatives per prompt token, or None when not asked for.

    It is refused with `stream`, as vLLM refuses it.
    """
    value = body.data.get("prompt_logprobs")
    if value is None:
        return None
    if body.flag("stream", False):
        raise BadRequestError(
            "`prompt_logprobs` are not available when `stream=True`.",
            hint="leave stream out to score the prompt",
        )
    return top_logprobs(value, "prompt_logprobs")


def vllm_entries(entries: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any] | None]:
    """The prompt's entries as vLLM writes `prompt_logprobs`, keyed by token id.

    The first token gets null. Each other holds the token itself, with its rank, and its likeliest
    alternatives.
    """
    for entry in entries:
        if entry["logprob"] is None:
            yield None
            continue
        shown = {str(entry["id"]): _vllm(entry["logprob"], entry["rank"], entry["token"])}
        for rank, alt in enumerate(entry.get("top") or [], start=1):
            shown.setdefault(str(alt["id"]), _vllm(alt["logprob"], rank, alt["token"]))
        yield shown


def vllm_prompt_logprobs(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any] | None]:
    return list(vllm_entries(entries))


def _vllm(logprob: float, rank: int, token: str) -> dict[str, Any]:
    return {"logprob": logprob, "rank": rank, "decoded_token": token}


def legacy_logprobs(entries: list[dict[str, Any]], start: int) -> dict[str, Any]:
    """Entries in the legacy completions' shape: parallel lists, text offsets from `start`.

    Each token's alternatives hold the token itself too, as OpenAI's and vLLM's do, so
    `logprobs: N` gives up to N + 1. A token with nothing before it (a prompt's first) has null for
    both.
    """
    offsets = []
    for entry in entries:
        offsets.append(start)
        start += len(entry["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [_alternatives(e) for e in entries],
        "text_offset": offsets,
    }


def legacy_lists(
    entries: Callable[[], Iterable[dict[str, Any]]], start: int
) -> dict[str, Callable[[], Iterator[Any]]]:
    """`legacy_logprobs`'s four lists, each made as it is read (`entries()` each time)."""

    def offsets() -> Iterator[int]:
        at = start
        for entry in entries():
            yield at
            at += len(entry["token"])

    return {
        "tokens": lambda: (e["token"] for e in entries()),
        "token_logprobs": lambda: (e["logprob"] for e in entries()),
        "top_logprobs": lambda: (_alternatives(e) for e in entries()),
        "text_offset": offsets,
    }


def _alternatives(entry: dict[str, Any]) -> dict[str, float] | None:
    if entry["logprob"] is None:
        return None
    shown = {t["token"]: t["logprob"] for t in entry.get("top") or []}
    shown.setdefault(entry["token"], entry["logprob"])
    return shown


class Scored:
    """A prompt's scored entries (engine.scoring's), kept compact and read back one at a time.

    Numbers sit in arrays and each token's spelling is kept once; they read back as the same dicts.
    """

    def __init__(self) -> None:
        self.ids = array("q")
        self.logprobs = array("d")  # NaN: none (the first token)
        self.ranks = array("q")  # 0: none
        self.added = bytearray()  # 1: a token the tokenizer added (BOS), not in the text
        self.top_end = array("q")  # where each entry's alternatives end in the two below
        self.top_ids = array("q")
        self.top_logprobs = array("d")
        self.spelled: dict[int, tuple[str, bytes]] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __bool__(self) -> bool:
        return bool(self.ids)

    def extend(self, entries: list[dict[str, Any]]) -> int:
        """Take entries; the log-probabilities they hold (each token's and alternatives')."""
        before = len(self.ids) + len(self.top_ids)
        for entry in entries:
            self.ids.append(self._spell(entry))
            value = entry.get("logprob")
            self.logprobs.append(math.nan if value is None else float(value))
            self.ranks.append(int(entry.get("rank") or 0))
            self.added.append(1 if entry.get("added") else 0)
            for alt in entry.get("top") or []:
                self.top_ids.append(self._spell(alt))
                self.top_logprobs.append(float(alt["logprob"]))
            self.top_end.append(len(self.top_ids))
        return len(self.ids) + len(self.top_ids) - before

    def _spell(self, item: dict[str, Any]) -> int:
        token = int(item["id"])
        if token not in self.spelled:
            self.spelled[token] = (str(item["token"]), bytes(item.get("bytes") or b""))
        return token

    def entry(self, i: int) -> dict[str, Any]:
        token, raw = self.spelled[self.ids[i]]
        value = self.logprobs[i]
        first = self.top_end[i - 1] if i else 0
        top = []
        for j in range(first, self.top_end[i]):
            alt_token, alt_raw = self.spelled[self.top_ids[j]]
            top.append({"id": self.top_ids[j], "token": alt_token, "bytes": list(alt_raw),
                        "logprob": self.top_logprobs[j]})  # fmt: skip
        out: dict[str, Any] = {
            "id": self.ids[i],
            "token": token,
            "bytes": list(raw),
            "logprob": None if math.isnan(value) else value,
            "rank": self.ranks[i] or None,
            "top": top,
        }
        if self.added[i]:
            out["added"] = True
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self.entry(i) for i in range(len(self.ids)))

    def shown(self) -> Iterator[dict[str, Any]]:
        """The entries of the prompt's text (not those of tokens the tokenizer added)."""
        return (self.entry(i) for i in range(len(self.ids)) if not self.added[i])


class Budget:
    """The log-probabilities a request's prompts may be scored with (LOCALRUN_MAX_PROMPT_LOGPROBS).

    The bound holds for all choices and prompts together; `spend` refuses past it (400). A request
    whose prompts' lengths are known first is refused before any is scored (`check`).
    """

    def __init__(self) -> None:
        self.most = limits.max_prompt_logprobs()
        self.spent = 0

    def check(self, tokens: int, alternatives: int) -> None:
        """Refuse prompts of `tokens` tokens in all, each scored with `alternatives`."""
        if tokens * (1 + alternatives) > self.most:
            raise self._refusal()

    def spend(self, count: int) -> None:
        self.spent += count
        if self.spent > self.most:
            raise self._refusal()

    def _refusal(self) -> BadRequestError:
        return BadRequestError(
            f"scoring this request's prompts takes over {self.most} log-probabilities "
            "(each prompt token's and its alternatives'), the most "
            "LOCALRUN_MAX_PROMPT_LOGPROBS allows",
            hint="score shorter or fewer prompts, ask for fewer alternatives, or raise "
            "LOCALRUN_MAX_PROMPT_LOGPROBS on the server",
        )
