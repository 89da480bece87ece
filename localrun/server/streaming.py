"""The framings of a streamed answer: server-sent events and NDJSON lines.

OpenAI's, Anthropic's, the Responses API's and llama-server's streams are server-sent events
(`sse`, sent by `event_stream`); Ollama's are JSON objects a line each (`line`, sent by
`ndjson`). The dialects choose what goes in each event; this module only frames it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

NDJSON = "application/x-ndjson"


def sse(obj: dict[str, Any], event: str | None = None) -> bytes:
    """One server-sent event (`event:` named for Anthropic's and the Responses API's streams)."""
    data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + data + b"\n\n"


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
