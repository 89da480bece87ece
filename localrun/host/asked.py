"""A child process asked one JSON line at a time, each answered with one line, within a deadline.

The runner's grammar guard (engine.sampling.grammar_guard) and the server's schema checks
(server.schema.checker) run what a client sent in such a child: a crash or a hang there costs that
child, which is killed and replaced, never the process that asked. The child first says it is
ready (`serve` writes `{"ready": true}` once its imports are done), within START_S: a child that
cannot start is NotStarted, the asker's trouble, never blamed on a question. Only then does a
question's deadline run, over writing the question and reading its answer alike, so a child
that stops reading cannot hold the asker either.

    child:  serve(answer)       answer(question) -> the answer, for each line read
    parent: Asked(module).ask(question, deadline_s)
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from localrun.host import selfexec

START_S = (
    30.0  # a child's start: Python, and llguidance's or jsonschema's import, on a busy machine
)
LINE_LIMIT = 64 << 20  # bytes of one answer
_READY = b'{"ready": true}\n'


class NotStarted(OSError):
    """The child could not be started, or did not say it was ready within START_S."""


class Asked:
    """A child process (`python -m MODULE ARGS`, selfexec) asked one question at a time.

    It is not thread-safe: its owner takes turns.
    """

    def __init__(self, module: str, *args: str) -> None:
        try:
            self.proc = subprocess.Popen(
                selfexec.command(module, *args),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as exc:  # no file descriptors or processes left
            raise NotStarted(f"cannot start {module}: {exc.strerror or exc}") from None
        self._ready = False
        self._module = module

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, question: dict[str, Any], deadline_s: float) -> Any:
        """Return the child's answer to `question`.

        Raises TimeoutError past `deadline_s` seconds, and EOFError when the child died or
        answered nonsense; either way the child is killed. Raises ValueError for a question
        that is not JSON, and NotStarted for a child that never got ready.
        """
        return self.ask_line(json.dumps(question).encode(), deadline_s)  # ValueError: caller's

    def ask_line(self, data: bytes, deadline_s: float) -> Any:
        """`ask` with the question already encoded as one line of JSON (without its newline)."""
        data += b"\n"
        if not self._ready:
            try:
                ready = self._exchange(None, START_S)
            except (TimeoutError, EOFError):
                ready = b""
            if ready != _READY:
                self.kill()
                raise NotStarted(f"{self._module} did not start within {START_S:g} s")
            self._ready = True
        line = self._exchange(data, deadline_s)
        try:
            return json.loads(line)
        except ValueError:
            self.kill()
            raise EOFError("the child's answer is not JSON") from None

    def _exchange(self, data: bytes | None, deadline_s: float) -> bytes:
        """Write `data` (if any) and read one line, on a thread of their own.

        A child that neither reads nor answers is given up on at the deadline and killed,
        which ends the thread. Pipes cannot be waited on alike everywhere; threads can.
        """
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        got: list[bytes | BaseException] = []

        def exchange() -> None:
            try:
                if data is not None:
                    stdin.write(data)
                    stdin.flush()
                got.append(stdout.readline(LINE_LIMIT))
            except (OSError, ValueError) as exc:  # a broken pipe; a pipe closed by kill()
                got.append(exc)

        worker = threading.Thread(target=exchange, name="asked", daemon=True)
        worker.start()
        worker.join(deadline_s)
        if worker.is_alive():
            self.kill()
            worker.join()
            raise TimeoutError
        line = got[0]
        if isinstance(line, BaseException) or not line.endswith(b"\n"):
            self.kill()
            raise EOFError("the child ended" if not line else "the child's answer is cut")
        return line

    def rss(self) -> int:
        """The child's resident memory in bytes (0 where it cannot be read)."""
        import psutil

        try:
            return int(psutil.Process(self.proc.pid).memory_info().rss)
        except psutil.Error:
            return 0

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError, ValueError):
                if stream is not None:
                    stream.close()


# -- the child ---------------------------------------------------------------------------------


def serve(answer: Callable[[Any], Any]) -> None:
    """Run the child's loop: say it is ready, then answer each question line with one line.

    A question that is not JSON is answered {"error": ...}. Anything else the child prints goes
    to stderr, since the answers have a copy of stdout of their own.
    """
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    out.write(_READY)
    out.flush()
    for raw in sys.stdin.buffer:
        try:
            question = json.loads(raw)
        except ValueError as exc:
            reply: Any = {"error": f"the question is not JSON: {exc}"}
        else:
            reply = answer(question)
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()
