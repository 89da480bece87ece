"""An answer streamed with its tool calls taken out, in any family's syntax.

Text goes out as it comes until a block may begin (one of the syntax's `starts` markers, or a
`leading` character as the answer's first); from there it is held, and each call is passed on
as soon as its block is complete, so a client sees the first call while the model writes the
second. Whatever turns out not to be a call (malformed, a tool nobody offered, a block cut off
by the token limit) is released as text after all, as it was written.

Linear in the answer's length: a block is tried only when an end marker arrives, or, for the
syntaxes that end where their brackets balance, when they balance and the block has grown by a
quarter since the last try; nothing is re-read otherwise.
"""

from __future__ import annotations

from localrun.formats.parsers.base import Incomplete, Malformed, Syntax, ToolCall

_EAGER = 8  # tries of one block on every end marker before they are spaced out


class Balance:
    """Counts open brackets outside strings, fed a piece at a time."""

    def __init__(self) -> None:
        self.depth = 0
        self.quote = ""  # the quote of the string we are in
        self.escaped = False
        self.closed = False  # the depth came back to zero since the last look

    def feed(self, text: str) -> None:
        for char in text:
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


class CallStream:
    """Holds back what may be tool calls in a streamed answer; passes calls on whole."""

    def __init__(self, syntax: Syntax, *, forced: bool = False, primed: str = "") -> None:
        self.syntax = syntax
        # A forced answer is a call from its first character; a prompt that ends with a
        # start marker (Functionary's `>>>`) starts the answer inside a block.
        self.holding = forced or bool(primed)
        self.held = primed
        self.pending = ""  # text that may be the start of a marker
        self.started = False  # something other than blanks went out
        self.longest = max((len(m) for m in syntax.starts), default=0)
        self._balance = Balance()
        self._scanned = 0  # how far `held` was searched for an end marker
        self._tried_at = 0  # the held length at the last try that came to nothing
        self._tries = 0
        self.found: list[ToolCall] = []  # every call passed on

    def feed(self, piece: str) -> tuple[str, list[ToolCall]]:
        """The text safe to pass on now and the calls completed by this piece."""
        out: list[str] = []
        calls: list[ToolCall] = []
        text = piece
        while text:
            text = self._hold(text, calls, out) if self.holding else self._pass(text, out)
        return "".join(out), calls

    def finish(self) -> tuple[str, list[ToolCall]]:
        """What is left to pass on at the end: text released and the last calls."""
        out: list[str] = []
        calls: list[ToolCall] = []
        rest = self._take(calls, out, final=True) if self.holding else ""
        while rest:
            rest = self._pass(rest, out)
            if self.holding:
                self.held += rest
                rest = self._take(calls, out, final=True)
        if self.holding:  # blanks only
            self.holding, self.held = False, ""
        out.append(self.pending)
        self.pending = ""
        return "".join(out), calls

    # -- text mode ----------------------------------------------------------------------------

    def _pass(self, text: str, out: list[str]) -> str:
        """Passes text on up to a possible block; returns what is left for holding."""
        text = self.pending + text
        self.pending = ""
        if not self.started:
            stripped = text.lstrip()
            if not stripped:
                self.pending = text  # only blanks yet: hold them too
                return ""
            if stripped[0] in self.syntax.leading:
                self._start()
                return stripped
        index = self._first_start(text)
        if index >= 0:
            self._send(text[:index].rstrip(), out)  # the blanks before a block are its
            self._start()
            return text[index:]
        keep = self._partial(text)
        sent = text[: len(text) - keep]
        kept = sent.rstrip()  # blanks wait for what follows them: text, or a block
        self._send(kept, out)
        self.pending = sent[len(kept) :] + text[len(text) - keep :]
        return ""

    def _send(self, text: str, out: list[str]) -> None:
        if not self.started:
            if not text.strip():
                return  # blanks before a block or before anything: nobody's text
            self.started = True
        out.append(text)

    def _first_start(self, text: str, start: int = 0) -> int:
        found = [i for m in self.syntax.starts if (i := text.find(m, start)) >= 0]
        return min(found) if found else -1

    def _partial(self, text: str) -> int:
        for size in range(min(self.longest - 1, len(text)), 0, -1):
            tail = text[-size:]
            if any(m.startswith(tail) for m in self.syntax.starts):
                return size
        return 0

    def _start(self) -> None:
        self.holding = True
        self.held = ""
        self._balance = Balance()
        self._scanned = 0
        self._tried_at = 0
        self._tries = 0

    # -- holding ------------------------------------------------------------------------------

    def _hold(self, text: str, calls: list[ToolCall], out: list[str]) -> str:
        """Adds text to the held block and tries it when it may be complete. Returns the
        text after the block, to pass on, once the block is done."""
        self.held += text
        if not self._ready(text):
            return ""
        return self._take(calls, out, final=False)

    def _ready(self, text: str) -> bool:
        """Whether the block may be complete: an end marker arrived, or its brackets balance
        again. After a few tries that came to nothing, a block is tried again only once it has
        grown by a quarter, so a runaway block costs a bounded number of reads of itself."""
        ends = self.syntax.ends
        hit = False
        if ends:
            longest = max(len(m) for m in ends)
            start = max(0, self._scanned - longest + 1)
            self._scanned = len(self.held)
            hit = any(self.held.find(m, start) >= 0 for m in ends)
        self._balance.feed(text)
        hit = hit or self._balance.closed
        self._balance.closed = False
        if not hit:
            return False
        if self._tries < _EAGER:
            return True
        return len(self.held) >= self._tried_at + max(64, self._tried_at // 4)

    def _take(self, calls: list[ToolCall], out: list[str], *, final: bool) -> str:
        """Reads calls from the held text. Returns what follows them, to pass on; while the
        block is open, "" (it stays held)."""
        block = self.held.lstrip()
        if not block:
            self.holding = not final
            return ""
        try:
            taken = self.syntax.take(block, final)
        except Incomplete:
            if not final:
                self._tried_at = len(self.held)
                self._tries += 1
                return ""
            return self._release(block, out)
        except Malformed:
            return self._release(block, out)
        calls += taken.calls
        self.found += taken.calls
        self.holding, self.held = False, ""
        rest = block[taken.end :]
        # Text after a call keeps its line break from the text before it, if there was any.
        return rest if self.started else rest.lstrip()

    def _release(self, block: str, out: list[str]) -> str:
        """A block that is no call goes out as text, as written, up to the next marker (a
        later block may still be a call)."""
        self.holding, self.held = False, ""
        self.started = True
        cut = self._first_start(block, 1)
        if cut < 0:
            out.append(block)
            return ""
        out.append(block[:cut])
        return block[cut:]
