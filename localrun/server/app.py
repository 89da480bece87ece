"""The FastAPI app of `localrun serve`: routes, error mapping and lifespan in one factory.

    create_app(settings, scheduler)

builds a fresh app around a scheduler (started and closed with the app's lifespan) and a store;
nothing lives at module level, so tests can run several apps side by side.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from localrun import __version__
from localrun.errors import LocalrunError, ModelNotFoundError
from localrun.server import core, metrics, ui
from localrun.server.anthropic import complete as anthropic_complete
from localrun.server.anthropic import models as anthropic_models
from localrun.server.anthropic import routes as anthropic
from localrun.server.errors import (
    body_of,
    dialect_of,
    from_anthropic_client,
    headers_of,
    log_refused,
    plain_body,
    refused,
    status_of,
)
from localrun.server.http import request_ids
from localrun.server.http.security import Guard
from localrun.server.llamacpp import rerank
from localrun.server.llamacpp import routes as llamacpp
from localrun.server.ollama import routes as ollama
from localrun.server.ollama import show, systemone
from localrun.server.ollama import store as ollama_store
from localrun.server.openai import completions
from localrun.server.openai import routes as openai
from localrun.server.responses import routes as responses
from localrun.server.responses.background import Runs
from localrun.server.responses.store import ResponseStore
from localrun.server.turns import Shares
from localrun.settings import config, limits
from localrun.sources.hosts import is_loopback
from localrun.store import catalog
from localrun.store.local import Store

if TYPE_CHECKING:
    from localrun.scheduler import Scheduler

CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, the log shows it


@dataclass(frozen=True)
class Settings:
    """What the server needs to know besides the scheduler."""

    store: Store
    host: str = config.DEFAULT_HOST  # the address the server is bound to
    api_key: str = ""
    origins: tuple[str, ...] = config.DEFAULT_ORIGINS
    max_request_bytes: int = 32 * 1024 * 1024
    responses_dir: Path | None = None  # stored Responses API answers; None: LOCALRUN_HOME's

    @classmethod
    def from_env(cls, host: str, store: Store | None = None) -> Settings:
        """Settings from LOCALRUN_* for a server bound to `host`."""
        return cls(
            store=store or Store(Path(config.models_dir())),
            host=host,
            api_key=config.api_key(),
            origins=config.origins(),
            max_request_bytes=limits.max_request_bytes(),
        )


Route = Callable[[Request], Awaitable[Response]]


def by_client(openai_route: Route, anthropic_route: Route) -> Route:
    """A route both APIs have (/v1/models): an Anthropic client's request gets Anthropic's."""

    async def route(request: Request) -> Response:
        if from_anthropic_client(request.headers):
            return await anthropic_route(request)
        return await openai_route(request)

    return route


_ROUTES = (
    ("/", ollama.root, ["GET", "HEAD"]),
    ("/api/version", ollama.version, ["GET"]),
    ("/api/tags", ollama_store.tags, ["GET"]),
    ("/api/ps", ollama.ps, ["GET"]),
    ("/api/generate", ollama.generate, ["POST"]),
    ("/api/chat", ollama.chat, ["POST"]),
    ("/api/embed", ollama.embed, ["POST"]),
    ("/api/embeddings", ollama.embeddings, ["POST"]),
    ("/api/show", show.show, ["POST"]),
    ("/api/pull", ollama_store.pull_, ["POST"]),
    ("/api/push", ollama_store.push_, ["POST"]),
    ("/api/create", ollama_store.create, ["POST"]),
    ("/api/copy", ollama_store.copy, ["POST"]),
    ("/api/delete", ollama_store.delete, ["DELETE"]),
    ("/api/blobs/{digest}", ollama_store.blob_head, ["HEAD"]),
    ("/api/blobs/{digest}", ollama_store.blob_upload, ["POST"]),
    ("/v1/systemone", systemone.systemone, ["POST"]),
    ("/v1/models", by_client(openai.models, anthropic_models.models), ["GET"]),
    ("/v1/models/{model:path}", by_client(openai.model, anthropic_models.model), ["GET"]),
    ("/v1/chat/completions", openai.chat_completions, ["POST"]),
    ("/v1/completions", completions.completions, ["POST"]),
    ("/v1/embeddings", openai.embeddings, ["POST"]),
    ("/v1/responses", responses.create, ["POST"]),
    ("/v1/responses/input_tokens", responses.input_tokens, ["POST"]),
    ("/v1/responses/{response_id}", responses.retrieve, ["GET"]),
    ("/v1/responses/{response_id}", responses.delete, ["DELETE"]),
    ("/v1/responses/{response_id}/cancel", responses.cancel, ["POST"]),
    ("/v1/responses/{response_id}/input_items", responses.input_items_list, ["GET"]),
    ("/v1/messages", anthropic.messages, ["POST"]),
    ("/v1/messages/count_tokens", anthropic.count_tokens, ["POST"]),
    ("/v1/complete", anthropic_complete.complete, ["POST"]),
    ("/health", llamacpp.health, ["GET"]),
    ("/tokenize", llamacpp.tokenize, ["POST"]),
    ("/detokenize", llamacpp.detokenize, ["POST"]),
    ("/tokenizer_info", llamacpp.tokenizer_info, ["GET"]),
    ("/apply-template", llamacpp.apply_template, ["POST"]),
    ("/infill", llamacpp.infill, ["POST"]),
    ("/rerank", rerank.rerank, ["POST"]),
    ("/reranking", rerank.rerank, ["POST"]),
    ("/v1/rerank", rerank.rerank, ["POST"]),
    ("/v1/reranking", rerank.rerank, ["POST"]),
    ("/metrics", metrics.endpoint, ["GET"]),
    ("/ui", ui.redirect, ["GET", "HEAD"]),
    ("/ui/", ui.page, ["GET", "HEAD"]),
    ("/ui/{name}", ui.page, ["GET", "HEAD"]),
)


def create_app(settings: Settings, scheduler: Scheduler) -> FastAPI:
    """A new app serving `settings.store` through `scheduler`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await scheduler.start()
        try:
            yield
        finally:
            await app.state.background.close()  # runs that outlived their clients end first
            await scheduler.close()
            app.state.ctx.checker.close()

    app = FastAPI(
        title="localrun",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    counters = metrics.Metrics(scheduler)
    app.state.metrics = counters
    app.state.ctx = core.Context(
        store=settings.store,
        scheduler=scheduler,
        version=__version__,
        metrics=counters,
        memory=answer_memory(settings.api_key, settings.host),
        shown_store=str(settings.store.root) if is_loopback(settings.host) else None,
    )
    app.state.responses = ResponseStore(settings.responses_dir or config.responses_dir())
    app.state.background = Runs(app.state.responses)
    app.state.retrievals = Shares(
        "stored responses being read",
        limits.responses_retrievals_per_client,
        "LOCALRUN_RESPONSES_RETRIEVALS_PER_CLIENT",
    )
    for path, handler, methods in _ROUTES:
        app.add_api_route(path, handler, methods=methods, include_in_schema=False)

    app.add_exception_handler(LocalrunError, _on_localrun_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(core.ClientGone, _on_client_gone)
    app.add_exception_handler(ClientDisconnect, _on_client_gone)
    app.add_middleware(
        Guard,
        bound_host=settings.host,
        api_key=settings.api_key,
        origins=settings.origins,
        max_request_bytes=settings.max_request_bytes,
    )
    # Outside the Guard: the requests it refuses are counted too, and their answers named.
    app.add_middleware(metrics.RequestCounter, metrics=counters)
    app.add_middleware(request_ids.RequestIds)
    return app


def answer_memory(api_key: str | None, host: str) -> str | None:
    """Who may be drafted for from earlier answers (engine.speculation.answers), or None.

    The holders of the API key share a memory, named by a digest of the key, never the key. Without
    a key, a loopback-only server's one user has it. A server open to others without a key gets
    None, since its clients cannot be told apart.
    """
    if not config.answer_memory():
        return None
    if api_key:
        return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]
    return "local" if is_loopback(host) else None


async def _on_localrun_error(request: Request, exc: Exception) -> Response:
    """A LocalrunError in the dialect of the route that raised it."""
    assert isinstance(exc, LocalrunError)
    if isinstance(exc, ModelNotFoundError) and exc.suggest:
        store = request.app.state.ctx.store
        await anyio.to_thread.run_sync(catalog.suggest, exc, store)
    refused(request.method, request.url.path, exc)
    return JSONResponse(
        body_of(exc, dialect_of(request.url.path, request.headers), request_ids.of(request)),
        status_code=status_of(exc),
        headers=headers_of(exc),
    )


async def _on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no route, a method not allowed) in the route's dialect."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        message, code = f"{request.method} is not allowed on {request.url.path}", "bad_request"
    elif exc.status_code == 404:
        message, code = f"no route {request.url.path}", "not_found"
    else:
        message, code = str(exc.detail), "error"
    log_refused(request.method, request.url.path, exc.status_code, message)
    dialect = dialect_of(request.url.path, request.headers)
    body = plain_body(
        message[:300], exc.status_code, code, dialect, request_id=request_ids.of(request)
    )
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _on_client_gone(request: Request, exc: Exception) -> Response:
    """A client that left: nobody reads the answer, the access log shows it."""
    return Response(status_code=CLIENT_CLOSED)
