"""Log-probabilities: the count of alternatives a request asks for, and the entries of an answer
in the shapes OpenAI's chat and Ollama write them, the legacy completions' parallel lists, and
vLLM's `prompt_logprobs` of a prompt's own tokens (engine.scoring's entries).
"""

from __future__ import annotations

from typing import Any

from localrun.errors import BadRequestError
from localrun.server.body import Body

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
    """vLLM's `prompt_logprobs`: alternatives per prompt token (None: not asked for); refused
    with `stream`, as vLLM refuses it."""
    value = body.data.get("prompt_logprobs")
    if value is None:
        return None
    if body.flag("stream", False):
        raise BadRequestError(
            "`prompt_logprobs` are not available when `stream=True`.",
            hint="leave stream out to score the prompt",
        )
    return top_logprobs(value, "prompt_logprobs")


def vllm_prompt_logprobs(entries: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """The prompt's entries as vLLM writes `prompt_logprobs`: null for the first token, then
    for each the token itself (with its rank) and its likeliest alternatives, by token id."""
    out: list[dict[str, Any] | None] = []
    for entry in entries:
        if entry["logprob"] is None:
            out.append(None)
            continue
        shown = {str(entry["id"]): _vllm(entry["logprob"], entry["rank"], entry["token"])}
        for rank, alt in enumerate(entry.get("top") or [], start=1):
            shown.setdefault(str(alt["id"]), _vllm(alt["logprob"], rank, alt["token"]))
        out.append(shown)
    return out


def _vllm(logprob: float, rank: int, token: str) -> dict[str, Any]:
    return {"logprob": logprob, "rank": rank, "decoded_token": token}


def legacy_logprobs(entries: list[dict[str, Any]], start: int) -> dict[str, Any]:
    """Entries in the legacy completions' shape: parallel lists, text offsets counted from
    `start`. Each token's alternatives hold the token itself too, as OpenAI's and vLLM's do
    (so `logprobs: N` gives up to N + 1); a token with nothing before it (a prompt's first)
    has null for both."""
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


def _alternatives(entry: dict[str, Any]) -> dict[str, float] | None:
    if entry["logprob"] is None:
        return None
    shown = {t["token"]: t["logprob"] for t in entry.get("top") or []}
    shown.setdefault(entry["token"], entry["logprob"])
    return shown
