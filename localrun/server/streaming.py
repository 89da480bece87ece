"""Framings of a streamed answer, server-sent events and NDJSON lines; large bodies off the loop.

OpenAI's, Anthropic's, the Responses API's and llama-server's streams are server-sent events
(`sse`, sent by `event_stream`); Ollama's are JSON objects a line each (`line`, sent by
`ndjson`). The dialects choose what goes in each event; this module only frames it. A body
whose size a client chooses (a stored response, its events) is made on a worker thread
(`rendered`, `off_loop`): 15 MB of JSON took the loop, and every other client, 0.7-0.95 s.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import anyio
from starlette.responses import Response, StreamingResponse

NDJSON = "application/x-ndjson"
PIECE_BYTES = 256 << 10  # what off_loop gathers a trip to its thread (small events together)


def sse(obj: dict[str, Any], event: str | None = None) -> bytes:
    """One server-sent event (`event:` named for Anthropic's and the Responses API's streams)."""
    data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + data + b"\n\n"


def sse_made(obj: dict[str, Any], event: str | None = None) -> bytes:
    """`sse`, its `Lazy` arrays written out (pieces_of).

    It is slow for a large one, so the caller runs it off the loop.
    """
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + b"".join(pieces_of(obj)) + b"\n\n"


def event_stream(
    events: AsyncIterator[bytes], headers: dict[str, str] | None = None
) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def ndjson(lines: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(lines, media_type=NDJSON, headers={"Cache-Control": "no-cache"})


def dumps(obj: Any) -> bytes:
    """JSON as the API's answers write it (starlette's JSONResponse's form)."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


async def rendered(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer made on a worker thread (its size is the client's to choose)."""
    body = await anyio.to_thread.run_sync(dumps, obj)
    return Response(body, status, headers, media_type="application/json")


async def rendered_with(
    make: Callable[..., Any], *args: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """`rendered(make(*args))`, the object made on the worker thread too."""
    body = await anyio.to_thread.run_sync(lambda: dumps(make(*args)))
    return Response(body, status, headers, media_type="application/json")


class Lazy:
    """A JSON array in a body written by `made_as_sent`, its items made as they are written.

    `items()` makes them; they are never all held at once.
    """

    def __init__(self, items: Callable[[], Iterable[Any]]) -> None:
        self.items = items


def pieces_of(obj: Any) -> Iterator[bytes]:
    """`obj`'s JSON in pieces, each `Lazy` in it written an item at a time.

    A Lazy's place is marked in the rest's JSON by a string no client can have sent (a random
    nonce).
    """
    nonce = secrets.token_hex(8)
    lazies: list[Lazy] = []

    def mark(value: Any) -> str:
        if not isinstance(value, Lazy):
            raise TypeError(f"{type(value).__name__} is not JSON")
        lazies.append(value)
        return f"\x00{nonce}{len(lazies) - 1}\x00"

    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                      default=mark)  # fmt: skip
    marker = re.compile(r'"\\u0000' + nonce + r'(\d+)\\u0000"')
    at = 0
    for found in marker.finditer(text):
        yield text[at : found.start()].encode()
        yield b"["
        for n, item in enumerate(lazies[int(found.group(1))].items()):
            yield (b"," if n else b"") + dumps(item)
        yield b"]"
        at = found.end()
    yield text[at:].encode()


def made_as_sent(obj: Any, headers: dict[str, str] | None = None) -> StreamingResponse:
    """A JSON answer written as the client reads it, off the event loop.

    Its `Lazy` arrays, such as a scored prompt's entries, are made an item at a time.
    """
    return StreamingResponse(
        off_loop(pieces_of(obj)), media_type="application/json", headers=headers
    )


async def off_loop(pieces: Iterator[bytes]) -> AsyncIterator[bytes]:
    """The pieces of a body, each made (`next`) on a worker thread, up to PIECE_BYTES a trip.

    It goes only as fast as the client reads: the next is made once the last is sent.
    """

    def gather() -> bytes:
        out = bytearray()
        for piece in pieces:
            out += piece
            if len(out) >= PIECE_BYTES:
                break
        return bytes(out)

    while True:
        data = await anyio.to_thread.run_sync(gather)
        if not data:
            return
        yield data
