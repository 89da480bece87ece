"""What every family's tool-call syntax is made of, and the pieces its parser is built from.

A syntax reads one block of an answer, and returns the calls in it and where the block ended. A
block starts at one of its `starts` markers or, for the families that answer with bare JSON, at one
of its `leading` characters at the very start. It raises `Incomplete` when the text stops before the
block does: more may come, or at the end of the answer the block was cut off. It raises `Malformed`
when the text is not a call after all: then it is the answer's text, as it was written. `write`
gives a call as the family writes it, for the grammar of a forced call.

The families' parsers are small because the work they share is here: JSON read where it starts
(bounded in depth), a call's name checked against the tools, XML-style parameter values typed by the
tool's JSON schema (Python-style calls: python.py).

Pure: no I/O, no llama_cpp.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from typing import Any

from localrun.errors import BadRequestError
from localrun.request import jsonlimits

Tool = dict[str, Any]
ToolCall = dict[str, Any]

DECODER = json.JSONDecoder()


class Incomplete(Exception):
    """The text ends inside a block: wait for more, or (at the end) it was cut off."""


class Malformed(Exception):
    """The block is not a call: its text belongs to the answer."""


@dataclass
class Taken:
    """The calls a block held and how far into the text it reached."""

    calls: list[ToolCall]
    end: int


@dataclass
class Syntax:
    """One family's way of writing tool calls. Subclasses implement `take` (and `write`)."""

    name: str = ""
    starts: tuple[str, ...] = ()  # markers that open a block anywhere in the answer
    leading: str = ""  # characters that open a block when the answer starts with them
    # Markers after which a block may be complete: the stream tries `take` when one arrives.
    # Without any, it tries when the brackets of the block balance.
    ends: tuple[str, ...] = ()
    # Markers the model writes as special tokens: the engine spells them out for the parser.
    special: tuple[str, ...] = ()
    # A marker inside a call, after a header of its own, from which a strict tool's call is
    # held to its grammar under tool_choice "auto" (gpt-oss's `to=functions.`), where no
    # marker of `starts` opens the call.
    opens: str = ""
    tools: list[Tool] = field(default_factory=list)  # set per request (for typing values)

    def with_tools(self, tools: list[Tool]) -> Syntax:
        """This syntax reading calls of `tools` (their names checked, their values typed)."""
        return replace(self, tools=tools)

    def take(self, text: str, final: bool) -> Taken:
        raise NotImplementedError

    def call_tags(self) -> tuple[str, ...]:
        """The start markers that are whole tags (`<tool_call>`, not `{"name"` or `to=`).

        A thought may end at one of them (formats/reasoning.py's Splitter).
        """
        return tuple(m for m in self.starts if _TOKEN.fullmatch(m))

    def write(self, name: str, arguments: str) -> str:
        """One call as the family writes it, `arguments` being JSON text of an object."""
        raise NotImplementedError

    def value_rules(self, rule: str, name: str, parameters: dict[str, Any]) -> list[str] | None:
        """GBNF rules for a forced call, for a family whose arguments JSON and tags cannot give.

        `rule` names the call's rule; Gemma 4 needs these rules. None means
        worker/grammars/forced.py builds them from `write`.
        """
        return None

    # -- helpers the families share -------------------------------------------------------

    def call(self, name: Any, arguments: Any) -> ToolCall:
        """A checked call: a known tool's name and an object of arguments (else Malformed)."""
        if not isinstance(name, str) or not name:
            raise Malformed("no tool name")
        known = [str(t["function"]["name"]) for t in self.tools]
        if known and name not in known:
            raise Malformed(f"{name!r} is not among the tools")
        if isinstance(arguments, str):
            arguments = loads(arguments) if arguments.strip() else {}
        if not isinstance(arguments, dict):
            raise Malformed("arguments are not an object")
        return {"name": name, "arguments": arguments}

    def json_call(self, value: Any, *keys: str) -> ToolCall:
        """A call from a JSON object {"name": ..., <one of keys>: {...}}.

        OpenAI's {"function": {...}} wrapping of it is read too.
        """
        if isinstance(value, dict) and isinstance(value.get("function"), dict):
            value = value["function"]
        if not isinstance(value, dict):
            raise Malformed("a call is not an object")
        for key in keys or ("arguments", "parameters"):
            if key in value:
                return self.call(value.get("name"), value[key])
        raise Malformed("a call without arguments")

    def parameters(self, tool: str) -> dict[str, Any]:
        """The parameter schema of a tool ({} where it has none or is not among the tools)."""
        for entry in self.tools:
            function = entry["function"]
            if function["name"] == tool:
                found = function.get("parameters")
                return found if isinstance(found, dict) else {}
        return {}

    def schema_type(self, tool: str, parameter: str) -> str | None:
        """The JSON schema type of one parameter of a tool, if the tool says."""
        props = self.parameters(tool).get("properties", {})
        spec = props.get(parameter) if isinstance(props, dict) else None
        kind = spec.get("type") if isinstance(spec, dict) else None
        return kind if isinstance(kind, str) else None

    def typed(self, tool: str, parameter: str, raw: str) -> Any:
        """An XML-style parameter's text as the value its schema asks for.

        A string stays text; numbers, booleans, objects and arrays are read as JSON where they
        parse.
        """
        kind = self.schema_type(tool, parameter)
        if kind == "string":
            return raw
        try:
            return loads(raw)
        except Malformed:
            return raw


def loads(text: str) -> Any:
    """JSON text as a value, bounded in depth; Malformed if it is not JSON."""
    try:
        return jsonlimits.loads(text, "a tool call")
    except (ValueError, BadRequestError) as exc:
        raise Malformed(str(exc)) from None


def json_at(text: str, index: int) -> tuple[Any, int]:
    """The JSON value starting at `index`, after blanks, and where it ends.

    Raises Incomplete if the text stops inside it, Malformed if it is not JSON.
    """
    start = skip_blanks(text, index)
    if start >= len(text):
        raise Incomplete
    if text[start] not in '{["-0123456789tfn':
        raise Malformed("not JSON")
    try:
        value, end = DECODER.raw_decode(text, start)
    except RecursionError:
        raise Malformed("nested too deep") from None
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            raise Incomplete from None
        raise Malformed(exc.msg) from None
    try:
        jsonlimits.check_depth(value, "a tool call")
    except BadRequestError as exc:
        raise Malformed(str(exc)) from None
    return value, end


def partial_marker(text: str, markers: tuple[str, ...] | list[str]) -> int:
    """The length of the longest end of `text` that is the start of one of `markers`.

    Only ends shorter than the longest marker count. It is what a stream holds back: the rest of a
    marker may come with the next piece. It runs in time linear in the longest marker's length,
    however long a marker (a stop sequence) is: Knuth-Morris-Pratt over the last of the text.
    """
    longest = max((len(m) for m in markers), default=0)
    limit = min(longest - 1, len(text))
    if limit <= 0:
        return 0
    tail = text[len(text) - limit :]
    return max(_overlap(tail, m, limit) for m in markers)


def _overlap(tail: str, marker: str, limit: int) -> int:
    """The longest end of `tail`, at most `limit` long, that starts `marker`."""
    if not marker:
        return 0
    if marker.startswith(tail):  # the usual case of a long one: the marker so far
        return len(tail)
    chars, borders = _borders(marker)
    state = 0  # the longest end of what was read that starts the marker
    for char in tail:
        while state and chars[state] != char:
            state = borders[state - 1]
        if chars[state] == char:
            state += 1
    while state > limit:  # every end that starts the marker is on this chain of borders
        state = borders[state - 1]
    return state


@lru_cache(maxsize=32)
def _borders(marker: str) -> tuple[tuple[str | None, ...], tuple[int, ...]]:
    """The marker's characters and a None, and Knuth-Morris-Pratt's table for it.

    The None stands for a whole marker read: read on. The table holds, for each start of `marker`,
    its longest proper end that is also a start of it.
    """
    table = [0] * len(marker)
    size = 0
    for i in range(1, len(marker)):
        while size and marker[i] != marker[size]:
            size = table[size - 1]
        if marker[i] == marker[size]:
            size += 1
        table[i] = size
    return (*marker, None), tuple(table)


def skip_blanks(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def expect(text: str, index: int, marker: str) -> int:
    """The index after `marker` at `index`; Incomplete if the text stops inside it."""
    if text.startswith(marker, index):
        return index + len(marker)
    rest = text[index:]
    if marker.startswith(rest):
        raise Incomplete
    raise Malformed(f"expected {marker!r}")


def closed(text: str, end: int, close: str, final: bool, *, optional: bool = False) -> int:
    """Where a block whose body ends at `end` ends: after `close`, blanks before it allowed.

    Raises Incomplete while `close` may still come. At the answer's end, or when `optional`, a
    missing one is forgiven; else it raises Malformed.
    """
    if not close:
        return end
    after = skip_blanks(text, end)
    if text.startswith(close, after):
        return after + len(close)
    rest = text[after:]
    if not final and (not rest or close.startswith(rest)):
        raise Incomplete
    if optional or final:
        return end  # the model ended the answer (or the block) without it
    raise Malformed(f"no {close!r} after the call")


def until(text: str, index: int, marker: str) -> tuple[str, int]:
    """The text from `index` up to `marker`, and the index after the marker."""
    found = text.find(marker, index)
    if found < 0:
        raise Incomplete
    return text[index:found], found + len(marker)


THINK = ("<think>", "</think>")
# What a special token inside a marker looks like: `<|role_sep|>`, `<｜DSML｜invoke`'s head,
# `[TOOL_CALLS]` (only the ones the vocabulary has as special tokens are spelled out).
_TOKEN = re.compile(r"<[^<>\s]{1,64}>|\[[A-Z_]{2,32}\]")


@dataclass(frozen=True)
class Family:
    """One family's formats and the template markers that tell it."""

    name: str
    markers: tuple[str, ...]
    syntax: Syntax
    think: tuple[str, str] = THINK  # its reasoning section's open and close tags
    drop: tuple[str, ...] = ()  # markers around the answer that are nobody's text
    harmony: bool = False  # gpt-oss: channels part reasoning, answer and calls
    special: tuple[str, ...] = field(default=())  # reasoning markers that are special tokens
    # Special tokens that tell the family from the vocabulary when the template shows no
    # calls (Phi-4-mini's template never writes its `<|tool_call|>`): all of them.
    tokens: tuple[str, ...] = ()

    def spelled(self) -> tuple[str, ...]:
        """The markers the engine must spell out for this family's parser to see them.

        Those are the markers named, and the tokens inside its syntax's markers: a derived syntax's
        `function call<|role_sep|>` holds one.
        """
        pieces: set[str] = set()
        for entry in fields(self.syntax):
            value = getattr(self.syntax, entry.name)
            for text in value if isinstance(value, tuple) else (value,):
                if isinstance(text, str) and entry.name != "name":
                    pieces.update(_TOKEN.findall(text))
        named = (*self.syntax.special, *self.special, *self.think, *self.drop)
        return (*named, *sorted(pieces - set(named)))
