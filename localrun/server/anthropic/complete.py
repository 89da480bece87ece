"""Anthropic's legacy Text Completions, POST /v1/complete: a raw prompt continued as it is.

    {"model", "prompt": "\\n\\nHuman: ...\\n\\nAssistant:", "max_tokens_to_sample",
     "stop_sequences", "temperature", "top_p", "top_k", "metadata", "stream"}

As on the OpenAI completions route, no chat template applies, and the generations are the same.
The answer ends at a stop sequence, at "\\n\\nHuman:" or at the model's own end
(`stop_reason: "stop_sequence"`), or after max_tokens_to_sample tokens (`"max_tokens"`).
"\\n\\nHuman:" stops it whatever stop_sequences says, as it stops Anthropic's models.
The answer is one Completion ({"type": "completion", "id", "completion", "stop_reason",
"model"}), or a stream of `completion` events of the same shape. Each event holds a piece of the
text; the last one holds the stop_reason and no text.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localrun.errors import BadRequestError
from localrun.request.genrequest import GenRequest
from localrun.server import core
from localrun.server.anthropic.routes import check_most, new_id
from localrun.server.anthropic.routes import options_of as messages_options
from localrun.server.anthropic.stream import failed
from localrun.server.body import Body, read_json
from localrun.server.generation import Generation, start
from localrun.server.http import request_ids
from localrun.server.streaming import event_stream, sse

HUMAN = "\n\nHuman:"
MOST = "max_tokens_to_sample"


def options_of(body: Body) -> dict[str, Any]:
    """The request's sampling fields, stop sequences and max_tokens_to_sample as options."""
    options = messages_options(body, MOST)
    options["stop"] = [*options.get("stop", ()), HUMAN]
    return options


def _stop_reason(generation: Generation) -> str:
    return "max_tokens" if generation.done_reason == "length" else "stop_sequence"


async def complete(request: Request) -> Response:
    body = Body(await read_json(request))
    model = body.model()
    prompt = body.get("prompt", str)
    if not prompt:
        raise BadRequestError(
            "prompt is required", hint='send {"prompt": "\\n\\nHuman: Hi\\n\\nAssistant:", ...}'
        )
    check_most(body, MOST)
    body.get("metadata", dict)  # accepted (user_id); a wrong type is still refused
    generation = await start(request, GenRequest(model, prompt=prompt, options=options_of(body)))
    head = {"type": "completion", "id": new_id("compl"), "model": model}
    if body.flag("stream", False):
        return event_stream(_events(generation, head, request_ids.of(request)))
    await core.until_disconnect(request, generation.collect)
    return JSONResponse(
        {**head, "completion": generation.text, "stop_reason": _stop_reason(generation)}
    )


async def _events(
    generation: Generation, head: dict[str, Any], request_id: str | None
) -> AsyncIterator[bytes]:
    try:
        async with contextlib.aclosing(generation.chunks()) as chunks:
            async for chunk in chunks:
                if chunk.text:
                    yield _event({**head, "completion": chunk.text, "stop_reason": None})
        yield _event({**head, "completion": "", "stop_reason": _stop_reason(generation)})
    except Exception as exc:
        yield failed(exc, "/v1/complete", request_id)


def _event(fields: dict[str, Any]) -> bytes:
    return sse(fields, event="completion")
