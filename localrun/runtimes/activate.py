"""Load the selected runtime into this process's llama.cpp, once, or say why it runs on the CPU.

Called by engine/native right after llama_cpp is imported, so every process that runs a model (a
runner, `localrun run` without a server, `info`, `show --fit`) plans and runs on the same
devices. Nothing here raises or crashes: a runtime that is missing, damaged, built for other
bindings, or finds no device gives one warning, and the CPU as installed.

Before ggml_backend_load touches a module, its stat is compared with the one recorded when it
was installed (and its sha256 when the stat changed; the exact runtime's small library is hashed
every time): a file damaged or replaced since is not loaded, nor one outside the runtime's own
folder. Libraries the module needs from its toolchain (the CUDA runtime and cuBLAS of a toolkit
made from wheels, under runtimes/toolchains/) are loaded first, globally, so that the module's
dependencies resolve by soname.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localrun.errors import LocalrunError
from localrun.runtimes import ggml, layout
from localrun.runtimes.layout import Runtime

# The order the CUDA libraries depend on one another.
PRELOAD = ("libcudart.so", "libcublasLt.so", "libcublas.so")
GPU_KINDS = ("GPU", "IGPU")


@dataclass
class Activation:
    selection: str  # what was asked for: auto, cpu or a name
    runtime: Runtime | None = None  # the runtime loaded, None for the installed llama.cpp alone
    warning: str | None = None  # why the asked-for runtime is not in use
    # ggml's registry once the activation is done (empty when it cannot be reached): what
    # buildinfo reports, read here once.
    backends: list[str] = field(default_factory=list)
    devices: list[ggml.Device] = field(default_factory=list)

    @property
    def gpu_devices(self) -> list[ggml.Device]:
        return [d for d in self.devices if d.kind in GPU_KINDS]

    @property
    def name(self) -> str:
        """What runs models, for info, ps and --version: a runtime's name, or the bindings'."""
        return self.runtime.name if self.runtime is not None else "built-in"


_state: Activation | None = None


def current() -> Activation | None:
    """The activation of this process, once engine/native has run it."""
    return _state


def activate(libllama: str | None, version: str) -> Activation:
    """Load the selected runtime into the ggml of `libllama` (once per process)."""
    global _state
    if _state is not None:
        return _state
    try:
        lib = ggml.library(libllama)
    except (OSError, AttributeError):
        lib = None
    try:
        _state = _activate(lib, version)
    except Exception as exc:  # a damaged record, a registry call: never the process's end
        _state = Activation(layout.AUTO, warning=f"no runtime loaded ({type(exc).__name__}: {exc})")
    if lib is not None:
        with contextlib.suppress(Exception):
            _state.backends, _state.devices = ggml.backends(lib), ggml.devices(lib)
    return _state


def _activate(lib: Any, version: str) -> Activation:
    try:
        chosen = layout.selection()
    except LocalrunError as exc:  # a bad LOCALRUN_RUNTIME: its ConfigError says which
        return Activation(layout.AUTO, warning=str(exc))
    if lib is None:
        asked = chosen != layout.CPU and (chosen != layout.AUTO or bool(layout.installed()))
        why = "ggml's backend registry cannot be reached: no runtime loaded"
        return Activation(layout.CPU, warning=why if asked else None)
    if chosen == layout.CPU:
        return Activation(chosen)
    built_in = [d for d in ggml.devices(lib) if d.kind in GPU_KINDS]
    if built_in:  # a GPU build of llama-cpp-python (or Metal): it needs no runtime
        warning = None
        if chosen != layout.AUTO:
            warning = (
                f"runtime {chosen} not loaded: the installed llama.cpp has its own GPU backend "
                f"({built_in[0].backend})"
            )
        return Activation(chosen, warning=warning)
    candidates, problem = _candidates(chosen, version)
    for runtime in candidates:
        problem = _load(lib, runtime)
        if problem is None:
            return Activation(chosen, runtime)
        if chosen != layout.AUTO:
            break
    return Activation(chosen, warning=problem)


def _candidates(chosen: str, version: str) -> tuple[list[Runtime], str | None]:
    every = layout.installed()
    if chosen != layout.AUTO:
        named = [r for r in every if r.name == chosen]
        if not named:
            return [], f"runtime {chosen} is not installed: running on the CPU"
        runtime = named[0]
        if runtime.llama_cpp_version != version:
            return [], (
                f"runtime {chosen} was built for llama-cpp-python {runtime.llama_cpp_version}, "
                f"the installed one is {version}: running on the CPU (reinstall it: localrun "
                f"runtime install {runtime.backend})"
            )
        return named, None
    usable = [r for r in every if r.llama_cpp_version == version]
    cuda = [r for r in usable if r.backend == "cuda" and _suits_cuda(r)]
    vulkan = [r for r in usable if r.backend == "vulkan"]
    stale = [r for r in every if r.llama_cpp_version != version]
    if not usable and stale:
        return [], (
            f"the installed runtimes were built for llama-cpp-python "
            f"{stale[0].llama_cpp_version}, the installed one is {version}: running on the CPU "
            f"(reinstall: localrun runtime install {stale[0].backend})"
        )
    return cuda + vulkan, None


def auto_choice(version: str) -> Runtime | None:
    """The runtime `auto` tries first here (it is used if it loads and finds a GPU)."""
    candidates, _ = _candidates(layout.AUTO, version)
    return candidates[0] if candidates else None


def _suits_cuda(runtime: Runtime) -> bool:
    return bool(suiting_gpus(runtime, _cuda_gpus()))


def suiting_gpus(runtime: Runtime, gpus: list[Any]) -> list[Any]:
    """The GPUs that can run `runtime`'s code.

    For CUDA, a GPU of a targeted architecture or newer (through the PTX each architecture's
    build carries); for Vulkan, any GPU.
    """
    if runtime.backend != "cuda":
        return [g for g in gpus if g.backend in ("cuda", "rocm", "vulkan")]
    lowest = min((layout.architecture(t) for t in runtime.targets), default=0)
    return [
        g
        for g in gpus
        if g.backend == "cuda" and g.compute and int(g.compute.replace(".", "")) >= lowest
    ]


@functools.cache
def _cuda_gpus() -> list[Any]:
    from localrun.hardware import system

    try:
        return system.probe_cuda()
    except Exception:
        return []


def verify(runtime: Runtime) -> str | None:
    """Why `runtime`'s module must not be loaded (outside its folder, damaged, missing), or None."""
    return checked(runtime)[1]


def checked(runtime: Runtime) -> tuple[Path, None] | tuple[None, str]:
    """`runtime`'s module as it is to be loaded (its links resolved), or why it must not be.

    Only a file inside the runtime's own folder is loaded: runtime.json's `module` is a name
    there, and one that leads elsewhere (`../../x.so`, a link out) is refused. The exact
    runtime's module (about 2 MB, hashed in a few milliseconds) is hashed at every load; a GPU
    runtime's (hundreds of MB, a second or more) when its size or mtime changed since install."""
    folder = runtime.path.resolve()
    try:
        path = (runtime.path / runtime.module).resolve(strict=True)
        st = os.stat(path)
    except OSError:
        return None, f"runtime {runtime.name} is damaged (its {runtime.module} is missing)"
    if not path.is_relative_to(folder) or not stat.S_ISREG(st.st_mode):
        return None, (
            f"runtime {runtime.name} is damaged (its record names a module outside its folder: "
            f"{runtime.module[:100]!r})"
        )
    if runtime.backend != "exact" and (st.st_size, st.st_mtime_ns) == tuple(runtime.stamp):
        return path, None
    from localrun.store.blobs import hash_file

    try:
        digest = hash_file(path)
    except OSError as exc:
        return None, f"runtime {runtime.name} cannot be read ({exc.strerror or exc})"
    if digest != runtime.sha256:
        changed = f"runtime {runtime.name} is damaged (its {runtime.module} changed since install)"
        return None, changed
    return path, None


def _load(lib: Any, runtime: Runtime) -> str | None:
    """Load `runtime` into `lib`'s registry; why not, or None once it has a GPU device."""
    hint = f"reinstall it: localrun runtime install {runtime.backend}"
    module, problem = checked(runtime)
    if module is None:
        return f"{problem}: running on the CPU ({hint})"
    return load_unverified(lib, runtime, module, hint)


def load_unverified(lib: Any, runtime: Runtime, module: Path, hint: str) -> str | None:
    """_load after the check of the module's bytes (`module`: the file checked)."""
    preload(_inside(runtime.library_path))
    reg = lib.ggml_backend_load(str(module).encode())
    if not reg:
        return f"runtime {runtime.name} did not load: running on the CPU ({hint})"
    devices = [d for d in ggml.registered_devices(lib, reg) if d.kind in GPU_KINDS]
    if not devices:
        lib.ggml_backend_unload(reg)
        return f"runtime {runtime.name} found no GPU: running on the CPU"
    return None


def _inside(library_path: tuple[str, ...]) -> tuple[str, ...]:
    """The folders of `library_path` that lie under LOCALRUN_HOME/runtimes.

    A toolkit made from wheels lives in runtimes/toolchains/. Libraries are loaded from nowhere
    else a record names.
    """
    base = layout.root().resolve()
    return tuple(p for p in library_path if Path(p).resolve().is_relative_to(base))


def preload(library_path: tuple[str, ...]) -> None:
    """Load the toolchain's libraries a module needs, globally, before the module.

    Windows finds a DLL's dependencies in the folders added to its search path instead.
    """
    if sys.platform == "win32":
        for folder in library_path:
            with contextlib.suppress(OSError):
                os.add_dll_directory(folder)
        return
    for folder in library_path:
        for stem in PRELOAD:
            for candidate in sorted(Path(folder).glob(f"{stem}.*"), key=lambda p: len(p.name)):
                try:
                    ctypes.CDLL(str(candidate), mode=ctypes.RTLD_GLOBAL)
                    break
                except OSError:
                    continue
