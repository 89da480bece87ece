"""Functionary v3.2: the answer is a run of messages, each `>>>RECIPIENT`, a newline and a body.

`all` is text for the user, any other recipient a call with a JSON body. The prompt ends with the
first `>>>`, so the answer starts inside a block; the stream is primed with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from localrun.formats.parsers.base import Incomplete, Malformed, Syntax, Taken, json_at

MARK = ">>>"
_RECIPIENT = re.compile(r"([A-Za-z0-9_.\-]+)\n")


@dataclass
class Functionary(Syntax):
    name: str = "functionary"
    starts: tuple[str, ...] = (MARK,)
    ends: tuple[str, ...] = ("all\n",)  # text for the user follows: pass it on at once

    def take(self, text: str, final: bool) -> Taken:
        if not text.startswith(MARK):
            raise Malformed("not a message")
        match = _RECIPIENT.match(text, len(MARK))
        if match is None:
            if "\n" not in text[len(MARK) :] and not final:
                raise Incomplete
            raise Malformed("no recipient")
        if match.group(1) == "all":  # text for the user follows: the stream passes it on
            return Taken([], match.end())
        value, end = json_at(text, match.end())
        return Taken([self.call(match.group(1), value)], end)

    def write(self, name: str, arguments: str) -> str:
        return f"{MARK}{name}\n{arguments}"
