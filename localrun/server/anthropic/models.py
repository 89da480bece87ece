"""Anthropic's Models API on `GET /v1/models` and `GET /v1/models/{model_id}`.

A request from Anthropic's clients (their anthropic-version header) gets the models
`openai.listed` finds, in Anthropic's ModelInfo shape. Pages follow Anthropic's rules: `limit`
1 to 1000, 20 by default; `after_id`, `before_id`.

A model's `created_at` is when its manifest was written (the epoch for one only an upstream
serves), its `display_name` its name. `max_input_tokens`, `max_tokens` and `capabilities` are
null: what a model can do depends on the options a request loads it with, and /api/show says
what its template and weights do.
"""

from __future__ import annotations

import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localrun.errors import BadRequestError
from localrun.server.openai import routes as openai

MOST = 1000  # Anthropic's bound on a page


def _info(shown: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI model object as Anthropic's ModelInfo."""
    created = datetime.datetime.fromtimestamp(int(shown.get("created") or 0), datetime.timezone.utc)
    return {
        "type": "model",
        "id": shown["id"],
        "display_name": shown["id"],
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "max_input_tokens": None,
        "max_tokens": None,
        "capabilities": None,
    }


def _limit(request: Request) -> int:
    text = request.query_params.get("limit", "20")
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MOST:
        raise BadRequestError(f"limit must be a whole number from 1 to {MOST}")
    return int(text)


async def models(request: Request) -> Response:
    """A page of the models, in the order /v1/models lists them."""
    listed = await openai.listed(request)
    ids = [m["id"] for m in listed]
    limit = _limit(request)
    after, before = request.query_params.get("after_id"), request.query_params.get("before_id")
    if before is not None:  # the page that ends before it (none when it is unknown)
        end = ids.index(before) if before in ids else 0
        start = max(0, end - limit)
        more = start > 0
    else:  # the page that starts after it (none when it is unknown)
        start = ids.index(after) + 1 if after in ids else (len(ids) if after else 0)
        end = min(len(ids), start + limit)
        more = end < len(ids)
    page = [_info(m) for m in listed[start:end]]
    return JSONResponse(
        {
            "data": page,
            "has_more": more,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }
    )


async def model(request: Request) -> Response:
    """One model (404 in Anthropic's shape when there is none)."""
    return JSONResponse(_info(await openai.found(request, request.path_params["model"])))
