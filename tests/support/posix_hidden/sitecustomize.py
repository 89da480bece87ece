"""Windows' standard library, as localrun's own code sees it: the POSIX-only modules (`fcntl`,
`resource`, `termios`, `pty`, `pwd`, `grp`) cannot be imported by a module of localrun (other
libraries, psutil's Linux part among them, still import what they need here).

A folder of its own put on PYTHONPATH: Python imports this sitecustomize at every start, the
children's too (a runner, a checker, a job), so `localrun serve` and `localrun run` run their
whole start-up as they would where those modules do not exist (tests/integration/test_portable.py).
Importing it in a process (`hide()`) does the same there.
"""

from __future__ import annotations

import builtins
from typing import Any

HIDDEN = frozenset({"fcntl", "resource", "termios", "pty", "pwd", "grp"})
_real_import = builtins.__import__


def _import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),
            level: int = 0) -> Any:  # fmt: skip
    importer = (globals or {}).get("__name__", "") if isinstance(globals, dict) else ""
    if level == 0 and name.split(".")[0] in HIDDEN and str(importer).startswith("localrun"):
        raise ModuleNotFoundError(f"No module named {name!r} (hidden: as on Windows)", name=name)
    return _real_import(name, globals, locals, fromlist, level)


def hide() -> None:
    builtins.__import__ = _import


hide()
