"""One id per request, in every answer's `request-id` and `x-request-id` headers.

`request-id` is Anthropic's, which its SDK reads into `_request_id`; `x-request-id` is OpenAI's,
which openai-python and openai-node read. Anthropic's error bodies carry it too (`request_id`).

The id is the server's own, `req_` and 24 random hex digits, as OpenAI and Anthropic make
theirs. A client's `x-request-id` is not echoed: an id then names one request whoever sent it,
both headers and the error body name the same one, and no client picks what the server's
headers say.
"""

from __future__ import annotations

import secrets

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_KEY = "localrun.request_id"  # where the id waits in the ASGI scope for the routes


def new_id() -> str:
    return f"req_{secrets.token_hex(12)}"


def of(request: Request | Scope) -> str | None:
    """The id of a request (None outside the middleware: an app built without it)."""
    scope = request.scope if isinstance(request, Request) else request
    value = scope.get(_KEY)
    return value if isinstance(value, str) else None


class RequestIds:
    """The ASGI middleware that names each HTTP request and puts the name in its answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = scope[_KEY] = new_id()

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["request-id"] = request_id
                headers["x-request-id"] = request_id
            await send(message)

        await self.app(scope, receive, named)
