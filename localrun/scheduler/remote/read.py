"""Read upstream answers within bounds: a hostile or broken upstream must not take the gateway down.

An upstream is another machine. Without these bounds, one endless line grew the server to 4 GB in
36 s. A 3 MB gzip bomb did the same in 25 s and, decompressed in one call, held the event loop
(SIGTERM waited 20 s). A 400 MB embedding answer and a 1.5 GB model list were read whole.

So the bytes are read raw and decompressed here, a bounded step at a time, with the loop free
between steps. Every answer has a ceiling on its decompressed bytes (LOCALRUN_UPSTREAM_MAX_BYTES,
or a smaller one for a model list), and a streamed line a ceiling of its own. A large JSON body
is parsed off the loop.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from localrun.sources.bodies import KNOWN, Inflater

MAX_LINE = 4 * 1024 * 1024  # one streamed line (an SSE event or a JSON line)
MAX_ERROR_BODY = 4096  # of an error answer, what is read
_THREAD_PAST = 1024 * 1024  # JSON bodies larger than this are parsed on a thread


class TooLarge(ValueError):
    """An answer past its bound (a ValueError: a malformed answer, as far as callers go)."""


async def chunks(response: Any, limit: int) -> AsyncIterator[bytes]:
    """Yield the answer's bytes, decompressed a step at a time, at most `limit` of them.

    sources.bodies.Inflater decompresses. TooLarge past `limit`; ValueError for an encoding not
    read here or not decoding.
    """
    encoding = response.headers.get("content-encoding", "").strip().lower()
    inflater = None
    if encoding not in ("", "identity"):
        if encoding not in KNOWN:
            raise ValueError(f"an answer in the {encoding[:40]!r} encoding, which is not read here")
        inflater = Inflater(encoding)
    total = 0
    async for raw in response.aiter_raw():
        if inflater is None:
            total += len(raw)
            if total > limit:
                raise TooLarge(f"an answer of more than {limit} bytes")
            yield raw
            continue
        try:
            for out in inflater.feed(raw):
                total += len(out)
                if total > limit:
                    raise TooLarge(f"an answer of more than {limit} bytes once decompressed")
                yield out
                await asyncio.sleep(0)  # a bomb decompresses a step at a time, others go on
        except zlib.error:
            raise ValueError(f"an answer whose {encoding} encoding does not decode") from None


async def read(response: Any, limit: int) -> bytes:
    """The whole answer, decompressed, at most `limit` bytes."""
    parts = [part async for part in chunks(response, limit)]
    return b"".join(parts)


async def read_json(response: Any, limit: int) -> Any:
    """The answer as JSON, at most `limit` bytes of it; a large one is parsed on a thread."""
    data = await read(response, limit)
    if len(data) > _THREAD_PAST:
        return await asyncio.to_thread(json.loads, data)
    return json.loads(data)


async def read_some(response: Any) -> str:
    """The start of an error answer (never all of a hostile one)."""
    data = b""
    try:
        async for part in chunks(response, 1 << 30):
            data += part
            if len(data) >= MAX_ERROR_BODY:
                break
    except ValueError:
        pass  # an encoding not read here: what arrived is enough
    return data[:MAX_ERROR_BODY].decode("utf-8", "replace")


async def lines(response: Any, limit: int) -> AsyncIterator[str]:
    """The answer's lines (without their end), each at most MAX_LINE bytes, `limit` in all."""
    pending = b""
    async for part in chunks(response, limit):
        pending += part
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if len(line) > MAX_LINE:
                raise TooLarge(f"a streamed line of more than {MAX_LINE} bytes")
            yield line.decode("utf-8", "replace")
        if len(pending) > MAX_LINE:
            raise TooLarge(f"a streamed line of more than {MAX_LINE} bytes")
    if pending:
        yield pending.decode("utf-8", "replace")


async def failure(response: Any) -> tuple[str, bool]:
    """Return a non-200 answer's status and start, and whether the request is at fault.

    The request, rather than the upstream, is at fault for a 4xx other than 408 and 429.
    """
    status = response.status_code
    text = f"HTTP {status}: {one_line(await read_some(response))}"
    return text, 400 <= status < 500 and status not in (408, 429)


async def objects(response: Any, limit: int) -> AsyncGenerator[Any, None]:
    """Yield the JSON objects of a streamed answer, `limit` bytes in all.

    They come from SSE `data:` lines and JSON lines. The `error: {...}` line llama-server ends a
    failed stream with comes as {"error": ...}.
    """
    async for line in lines(response, limit):
        line = line.strip()
        if not line:
            continue
        if line.startswith("data:"):
            data = line[5:].strip()
            if data == "[DONE]":
                return
            yield json.loads(data)
        elif line.startswith("error:"):
            yield {"error": json.loads(line[6:].strip())}
        elif line.startswith(("event:", "id:", "retry:", ":")):
            continue
        else:
            yield json.loads(line)


def describe(exc: BaseException) -> str:
    name = type(exc).__name__
    text = one_line(str(exc))
    return f"{name}: {text}" if text else name


def one_line(text: str) -> str:
    return " ".join(text.split())[:300]
