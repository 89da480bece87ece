"""The runner process's event stream: whole lines to stdout, written by a thread of their own.

Any thread sends (the engine's loop a token's text, the request thread an error, the embedder its
vectors); one writer thread writes the lines in the order they were sent. Written on the loop's
own thread, a line's write and flush woke the server's process, and on two cores that held the
loop for about 180 µs between two decodes (cProfile of `localrun serve` on SmolLM2: 2% of a
token's time, 8 writes a step with 8 streams). Now the loop hands the line over and goes on to
the next decode; the writer takes every line waiting at once, so a step's tokens for 8 streams
go in one write.
"""

from __future__ import annotations

import threading
from typing import BinaryIO

from localrun.worker import protocol

_CLOSE_S = 30.0  # how long closing waits for the lines still to write (a stuck reader)


class StreamOutput:
    """The event stream of a runner process: whole lines, sent from any thread, none longer than
    `limit` bytes (the scheduler kills a runner that sends a longer one: such an event goes as
    its request's error instead). `flush` waits until what was sent is written; `close` also
    ends the writer (the process must call it before it exits)."""

    def __init__(self, stream: BinaryIO, limit: int = protocol.LINE_LIMIT) -> None:
        self._stream = stream
        self.limit = limit
        self.broken = False  # the reader went away: nothing more can be delivered
        self._cond = threading.Condition()
        self._lines: list[bytes] = []
        self._writing = False
        self._closed = False
        self._writer = threading.Thread(target=self._write, name="localrun-events", daemon=True)
        self._writer.start()

    def send(self, message: protocol.Message) -> None:
        data = protocol.encode(message)
        if len(data) > self.limit:
            data = protocol.encode(protocol.oversized(message, len(data), self.limit))
        with self._cond:
            if self.broken or self._closed:
                return
            self._lines.append(data)
            if len(self._lines) == 1:
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every line sent so far is written, or the reader is gone."""
        with self._cond:
            self._cond.wait_for(lambda: self.broken or not (self._lines or self._writing), timeout)

    def close(self) -> None:
        self.flush(_CLOSE_S)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._writer.join(_CLOSE_S)

    def _write(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._lines or self._closed)
                if not self._lines:
                    return
                lines, self._lines = self._lines, []
                self._writing = True
            broken = False
            try:
                self._stream.write(b"".join(lines))
                self._stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                broken = True
            with self._cond:
                self._writing = False
                if broken:
                    self.broken = True
                    self._lines.clear()
                self._cond.notify_all()
