"""The HTTP API of `localrun serve`: Ollama's /api and OpenAI's /v1 over one implementation.

    app.py       create_app(settings, scheduler): routes, error mapping, lifespan
    security.py  Host check, CORS, API key, body size limit (one ASGI middleware)
    core.py      what both dialects share: requests, generations, client disconnects
    ollama.py    /api generate, chat, embed, ps, version
    models.py    /api tags, show, pull, create, copy, delete, blobs
    openai.py    /v1 models, chat/completions, completions, embeddings
    llamacpp.py  llama-server's /health, /tokenize, /detokenize
    errors.py    LocalrunError -> HTTP status and body, per dialect
    jobs.py      create, pull and catalog imports in a subprocess (keeps numpy out)

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
