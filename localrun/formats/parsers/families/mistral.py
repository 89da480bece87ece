"""Mistral: `[TOOL_CALLS]`, then a JSON list of calls, or one call as `NAME[ARGS]{...}`.

v3 to Nemo write a JSON list, with 9-character ids. From the v11 tokenizer on (Small 3.2, Devstral,
Magistral), each call is `NAME[ARGS]{...}` after its own `[TOOL_CALLS]`, and an id may come in
`[CALL_ID]`. Magistral reasons in `[THINK]` ... `[/THINK]`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from localrun.formats.parsers.base import Incomplete, Malformed, Syntax, Taken, json_at, skip_blanks

CALLS, ARGS, CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclass
class Mistral(Syntax):
    name: str = "mistral"
    starts: tuple[str, ...] = (CALLS,)
    special: tuple[str, ...] = (CALLS, ARGS, CALL_ID, "[THINK]", "[/THINK]")
    named: bool = False  # v11: NAME[ARGS]{...}

    def take(self, text: str, final: bool) -> Taken:
        index = skip_blanks(text, len(CALLS))
        if index >= len(text):
            raise Incomplete
        if text[index] == "[":
            value, end = json_at(text, index)
            if not isinstance(value, list):
                raise Malformed("not a list of calls")
            return Taken([self.json_call(v) for v in value], end)
        match = _NAME.match(text, index)
        if match is None:
            raise Malformed("no tool name")
        index = match.end()
        if index >= len(text):
            raise Incomplete
        if text.startswith(CALL_ID, index):
            found = text.find(ARGS, index)
            if found < 0:
                raise Incomplete
            index = found
        if not text.startswith(ARGS, index):
            if ARGS.startswith(text[index:]):
                raise Incomplete
            raise Malformed("no [ARGS]")
        value, end = json_at(text, index + len(ARGS))
        return Taken([self.call(match.group(), value)], end)

    def write(self, name: str, arguments: str) -> str:
        if self.named:
            return f"{CALLS}{name}{ARGS}{arguments}"
        return f'{CALLS}[{{"name": {json.dumps(name)}, "arguments": {arguments}}}]'
