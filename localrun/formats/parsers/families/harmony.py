"""gpt-oss's harmony format: the answer is messages, each a header and a body.

    <|channel|>analysis<|message|>REASONING<|end|>
    <|start|>assistant<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>
    {...}<|call|>
    <|start|>assistant<|channel|>final<|message|>ANSWER<|return|>

The analysis channel is reasoning, final (or commentary without a recipient) is the answer, and
a message addressed `to=functions.NAME` (in the header before or after `<|channel|>`) is a call
whose body is its JSON arguments. Headers are nobody's text. Text before any marker is answer,
so a model that skips the channels still shows what it says. The markers are special tokens:
the engine spells them out for this family.

openai-harmony (OpenAI's parser) reads tokens with the o200k_harmony encoding it downloads on
first use; localrun works offline and reads the text it already has, the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from localrun.formats.parsers.base import (
    Malformed,
    Syntax,
    Taken,
    ToolCall,
    loads,
    partial_marker,
)

CHANNEL, MESSAGE, START = "<|channel|>", "<|message|>", "<|start|>"
ENDS = ("<|end|>", "<|return|>", "<|call|>")
_ALL = (CHANNEL, MESSAGE, START, *ENDS)
_RECIPIENT = re.compile(r"to=functions\.([A-Za-z0-9_.\-]+)")


@dataclass
class Harmony(Syntax):
    """For the grammar of a forced call and the family table; parsing is `HarmonyStream`."""

    name: str = "harmony"
    special: tuple[str, ...] = (*_ALL, "<|constrain|>")
    opens: str = "to=functions."  # a call's header names its recipient before or after its channel

    def take(self, text: str, final: bool) -> Taken:
        raise Malformed("harmony calls are read by HarmonyStream")

    def write(self, name: str, arguments: str) -> str:
        return (
            f"{CHANNEL}commentary to=functions.{name} <|constrain|>json{MESSAGE}{arguments}<|call|>"
        )


class HarmonyStream:
    """Parts a streamed harmony answer into reasoning text, answer text and calls.

    The caller drains `calls` after each feed.
    """

    def __init__(self, syntax: Syntax | None = None) -> None:
        self.syntax = syntax  # None: tools are not in force, a call's body is text
        self.state = "answer"  # "thinking", "answer", "header", "call", "between"
        self.header = ""
        self.body = ""  # a call's arguments so far
        self.pending = ""
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> tuple[str, str]:
        thinking: list[str] = []
        answer: list[str] = []
        pending = self.pending + text
        while pending:
            found = [(pending.find(m), m) for m in _ALL if m in pending]
            if not found:
                keep = partial_marker(pending, _ALL)
                self._emit(pending[: len(pending) - keep], thinking, answer)
                pending = pending[len(pending) - keep :]
                break
            index, marker = min(found)
            self._emit(pending[:index], thinking, answer)
            pending = pending[index + len(marker) :]
            self._marker(marker, answer)
        self.pending = pending
        return "".join(thinking), "".join(answer)

    def _marker(self, marker: str, answer: list[str]) -> None:
        if marker == START:
            self._end_call(answer)
            self.state, self.header = "header", ""
        elif marker == CHANNEL:
            self._end_call(answer)
            if self.state != "header":
                self.state, self.header = "header", ""
            self.header += " "
        elif marker == MESSAGE:
            recipient = _RECIPIENT.search(self.header)
            if recipient and self.syntax is not None:
                self.state, self.body = "call", ""
                self.header = recipient.group(1)
            else:
                self.state = "thinking" if "analysis" in self.header else "answer"
        else:
            self._end_call(answer)
            self.state = "between"

    def _emit(self, text: str, thinking: list[str], answer: list[str]) -> None:
        if self.state == "thinking":
            thinking.append(text)
        elif self.state == "answer":
            answer.append(text)
        elif self.state == "header":
            self.header += text
        elif self.state == "call":
            self.body += text

    def _end_call(self, answer: list[str]) -> None:
        if self.state != "call" or self.syntax is None:
            return
        self.state = "between"
        try:
            self.calls.append(self.syntax.call(self.header, loads(self.body.strip() or "{}")))
        except Malformed:  # not a call of the tools after all: its text is the answer's
            answer.append(self.body)

    def finish(self) -> tuple[str, str]:
        rest, self.pending = self.pending, ""
        thinking: list[str] = []
        answer: list[str] = []
        self._emit(rest, thinking, answer)
        self._end_call(answer)
        return "".join(thinking), "".join(answer)
