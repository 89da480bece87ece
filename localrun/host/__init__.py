"""What differs between the systems localrun runs on (Linux, macOS, Windows), behind one interface.

The rest of the package asks here, never `sys.platform`, for what a system does its own way.
Each function says what a system without the feature gets: a fallback that does the same job,
or None and the reason, which `localrun info` prints. No POSIX-only module (`fcntl`, `resource`,
`pwd` ...) is imported at module level anywhere in localrun, so nothing crashes at import time.

    locks      an exclusive lock on an open file (flock; msvcrt.locking on Windows)
    limits     caps on a child's memory, the open-file limit, a thread's stack, peak memory
    processes  children in a process group of their own, and how a child's exit reads
    files      descriptor-level file calls (pread/pwrite, fdatasync, fchmod) with fallbacks
    features   what this system gives of the above, as `localrun info` lists it

Each module tests `sys.platform` itself, as a literal comparison (`sys.platform == "win32"`), so
a type checker run for another system (pyright's --pythonplatform) reads each branch as it would.
"""

from __future__ import annotations
