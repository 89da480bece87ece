"""DeepSeek R1, V3 and V3.1: calls in a `<｜tool▁calls▁begin｜>` section.

The section ends with `<｜tool▁calls▁end｜>`. In V3.1 each call is
`<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>`. In R1 and V3 it is
`<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME`, then the arguments in a ```json fence.
"""

from __future__ import annotations

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
)

BEGIN, END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL, SEP, CALL_END = "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>"


@dataclass
class DeepSeek(Syntax):
    name: str = "deepseek"
    starts: tuple[str, ...] = (BEGIN, CALL)
    ends: tuple[str, ...] = (END, CALL_END)
    special: tuple[str, ...] = (BEGIN, END, CALL, SEP, CALL_END)
    fenced: bool = False  # R1/V3: `function<｜tool▁sep｜>NAME\n```json ...```

    def take(self, text: str, final: bool) -> Taken:
        index = len(BEGIN) if text.startswith(BEGIN) else 0
        calls: list[ToolCall] = []
        while True:
            index = skip_blanks(text, index)
            if text.startswith(END, index):
                return Taken(calls, index + len(END))
            if index >= len(text) or END.startswith(text[index:]):
                if calls and final:
                    return Taken(calls, len(text))
                raise Incomplete
            if not text.startswith(CALL, index) and calls:
                return Taken(calls, index)  # text after the calls
            index = expect(text, index, CALL)
            call, index = self._one(text, index)
            calls.append(call)
            index = skip_blanks(text, index)
            if text.startswith(CALL_END, index):
                index += len(CALL_END)
            elif not final:
                raise Incomplete

    def _one(self, text: str, index: int) -> tuple[ToolCall, int]:
        sep = text.find(SEP, index)
        if sep < 0:
            raise Incomplete
        head = text[index:sep].strip()
        index = sep + len(SEP)
        if head == "function" or not head:  # R1: the type, then the name up to the fence
            line = text.find("\n", index)
            if line < 0:
                raise Incomplete
            name = text[index:line].strip()
            index = skip_blanks(text, line)
            if text.startswith("```", index):
                newline = text.find("\n", index)
                if newline < 0:
                    raise Incomplete
                value, index = json_at(text, newline + 1)
                index = skip_blanks(text, index)
                if text.startswith("```", index):
                    index += 3
                elif "```".startswith(text[index:]):
                    raise Incomplete
                return self.call(name, value), index
            value, index = json_at(text, index)
            return self.call(name, value), index
        if "\n" in head or len(head) > 200:
            raise Malformed("not a tool name")
        value, index = json_at(text, index)
        return self.call(head, value), index

    def write(self, name: str, arguments: str) -> str:
        if self.fenced:
            call = f"{CALL}function{SEP}{name}\n```json\n{arguments}\n```{CALL_END}"
        else:
            call = f"{CALL}{name}{SEP}{arguments}{CALL_END}"
        return f"{BEGIN}{call}{END}"
