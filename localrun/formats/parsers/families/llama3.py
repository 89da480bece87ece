"""Llama 3.1-3.3: a call is JSON, or follows `<|python_tag|>`.

JSON calls are `{"name": ..., "parameters": {...}}`, several joined by `;`. After `<|python_tag|>`
comes a built-in tool's `name.call(k=v)` or JSON, up to the end of the answer; `<|eom_id|>` ends it
and is not seen.

The JSON is the whole answer as the template asks, but models write a sentence around it
(`Here is the result: {"name": ...} Would you like more?`), and vLLM reads that call too. So a block
also starts at `{"name"` anywhere, and text after the calls stays text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from localrun.formats.parsers import python
from localrun.formats.parsers.base import (
    Incomplete,
    Syntax,
    Taken,
    ToolCall,
    json_at,
    skip_blanks,
)

PYTHON_TAG = "<|python_tag|>"


@dataclass
class Llama3(Syntax):
    name: str = "llama3"
    starts: tuple[str, ...] = (PYTHON_TAG, '{"name"')
    leading: str = "{"
    special: tuple[str, ...] = (PYTHON_TAG,)

    def take(self, text: str, final: bool) -> Taken:
        if text.startswith(PYTHON_TAG):
            if not final:
                raise Incomplete  # the block runs to the end of the answer
            body = text[len(PYTHON_TAG) :].strip()
            if body.startswith(("{", "[")):
                return Taken(self._objects(body, final=True)[0], len(text))
            # The built-in tools' `brave_search.call(query=...)` calls the tool `brave_search`.
            calls = [
                {**call, "name": call["name"].removesuffix(".call")}
                for call in python.calls(body, _Builtin(tools=self.tools))
            ]
            return Taken([self.call(c["name"], c["arguments"]) for c in calls], len(text))
        calls, end = self._objects(text, final)
        return Taken(calls, end)

    def _objects(self, text: str, final: bool) -> tuple[list[ToolCall], int]:
        calls: list[ToolCall] = []
        index = 0
        while True:
            value, index = json_at(text, index)
            items = value if isinstance(value, list) else [value]
            calls += [self.json_call(item, "parameters", "arguments") for item in items]
            after = skip_blanks(text, index)
            if after < len(text) and text[after] == ";":
                index = after + 1
                continue
            if after < len(text) and text[after] == "{":  # the next call on a line of its own
                index = after
                continue
            if after >= len(text) and not final:
                raise Incomplete  # a `;` and another call may follow
            return calls, index if text[after:].strip() else len(text)

    def write(self, name: str, arguments: str) -> str:
        return f'{{"name": {json.dumps(name)}, "parameters": {arguments}}}'


@dataclass
class _Builtin(Syntax):
    """Reads `name.call(...)` without checking the name (the caller checks it, `.call` off)."""

    def call(self, name: Any, arguments: Any) -> ToolCall:
        return {"name": name, "arguments": arguments}
