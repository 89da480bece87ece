"""What a client sent, made safe to put in a response header or a line of the server's log.

A client's text is anything JSON can carry. CR and LF in a header value make h11 drop the
connection without an answer, and anywhere that does not check, they split the answer. A
character outside Latin-1 cannot be encoded in a header at all (a 500). A newline in a log line
starts a line the client wrote: a forged "refused ..." or "loading ..." line (issue 76). So a
header gets printable ASCII only. A log line gets no control or format character, such as a
terminal's escape sequences and the bidirectional overrides that reorder what is shown. Each is
escaped as Python writes it (`\\r`, `\\x00`, `\\u202e`), so what was sent can still be read, and
both get a bounded length.

`OneLineFormatter` applies the log's rule to every line `localrun serve` logs, whoever logs it
(uvicorn's access log quotes the request's decoded path). The helpers here are for what is known
at the call site to come from a client.
"""

from __future__ import annotations

import logging

HEADER_LIMIT = 200  # characters of one client-given value in a header
LOG_LIMIT = 4000  # characters of one log line's message (a runner's stderr line included)


def for_log(text: str, limit: int = LOG_LIMIT) -> str:
    """`text` on one line: control and format characters escaped, at most `limit` characters.

    Past `limit`, it says how long the text was.
    """
    shown = text[:limit]
    if not shown.isprintable():
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)
    return _bounded(shown, limit, len(text))


def for_header(text: str, limit: int = HEADER_LIMIT) -> str:
    """`text` as printable ASCII for a header value, at most `limit` characters.

    Anything else is escaped, and so is a comma, which would split the value of a list header.
    """
    shown = "".join(c if " " <= c <= "~" and c != "," else _ascii(c) for c in text[:limit])
    return _bounded(shown.strip(), limit, len(text))


def _ascii(char: str) -> str:
    return "\\x2c" if char == "," else ascii(char)[1:-1]


def _bounded(shown: str, limit: int, length: int) -> str:
    """`shown` (the escaped start of a text of `length` characters) cut to `limit`."""
    if len(shown) <= limit and length <= limit:
        return shown
    return f"{shown[:limit]}... ({length} characters in all)"


class OneLineFormatter(logging.Formatter):
    """A log formatter whose every record's message is one line (for_log).

    What a request carried can neither start a line of its own nor send escape sequences to the
    terminal. A traceback (LOCALRUN_DEBUG) keeps its lines.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = for_log(record.message)
        return super().formatMessage(record)
