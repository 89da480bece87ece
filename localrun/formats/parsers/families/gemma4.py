"""Gemma 4: `<|tool_call>call:NAME{city:<|"|>Paris<|"|>}<tool_call|>`, a block a call.

The arguments are Gemma's own object syntax, not JSON: keys bare (or quoted like strings,
as Gemma writes keys that are not names: `{<|"|>3<|"|>:...}`), strings between `<|"|>`
marks, numbers, booleans and null as written, arrays in brackets, objects nested, no spaces.
Reasoning is the `<|channel>thought` ... `<channel|>` section.

FunctionGemma writes the same syntax between other marks: `<start_function_call>call:NAME{
city:<escape>Paris<escape>}<end_function_call>` (`open`, `close`, `quote`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from localrun.formats.parsers.base import (
    Incomplete,
    Malformed,
    Syntax,
    Taken,
    expect,
    loads,
    until,
)

OPEN, CLOSE, QUOTE = "<|tool_call>", "<tool_call|>", '<|"|>'
_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
_RAW = re.compile(r"[^,}\]]+")
_DEPTH = 100


@dataclass
class Gemma4(Syntax):
    name: str = "gemma4"
    starts: tuple[str, ...] = (OPEN,)
    ends: tuple[str, ...] = (CLOSE,)
    special: tuple[str, ...] = (OPEN, CLOSE, QUOTE)
    open: str = OPEN
    close: str = CLOSE
    quote: str = QUOTE

    def take(self, text: str, final: bool) -> Taken:
        index = expect(text, 0, self.open)
        index = expect(text, index, "call:")
        name, index = until(text, index, "{")
        value, index = _value(text, index - 1, 0, self.quote)
        if not (final and index >= len(text)):
            index = expect(text, index, self.close)
        return Taken([self.call(name.strip(), value)], index)

    def write(self, name: str, arguments: str) -> str:
        return f"{self.open}call:{name}{_write(json.loads(arguments), self.quote)}{self.close}"

    def value_rules(self, rule: str, name: str, parameters: dict[str, Any]) -> list[str]:
        """The grammar of a forced call: its arguments in Gemma's syntax (flat values)."""
        keys = " | ".join(json.dumps(k) for k in (parameters.get("properties") or {}) or ["x"])
        quote = json.dumps(self.quote)
        text = f"([^{self.quote[0]}] | {json.dumps(self.quote[0])} [^{self.quote[1]}])*"
        value = f'{quote} {text} {quote} | [-0-9.eE]+ | "true" | "false" | "null"'
        head = json.dumps(f"{self.open}call:{name}{{")
        tail = json.dumps("}" + self.close)
        return [
            f'{rule}-kv ::= ({keys}) ":" ({value})',
            f'{rule} ::= {head} ({rule}-kv ("," {rule}-kv)*)? {tail}',
        ]


def _value(text: str, index: int, depth: int, quote: str) -> tuple[Any, int]:
    if depth > _DEPTH:
        raise Malformed("nested too deep")
    if index >= len(text):
        raise Incomplete
    if text.startswith(quote, index):
        return until(text, index + len(quote), quote)
    char = text[index]
    if char == "{":
        out: dict[str, Any] = {}
        index += 1
        while True:
            if index >= len(text):
                raise Incomplete
            if text[index] == "}":
                return out, index + 1
            if text.startswith(quote, index):  # a key quoted like a string (`<|"|>3<|"|>:`)
                key, index = until(text, index + len(quote), quote)
            else:
                match = _KEY.match(text, index)
                if match is None:
                    raise Malformed("not a key")
                key, index = match.group(), match.end()
            index = expect(text, index, ":")
            out[key], index = _value(text, index, depth + 1, quote)
            index = _comma(text, index, "}")
    if char == "[":
        items: list[Any] = []
        index += 1
        while True:
            if index >= len(text):
                raise Incomplete
            if text[index] == "]":
                return items, index + 1
            item, index = _value(text, index, depth + 1, quote)
            items.append(item)
            index = _comma(text, index, "]")
    match = _RAW.match(text, index)
    if match is None:
        raise Malformed("not a value")
    if match.end() >= len(text):
        raise Incomplete
    return loads(match.group()), match.end()


def _comma(text: str, index: int, close: str) -> int:
    if index >= len(text):
        raise Incomplete
    if text[index] == ",":
        return index + 1
    if text[index] != close:
        raise Malformed(f"expected ',' or {close!r}")
    return index


def _write(value: Any, quote: str) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_write(v, quote)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_write(v, quote) for v in value) + "]"
    if isinstance(value, str):
        return f"{quote}{value}{quote}"
    return json.dumps(value)
