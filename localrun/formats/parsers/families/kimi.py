"""Kimi K2: calls in a `<|tool_calls_section_begin|>` ... `<|tool_calls_section_end|>` section.

A call is `<|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>{...}<|tool_call_end|>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from localrun.formats.parsers.base import (
    Incomplete,
    Malformed,
    Syntax,
    Taken,
    ToolCall,
    expect,
    json_at,
    skip_blanks,
    until,
)

BEGIN, END = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
CALL, ARGS, CALL_END = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"
_ID = re.compile(r"(?:functions\.)?([A-Za-z0-9_.\-]+?)(?::\d+)?$")


@dataclass
class Kimi(Syntax):
    name: str = "kimi"
    starts: tuple[str, ...] = (BEGIN,)
    ends: tuple[str, ...] = (END,)
    special: tuple[str, ...] = (BEGIN, END, CALL, ARGS, CALL_END)

    def take(self, text: str, final: bool) -> Taken:
        index = expect(text, 0, BEGIN)
        calls: list[ToolCall] = []
        while True:
            index = skip_blanks(text, index)
            if text.startswith(END, index):
                return Taken(calls, index + len(END))
            if index >= len(text) or END.startswith(text[index:]):
                if final and calls:
                    return Taken(calls, len(text))
                raise Incomplete
            index = expect(text, index, CALL)
            head, index = until(text, index, ARGS)
            match = _ID.match(head.strip())
            if match is None:
                raise Malformed("not a call id")
            value, index = json_at(text, index)
            calls.append(self.call(match.group(1), value))
            index = skip_blanks(text, index)
            if text.startswith(CALL_END, index):
                index += len(CALL_END)
            elif not final:
                raise Incomplete

    def write(self, name: str, arguments: str) -> str:
        return f"{BEGIN}{CALL}functions.{name}:0{ARGS}{arguments}{CALL_END}{END}"
