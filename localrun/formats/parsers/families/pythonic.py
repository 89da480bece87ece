"""Calls written as a Python list for the whole answer, with no marker around them.

An answer like `[get_weather(city="Paris"), get_time(tz="CET")]`. Llama 3.2 and Llama 4 pythonic,
Gemma 3 pythonic, ToolACE and OLMo 3 are asked for this by their templates: the ones vLLM ships for
its pythonic parser ("[func_name1(params_name1=params_value1, ...), func_name2(params)]").

Llama 4 may wrap the list in `<|python_start|>` ... `<|python_end|>`, special tokens whose end may
be missing; vLLM's Llama 4 parser reads that too.

As vLLM reads them, an answer that begins with `[` and a name followed by `(` is held until its list
closes. It is then read as calls, with values Python or JSON literals. One that does not begin so,
or whose list is not calls of the offered tools, is text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from localrun.formats.parsers import python
from localrun.formats.parsers.base import Incomplete, Malformed, Syntax, Taken, closed
from localrun.formats.parsers.stream import Balance

TAG, END = "<|python_start|>", "<|python_end|>"

# What the start of a list of calls looks like, as far as it has come: `[`, `[name`, `[name(`.
_OPENING = re.compile(r"\[\s*(?:[A-Za-z_][\w.]*\s*(?:\(|$)|$)")


@dataclass
class Pythonic(Syntax):
    name: str = "pythonic"
    leading: str = "["
    starts: tuple[str, ...] = (TAG,)
    special: tuple[str, ...] = (TAG, END)

    def take(self, text: str, final: bool) -> Taken:
        start = len(TAG) if text.startswith(TAG) else 0
        body = text[start:]
        if start and not body.strip() and not final:
            raise Incomplete
        if not _OPENING.match(body.lstrip() if start else body):
            raise Malformed("not a list of calls")
        end = _list_end(body)
        if end < 0:
            if final:
                raise Malformed("the list of calls never closes")
            raise Incomplete
        calls = python.calls(body[:end], self)
        return Taken(calls, closed(text, start + end, END, final, optional=True) if start else end)

    def write(self, name: str, arguments: str) -> str:
        values = json.loads(arguments)
        return f"[{name}({', '.join(f'{k}={json.dumps(v)}' for k, v in values.items())})]"


def _list_end(text: str) -> int:
    """The index after the `]` that closes the list `text` begins with, or -1 until it closes.

    Brackets in strings are not counted.
    """
    return Balance().feed(text)
