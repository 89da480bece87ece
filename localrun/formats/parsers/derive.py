"""A call syntax read from a template's own rendering of a call, for families no row knows.

As llama.cpp's chat-diff-analyzer does: render an assistant turn with a tool call and the same
turn without it; what the call added is the call as the model was trained to write it. Where
the probe's name and argument value sit in that text gives the shape:

- a JSON object holding the name and the arguments (`{"name": N, "arguments": {...}}`, maybe
  in a list) between an opening and a closing marker: `Wrapped` with those keys;
- the name, then JSON arguments (`<<call>>NAME|{...}<</call>>`): `Named`;
- the name, then parameters written as tags around each value (`<p=KEY>VALUE</p>`): `Tagged`.

A template that shows no calls (adapt's probe) or whose rendering fits none of these gets None:
the Hermes syntax the tool note asks for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from localrun.formats.parsers.base import (
    DECODER,
    Family,
    Incomplete,
    Syntax,
    Taken,
    ToolCall,
    closed,
    expect,
    json_at,
    skip_blanks,
    until,
)
from localrun.formats.parsers.wrapped import Wrapped

NAME, KEY, VALUE = "probe_tool_name", "probe_arg", "PROBE_VALUE_7"
KEY2, VALUE2 = "probe_second", "PROBE_VALUE_8"  # a second parameter shows what parts two


_CDATA = "<![CDATA["


@dataclass
class Named(Syntax):
    """`OPEN NAME SEP {json} CLOSE`."""

    open: str = ""
    sep: str = ""
    close: str = ""

    def take(self, text: str, final: bool) -> Taken:
        index = expect(text, 0, self.open)
        name, index = until(text, index, self.sep) if self.sep.strip() else _name(text, index)
        value, index = json_at(text, index)
        return Taken(
            [self.call(name.strip(), value)], closed(text, index, self.close.strip(), final)
        )

    def write(self, name: str, arguments: str) -> str:
        return f"{self.open}{name}{self.sep}{arguments}{self.close}"


@dataclass
class Tagged(Syntax):
    """`OPEN (CALL_OPEN NAME HEAD (P_OPEN KEY P_MID VALUE P_CLOSE)* CALL_CLOSE)+ CLOSE`.

    The calls sit in a wrapper (OPEN ... CLOSE) where the template writes one, else a block a call.
    """

    open: str = ""  # the wrapper's, or ""
    call_open: str = ""
    head: str = ""  # between the name and the first parameter
    p_open: str = ""
    p_mid: str = ""
    p_close: str = ""
    call_close: str = ""
    close: str = ""  # the wrapper's, or ""

    def take(self, text: str, final: bool) -> Taken:
        index = expect(text, 0, self.open.strip()) if self.open.strip() else 0
        close = self.close.strip()
        calls: list[ToolCall] = []
        while True:
            index = skip_blanks(text, index)
            if calls and (not close or text.startswith(close, index)):
                return Taken(calls, index + len(close))
            if index >= len(text) or (close and close.startswith(text[index:])):
                if final and calls:  # the end of the answer cut the close (an end-of-turn)
                    return Taken(calls, len(text))
                raise Incomplete
            call, index = self._call(text, index, final)
            calls.append(call)

    def _call(self, text: str, index: int, final: bool) -> tuple[ToolCall, int]:
        index = expect(text, index, self.call_open.strip())
        if self.head.strip():
            name, index = _through(text, index, self.head)
        else:
            name, index = _name(text, index)
        arguments: dict[str, Any] = {}
        end, p_close = self.call_close.strip(), self.p_close.strip()
        while True:
            index = skip_blanks(text, index)
            if end and text.startswith(end, index):
                return self.call(name.strip(), arguments), index + len(end)
            if index >= len(text) or (end and end.startswith(text[index:])):
                if final:  # the end of the answer cut the close (an end-of-turn token in it)
                    return self.call(name.strip(), arguments), len(text)
                raise Incomplete
            index = expect(text, index, self.p_open.strip())
            key, index = _through(text, index, self.p_mid)
            raw, index = until(text, index, p_close)
            raw = raw.strip("\n")
            if raw.startswith(_CDATA) and raw.endswith("]]>"):  # text as it is (MiniCPM 5)
                arguments[key.strip()] = raw[len(_CDATA) : -3]
            else:
                arguments[key.strip()] = self.typed(name.strip(), key.strip(), raw)

    def write(self, name: str, arguments: str) -> str:
        values = json.loads(arguments)
        params = "".join(
            f"{self.p_open}{k}{self.p_mid}{v if isinstance(v, str) else json.dumps(v)}"
            f"{self.p_close}"
            for k, v in values.items()
        )
        call = f"{self.call_open}{name}{self.head}{params}{self.call_close}"
        return f"{self.open}{call}{self.close}"


def _through(text: str, index: int, glue: str) -> tuple[str, int]:
    """The text up to `glue`, and the index after it.

    The text there may differ from the glue the probe showed. What lies between the glue's first and
    last characters may vary with the value's type or the call's place (`" string="false">`,
    `" index="2"<|sep|>`).
    """
    found, start = until(text, index, glue[0])
    start -= 1  # at the glue's first character
    if text.startswith(glue, start):
        return found, start + len(glue)
    if glue.startswith(text[start:]):
        raise Incomplete
    if len(glue) == 1:
        return found, start + 1
    _, end = until(text, start + 1, glue[-1])
    return found, end


def _name(text: str, index: int) -> tuple[str, int]:
    """A name that runs up to the JSON after it."""
    end = index
    while end < len(text) and (text[end].isalnum() or text[end] in "_.-"):
        end += 1
    if end >= len(text):
        raise Incomplete
    return text[index:end], end


# The probe: a user turn, then an assistant turn with (and without) a call of this tool.
PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": NAME,
        "parameters": {
            "type": "object",
            "properties": {KEY: {"type": "string"}, KEY2: {"type": "string"}},
        },
    },
}
PROBE_CALL = {
    "id": "call0001A",
    "type": "function",
    "function": {"name": NAME, "arguments": {KEY: VALUE, KEY2: VALUE2}},
}
PROBE_TURNS = (
    {"role": "assistant", "content": "", "tool_calls": [PROBE_CALL]},
    {"role": "assistant", "content": ""},
    # Two calls: what the second adds is a call alone, without the wrapper around both.
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [PROBE_CALL, {**PROBE_CALL, "id": "call0002B"}],
    },
)


def family(with_call: str, without: str, with_two: str = "") -> Family | None:
    """The family that the probe's renderings show, or None if the call's text fits no shape.

    formats/template.py makes the renderings: with one call, with none, with two.
    """
    added = _added(with_call, without)
    # An id the template writes into the call's markers is not a model's to repeat.
    if NAME not in added or VALUE not in added or "call0001A" in added:
        return None
    syntax = _shape(added)
    if isinstance(syntax, Tagged) and with_two:
        syntax = _wrapped_calls(syntax, _added(with_two, with_call))
    return None if syntax is None else Family(f"derived:{syntax.name}", (), syntax)


def _wrapped_calls(syntax: Tagged, second: str) -> Tagged:
    """Tags whose calls share a wrapper, as DeepSeek's DSML `function_calls` does.

    What a second call adds is one call, so the first call's opening and closing split into the
    wrapper's and the call's. Without a wrapper the syntax stays a block a call.
    """
    name_at = second.find(NAME)
    if name_at < 0:
        return syntax
    call_open = second[:name_at].strip()
    call_close = second[second.rfind(syntax.p_close.strip()) + len(syntax.p_close.strip()) :]
    call_close = call_close.strip()
    opening, closing = syntax.call_open, syntax.call_close.strip()
    if not call_open or not opening.endswith(call_open) or not closing.startswith(call_close):
        return syntax
    wrap_open = opening[: len(opening) - len(call_open)].strip()
    wrap_close = closing[len(call_close) :].strip()
    if not wrap_open or not wrap_close:
        return syntax
    return replace(
        syntax,
        starts=(wrap_open,),
        ends=(wrap_close,),
        open=wrap_open,
        call_open=call_open,
        call_close=call_close,
        close=wrap_close,
    )


def _added(longer: str, shorter: str) -> str:
    """What `longer` adds to `shorter`, widened to whole markers.

    The common prefix and suffix may end inside one: `<` of `<tool_call>` is shared with
    `<|im_end|>`.
    """
    start = 0
    while start < min(len(longer), len(shorter)) and longer[start] == shorter[start]:
        start += 1
    end = 0
    while end < len(shorter) - start and longer[-1 - end] == shorter[-1 - end]:
        end += 1
    # (A header's colon before a blank ends a marker too: Granite 20B FC's `ASSISTANT:` is the
    # turn's, whatever the turn holds, not the call's.)
    while start > 0 and longer[start - 1] not in _BOUNDARY:
        if longer[start - 1] == ":" and longer[start].isspace():
            break
        start -= 1
    added = longer[start : len(longer) - end].rstrip()
    last = max(added.rfind(c) for c in _BOUNDARY)
    if last >= 0 and not any(c.isalnum() for c in added[last + 1 :]):
        added = added[: last + 1]
    return added.strip()


_BOUNDARY = ">]}\n "


def _shape(added: str) -> Syntax | None:
    """The syntax of the probe's call text: JSON with the name, name then JSON, or tags."""
    name_at, value_at = added.find(NAME), added.find(VALUE)
    outer = _object_around(added, name_at)
    if outer is not None:  # {"name": N, "arguments": {...}} between markers
        return _json_shape(added, *outer)
    head = added[:name_at]
    if not head.strip() or value_at < name_at:
        return None
    args = _object_around(added, value_at)
    if args is not None:  # NAME then {...}
        start, end, _ = args
        return Named(
            name="named",
            starts=(head.strip(),),
            ends=(added[end:].strip(),) if added[end:].strip() else (),
            open=head.strip(),
            sep=added[name_at + len(NAME) : start],
            close=added[end:],
        )
    return _tagged_shape(added, name_at + len(NAME), value_at)


def _json_shape(added: str, start: int, end: int, value: dict[str, Any]) -> Syntax | None:
    name_key = next((k for k, v in value.items() if v == NAME), None)
    args_key = next(
        (k for k, v in value.items() if isinstance(v, (dict, str)) and k != name_key), None
    )
    if name_key is None or args_key is None:
        return None
    head, tail = added[:start].strip(), added[end:].strip()
    as_list = head.endswith("[") and tail.startswith("]")
    if as_list:
        head, tail = head[:-1].strip(), tail[1:].strip()
    if not head:
        return None  # bare JSON: the Hermes fallback reads it already
    return Wrapped(
        name="json",
        starts=(head,),
        ends=(tail,) if tail else (),
        open=head,
        close=tail,
        name_key=name_key,
        argument_keys=(args_key,),
        as_list=as_list,
    )


def _tagged_shape(added: str, name_end: int, value_at: int) -> Syntax | None:
    """One tag per parameter, read from what a call adds.

    The second parameter's opening ends the first's closing, and what follows the second value past
    the same closing is the call's.
    """
    key_at = added.find(KEY, name_end)
    if key_at < 0 or key_at > value_at:
        return None
    p_open_at = added.rfind("<", name_end, key_at)
    if p_open_at < 0:
        return None
    p_open = added[p_open_at:key_at]
    value_end = value_at + len(VALUE)
    key2_at = added.find(KEY2, value_end)
    second = added.find(p_open, value_end)
    value2_at = added.find(VALUE2, value_end)
    if key2_at < 0 or second < 0 or second + len(p_open) != key2_at or value2_at < 0:
        return None
    p_close = added[value_end:second]
    after = value2_at + len(VALUE2)
    if not p_close.strip() or not added.startswith(p_close.rstrip(), after):
        return None
    close = added[after + len(p_close.rstrip()) :]
    head = added[: name_end - len(NAME)]
    return Tagged(
        name="tagged",
        starts=(head.strip(),),
        ends=(close.strip(),) if close.strip() else (),
        call_open=head.strip(),
        head=added[name_end:p_open_at],
        p_open=p_open,
        p_mid=added[key_at + len(KEY) : value_at],
        p_close=p_close,
        call_close=close,
    )


def _object_around(text: str, index: int) -> tuple[int, int, dict[str, Any]] | None:
    """The innermost JSON object holding `index`: (start, end, value)."""
    start = text.rfind("{", 0, index)
    while start >= 0:
        try:
            value, end = DECODER.raw_decode(text, start)
        except ValueError:
            value, end = None, -1
        if isinstance(value, dict) and end > index:
            return start, end, value
        start = text.rfind("{", 0, start)
    return None
