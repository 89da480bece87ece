"""What this system gives of what localrun asks of it, as `localrun info` lists it.

One line a feature says how it is had here, or that it is not and what is done instead.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Feature:
    name: str
    had: bool  # False: degraded on this system (`how` says what happens instead)
    how: str


def features() -> list[Feature]:
    """List the host's features, each with how this system gives it.

    They are memory caps, locks, process groups, file clones, the terminal's line editing and
    the exact runtime.
    """
    windows, macos = sys.platform == "win32", sys.platform == "darwin"
    if windows:
        children = "a process group each (CREATE_NEW_PROCESS_GROUP); stopped with Ctrl-Break"
        link = Feature("create --link", False, _NO_REFLINK)
    else:
        children = "a session each; stopped with SIGTERM"
        clone = "clonefile (APFS)" if macos else "reflinks (btrfs, XFS)"
        link = Feature("create --link", True, f"{clone}, else a hard link")
    editing = importlib.util.find_spec("readline") is not None
    exact = sys.platform == "linux"
    return [
        _memory_caps(windows, macos),
        Feature("file locks", True, "msvcrt.locking" if windows else "flock"),
        Feature("child processes", True, children),
        link,
        Feature("chat line editing", editing, _EDITING[windows] if editing else _NO_EDITING),
        Feature("exact runtime", exact, _EXACT if exact else _NO_EXACT),
    ]


_NO_REFLINK = "hard links only (Windows has no reflinks here); a copy where neither can be made"
_EDITING = {True: "pyreadline3", False: "readline"}
_NO_EDITING = "no readline module: the chat reads plain lines, without history"
_EXACT = "`localrun runtime install exact`"
_NO_EXACT = "Linux only: answers are the installed llama.cpp's (greedy may depend on the batch)"


def _memory_caps(windows: bool, macos: bool) -> Feature:
    from localrun.host import limits

    if windows:
        how = "a Job Object on each schema checker and network job"
    elif macos:
        return Feature("memory caps", False, limits.NOT_ON_MACOS + ": the schema checkers and "
                       "network jobs run uncapped (their deadlines still stop them)")  # fmt: skip
    else:
        how = "RLIMIT_DATA on each schema checker and network job"
    return Feature("memory caps", True, how)
