"""What a runner does to an answer on its way out, up to the events it writes.

A reasoning model's thinking is split off. Stop strings and tool calls are held back and
applied. Log-probabilities are sent with the text of their tokens.

The engine calls a RequestSink on its own thread for each piece of text; the sink writes piece
events and, once, the final done or error event.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from localrun.engine.types import Ticket, Timings
from localrun.errors import EngineError, LocalrunError
from localrun.formats import reasoning as reasoning_mod
from localrun.formats.parsers.base import partial_marker
from localrun.formats.parsers.families.harmony import HarmonyStream
from localrun.formats.parsers.stream import CallStream
from localrun.settings import config
from localrun.worker import protocol
from localrun.worker.prompt import Prepared

RequestId = protocol.RequestId


class Output(Protocol):
    """Where events go: the runner process's event stream, or a reader in this process."""

    broken: bool  # the reader went away: nothing more can be delivered

    def send(self, message: protocol.Message) -> None: ...


def unexpected(exc: BaseException) -> LocalrunError:
    """A bug or a native failure as an error the scheduler can pass on (traceback if debugging)."""
    if config.debug():
        traceback.print_exception(exc)
    return EngineError(f"the runner failed: {type(exc).__name__}: {exc}")


class StopFilter:
    """Applies stop strings to streamed text, holding back what could start one.

    `feed` returns the text that is safe to pass on; once a stop string appears, `hit` is set
    and everything from it on is dropped. `flush` releases what was held at the end.
    """

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.pending = ""
        self.hit = False
        self.matched: str | None = None  # the stop string that was hit

    def feed(self, piece: str) -> str:
        if self.hit:
            return ""
        if not self.stops:
            return piece
        pending = self.pending + piece
        hits = [(index, s) for s in self.stops if (index := pending.find(s)) >= 0]
        if hits:
            index, self.matched = min(hits, key=lambda hit: hit[0])
            self.hit, self.pending = True, ""
            return pending[:index]
        # Keep the longest tail that is still a prefix of some stop sequence.
        keep = partial_marker(pending, self.stops)
        self.pending = pending[len(pending) - keep :]
        return pending[: len(pending) - keep]

    def flush(self) -> str:
        out, self.pending = ("" if self.hit else self.pending), ""
        return out


def new_splitter(prepared: Prepared) -> reasoning_mod.Splitter | HarmonyStream:
    """What parts a prepared request's reasoning from its answer, in its family's tags."""
    if prepared.channels:
        return HarmonyStream(prepared.tool_syntax)
    family = prepared.family
    open_, close = family.think
    syntax = prepared.tool_syntax
    return reasoning_mod.Splitter(
        inside=prepared.thinking_open,
        open=open_,
        close=close,
        drop=family.drop,
        calls=syntax.call_tags() if syntax is not None else (),
    )


class RequestSink:
    """One generation's output: reasoning split off, stop strings and calls read, events sent."""

    def __init__(
        self,
        output: Output,
        id: RequestId,
        prepared: Prepared,
        finished: Callable[[RequestId], None],
        tokenize: Callable[[str], list[int]],
    ) -> None:
        self.output = output
        self.id = id
        self._finished = finished  # told of the request's end, before its final event
        self._tokenize = tokenize  # the answer's text as tokens (context after a stop string)
        self.prompt = prepared.tokens if prepared.return_context else None
        # The prompt's length goes with the first piece (Anthropic's message_start tells it).
        self._prompt_count: int | None = len(prepared.tokens)
        self._added = prepared.added  # the prompt's leading tokens not in its text (a BOS)
        self._scored = 0  # prompt entries sent
        self.sent: list[str] = []  # the text passed on, kept when the context is returned
        self.stop = StopFilter(prepared.sampling.stop)
        sampling = prepared.sampling
        self.sampled = sampling.temperature > 0 and sampling.top_k != 1  # not greedy
        syntax = prepared.tool_syntax
        self.reasoning = prepared.reasoning  # "split", "hide" or None
        # Without reasoning parted off, a thought the answer writes is text, calls in it too.
        verbatim = prepared.family.think if self.reasoning is None else None
        self.calls = (
            CallStream(
                syntax, forced=prepared.forced_tool, primed=prepared.primed, verbatim=verbatim
            )
            if syntax is not None and not prepared.channels
            else None
        )
        self.found: list[dict[str, Any]] = []  # the calls read so far
        # Log-probability entries wait here until the text of their tokens is sent (stop
        # strings and tool calls hold text back); `_budget` counts the bytes sent ahead of them.
        self._entries: list[dict[str, Any]] = []
        self._budget = 0
        self._hidden = ""  # hidden reasoning of a thought not closed yet
        self.splitter = new_splitter(prepared) if prepared.reasoning or prepared.channels else None
        self._lock = threading.Lock()
        self._ticket: Ticket | None = None
        self._cancel_wanted = False
        self.stopped = False  # a stop string was hit: the engine's "cancelled" means "stop"

    def attach(self, ticket: Ticket) -> None:
        with self._lock:
            self._ticket = ticket
            wanted = self._cancel_wanted
        if wanted:
            ticket.cancel()

    def cancel(self) -> None:
        with self._lock:
            ticket = self._ticket
            self._cancel_wanted = ticket is None
        if ticket is not None:
            ticket.cancel()

    def _send_text(self, text: str) -> None:
        if text:
            if self.prompt is not None:
                self.sent.append(text)
            entries = self._due(text)
            self.output.send(
                protocol.piece_event(self.id, text, logprobs=entries, prompt=self._first())
            )

    def _first(self) -> int | None:
        """The prompt's token count for the first piece sent, None after it."""
        count, self._prompt_count = self._prompt_count, None
        return count

    def _due(self, sent: str, dropped: int = 0) -> list[dict[str, Any]] | None:
        """The entries of the tokens whose bytes have now gone out (or were dropped: tags)."""
        if not self._entries:
            return None
        self._budget += len(sent.encode("utf-8")) + dropped
        due = []
        while self._entries and len(self._entries[0]["bytes"]) <= self._budget:
            entry = self._entries.pop(0)
            self._budget -= len(entry["bytes"])
            due.append(entry)
        return due or None

    def _context(self, tokens: list[int]) -> list[int] | None:
        """The prompt's and the answer's tokens (Ollama's `context`), to continue from."""
        if self.prompt is None:
            return None
        if self.stopped:  # the engine's tokens run past the stop string: the text did not
            tokens = self._tokenize("".join(self.sent))
        return self.prompt + tokens

    # -- called by the engine, on its thread ---------------------------------------------------

    def _think(self, text: str) -> str:
        """The answer's part of `text`; its reasoning goes out at once (unless hidden)."""
        if self.splitter is None:
            return text
        held = self.splitter.pending
        reasoning, answer = self.splitter.feed(text)
        self._harmony_calls()
        if self._entries:
            # The tags (and the blank lines after them) are nobody's text: count them as sent.
            kept = reasoning + answer + self.splitter.pending
            self._due("", len((held + text).encode()) - len(kept.encode()))
        self._send_thinking(reasoning)
        return answer

    def _harmony_calls(self) -> None:
        """gpt-oss's calls, which its channels part out with the reasoning."""
        if isinstance(self.splitter, HarmonyStream) and self.splitter.calls:
            self._send_calls(self.splitter.calls)
            self.splitter.calls = []

    def _send_calls(self, calls: list[dict[str, Any]], used: int = 0) -> None:
        """Send calls as soon as they are read, with the entries of the `used` bytes they took.

        The dialects stream calls as they come; the final event repeats them all. The entries
        are the log-probabilities of the answer's bytes the calls' blocks took.
        """
        entries = self._due("", used) if used > 0 else None
        if calls or entries:
            self.found += calls
            event = protocol.piece_event(
                self.id, "", calls=calls or None, logprobs=entries, prompt=self._first()
            )
            self.output.send(event)

    def _read_calls(self, stream: CallStream, text: str, *, final: bool = False) -> None:
        """Pass the answer's text through the call stream, sending what it releases in order.

        It releases text, and calls with the entries of the tokens their blocks (and the blanks
        around them) took.
        """
        used = 0
        for kind, value in stream.events(text, final=final):
            if kind == "text":
                self._send_calls([], used)
                used = 0
                self._send_text(value)
            elif kind == "skip":
                used += len(value.encode())
            else:
                self._send_calls(value, used)
                used = 0
        self._send_calls([], used)

    def _send_thinking(self, text: str) -> None:
        if self.reasoning == "hide" and isinstance(self.splitter, reasoning_mod.Splitter):
            # Held, not dropped, until the thought closes: a template that always opens one
            # (MiniMax-M2's, Nemotron Nano v2's) asked not to think gets answers that never
            # close it, which are the answer after all (released at the end).
            self._hidden = self._hidden + text if self.splitter.inside else ""
        if text and self.reasoning == "split":
            entries = self._due(text)
            self.output.send(
                protocol.piece_event(
                    self.id, "", thinking=text, logprobs=entries, prompt=self._first()
                )
            )
        elif text:
            self._due(text)  # hidden reasoning: its entries go with it

    def scored(self, entries: list[dict[str, Any]]) -> None:
        """Prompt entries, sent as they come; those of tokens the tokenizer added marked."""
        for entry in entries[: max(0, self._added - self._scored)]:
            entry["added"] = True
        self._scored += len(entries)
        self.output.send(protocol.piece_event(self.id, "", scored=entries, prompt=self._first()))

    def piece(self, text: str, logprobs: list[dict[str, Any]] | None = None) -> None:
        if self.stopped:
            return
        if logprobs:
            self._entries += logprobs
        text = self._think(text)
        if not text:
            return
        out = self.stop.feed(text)
        if self.calls is not None:
            self._read_calls(self.calls, out)
        else:
            self._send_text(out)
        if self.stop.hit:
            self.stopped = True
            self.cancel()

    def done(self, reason: str, timings: Timings, tokens: list[int]) -> None:
        try:
            out = ""
            if self.splitter is not None and not self.stopped:
                reasoning, answer = self.splitter.finish()
                self._harmony_calls()
                self._send_thinking(reasoning)
                if self._hidden:  # a thought never closed, with thinking off: the answer
                    answer, self._hidden = self._hidden + answer, ""
                out = self.stop.feed(answer)
            out += self.stop.flush()
            if self.calls is not None:
                self._read_calls(self.calls, out, final=True)
            else:
                self._send_text(out)
            tool_calls = self.found or None
            if not self.stopped and self._entries and not any(e["bytes"] for e in self._entries):
                # The entry of the token that ended the answer (GenRequest.logprobs_end): no
                # text of its own to go out with.
                self.output.send(protocol.piece_event(self.id, "", logprobs=self._entries))
                self._entries = []
            if self.stopped and self._budget > 0 and self._entries:
                # A stop string began inside this token: part of its text went out.
                partial = self._entries[:1]
                self.output.send(protocol.piece_event(self.id, "", logprobs=partial))
            if self.stopped:
                reason = "stop"
            context = self._context(tokens)
            event = protocol.done_event(
                self.id,
                reason,
                timings,
                tool_calls,
                context,
                stop_sequence=self.stop.matched,
                sampled=self.sampled,
            )
        except Exception as exc:  # never leave a request without its final event
            event = protocol.error_event(unexpected(exc), self.id)
        self._finished(self.id)
        self.output.send(event)

    def error(self, exc: LocalrunError) -> None:
        self._finished(self.id)
        self.output.send(protocol.error_event(exc, self.id))
