"""The XML-style families, whose argument values are written as text, not JSON:

- Qwen3-Coder, Nemotron 3, Seed-OSS: `<tool_call><function=NAME><parameter=KEY>VALUE
  </parameter></function></tool_call>` (Seed-OSS wraps in `<seed:tool_call>`);
- MiniMax M2: `<minimax:tool_call><invoke name="NAME"><parameter name="KEY">VALUE</parameter>
  </invoke></minimax:tool_call>` (Muse Glimmer: `<atem:function_calls><atem:invoke ...`);
- GLM 4.5-4.7: `<tool_call>NAME<arg_key>KEY</arg_key><arg_value>VALUE</arg_value></tool_call>`.

A value is text where the tool's schema says string, else JSON where it parses (a number, an
object), as the families' own parsers type them. One newline around a value is the format's.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

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
    until,
)


def _value(raw: str) -> str:
    """A parameter's text without the one newline the format puts on each side."""
    if raw.startswith("\n"):
        raw = raw[1:]
    if raw.endswith("\n"):
        raw = raw[:-1]
    return raw


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@dataclass
class XmlBlocks(Syntax):
    """Calls in a wrapper (`open` ... `close`), one or several per wrapper."""

    open: str = ""
    close: str = ""
    bare_open: str = ""  # a call the model wrote without the wrapper (Qwen3-Coder does)

    def take(self, text: str, final: bool) -> Taken:
        wrapped = text.startswith(self.open)
        if not wrapped and not (self.bare_open and text.startswith(self.bare_open)):
            if self.open.startswith(text) or self.bare_open.startswith(text):
                raise Incomplete
            raise Malformed("not a call")
        index = len(self.open) if wrapped else 0
        calls: list[ToolCall] = []
        while True:
            index = skip_blanks(text, index)
            if wrapped and text.startswith(self.close, index):
                if not calls:
                    raise Malformed("an empty block")
                return Taken(calls, index + len(self.close))
            if not wrapped and calls:  # a bare call is one block: what follows is the next
                return Taken(calls, index)
            if index >= len(text) or (wrapped and self.close.startswith(text[index:])):
                if final and calls:
                    return Taken(calls, index)
                raise Incomplete
            call, index = self.one(text, index)
            calls.append(call)

    def one(self, text: str, index: int) -> tuple[ToolCall, int]:
        raise NotImplementedError


_PARAM = re.compile(r"<parameter=([^>\n]{1,200})>")


@dataclass
class FunctionTags(XmlBlocks):
    """`<function=NAME><parameter=KEY>VALUE</parameter>...</function>`."""

    open: str = "<tool_call>"
    close: str = "</tool_call>"
    bare_open: str = "<function="

    def one(self, text: str, index: int) -> tuple[ToolCall, int]:
        index = expect(text, index, "<function=")
        name, index = until(text, index, ">")
        name = name.strip()
        arguments: dict[str, object] = {}
        while True:
            index = skip_blanks(text, index)
            if text.startswith("</function>", index):
                return self.call(name, arguments), index + len("</function>")
            if index >= len(text) or "</function>".startswith(text[index:]):
                raise Incomplete
            match = _PARAM.match(text, index)
            if match is None:
                if "<parameter=".startswith(text[index : index + 11]) and ">" not in text[index:]:
                    raise Incomplete
                raise Malformed("expected <parameter=...>")
            key = match.group(1).strip()
            raw, index = until(text, match.end(), "</parameter>")
            arguments[key] = self.typed(name, key, _value(raw))

    def write(self, name: str, arguments: str) -> str:
        values = json.loads(arguments)
        params = "".join(f"<parameter={k}>\n{_text(v)}\n</parameter>\n" for k, v in values.items())
        return f"{self.open}\n<function={name}>\n{params}</function>\n{self.close}"


@functools.cache
def _tags(prefix: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The opening tags of an invocation and of a parameter, with a namespace `prefix`."""
    invoke = re.compile(rf'<{re.escape(prefix)}invoke name="([^"\n]{{1,200}})">')
    param = re.compile(rf'<{re.escape(prefix)}parameter name="([^"\n]{{1,200}})">')
    return invoke, param


@dataclass
class Invoke(XmlBlocks):
    """MiniMax M2: `<invoke name="NAME"><parameter name="KEY">VALUE</parameter></invoke>`.

    Muse Glimmer's is the same with `atem:` before each tag (`prefix`).
    """

    name: str = "minimax"
    starts: tuple[str, ...] = ("<minimax:tool_call>",)
    ends: tuple[str, ...] = ("</minimax:tool_call>",)
    open: str = "<minimax:tool_call>"
    close: str = "</minimax:tool_call>"
    prefix: str = ""

    def one(self, text: str, index: int) -> tuple[ToolCall, int]:
        invoke, named = _tags(self.prefix)
        head, end, param_end = (
            f'<{self.prefix}invoke name="',
            f"</{self.prefix}invoke>",
            f"</{self.prefix}parameter>",
        )
        match = invoke.match(text, index)
        if match is None:
            if head.startswith(text[index : index + len(head)]) or '"' not in text[index:]:
                raise Incomplete
            raise Malformed("expected <invoke name=...>")
        name, index = match.group(1), match.end()
        arguments: dict[str, object] = {}
        while True:
            index = skip_blanks(text, index)
            if text.startswith(end, index):
                return self.call(name, arguments), index + len(end)
            if index >= len(text):
                raise Incomplete
            param = named.match(text, index)
            if param is None:
                if end.startswith(text[index:]) or '">' not in text[index:]:
                    raise Incomplete
                raise Malformed("expected <parameter name=...>")
            raw, index = until(text, param.end(), param_end)
            arguments[param.group(1)] = self.typed(name, param.group(1), _value(raw))

    def write(self, name: str, arguments: str) -> str:
        values = json.loads(arguments)
        tag = f"{self.prefix}parameter"
        params = "".join(f'<{tag} name="{k}">{_text(v)}</{tag}>\n' for k, v in values.items())
        invoke = f"{self.prefix}invoke"
        return f'{self.open}\n<{invoke} name="{name}">\n{params}</{invoke}>\n{self.close}'


_RECIPIENT = re.compile(r"to=([^\s<]{1,200})<\|message\|>")


@dataclass
class Recipient(Invoke):
    """Muse Glimmer: its turns open with a recipient, ` to=NAME<|message|>`.

    The template's generation prompt stops before it. One naming a tool is followed by the `atem:`
    block of its call, `to=user` by the answer's text. The header is nobody's text.
    """

    def take(self, text: str, final: bool) -> Taken:
        if not text.startswith("to="):
            return super().take(text, final)
        match = _RECIPIENT.match(text)
        if match is None:
            head = text[3:]
            mark = head.find("<")
            waiting = len(head) < 200 and not any(c.isspace() for c in head)
            if waiting and (mark < 0 or "<|message|>".startswith(head[mark:])) and not final:
                raise Incomplete  # the recipient's name or its `<|message|>` is on its way
            raise Malformed("not a recipient")
        if match.group(1) in ("user", "all", "self"):
            return Taken([], match.end())
        rest = skip_blanks(text, match.end())
        taken = super().take(text[rest:], final)
        return Taken(taken.calls, rest + taken.end)


@dataclass
class ArgKeys(Syntax):
    """GLM 4.5-4.7: `<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value></tool_call>`.

    A block a call. A block holding JSON (`<tool_call>{"name": ..., "arguments": ...}`) is read as
    Hermes writes it. The GLM-4 template vLLM ships asks for the tags but shows the conversation's
    calls as JSON, and the model writes what it was shown.
    """

    name: str = "glm"
    starts: tuple[str, ...] = ("<tool_call>",)
    ends: tuple[str, ...] = ("</tool_call>",)

    def take(self, text: str, final: bool) -> Taken:
        index = expect(text, 0, "<tool_call>")
        start = skip_blanks(text, index)
        if start >= len(text) and not final:
            raise Incomplete
        if text.startswith("{", start):
            value, end = json_at(text, start)
            return Taken([self.json_call(value)], closed(text, end, "</tool_call>", final))
        stop = [i for m in ("<arg_key>", "</tool_call>") if (i := text.find(m, index)) >= 0]
        if not stop:
            raise Incomplete
        name = text[index : min(stop)].strip()
        if not name or "\n" in name or "{" in name:
            raise Malformed("not a tool name")
        index = min(stop)
        arguments: dict[str, object] = {}
        while True:
            index = skip_blanks(text, index)
            if text.startswith("</tool_call>", index):
                return Taken([self.call(name, arguments)], index + len("</tool_call>"))
            if index >= len(text):
                if final:
                    return Taken([self.call(name, arguments)], index)
                raise Incomplete
            index = expect(text, index, "<arg_key>")
            key, index = until(text, index, "</arg_key>")
            index = expect(text, skip_blanks(text, index), "<arg_value>")
            raw, index = until(text, index, "</arg_value>")
            arguments[key.strip()] = self.typed(name, key.strip(), raw)

    def write(self, name: str, arguments: str) -> str:
        values = json.loads(arguments)
        pairs = "".join(
            f"<arg_key>{k}</arg_key>\n<arg_value>{_text(v)}</arg_value>\n"
            for k, v in values.items()
        )
        return f"<tool_call>{name}\n{pairs}</tool_call>"
