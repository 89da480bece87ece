"""Caps a process puts on itself, and what it has used, as each system allows.

- `cap_memory(most)`: a child that runs what a client sent (the schema checks, a network job)
  caps its own private memory, so that a check or a download past it fails alone instead of
  taking the machine. Linux: RLIMIT_DATA (the heap and private writable mappings). Windows: a
  Job Object limiting the process's committed memory (JOB_OBJECT_LIMIT_PROCESS_MEMORY).
  macOS: none (it does not enforce RLIMIT_DATA, and allocations go past RLIMIT_AS unchecked);
  the reason is returned, and `localrun info` prints it.
- `private_bytes()`: what such a cap counts now (the cap of a network job is counted from its
  start).
- `raise_open_files()`: the server's soft limit on open files raised to the hard one (sockets
  count there on POSIX; Windows has no such limit on sockets).
- `stack_soft()`: the stack a new thread gets by default (RLIMIT_STACK, which glibc uses).
- `peak_rss()`: this process's largest resident size so far.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import Any

NOT_ON_MACOS = "macOS does not enforce a cap on a process's data (RLIMIT_DATA)"


def cap_memory(most: int) -> str | None:
    """Cap this process's private memory at `most` bytes, and return why not, or None.

    A lower cap already in force stays. It returns None once the cap is in force, else the
    reason this system has none.
    """
    if sys.platform == "linux":
        try:
            import resource
        except ImportError:
            return "the resource module is missing"
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        soft = most if hard == resource.RLIM_INFINITY else min(most, hard)
        try:
            resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
        except (ValueError, OSError) as exc:
            return f"RLIMIT_DATA could not be set: {exc}"
        return None
    if sys.platform == "win32":
        return _job_memory_limit(most)
    if sys.platform == "darwin":
        return NOT_ON_MACOS
    return "no memory cap is known on this system"


def private_bytes() -> int | None:
    """Return this process's memory as `cap_memory` counts it, or None where none is known.

    Linux counts VmData; Windows, the private committed bytes.
    """
    if sys.platform == "linux":
        try:
            with open("/proc/self/status", encoding="utf-8", errors="replace") as status:
                for line in status:
                    if line.startswith("VmData:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None
    if sys.platform == "win32":
        import psutil

        with contextlib.suppress(psutil.Error, AttributeError):
            return int(psutil.Process().memory_info().private)
    return None


def raise_open_files() -> int | None:
    """Raise the soft limit on open files to the hard one, and return the limit now in force.

    It returns None when no limit is known, as on Windows.
    """
    if sys.platform == "win32":
        return None
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit cannot be the soft one on macOS (OPEN_MAX); 64k is plenty.
    target = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return None if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def stack_soft() -> int | None:
    """Return the stack a new thread gets by default on POSIX (RLIMIT_STACK's soft limit).

    It is None where the stack is unlimited or the system has no such limit. On Windows a
    thread gets 1 MiB unless it asks for more.
    """
    if sys.platform == "win32":
        return None
    try:
        import resource
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


def peak_rss() -> int:
    """This process's largest resident size so far, in bytes."""
    if sys.platform == "win32":
        import psutil

        with contextlib.suppress(psutil.Error, AttributeError):
            return int(psutil.Process().memory_info().peak_wset)
        return 0
    try:
        import resource
    except ImportError:
        import psutil

        return int(psutil.Process().memory_info().rss)  # the peak unknown: the size now
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (
        int(peak) if sys.platform == "darwin" else int(peak) * 1024
    )  # bytes on macOS, KiB on Linux


# -- Windows: a Job Object ---------------------------------------------------------------------

_JOB_OBJECT_LIMIT_PROCESS_MEMORY = 0x100
_JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION = 0x400
_JOB_OBJECT_EXTENDED_LIMIT_INFORMATION = 9  # JOBOBJECTINFOCLASS


class _IoCounters(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulonglong) for name in (
        "ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
        "ReadTransferCount", "WriteTransferCount", "OtherTransferCount")]  # fmt: skip


class _BasicLimits(ctypes.Structure):
    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_longlong),
        ("PerJobUserTimeLimit", ctypes.c_longlong),
        ("LimitFlags", ctypes.c_uint32),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", ctypes.c_uint32),
        ("Affinity", ctypes.c_size_t),
        ("PriorityClass", ctypes.c_uint32),
        ("SchedulingClass", ctypes.c_uint32),
    ]


class _ExtendedLimits(ctypes.Structure):
    _fields_ = [
        ("BasicLimitInformation", _BasicLimits),
        ("IoInfo", _IoCounters),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


def _job_memory_limit(most: int) -> str | None:
    """Put this process in a new Job Object whose processes may commit at most `most` bytes each.

    Nested jobs need Windows 8 or later. The job's handle is kept open for the process's life,
    since closing it would end the limit with the job.
    """
    loader: Any = getattr(ctypes, "WinDLL", None)  # Windows' alone
    try:
        if loader is None:
            raise OSError("this Python's ctypes has no WinDLL")
        kernel32: Any = loader("kernel32", use_last_error=True)
    except OSError as exc:
        return f"the Job Object API could not be loaded: {exc}"
    kernel32.CreateJobObjectW.restype = ctypes.c_void_p
    kernel32.GetCurrentProcess.restype = ctypes.c_void_p
    job = kernel32.CreateJobObjectW(None, None)
    if not job:
        return f"CreateJobObjectW failed (error {_last_error()})"
    limits = _ExtendedLimits()
    limits.BasicLimitInformation.LimitFlags = (
        _JOB_OBJECT_LIMIT_PROCESS_MEMORY | _JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION
    )
    limits.ProcessMemoryLimit = most
    done = kernel32.SetInformationJobObject(
        ctypes.c_void_p(job),
        _JOB_OBJECT_EXTENDED_LIMIT_INFORMATION,
        ctypes.byref(limits),
        ctypes.sizeof(limits),
    )
    if not done or not kernel32.AssignProcessToJobObject(
        ctypes.c_void_p(job), ctypes.c_void_p(kernel32.GetCurrentProcess())
    ):
        return f"the Job Object could not be set (error {_last_error()})"
    _JOBS.append(job)
    return None


def _last_error() -> int:
    return int(getattr(ctypes, "get_last_error", lambda: 0)())


_JOBS: list[Any] = []  # the handles of this process's jobs, open while it lives
