"""The HTTP API of `localrun serve`: Ollama's /api and OpenAI's /v1 over one implementation.

    app.py         create_app(settings, scheduler): routes, error mapping, lifespan
    http/          what every request passes first: security.py (Host check, CORS, API key,
                   body size limit: one ASGI middleware), connections.py (connection limits,
                   header and body read timeouts), request_ids.py (each answer's request-id
                   and x-request-id), escape.py (client text made safe for headers and logs)

  what every dialect shares (none of these imports a dialect's folder):
    core.py        the app's Context; until_disconnect, which cancels work when the client leaves
    body.py        the request body as JSON, typed field access (Body), model options
    generation.py  start a GenRequest on the scheduler; the Generation that streams its answer
    messages.py    chat messages checked into the runner's shape
    logprobs.py    top_logprobs bounds, log-probability entries in OpenAI's and Ollama's shape
    embedding.py   embedding inputs, bounds and Matryoshka shortening
    image_urls.py  http(s) image URLs, fetched only from the hosts the user allows
    streaming.py   server-sent events and NDJSON lines
    turns.py       what clients share: the checker's turns given fairly, each client's share
    schema/        answer.py (an answer validated after, where the engine cannot enforce all
                   of its schema) and checker.py (the child processes that check it)
    errors.py      LocalrunError -> HTTP status and body, per dialect
    metrics.py     GET /metrics (Prometheus), counted once for every dialect
    ui.py          the chat page at /ui

  the dialects, a folder each, each a translation to a GenRequest and back (only app.py
  imports their routes):
    ollama/        routes.py (/api generate, chat, embed, ps, version), store.py (/api tags,
                   pull, create, copy, delete, blobs), show.py (/api/show; details_of for
                   /api/tags and /api/ps), jobs.py (create, pull and catalog imports in a
                   subprocess: keeps numpy out), systemone.py (/v1/systemone: choice, yes-or-no
                   and score questions, read from the next token's probabilities)
    openai/        routes.py (/v1 models, chat/completions, embeddings), completions.py
                   (/v1/completions, the legacy completions)
    responses/     routes.py (/v1/responses), input.py (its input read), tools.py, output.py
                   (the response object), events.py (its stream), background.py (runs that
                   outlive their request), store.py (stored answers)
    anthropic/     routes.py (/v1/messages, /v1/messages/count_tokens), tools.py, stream.py
                   (the Message, its usage and events), complete.py (/v1/complete),
                   models.py (Anthropic's models list)
    llamacpp/      routes.py (llama-server's /health, /tokenize, /detokenize, /infill,
                   /apply-template), rerank.py (/rerank, /v1/rerank)

Importing this package is cheap: fastapi is imported by `create_app`, and `python -m
localrun.server.ollama.jobs` must start without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from localrun.scheduler import Scheduler
    from localrun.server.app import Settings


def create_app(settings: Settings, scheduler: Scheduler) -> FastAPI:
    """The app of `localrun serve` (see localrun.server.app.create_app)."""
    from localrun.server.app import create_app as build

    return build(settings, scheduler)
