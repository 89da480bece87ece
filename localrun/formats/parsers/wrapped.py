"""The syntax most families share: a marker, JSON (one call or a list), a closing marker.

One block may hold several calls, each JSON value after the last (MiniMax-M1 writes one a
line). One row a family, differing in the markers, the keys of a call's name and arguments
(Apertus writes `{NAME: ARGUMENTS}`: `keyed`), whether the closing marker may be missing
(Granite's `<|tool_call|>` has none), other markers the calls may come in (xLAM's: a bare list,
a fence, `<tool_call>`, `[TOOL_CALLS]`) and whether the body is JSON or Python (LFM2's
`[get_weather(city="Paris")]`, MiniCPM 3's calls one a line in a ```python fence).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from localrun.formats.parsers import python
from localrun.formats.parsers.base import (
    Incomplete,
    Malformed,
    Syntax,
    Taken,
    ToolCall,
    closed,
    expect,
    json_at,
    skip_blanks,
)

_FENCE = re.compile(r"```(?:json)?\s*")
_PYTHON_FENCE = re.compile(r"\A```(?:python|py)?\s*")


@dataclass
class Wrapped(Syntax):
    open: str = ""
    close: str = ""
    close_optional: bool = False  # the block may end with the answer instead
    name_key: str = "name"
    argument_keys: tuple[str, ...] = ("arguments", "parameters")
    as_list: bool = False  # the family writes a list even for one call
    python: bool = False  # the body is Python calls, not JSON
    lines: bool = False  # ... one a line, fenced as ```python or not (MiniCPM 3)
    bare: bool = False  # an answer that is nothing but JSON calls counts too (fallback)
    keyed: bool = False  # a call is {NAME: ARGUMENTS} (Apertus)
    # Other (opening, closing) markers the calls come in, the closing one optional (Phi-4-mini's
    # `functools[...]`, xLAM's fences and tags).
    others: tuple[tuple[str, str], ...] = ()
    lead: str = ""  # a marker that may come before `open` (GigaChat 3's `<|message_sep|>`)

    def take(self, text: str, final: bool) -> Taken:
        for opening, closing in self.others:
            if text.startswith(opening):
                value, end = json_at(text, len(opening))
                return Taken(self._calls(value), closed(text, end, closing, final, optional=True))
        if self.bare and not text.startswith(self.open):
            return self._bare(text, final)
        index = skip_blanks(text, len(self.lead)) if self.lead and text.startswith(self.lead) else 0
        if index and index >= len(text) and final:
            return Taken([], index)  # the separator ending the answer's message: nobody's
        index = expect(text, index, self.open)
        if self.python:
            body, end = _python_body(text, index, self.close, final)
            if self.lines:
                body = _PYTHON_FENCE.sub("", body.strip()).removesuffix("```")
            return Taken(python.calls(body, self, lines=self.lines), end)
        value, end = json_at(text, index)
        calls = self._calls(value)
        # Several calls one a line in one block (MiniMax-M1's template writes them so).
        while self.close and (after := skip_blanks(text, end)) < len(text) and text[after] in "{[":
            value, end = json_at(text, after)
            calls += self._calls(value)
        return Taken(calls, closed(text, end, self.close, final, optional=self.close_optional))

    def _calls(self, value: object) -> list[ToolCall]:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise Malformed("no calls")
        calls = []
        for item in items:
            if self.keyed:
                if not isinstance(item, dict) or len(item) != 1:
                    raise Malformed("a call is not {name: arguments}")
                ((name, arguments),) = item.items()
                calls.append(self.call(name, arguments))
                continue
            if isinstance(item, dict) and self.name_key != "name" and self.name_key in item:
                item = {"name": item[self.name_key], **item}
            calls.append(self.json_call(item, *self.argument_keys))
        return calls

    def _bare(self, text: str, final: bool) -> Taken:
        """An answer of bare JSON calls (optionally fenced): the fallback small models use."""
        if not final:
            raise Incomplete
        body = text.strip()
        fenced = _FENCE.match(body)
        if fenced:
            body = body[fenced.end() :].removesuffix("```").rstrip()
        value, end = json_at(body, 0)
        if body[end:].strip():
            raise Malformed("text after the JSON")
        return Taken(self._calls(value), len(text))

    def write(self, name: str, arguments: str) -> str:
        if self.python:
            values = json.loads(arguments)
            kwargs = ", ".join(
                f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in values.items()
            )
            body = f"\n```python\n{name}({kwargs})\n```\n" if self.lines else f"[{name}({kwargs})]"
        else:
            call = f'{{"{self.name_key}": {json.dumps(name)}, '
            call += f'"{self.argument_keys[0]}": {arguments}}}'
            if self.keyed:
                call = f"{{{json.dumps(name)}: {arguments}}}"
            body = f"[{call}]" if self.as_list else call
        return f"{self.open}{body}{self.close}"


def _python_body(text: str, index: int, close: str, final: bool) -> tuple[str, int]:
    found = text.find(close, index) if close else -1
    if found >= 0:
        return text[index:found], found + len(close)
    if not final:
        raise Incomplete
    return text[index:], len(text)
