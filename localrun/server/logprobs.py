"""Log-probabilities: the count of alternatives a request asks for, and the entries of an answer
in the shape OpenAI's chat and Ollama write them (the legacy completions' own shape is openai's).
"""

from __future__ import annotations

from typing import Any

from localrun.errors import BadRequestError

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
