"""`localrun --version`: this localrun and the llama.cpp build it runs.

Reading the build's facts loads libllama (and numpy, jinja2 and the rest of llama_cpp's
imports). That takes most of half a second, for a command that prints two lines. So the first
read records the facts in `$LOCALRUN_HOME/cache/llama-build.json`, under a key made of the
llama_cpp package's files as they lie on disk (see _key). A later `--version` whose key matches
prints them without loading anything.

Only a build whose answer those files decide is recorded: CPU backends alone and no runtime
installed (localrun/runtimes). A GPU build's devices, and which runtime loads, depend on the
machine and the settings of the moment. Those are read from llama.cpp every time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from localrun import __version__
from localrun.errors import LocalrunError
from localrun.host import selfexec
from localrun.settings import config

# Backends whose answer needs no device of the machine: a build of these alone is recorded.
HOST_BACKENDS = frozenset({"CPU", "BLAS"})
# Bumped when what is recorded changes, so an older record is never read as a newer one.
RECORD_FORMAT = 1


def text() -> str:
    """The two lines `localrun --version` prints."""
    frozen = " (binary)" if selfexec.frozen() else ""
    return f"localrun {__version__}{frozen}\nllama.cpp: {llama_build()}"


def llama_build() -> str:
    """llama-cpp-python's version, its backends, the runtime and its GPUs: recorded or read."""
    try:
        key = _key()
        recorded = _recorded(key) if key is not None else None
    except LocalrunError:  # a LOCALRUN_HOME that cannot be used: nothing recorded there
        key = recorded = None
    if recorded is not None:  # recorded only with no runtime installed, the exact one included
        from localrun.runtimes import exact

        built_in = exact.builtin()  # pip's build of the library, made exact: part of the key
        return _line(*recorded, "built-in", [], built_in.name if built_in else None)
    from localrun.engine.library.buildinfo import build_info

    try:
        info = build_info()
    except LocalrunError as exc:
        return f"not loadable ({exc})"
    devices = [str(d) for d in info.gpu_devices]
    if key is not None and _host_only(info.backends) and info.runtime == "built-in" and not devices:
        _record(key, info.version, info.backends)
    return _line(info.version, info.backends, info.runtime, devices, info.exact)


def _host_only(backends: list[str]) -> bool:
    return bool(backends) and set(backends) <= HOST_BACKENDS


def _line(
    version: str, backends: list[str], runtime: str, devices: list[str], exact: str | None = None
) -> str:
    line = f"llama-cpp-python {version}, backends {', '.join(backends) or 'none'}"
    line += f", runtime {runtime}" + (f", exact runtime {exact}" if exact else "")
    if devices:
        line += f" ({', '.join(devices)})"
    return line


def _path() -> Path:
    return config.home() / "cache" / "llama-build.json"


def _key() -> list[Any] | None:
    """Return what the build's facts depend on, or None when they must not be recorded.

    The key holds each file's name, size and mtime in llama_cpp's `lib` folder (or
    LLAMA_CPP_LIB_PATH), its `__init__.py`, and the GGML_* variables. It is None without
    libllama on disk, or with a runtime installed.
    """
    from importlib.util import find_spec

    from localrun.runtimes import layout

    try:
        spec = find_spec("llama_cpp")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or layout.installed():
        return None
    package = Path(spec.origin).parent
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    folder = Path(override) if override else package / "lib"
    try:
        names = sorted(os.listdir(folder))
        files = [[name, *_stamp(folder / name)] for name in names]
        version_file = _stamp(Path(spec.origin))
    except OSError:
        return None
    if not any(name.startswith(("libllama", "llama.")) for name in names):
        return None
    ggml = sorted([k, v] for k, v in os.environ.items() if k.startswith("GGML_"))
    # Lists all through, as JSON reads a record back, to compare with it.
    return [RECORD_FORMAT, str(folder), files, spec.origin, version_file, ggml]


def _stamp(path: Path) -> list[int]:
    """Return a file's size and mtime, or an empty list for a file that is not on disk.

    A frozen program's modules are not on disk: its build's own folder stands for them.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return []
    return [st.st_size, st.st_mtime_ns]


def _recorded(key: list[Any]) -> tuple[str, list[str]] | None:
    """The version and backends recorded under `key`, or None."""
    try:
        raw: Any = json.loads(_path().read_text(encoding="utf-8"))
        if raw["key"] != key:
            return None
        version, backends = str(raw["version"]), [str(b) for b in raw["backends"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (version, backends) if _host_only(backends) else None


def _record(key: list[Any], version: str, backends: list[str]) -> None:
    from localrun.store.blobs import write_atomic

    data = json.dumps({"key": key, "version": version, "backends": backends}).encode()
    try:
        path = _path()
        config.make_dirs(path.parent)
        write_atomic(path, [data + b"\n"], sync_dir=False)
    except (OSError, LocalrunError):
        pass  # unrecorded: the next --version reads the build again
