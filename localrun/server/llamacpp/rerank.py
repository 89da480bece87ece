"""Rerank: the route llama-server, Jina, Cohere and TEI clients call, over the embedding core.

    POST /v1/rerank, /rerank (and llama-server's /v1/reranking, /reranking)
      {"model"?, "query", "documents": [text | {"text"}], "top_n"?, "return_documents"?}
      -> {"id", "object": "list", "model", "results": [{"index", "relevance_score",
          "document"?: {"text"}}], "usage": {"prompt_tokens", "total_tokens"}}
      {"query", "texts": [...], "return_text"?} (TEI's shape)
      -> [{"index", "score", "text"?}]

Results come best first, `top_n` of them. The score is what llama.cpp's rank pooling gives for
the pair, unchanged, as llama-server reports it: a reranker with a two-label head (Qwen3-Reranker)
gives a probability, a BERT-style one (bge-reranker) a logit. Without `model`, the one loaded
now is used when exactly one is, as on llama-server's other routes. A model that is not a
reranker is a 400 from the runner (engine.embed).
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localrun.errors import BadRequestError
from localrun.server import embedding
from localrun.server.body import Body, read_json
from localrun.server.llamacpp.routes import default_model


def _documents(value: Any, key: str) -> list[str]:
    """Texts to rank: strings, or objects with a "text" (Cohere's and Jina's documents)."""
    if not isinstance(value, list) or not value:
        raise BadRequestError(f"{key} must be a non-empty list of texts")
    texts = []
    for item in value:
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            item = item["text"]
        if not isinstance(item, str):
            raise BadRequestError(f'each of {key} must be a string or an object with a "text"')
        texts.append(item)
    return texts


def _query(value: Any) -> str:
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        value = value["text"]
    if not isinstance(value, str):
        raise BadRequestError("query must be a string")
    return value


async def rerank(request: Request) -> Response:
    body = Body(await read_json(request))
    tei = "texts" in body.data and "documents" not in body.data
    documents = _documents(
        body.data.get("texts" if tei else "documents"), "texts" if tei else "documents"
    )
    query = _query(body.data.get("query"))
    top_n = body.get("top_n", int, len(documents))
    if top_n < 1:
        raise BadRequestError("top_n must be at least 1")
    model = await default_model(request, body)
    found = await embedding.embed(request, model, documents, options=body.options(), query=query)
    ranked = sorted(
        ((i, vector[0] if vector else 0.0) for i, vector in enumerate(found.vectors)),
        key=lambda pair: -pair[1],
    )[:top_n]
    if tei:
        with_text = body.flag("return_text", False)
        return JSONResponse(
            [
                {"index": i, "score": score, **({"text": documents[i]} if with_text else {})}
                for i, score in ranked
            ]
        )
    with_documents = body.flag("return_documents", False)
    results = [
        {
            "index": i,
            "relevance_score": score,
            **({"document": {"text": documents[i]}} if with_documents else {}),
        }
        for i, score in ranked
    ]
    tokens = found.prompt_tokens
    return JSONResponse(
        {
            "id": f"rerank-{uuid.uuid4().hex}",
            "object": "list",
            "model": model,
            "results": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
