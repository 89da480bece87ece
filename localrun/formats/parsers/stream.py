"""An answer streamed with its tool calls taken out, in any family's syntax.

Text goes out as it comes until a block may begin: one of the syntax's `starts` markers, or a
`leading` character as the answer's first. From there it is held, and the calls of a block are
passed on as soon as it is complete: a Hermes block a call, a DeepSeek or Kimi section when it
closes. The text after them streams on. Whatever turns out not to be a call is released as text
after all, as it was written, blanks before it included. That is a malformed block, a tool nobody
offered, or a block cut off by the token limit.

A thought the answer writes itself is text: `verbatim`, `<think>` ... `</think>` where the runner
does not part reasoning off (a template that shows none, MiniMax-M1's). A call in it is one the
model considered, not one it made, as vLLM reads MiniMax's. The work is bounded (_ready), and after
_RELEASES blocks that were text after all, the stream stops looking for more.
"""

from __future__ import annotations

from typing import Any

from localrun.formats.parsers.base import (
    Incomplete,
    Malformed,
    Syntax,
    ToolCall,
    partial_marker,
)

_EAGER = 8  # tries of one block on every end marker before they are spaced out
# Blocks released as text before the stream stops looking for more: a model that writes
# call markers that are never calls (asked to repeat `<tool_call>`) costs one pass.
_RELEASES = 16


class Balance:
    """Counts open brackets outside strings, fed a piece at a time."""

    def __init__(self) -> None:
        self.depth = 0
        self.quote = ""  # the quote of the string we are in
        self.escaped = False
        self.closed = False  # the depth came back to zero since the last look

    def feed(self, text: str) -> int:
        """Count `text`, and return where the depth first came back to zero, or -1.

        The index is the one in `text` just after that bracket.
        """
        first = -1
        for index, char in enumerate(text):
            if self.quote:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == self.quote:
                    self.quote = ""
            elif char in "\"'":
                self.quote = char
            elif char in "[{(":
                self.depth += 1
            elif char in "]})" and self.depth > 0:
                self.depth -= 1
                if self.depth == 0:
                    self.closed = True
                    first = index + 1 if first < 0 else first
        return first


Event = tuple[str, Any]  # ("text", str), ("skip", str) or ("calls", [ToolCall, ...])


class CallStream:
    """Holds back what may be tool calls in a streamed answer; passes calls on whole.

    `events` gives what a piece released, in order: text to pass on, text that is nobody's
    (a call's block, blanks around it: the runner counts its tokens as gone), and calls."""

    def __init__(
        self,
        syntax: Syntax,
        *,
        forced: bool = False,
        primed: str = "",
        verbatim: tuple[str, str] | None = None,
    ) -> None:
        self.syntax = syntax
        self.verbatim = verbatim  # a thought's tags: what is between them is text
        self.in_thought = False
        # A forced answer is a call from its first character; a prompt that ends with a
        # start marker (Functionary's `>>>`) starts the answer inside a block.
        self.holding = forced or bool(primed)
        self.held = primed
        self.primed = primed  # the prompt's: never the answer's text
        self.pending = ""  # text that may be the start of a marker
        self.blanks = ""  # blanks before a block: its, unless it turns out to be text
        self._blank_pending = False  # `pending` is blanks alone
        self.started = False  # something other than blanks went out
        self.longest = max((len(m) for m in syntax.starts), default=0)
        self.releases = 0  # blocks that were text after all
        self._reset()
        self.found: list[ToolCall] = []  # every call passed on

    def _reset(self) -> None:
        self._balance = Balance()
        self._scanned = 0  # how far `held` was searched for an end marker
        self._tried_at = 0  # the held length at the last try that came to nothing
        self._tries = 0
        self._waiting = False  # a sign the block may be complete came while tries were spaced

    def feed(self, piece: str) -> tuple[str, list[ToolCall]]:
        """The text safe to pass on now and the calls completed by this piece."""
        return _joined(self.events(piece))

    def finish(self) -> tuple[str, list[ToolCall]]:
        """What is left to pass on at the end: text released and the last calls."""
        return _joined(self.events("", final=True))

    def events(self, piece: str, *, final: bool = False) -> list[Event]:
        """What `piece` releases, in order; with `final`, all that is left (the answer ended)."""
        out: list[Event] = []
        text = piece
        while text:
            text = self._hold(text, out) if self.holding else self._pass(text, out)
        if final:
            rest = self._take(out, final=True) if self.holding else ""
            while rest:
                rest = self._pass(rest, out)
                if self.holding:
                    self.held += rest
                    rest = self._take(out, final=True)
            if self.holding:  # blanks only
                out.append(("skip", self.held))
                self.holding, self.held = False, ""
            out.append(("text", self.pending))
            self.pending = ""
        return [event for event in out if event[1]]

    # -- text mode ----------------------------------------------------------------------------

    def _pass(self, text: str, out: list[Event]) -> str:
        """Passes text on up to a possible block; returns what is left for holding."""
        if self._blank_pending and text.isspace():  # a run of blanks: held, not re-read
            self.pending += text
            return ""
        text = self.pending + text
        self.pending, self._blank_pending = "", False
        if self.in_thought:
            return self._thought(text, out)
        if self.releases >= _RELEASES:  # a model writing markers that are never calls
            out.append(("text", text))
            return ""
        if not self.started:
            stripped = text.lstrip()
            if not stripped:  # only blanks yet: nobody's text
                out.append(("skip", text))
                return ""
            if stripped[0] in self.syntax.leading:
                self._start(text[: len(text) - len(stripped)], out)
                return stripped
        index = self._first_start(text)
        thought = text.find(self.verbatim[0]) if self.verbatim else -1
        if thought >= 0 and (index < 0 or thought < index):
            self._send(text[:thought], out)
            self.in_thought = True
            return self._thought(text[thought:], out)
        if index >= 0:
            before = text[:index]
            kept = before.rstrip()
            self._send(kept, out)
            self._start(before[len(kept) :], out)
            return text[index:]
        keep = self._partial(text)
        sent = text[: len(text) - keep]
        kept = sent.rstrip()  # blanks wait for what follows them: text, or a block
        self._send(kept, out)
        self.pending = sent[len(kept) :] + text[len(text) - keep :]
        self._blank_pending = keep == 0
        return ""

    def _send(self, text: str, out: list[Event]) -> None:
        if not self.started:
            # Blanks before anything are nobody's text.
            stripped = text.lstrip()
            out.append(("skip", text[: len(text) - len(stripped)]))
            if not stripped:
                return
            self.started, text = True, stripped
        out.append(("text", text))

    def _first_start(self, text: str, start: int = 0) -> int:
        found = [i for m in self.syntax.starts if (i := text.find(m, start)) >= 0]
        return min(found) if found else -1

    def _partial(self, text: str) -> int:
        markers = (*self.syntax.starts, self.verbatim[0]) if self.verbatim else self.syntax.starts
        return partial_marker(text, markers)

    def _thought(self, text: str, out: list[Event]) -> str:
        """Text in a thought goes out as text up to its close; returns what follows it."""
        assert self.verbatim is not None
        close = self.verbatim[1]
        end = text.find(close)
        if end >= 0:
            self.in_thought = False
            self._send(text[: end + len(close)], out)
            return text[end + len(close) :]
        keep = partial_marker(text, (close,))
        self._send(text[: len(text) - keep], out)
        self.pending = text[len(text) - keep :]
        return ""

    def _start(self, blanks: str, out: list[Event]) -> None:
        self.holding = True
        self.held = ""
        if self.started:
            self.blanks = blanks
        else:
            out.append(("skip", blanks))
            self.blanks = ""
        self._reset()

    # -- holding ------------------------------------------------------------------------------

    def _hold(self, text: str, out: list[Event]) -> str:
        """Add text to the held block, and try the block when it may be complete.

        It returns the text after the block, to pass on, once the block is done.
        """
        self.held += text
        if not self._ready(text):
            return ""
        return self._take(out, final=False)

    def _ready(self, text: str) -> bool:
        """Whether to try the block now.

        It is tried once as soon as it says more than its marker, so a block that is no call is let
        go at once. Then it is tried when an end marker arrives or its brackets balance again. After
        a few tries that came to nothing, it is tried again only once it has grown by a quarter. So
        a runaway block is read a bounded number of times; a sign that came in between is kept for
        then.
        """
        ends = self.syntax.ends
        hit = self._waiting or (self._tries == 0 and len(self.held.strip()) > self.longest)
        if ends:
            longest = max(len(m) for m in ends)
            start = max(0, self._scanned - longest + 1)
            self._scanned = len(self.held)
            hit = hit or any(self.held.find(m, start) >= 0 for m in ends)
        self._balance.feed(text)
        hit = hit or self._balance.closed
        self._balance.closed = False
        if not hit:
            return False
        if self._tries < _EAGER:
            return True
        self._waiting = len(self.held) < self._tried_at + max(64, self._tried_at // 4)
        return not self._waiting

    def _take(self, out: list[Event], *, final: bool) -> str:
        """Read calls from the held text, and return what follows them, to pass on.

        While the block is open it returns "", and the block stays held.
        """
        held = self.held
        block = held.lstrip()
        if not block:
            self.holding = not final
            return ""
        try:
            taken = self.syntax.take(block, final)
        except Incomplete:
            if not final:
                self._tried_at = len(held)
                self._tries += 1
                return ""
            return self._release(out)
        except Malformed:
            return self._release(out)
        self.found += taken.calls
        used = held[: len(held) - len(block) + taken.end]
        out.append(("skip", self.blanks + used.removeprefix(self.primed)))
        out.append(("calls", taken.calls))
        self.holding, self.held, self.blanks, self.primed = False, "", "", ""
        rest = block[taken.end :]
        if self.started:  # text after a call keeps its line break from the text before it
            return rest
        stripped = rest.lstrip()
        out.append(("skip", rest[: len(rest) - len(stripped)]))
        return stripped

    def _release(self, out: list[Event]) -> str:
        """Let a block that is no call go out as text, up to the next marker.

        It goes as written, with its blanks before it but not a marker the prompt wrote. A later
        block may still be a call.
        """
        held = self.held.removeprefix(self.primed)
        text = self.blanks + held
        self.holding, self.held, self.blanks, self.primed = False, "", "", ""
        self.releases += 1
        self.started = self.started or bool(text.strip())
        cut = self._first_start(held, 1)
        if cut < 0 or self.releases >= _RELEASES:
            out.append(("text", text))
            return ""
        out.append(("text", text[: len(text) - (len(held) - cut)]))
        return held[cut:]


def _joined(events: list[Event]) -> tuple[str, list[ToolCall]]:
    text = "".join(value for kind, value in events if kind == "text")
    calls = [call for kind, value in events if kind == "calls" for call in value]
    return text, calls
