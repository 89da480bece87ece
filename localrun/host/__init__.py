"""What differs between the systems localrun runs on (Linux, macOS, Windows), behind one interface.

The rest of the package asks here, never `sys.platform`, for what an operating system does its
own way; each function says what a system without the feature gets (a fallback that does the
same job, or None and the reason, which `localrun info` prints), never a crash at import time:
no POSIX-only module (`fcntl`, `resource`, `termios`, `pwd` ...) is imported at module level
anywhere in localrun, and nothing here is imported on a system that lacks it.

    locks      an exclusive lock on an open file (flock; msvcrt.locking on Windows)
    limits     caps on a child's memory (RLIMIT_DATA on Linux, a Job Object on Windows; none
               on macOS), the open-file limit, a thread's stack, a process's peak memory
    processes  children in a process group of their own, and how a child's exit reads
    files      descriptor-level file calls (pread/pwrite, fdatasync, fchmod, non-blocking
               opens) with their fallbacks
    features   what this system gives of the above, as `localrun info` lists it

Each module tests `sys.platform` itself, as a literal comparison (`sys.platform == "win32"`), so
that type checkers run for another system (pyright's --pythonplatform) read each branch as that
system would.
"""

from __future__ import annotations
