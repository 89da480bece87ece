"""The runner process's event stream: whole lines to stdout, written by a thread of their own.

Any thread sends: the engine's loop a token's text, the request thread an error, the embedder
its vectors. One writer thread writes the lines in the order they were sent. A write and flush
on the loop's own thread would wake the server's process. On two cores that held the loop for
about 180 µs between two decodes (cProfile of `localrun serve` on SmolLM2: 2% of a token's time,
8 writes a step with 8 streams). So the loop hands the line over and goes on to the next decode.
The writer takes every line waiting when it wakes, so a step's tokens for many streams mostly go
in one write.
"""

from __future__ import annotations

import threading
import time
from typing import BinaryIO

from localrun.worker import protocol

_CLOSE_S = 30.0  # how long closing waits for the lines still to write (a stuck reader)
# Bytes waiting to be written beyond which a sender waits, as it waited on the pipe before: a
# reader that falls behind (large embedding events) holds its writers back, not the memory.
_MOST_WAITING = 8 << 20


class StreamOutput:
    """The event stream of a runner process: whole lines, sent from any thread.

    No line is longer than `limit` bytes: the scheduler kills a runner that sends a longer one,
    so such an event goes as its request's error instead. `flush` waits until what was sent is
    written. `close` also ends the writer; the process must call it before it exits.
    """

    def __init__(self, stream: BinaryIO, limit: int = protocol.LINE_LIMIT) -> None:
        self._stream = stream
        self.limit = limit
        self.broken = False  # the reader went away: nothing more can be delivered
        self._cond = threading.Condition()
        self._lines: list[bytes] = []
        self._waiting = 0  # bytes in _lines
        self._writing = False
        self._closed = False
        self._writer = threading.Thread(target=self._write, name="localrun-events", daemon=True)
        self._writer.start()

    def send(self, message: protocol.Message) -> None:
        data = protocol.encode(message)
        if len(data) > self.limit:
            data = protocol.encode(protocol.oversized(message, len(data), self.limit))
        with self._cond:
            self._cond.wait_for(lambda: self.broken or self._waiting < _MOST_WAITING)
            if self.broken or self._closed:
                return
            self._lines.append(data)
            self._waiting += len(data)
            if len(self._lines) == 1:
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until nothing sent is left to write, or the reader is gone, or `timeout` seconds.

        While others still send, that may be later than the lines sent so far.
        """
        with self._cond:
            self._cond.wait_for(lambda: self.broken or not (self._lines or self._writing), timeout)

    def close(self) -> None:
        deadline = time.monotonic() + _CLOSE_S
        self.flush(_CLOSE_S)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._writer.join(max(0.0, deadline - time.monotonic()))

    def _write(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._lines or self._closed)
                if not self._lines:
                    return
                lines, self._lines, self._waiting = self._lines, [], 0
                self._writing = True
            broken = True
            try:
                self._stream.write(b"".join(lines))
                self._stream.flush()
                broken = False
            except (BrokenPipeError, ValueError, OSError):
                pass  # the reader is gone
            finally:  # whatever ends the write, no one waits on it for ever
                with self._cond:
                    self._writing = False
                    if broken:
                        self.broken = True
                        self._lines.clear()
                        self._waiting = 0
                    self._cond.notify_all()
            if broken:
                return
