"""http(s) image URLs in a request, fetched only from the hosts LOCALRUN_IMAGE_URL_HOSTS names.

It names none by default: the server then fetches nothing for a client.

Before a dialect parses its body, `inline` finds the image URLs where that dialect puts them:
OpenAI chat's `image_url` parts, the Responses API's `input_image`, Anthropic's `image` blocks
with a `url` source. It fetches those on an allowed host, all at once and asynchronously, so the
server goes on answering others meanwhile. It writes each back as the inline form the client
could have sent: a data URL, or for Anthropic a base64 source. The parsers then check the bytes
as they check any inline image (an image, under the pixel bound). A URL on another host is left
as it is, for the parser to refuse with its 400.

Each fetch is a GET of at most LOCALRUN_MAX_MEDIA_BYTES, read as it streams. Past the bound it
is refused with a 413, as an inline file over it is. It follows at most 3 redirects, each to an
allowed host, in 10 seconds in all. Any other failure is a 400 naming the part and the URL's host.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from localrun.errors import BadRequestError, RequestTooLargeError
from localrun.request import media
from localrun.scheduler.remote import read as remote_read
from localrun.settings import limits

TIMEOUT_S = 10.0
MAX_REDIRECTS = 3
_SCHEMES = ("http", "https")


class _Found:
    """One image URL in a body, and how to write its bytes back."""

    def __init__(self, where: str, url: str, holder: dict[str, Any], key: str, *, source: bool):
        self.where, self.url, self.holder, self.key, self.source = where, url, holder, key, source

    def put(self, data: bytes, content_type: str) -> None:
        kind = content_type if content_type.startswith("image/") else "image/png"
        encoded = base64.b64encode(data).decode("ascii")
        if self.source:  # Anthropic: the block's source becomes a base64 one
            self.holder[self.key] = {"type": "base64", "media_type": kind, "data": encoded}
        else:
            self.holder[self.key] = f"data:{kind};base64,{encoded}"


def allowed(url: str) -> bool:
    """Whether LOCALRUN_IMAGE_URL_HOSTS lets the server fetch `url`."""
    parts = urlsplit(url)
    hosts = limits.image_url_hosts()
    host = (parts.hostname or "").rstrip(".")
    return parts.scheme in _SCHEMES and bool(host) and ("*" in hosts or host in hosts)


async def inline(body: Any, dialect: str) -> None:
    """Fetch the allowed image URLs of `body` and write them back inline.

    `dialect` names the request's dialect: "openai", "responses" or "anthropic".
    """
    if not limits.image_url_hosts() or not isinstance(body, dict):
        return
    found = [f for f in _find(body, dialect) if allowed(f.url)]
    if not found:
        return
    media.check_count(len(found))
    failures: list[Exception] = []

    async def fetch(client: httpx.AsyncClient, item: _Found) -> None:
        try:
            await _fetch_into(client, item)
        except Exception as exc:  # the first one found is the answer; the others end with it
            failures.append(exc)
            group.cancel_scope.cancel()

    async with (
        httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False) as client,
        anyio.create_task_group() as group,
    ):
        for item in found:
            group.start_soon(fetch, client, item)
    if failures:
        raise failures[0]


def _find(body: dict[str, Any], dialect: str) -> Iterator[_Found]:
    if dialect == "responses":
        items = body.get("input")
        for i, item in enumerate(items if isinstance(items, list) else []):
            content = item.get("content") if isinstance(item, dict) else None
            for j, part in _listed(content):
                if part.get("type") == "input_image" and isinstance(part.get("image_url"), str):
                    where = f"input[{i}].content[{j}].image_url"
                    yield _Found(where, part["image_url"], part, "image_url", source=False)
        return
    messages = body.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in _listed(content):
            where = f"messages[{i}].content[{j}]"
            if dialect == "anthropic" and part.get("type") == "image":
                source = part.get("source")
                if isinstance(source, dict) and source.get("type") == "url":
                    url = source.get("url")
                    if isinstance(url, str):
                        yield _Found(f"{where}.source.url", url, part, "source", source=True)
            elif dialect == "openai" and part.get("type") == "image_url":
                image = part.get("image_url")
                if isinstance(image, dict) and isinstance(image.get("url"), str):
                    yield _Found(f"{where}.image_url", image["url"], image, "url", source=False)
                elif isinstance(image, str):
                    yield _Found(f"{where}.image_url", image, part, "image_url", source=False)


def _listed(content: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    if isinstance(content, list):
        yield from ((j, part) for j, part in enumerate(content) if isinstance(part, dict))


async def _fetch_into(client: httpx.AsyncClient, item: _Found) -> None:
    host = urlsplit(item.url).hostname or "?"
    try:
        with anyio.fail_after(TIMEOUT_S):
            data, content_type = await _get(client, item.url, item.where)
    except TimeoutError:
        raise BadRequestError(
            f"{item.where}: {host} did not send the image within {TIMEOUT_S:.0f} s",
            hint="send the image inline: data:image/png;base64,...",
        ) from None
    except httpx.HTTPError as exc:
        raise BadRequestError(
            f"{item.where}: the image could not be fetched from {host} ({type(exc).__name__})",
            hint="check the URL, or send the image inline: data:image/png;base64,...",
        ) from None
    item.put(data, content_type)


async def _get(client: httpx.AsyncClient, url: str, where: str) -> tuple[bytes, str]:
    limit = limits.max_media_bytes()
    for _ in range(MAX_REDIRECTS + 1):
        async with client.stream("GET", url, headers={"Accept": "image/*"}) as response:
            if response.is_redirect:
                url = str(response.url.join(response.headers.get("location", "")))
                if not allowed(url):
                    raise BadRequestError(
                        f"{where} redirects to {urlsplit(url).hostname or url}, a host "
                        "LOCALRUN_IMAGE_URL_HOSTS does not name",
                        hint="send the image inline, or add the host to LOCALRUN_IMAGE_URL_HOSTS",
                    )
                continue
            if response.status_code != 200:
                raise BadRequestError(
                    f"{where}: {response.url.host} answered HTTP {response.status_code}",
                    hint="check the image's URL",
                )
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise _too_large(where, limit)
            data = bytearray()
            try:
                # Raw, inflated here a step at a time (a chain of encodings refused): httpx
                # inflates a whole chunk at once, and a few KB of `gzip, gzip` are GBs.
                async for piece in remote_read.chunks(response, limit):
                    data += piece
            except remote_read.TooLarge:
                raise _too_large(where, limit) from None
            except (ValueError, zlib.error) as exc:  # an encoding not read, or not decoding
                raise BadRequestError(
                    f"{where}: {response.url.host} sent the image in an encoding that cannot be "
                    f"read ({str(exc)[:100]})",
                    hint="send the image inline: data:image/png;base64,...",
                ) from None
            return bytes(data), response.headers.get("content-type", "").split(";")[0].strip()
    raise BadRequestError(
        f"{where} redirects more than {MAX_REDIRECTS} times", hint="send the image's final URL"
    )


def _too_large(where: str, limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"{where} is larger than {limit} bytes",
        hint="send a smaller image, or raise LOCALRUN_MAX_MEDIA_BYTES",
    )
