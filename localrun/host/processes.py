"""Children in a process group of their own, and how a child's end reads, on each system.

A runner, a model's first load and the server `launch` starts are children that Ctrl-C in the
user's terminal must not reach: the parent stops them in order. POSIX gives them a session of
their own (`start_new_session`); Windows a process group of their own
(CREATE_NEW_PROCESS_GROUP), which is what keeps a console's Ctrl-C from them there. A child
that ended is told in words: a POSIX signal by name (a SIGKILL, the out-of-memory killer's
signal, says so), a Windows exception status by its meaning (an access violation, a stack
overflow, abort()).
"""

from __future__ import annotations

import signal
import subprocess
import sys

# Windows' NTSTATUS codes a crashed process exits with (as Python reads them: unsigned).
_WINDOWS_STATUS = {
    0xC0000005: "an access violation",
    0xC00000FD: "a stack overflow",
    0xC0000409: "a fail-fast abort (a buffer overrun, or abort())",
    0xC000001D: "an illegal instruction",
    0xC0000017: "no memory left",
    0xC000013A: "Ctrl-C",
}
_WINDOWS_ABORT = 3  # abort() in the C runtime


# subprocess.Popen's (and asyncio's create_subprocess_exec's) arguments for a child in a process
# group of its own: `start_new_session=NEW_SESSION, creationflags=GROUP_FLAGS` (each the other
# system's no-op: a session is POSIX's, creationflags must be 0 there).
NEW_SESSION: bool = sys.platform != "win32"
GROUP_FLAGS: int = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200) if not NEW_SESSION else 0


def ask_to_stop(proc: subprocess.Popen[bytes]) -> None:
    """Ask a child started in its own group to stop, as Ctrl-C would.

    On POSIX it sends SIGTERM. On Windows it sends CTRL_BREAK_EVENT, which uvicorn's server
    reads as SIGBREAK and shuts down in order; terminate() there would kill it outright.
    """
    if sys.platform == "win32":
        try:
            proc.send_signal(signal.CTRL_BREAK_EVENT)
        except OSError:
            proc.terminate()
        return
    proc.terminate()


def exit_text(code: int | None) -> str:
    """A process's exit status in words ("killed by SIGKILL; ..." for an OOM kill)."""
    if code is None:
        return "it never started"
    if sys.platform == "win32":
        status = code & 0xFFFFFFFF
        if status in _WINDOWS_STATUS:
            return f"ended by {_WINDOWS_STATUS[status]} (0x{status:08X})"
        if code == _WINDOWS_ABORT:
            return "exit status 3 (abort(), or the process was stopped)"
        return f"exit status {code}"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if name == "SIGKILL":
            return f"killed by {name}; the system may have run out of memory"
        return f"killed by {name}"
    return f"exit status {code}"
