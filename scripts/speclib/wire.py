"""An answer as it came over the wire: its status, content type and body, read as JSON, as
server-sent events (OpenAI, Anthropic) or as NDJSON lines (Ollama)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_BODY = 16 * 1024 * 1024  # no answer of the request set comes near it


@dataclass(frozen=True)
class Event:
    """One server-sent event: its `event:` name (None when it has none) and its data."""

    name: str | None
    data: str


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.body)

    def events(self) -> list[Event]:
        """The body as server-sent events (WHATWG's parsing: `data:` lines joined with a line
        break, a blank line ending an event, `:` lines comments)."""
        events: list[Event] = []
        name: str | None = None
        data: list[str] = []
        for line in self.text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
            if not line:
                if data:
                    events.append(Event(name, "\n".join(data)))
                name, data = None, []
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
        if data:
            events.append(Event(name, "\n".join(data)))
        return events

    def lines(self) -> list[str]:
        """The body as NDJSON: its non-blank lines."""
        return [line for line in self.text.split("\n") if line.strip()]


def shorten(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
