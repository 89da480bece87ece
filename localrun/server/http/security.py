"""The checks every request passes before a route sees it, as one ASGI middleware, in order:

1. Host: on a server bound to loopback, the Host header must name loopback (localhost,
   *.localhost, 127.0.0.0/8, ::1) or the bound address, with any port. This refuses DNS
   rebinding (Ollama's CVE-2024-28224): a re-pointed web page sends its own name as Host.
2. Origin (CORS): a request with an Origin header must come from one of LOCALRUN_ORIGINS
   (`http://localhost:*` wildcards the port); preflights are answered here. Requests without
   Origin (curl, SDKs) are not browsers' and pass.
3. API key: with LOCALRUN_API_KEY set, `Authorization: Bearer <key>` (or Anthropic's
   `x-api-key`), compared in constant time. GET /, /health and the chat page (/ui) stay open.
4. Body size: Content-Length over LOCALRUN_MAX_REQUEST_BYTES is refused at once, and a body
   without one is counted as it arrives. Blob uploads are exempt (they stream to disk).

It is also the last line of defence: an exception no route handled becomes a 500 in the
request's dialect, logged once, and the server carries on.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from localrun.errors import (
    BadRequestError,
    ForbiddenError,
    LocalrunError,
    RequestTooLargeError,
    UnauthorizedError,
)
from localrun.server.errors import (
    body_of,
    dialect_of,
    headers_of,
    refused,
    status_of,
    unexpected,
)
from localrun.server.http import request_ids
from localrun.sources.hosts import is_loopback

UPLOAD_PREFIX = "/api/blobs/"
_OPEN = frozenset({"/", "/health"})  # health checks, open without the API key
# The chat page's static files (/ui, /ui/...) are open too: they hold no secret, and the page
# must load to ask for the key.
_PREFLIGHT_MAX_AGE = "600"
_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
_PORT = re.compile(r"(:[0-9]*)?")  # what may follow the host in a Host header


def host_name(header: str) -> str | None:
    """The host part of a Host header, or None when the header is malformed.

    `[::1]:8080` gives `::1`, `localhost:80` gives `localhost`. Anything but `:port` after the host,
    such as `[::1]evil.example`, is malformed: it must not be read as the host before it.
    """
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or "[" in value[1:end] or not _PORT.fullmatch(value[end + 1 :]):
            return None
        return value[1:end]
    if "[" in value or "]" in value:
        return None
    if value.count(":") == 1:
        name, port = value.split(":", 1)
        return name if _PORT.fullmatch(":" + port) else None
    return value  # a bare name, or an IPv6 address without brackets or port


def host_allowed(header: str | None, bound: str) -> bool:
    if not header:
        return True  # HTTP/1.0 without Host: not a browser, so not a rebinding vector
    name = host_name(header)
    if not name:
        return False
    name = name.rstrip(".")
    return is_loopback(name) or name == bound.strip("[]").lower()


def origin_allowed(origin: str, patterns: Iterable[str]) -> bool:
    """Whether a browser Origin matches LOCALRUN_ORIGINS (`:*` matches any port or none)."""
    value = origin.strip().lower().rstrip("/")
    for raw in patterns:
        pattern = raw.strip().lower().rstrip("/")
        if pattern == "*" or pattern == value:
            return True
        if pattern.endswith(":*"):
            base = pattern[:-2]
            port = value[len(base) + 1 :]
            if value == base or (value.startswith(base + ":") and port.isdigit()):
                return True
    return False


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class Guard:
    """The ASGI middleware applying the checks above, outermost in the app."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        bound_host: str,
        api_key: str,
        origins: tuple[str, ...],
        max_request_bytes: int,
    ) -> None:
        self.app = app
        self.check_host = is_loopback(bound_host)
        self.bound_host = bound_host
        self.api_key = api_key.encode()
        self.origins = origins
        self.max_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = Headers(scope=scope)
        started = False
        origin = headers.get("origin")
        cors: dict[str, str] = {}

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if cors:
                    extra = MutableHeaders(scope=message)
                    for key, value in cors.items():
                        extra[key] = value
            await send(message)

        try:
            self._check_host(headers)
            if origin is not None:
                cors = self._cors(origin)
                if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
                    await self._preflight(headers, cors)(scope, receive, send)
                    return
            self._check_key(path, scope["method"], headers)
            if not path.startswith(UPLOAD_PREFIX):
                receive = self._limited(headers, receive)
            await self.app(scope, receive, tracked_send)
        except LocalrunError as exc:
            if not started:
                await self._error(exc, scope, headers, cors)(scope, receive, send)
        except Exception as exc:  # a bug: one 500, logged, and the server stays up
            error = unexpected(exc, path)  # logs it, also when the answer has started
            if not started:
                await self._error(error, scope, headers, cors)(scope, receive, send)

    def _check_host(self, headers: Headers) -> None:
        """Refuse a Host that does not name this machine, when bound to loopback (rebinding)."""
        if self.check_host and not host_allowed(headers.get("host"), self.bound_host):
            raise ForbiddenError(
                f"the Host header {headers.get('host', '')[:100]!r} does not name this "
                "machine's loopback address",
                hint="connect to localhost or 127.0.0.1; to serve other names, bind another "
                "address with `localrun serve --host` and set LOCALRUN_API_KEY",
            )

    def _cors(self, origin: str) -> dict[str, str]:
        """The CORS headers of an answer to an allowed origin; refuses any other."""
        if not origin_allowed(origin, self.origins):
            raise ForbiddenError(
                f"the origin {origin[:100]!r} is not allowed",
                hint="add it to LOCALRUN_ORIGINS (comma-separated; :* matches any port)",
            )
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    def _check_key(self, path: str, method: str, headers: Headers) -> None:
        """With an API key set, refuse requests without it; health checks and /ui pass."""
        public = path in _OPEN or path == "/ui" or path.startswith("/ui/")
        if self.api_key and not (public and method in ("GET", "HEAD")):
            # Anthropic's clients send the key as x-api-key.
            given = _bearer(headers.get("authorization")) or headers.get("x-api-key")
            if given is None or not hmac.compare_digest(given.encode(), self.api_key):
                raise UnauthorizedError(
                    "a valid API key is required" if given is None else "the API key is not valid",
                    hint="send `Authorization: Bearer <LOCALRUN_API_KEY>` (or `x-api-key`)",
                )

    def _limited(self, headers: Headers, receive: Receive) -> Receive:
        limit = self.max_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise BadRequestError("the Content-Length header is not a number")
            if int(declared) > limit:
                raise _too_large(int(declared), limit)
        seen = 0

        async def counting() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(seen, limit)
            return message

        return counting

    def _preflight(self, headers: Headers, cors: dict[str, str]) -> Response:
        allow = {
            **cors,
            "Access-Control-Allow-Methods": _METHODS,
            "Access-Control-Max-Age": _PREFLIGHT_MAX_AGE,
        }
        requested = headers.get("access-control-request-headers")
        if requested:
            # Echo what the page asks for (the origin is already trusted); drop anything odd.
            names = [h.strip() for h in requested.split(",")]
            allow["Access-Control-Allow-Headers"] = ", ".join(
                h for h in names if h and all(c.isalnum() or c in "-_" for c in h)
            )
        return Response(status_code=204, headers=allow)

    def _error(
        self, exc: LocalrunError, scope: Scope, headers: Headers, cors: dict[str, str]
    ) -> Response:
        path = scope["path"]
        refused(scope["method"], path, exc)
        return JSONResponse(
            body_of(exc, dialect_of(path, headers), request_ids.of(scope)),
            status_code=status_of(exc),
            headers={**headers_of(exc), **cors},
        )


def _too_large(size: int, limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"the request body is larger than {limit} bytes"
        + (f" ({size} bytes)" if size > limit else ""),
        hint="raise LOCALRUN_MAX_REQUEST_BYTES on the server, or send a smaller request",
    )
