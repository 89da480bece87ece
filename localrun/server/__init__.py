"""The HTTP API of `localrun serve`: Ollama's /api and OpenAI's /v1 over one implementation.

    app.py         create_app(settings, scheduler): routes, error mapping, lifespan
    security.py    Host check, CORS, API key, body size limit (one ASGI middleware)
    connections.py connection limits, header and body read timeouts
    request_ids.py each answer's request-id and x-request-id (one ASGI middleware)

  what every dialect shares (none of these imports a dialect module):
    core.py        the app's Context; until_disconnect, which cancels work when the client leaves
    body.py        the request body as JSON, typed field access (Body), model options
    generation.py  start a GenRequest on the scheduler; the Generation that streams its answer
    messages.py    chat messages checked into the runner's shape
    logprobs.py    top_logprobs bounds, log-probability entries in OpenAI's and Ollama's shape
    embedding.py   embedding inputs, bounds and Matryoshka shortening
    streaming.py   server-sent events and NDJSON lines
    errors.py      LocalrunError -> HTTP status and body, per dialect
    metrics.py     GET /metrics (Prometheus), counted once for every dialect

  the dialects, each a translation to a GenRequest and back (only app.py imports them):
    ollama.py      /api generate, chat, embed, ps, version
    systemone.py   Ollama's /v1/systemone: choice, yes-or-no and score questions, read from
                   the model's next-token probabilities over the options' labels
    openai.py      /v1 models, chat/completions, completions, embeddings
    responses.py   /v1/responses (its input read by responses_input.py; the response object
                   responses_output.py's, its stream responses_events.py's, background runs
                   responses_background.py's), with response_store.py keeping stored answers
    anthropic.py   /v1/messages, /v1/messages/count_tokens (its tools in anthropic_tools.py,
                   its answer's shapes and stream in anthropic_stream.py); /v1/complete in
                   anthropic_complete.py; Anthropic's models list in anthropic_models.py
    llamacpp.py    llama-server's /health, /tokenize, /detokenize, /infill

  the store and the page:
    models.py      /api tags, pull, create, copy, delete, blobs
    show.py        /api/show (its template as Ollama's clients read one: a Go template);
                   details_of (also /api/tags, /api/ps), local_model
    jobs.py        create, pull and catalog imports in a subprocess (keeps numpy out)
    ui.py          the chat page at /ui

Importing this package is cheap: fastapi is imported by `create_app`, and `python -m
localrun.server.jobs` must start without it.
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
