"""LocalrunError -> HTTP status and body, in the dialects the server speaks.

Ollama's clients read `error` as a string, so the native dialect is
`{"error": "message", "code": "model_not_found", "hint": "..."}` (localrun's client rebuilds the
typed error from `code`). OpenAI's clients (and llama-server's routes) expect
`{"error": {"message", "type", "code", "param"}}`, Anthropic's
`{"type": "error", "error": {"type", "message"}, "request_id": "req_..."}` (with localrun's
`code` beside them; the id is the request's, as its `request-id` header has it). The status is
chosen from the error's class alone, never from its text, and is the same in every dialect.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from localrun import errors as e
from localrun.request import overflow
from localrun.server.http import escape

# "responses": OpenAI's shape, with the Responses API's own words where they differ.
Dialect = Literal["ollama", "openai", "responses", "anthropic"]

log = logging.getLogger("localrun.server")

# First match wins: subclasses before their bases.
_STATUS: tuple[tuple[type[e.LocalrunError], int], ...] = (
    (e.ModelNotFoundError, 404),
    (e.NotFoundError, 404),
    (e.TooManyRequestsError, 429),
    (e.BusyError, 503),
    (e.UnauthorizedError, 401),
    (e.ForbiddenError, 403),
    (e.RequestTooLargeError, 413),
    (e.RequestTimeoutError, 408),
    (e.BadRequestError, 400),
    (e.AnswerSchemaError, 422),
    (e.InvalidNameError, 400),
    (e.InvalidParameterError, 400),
    (e.ModelfileError, 400),
    (e.InvalidDigestError, 400),
    (e.ContextOverflowError, 400),
    (e.TemplateError, 400),
    (e.FileError, 400),  # a GGUF the client uploaded that is not one
    (e.HubAuthError, 403),
    (e.HubError, 502),  # the hub behind us failed
    (e.DiskFullError, 507),
    (e.RunnerDiedError, 500),
    (e.UpstreamError, 502),
    (e.WorkerError, 502),  # a worker holding part of the model failed
    # A setting read when a request needs it has a bad value (`serve` checks each at its start;
    # an app made otherwise, as the tests make theirs, reads them only then): no answer until
    # the server's owner fixes it, and the one line says which.
    (e.ConfigError, 503),
)

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "requests",  # OpenAI's type for a limit on requests (its other: "tokens")
    503: "server_overloaded",
}


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def status_of(exc: e.LocalrunError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def headers_of(exc: e.LocalrunError) -> dict[str, str]:
    if isinstance(exc, e.BusyError):
        return {"Retry-After": str(max(1, int(exc.retry_after)))}
    if isinstance(exc, e.UnauthorizedError):
        return {"WWW-Authenticate": "Bearer"}
    return {}


def body_of(
    exc: e.LocalrunError, dialect: Dialect, request_id: str | None = None
) -> dict[str, Any]:
    """The JSON body of an error response, also sent as the last line of a broken stream.

    `request_id` goes into Anthropic's.
    """
    if isinstance(exc, e.ContextOverflowError):
        param = {"openai": "messages", "responses": "input"}.get(dialect)
        body = plain_body(
            overflow.message(exc, dialect),
            status_of(exc),
            exc.code,
            dialect,
            hint=overflow.hint(exc, dialect),
            param=param,
            request_id=request_id,
        )
        if dialect == "ollama":  # the numbers, for localrun's client to word its own hint
            body.update((k, v) for k, v in exc.to_dict().items() if k in exc.facts)
        return body
    return plain_body(
        exc.message, status_of(exc), exc.code, dialect, hint=exc.hint, request_id=request_id
    )


def plain_body(
    message: str,
    status: int,
    code: str,
    dialect: Dialect,
    *,
    hint: str | None = None,
    param: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """An error body for a message that is not a LocalrunError (no route, wrong method)."""
    if dialect == "anthropic":
        inner: dict[str, Any] = {
            "type": _ANTHROPIC_TYPES.get(status, "api_error"),
            "message": message,
            "code": code,
        }
        if hint:
            inner["hint"] = hint
        # Anthropic's ErrorResponse requires request_id (null where there is none).
        return {"type": "error", "error": inner, "request_id": request_id}
    if dialect in ("openai", "responses"):
        detail: dict[str, Any] = {
            "message": message,
            "type": _OPENAI_TYPES.get(status, "server_error"),
            "code": code,
            "param": param,
        }
        if hint:
            detail["hint"] = hint
        return {"error": detail}
    body: dict[str, Any] = {"error": message, "code": code}
    if hint:
        body["hint"] = hint
    return body


# Ollama's own routes under /v1 (its System One API) answer in Ollama's shape, as Ollama does.
_OLLAMA_UNDER_V1 = frozenset({"/v1/systemone"})

# llama-server's routes answer errors in OpenAI's shape, as llama-server does.
_OPENAI_SHAPED = frozenset(
    {"/health", "/tokenize", "/detokenize", "/apply-template", "/infill", "/rerank", "/reranking"}
)


def from_anthropic_client(headers: Mapping[str, str]) -> bool:
    """Whether a request comes from an Anthropic client, by its anthropic-version header.

    Every one sends it: the API requires it, and the SDKs and Claude Code add it to every request.
    x-api-key does not tell: OpenAI clients send that too (Continue's `cn` sends both key headers).
    """
    return "anthropic-version" in headers


# Routes of one other dialect alone: their errors keep its shape whoever asks.
_OTHER_DIALECTS = ("/api/", "/v1/responses", "/v1/chat/", "/v1/completions", "/v1/embeddings")


def dialect_of(path: str, headers: Mapping[str, str] | None = None) -> Dialect:
    """The dialect an error is answered in.

    A path of Anthropic's API gets Anthropic's shape. So does an Anthropic client's request (by its
    headers) on any path that no other dialect alone serves, such as /v1/models or a route that does
    not exist. Otherwise the path's API decides.
    """
    if path in ("/v1/messages", "/v1/complete") or path.startswith("/v1/messages/"):
        return "anthropic"
    if (
        headers is not None
        and from_anthropic_client(headers)
        and not path.startswith(_OTHER_DIALECTS)
        and path not in _OLLAMA_UNDER_V1
    ):
        return "anthropic"
    if path == "/v1/responses" or path.startswith("/v1/responses/"):
        return "responses"
    if path in _OLLAMA_UNDER_V1:
        return "ollama"
    if path == "/v1" or path.startswith("/v1/") or path in _OPENAI_SHAPED:
        return "openai"
    return "ollama"


def log_refused(method: str, path: str, status: int, message: str) -> None:
    """Log one line for a request the server refused or failed, at the default log level.

    What an agent shows only on its own screen is then in the server's log too. The line holds the
    route, the status and the reason, never the request's content.
    """
    level = logging.WARNING if status >= 500 else logging.INFO
    # The path is the client's (decoded: %0d%0a is a line break) and so may be the message.
    shown = escape.for_log(path, 200), escape.for_log(message, 300)
    log.log(level, "refused %s %s: %d %s", escape.for_log(method, 20), shown[0], status, shown[1])


def refused(method: str, path: str, exc: e.LocalrunError) -> None:
    """log_refused for an error the server answers with."""
    log_refused(method, path, status_of(exc), exc.message)


def unexpected(exc: BaseException, where: str) -> e.LocalrunError:
    """A bug, reported to the client as a plain 500 and logged here; never a traceback."""
    from localrun.settings import config

    log.error(
        "unexpected %s in %s: %s",
        type(exc).__name__,
        escape.for_log(where, 200),
        escape.for_log(str(exc), 300),
        exc_info=config.debug(),
    )
    return e.LocalrunError(
        f"internal error ({type(exc).__name__})",
        hint="see the server's log; LOCALRUN_DEBUG=1 logs the details",
    )
