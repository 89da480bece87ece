"""Embeddings: what Ollama's /api/embed and /api/embeddings and OpenAI's /v1/embeddings share.

Rerank (server.llamacpp.rerank) comes here too: a reranker's scores are its "embeddings" of each
query-document pair, as in llama.cpp. `inputs_of` reads what to embed (strings, or OpenAI's
token ids), `embed` bounds the inputs, runs them on the scheduler while the client is there and
counts them in the metrics; with `dimensions` the vectors are shortened Matryoshka-style.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from localrun.engine.types import EmbedInput
from localrun.errors import BadRequestError
from localrun.server import core


@dataclass
class EmbedResult:
    vectors: list[list[float]]
    prompt_tokens: int
    load_s: float
    total_s: float


# OpenAI's own limit; it also bounds one answer's size and how long a request holds its slot.
MAX_EMBED_INPUTS = 2048


async def embed(
    request: Request,
    model: str,
    inputs: Sequence[EmbedInput],
    *,
    options: dict[str, Any],
    truncate: bool = True,
    keep_alive: float | None = None,
    dimensions: int | None = None,
    query: str | None = None,
) -> EmbedResult:
    """Embed `inputs` with `model` (with `query`: a reranker's scores of them against it)."""
    scheduler = core.context(request).scheduler
    started = time.perf_counter()
    if dimensions is not None and dimensions < 1:
        raise BadRequestError("dimensions must be at least 1")
    if len(inputs) > MAX_EMBED_INPUTS:
        raise BadRequestError(
            f"{len(inputs)} inputs in one request; the most is {MAX_EMBED_INPUTS}",
            hint="send the inputs in several requests",
        )
    if not inputs:  # Ollama: no input loads the model
        await scheduler.load(model, options=options, keep_alive=keep_alive)
        return EmbedResult([], 0, 0.0, time.perf_counter() - started)
    found = await core.until_disconnect(
        request,
        lambda: scheduler.embed(
            model, inputs, options=options, truncate=truncate, keep_alive=keep_alive, query=query
        ),
    )
    metrics = core.context(request).metrics
    if metrics is not None:
        metrics.embedded(found.model, found.prompt_tokens)
    vectors = found.vectors
    if dimensions is not None:
        vectors = [_shorten(v, dimensions) for v in vectors]
    return EmbedResult(vectors, found.prompt_tokens, found.load_s, time.perf_counter() - started)


def _shorten(vector: list[float], size: int) -> list[float]:
    """Matryoshka-style: the first `size` values, normalized again."""
    head = vector[:size]
    norm = sum(x * x for x in head) ** 0.5
    return [x / norm for x in head] if norm > 0 else head


def inputs_of(value: Any, key: str = "input", *, tokens: bool = False) -> list[EmbedInput]:
    """What to embed: a string or a list of them, or token ids with `tokens`.

    With `tokens` (OpenAI's dialect), token ids come as a list of ints or a list of such lists, as
    langchain's OpenAIEmbeddings sends them.
    """
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return list(value)
    if tokens and isinstance(value, list) and value:
        if all(_is_id(x) for x in value):
            return [list(value)]
        if all(isinstance(x, list) and x and all(_is_id(t) for t in x) for x in value):
            return [list(x) for x in value]
    if tokens:
        raise BadRequestError(
            f"{key} must be a string, a list of strings, a list of token ids or a list of such "
            "lists (none of them empty)"
        )
    raise BadRequestError(f"{key} must be a string or a list of strings")


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
