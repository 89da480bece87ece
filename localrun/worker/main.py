"""The runner process: guard the event stream, load the model, serve until stdin ends.

Exit status: 0 after the input ends (the engine closed, every request answered), 1 when the
model could not be loaded (after an error event saying why).
"""

from __future__ import annotations

import os
import signal
import sys

from localrun.errors import LocalrunError, ModelLoadError
from localrun.worker import protocol
from localrun.worker.serve import Worker
from localrun.worker.sink import unexpected
from localrun.worker.writer import StreamOutput


def main() -> int:
    # The events get a private copy of fd 1; fd 1 itself (where llama.cpp, ggml and stray
    # prints write) goes to stderr, so nothing native can corrupt the protocol.
    events = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Ctrl-C in `localrun serve` reaches the whole process group; the server stops its
    # runners itself (by closing their input), so the runner must not die with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    output = StreamOutput(events)
    try:
        return _serve(output)
    finally:
        output.close()  # every event sent is written before the process ends


def _serve(output: StreamOutput) -> int:
    stdin = sys.stdin.buffer
    first = stdin.readline()
    if not first.strip():
        return 0  # the server went away before asking for anything
    from localrun.worker.load import load

    def breach(error: LocalrunError) -> None:
        # llama.cpp is inside a native call on the main thread: say why, then end at once.
        output.send(protocol.error_event(error))
        output.flush(5.0)
        os._exit(1)

    try:
        request = protocol.decode(first)
        output.limit = protocol.line_limit(request)
        loaded = load(request, breach)
    except LocalrunError as exc:
        output.send(protocol.error_event(exc))
        return 1
    except Exception as exc:
        error = unexpected(exc)
        output.send(protocol.error_event(ModelLoadError(error.message, hint=error.hint)))
        return 1
    output.send(protocol.ready_event(loaded.info))
    Worker(loaded, output).serve(iter(stdin.readline, b""))
    return 0
