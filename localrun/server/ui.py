"""GET /ui/: the chat page (localrun/ui/static), served by the server itself.

The page and its bundled libraries are static files shipped in the package: nothing is loaded
from anywhere else, which the Content-Security-Policy enforces in the browser (no inline
script or style, no other origin, no framing). They hold no secret, so they are served without
the API key; the page asks for the key when /api answers 401 and keeps it for the tab only.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from localrun.errors import NotFoundError

PREFIX = "/ui/"
_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "vendor.js": "text/javascript; charset=utf-8",
    "vendor.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated: a new localrun serves its new page at once
}


async def redirect(request: Request) -> Response:
    return RedirectResponse(PREFIX, status_code=308)


async def page(request: Request) -> Response:
    name = request.path_params.get("name") or "index.html"
    media = _TYPES.get(name)
    if media is None:
        raise NotFoundError(f"no file {name[:100]!r} in the chat page", hint=f"open {PREFIX}")
    data = resources.files("localrun.ui").joinpath("static").joinpath(name).read_bytes()
    return Response(data, media_type=media, headers=_HEADERS)
