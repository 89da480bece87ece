"""The exact runtime: llama.cpp's CPU library built so that a token's logits ignore the batch.

The installed libggml-cpu picks its flash-attention kernel and some weight products by the
batch's shape, and they sum in different orders: a greedy answer then flips where two tokens
are nearly tied (docs/exact-runtime.md; scripts/measure/batch_invariance.py finds where).
This runtime is that library built from the bindings' own source with localrun's patch set
(runtimes/patchset.py): one flash-attention kernel at every row count and weight products
that sum a row alike in any batch. It is built for this CPU (-march=native).

It comes two ways. pip's build can carry the patch set itself (exact.cmake, README's first
command): llama_cpp's own libggml-cpu is then exact (`builtin`). Or `localrun runtime install
exact` builds it apart, and `preload` loads it before llama_cpp, with the installed
libggml-base, globally, so that libggml's need of libggml-cpu.so.0 resolves to it by its soname.
LOCALRUN_EXACT: `off`, `on` (warn when missing) or `auto` (load it when installed).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from localrun.runtimes import layout, source
from localrun.runtimes.layout import Runtime
from localrun.runtimes.patchset import MARKER, cpu_identity

BACKEND = "exact"
TARGET = "ggml-cpu"


@dataclass
class Loaded:
    runtime: Runtime | None = None  # the exact library in this process, or None
    warning: str | None = None  # why the asked-for exact runtime is not in use


_state: Loaded | None = None


def current() -> Loaded:
    """The exact runtime of this process (what `preload` did; nothing before it ran)."""
    return _state or Loaded()


def installed(version: str) -> list[Runtime]:
    """The exact runtimes built for `version` of llama-cpp-python and this CPU."""
    built = [
        r for r in layout.installed() if r.backend == BACKEND and r.llama_cpp_version == version
    ]
    if not built:  # the common case, at every process's start: /proc/cpuinfo is not read
        return []
    here = cpu_identity()
    return [r for r in built if r.cpu == here]


def bindings_lib_folder() -> Path | None:
    """Where llama_cpp loads its libraries from, found without importing it."""
    given = os.environ.get("LLAMA_CPP_LIB_PATH")
    if given:
        return Path(given)
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def builtin(folder: Path | None = None) -> Runtime | None:
    """The exact runtime that pip's build made llama_cpp's own libggml-cpu, or None.

    exact.cmake applies the patch set while pip compiles llama-cpp-python and leaves MARKER
    beside the library; that library is then in every process, whatever LOCALRUN_EXACT says.
    """
    folder = folder or bindings_lib_folder()
    if folder is None:
        return None
    try:
        record = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    library = _library(folder, "libggml-cpu.so")
    if not isinstance(record, dict) or library is None:
        return None
    version = str(record.get("llama_cpp_version", "")) or "unknown"
    try:
        size = library.stat().st_size
    except OSError:
        size = 0
    return Runtime(
        name=f"exact-{version} (built in)",
        backend=BACKEND,
        llama_cpp_version=version,
        ggml_version="",
        toolchain="pip's build of llama-cpp-python, with exact.cmake",
        module=library.name,
        sha256="",
        size=size,
        cpu=str(record.get("cpu", "")),
        path=library.parent,
    )


OFF_BUILT_IN = (
    "LOCALRUN_EXACT=off has no other CPU library to load: this llama-cpp-python was built with "
    "the exact runtime's patches (pip install --force-reinstall --no-cache-dir "
    "llama-cpp-python builds the stock one)"
)


def preload(module: Path | None = None) -> Loaded:
    """Load the exact library before llama_cpp is imported, once per process. Never raises.

    It is llama_cpp's own library when pip built it exact (`builtin`), else the runtime
    installed for these bindings and this CPU, or `module`.
    """
    global _state
    if _state is not None:
        return _state
    try:
        _state = _preload(module)
    except Exception as exc:  # a damaged record, an unreadable file: never the process's end
        _state = Loaded(warning=f"the exact runtime was not loaded ({type(exc).__name__}: {exc})")
    return _state


def _preload(module: Path | None) -> Loaded:
    from localrun.settings import config

    if not sys.platform.startswith("linux"):
        return Loaded()
    mode = "on" if module is not None else config.exact()
    if module is None:
        built_in = builtin()
        if built_in is not None:
            return Loaded(runtime=built_in, warning=OFF_BUILT_IN if mode == "off" else None)
    if mode == "off":
        return Loaded()
    runtime = None
    if module is None:
        version = source.bindings_version()
        found = installed(version)
        if not found:
            why = None
            if mode == "on":
                why = (
                    "no exact runtime is installed for this llama-cpp-python and CPU: answers "
                    "may depend on the batch (localrun runtime install exact)"
                )
            return Loaded(warning=why)
        runtime = found[-1]
        from localrun.runtimes.activate import checked

        # Hashed at every load (not only when its stat changed) and only from the runtime's
        # folder: the library is loaded into every process that runs a model.
        module, problem = checked(runtime)
        if module is None:
            return Loaded(warning=f"{problem} (reinstall it: localrun runtime install exact)")
    folder = bindings_lib_folder()
    base = _library(folder, "libggml-base.so") if folder is not None else None
    if base is None:
        return Loaded(warning="the exact runtime was not loaded: llama_cpp's libraries are missing")
    ctypes.CDLL(str(base), mode=ctypes.RTLD_GLOBAL)
    ctypes.CDLL(str(module), mode=ctypes.RTLD_GLOBAL)
    return Loaded(runtime=runtime)


def _library(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, *sorted(folder.glob(name + ".*"))):
        if candidate.is_file():
            return candidate
    return None


def in_use(module: Path) -> str | None:
    """After llama_cpp is loaded: why `module` is not the process's libggml-cpu, or None."""
    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    paths = {line.split(None, 5)[-1] for line in maps.splitlines() if "libggml-cpu" in line}
    # A wheel keeps a library's soname links as copies (libggml-cpu.so, .so.0, .so.0.25.3): a
    # file of the module's own folder whose name starts as the module's is the module.
    folder, stem = module.resolve().parent, module.name.split(".so")[0]
    mine = {
        p for p in paths if Path(p).resolve().parent == folder and Path(p).name.startswith(stem)
    }
    others = paths - mine
    if not mine:
        return f"{module} is not mapped"
    if others:
        return f"the installed CPU library was loaded as well ({sorted(others)[0]})"
    return None


def confirm() -> None:
    """After llama_cpp is imported, make an exact library llama.cpp does not use a warning.

    That happens when another libggml-cpu was loaded first; the runtime is then not in use.
    """
    state = current()
    if state.runtime is None:
        return
    problem = in_use(state.runtime.module_path)
    if problem is not None:
        state.warning = f"the exact runtime is not in use: {problem}"
        state.runtime = None
