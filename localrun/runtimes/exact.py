"""The exact runtime: llama.cpp's CPU library built so that a token's logits do not depend on
the batch it is evaluated in.

The installed libggml-cpu picks one of three flash-attention kernels by the batch's shape (a
tiled one for 64 or more rows of a sequence, a split-KV one for a lone token once 512 cells are
in use, whose chunks follow the thread count, and a row-by-row one otherwise), and the three
sum in different orders and precisions. So the same token's logits differ in their last bits
between a cold prompt and a cached one, alone and beside another stream, in a speculation's
verification batch and in a decode of its own, and a greedy answer flips where two tokens are
nearly tied (scripts/measure/batch_invariance.py finds the first graph node that differs).

This runtime is that library built from the same source (the installed llama-cpp-python's
sdist, as the GPU runtimes are: localrun/runtimes/build.py) with its CPU flash attention
replaced (kernels/fattn-exact.cpp, built beside ops.cpp, says how): one kernel at every row
count for an F16/F32 KV cache, matrix products whose every element is one fixed chain of FMAs,
the cells cut into segments at fixed positions and merged in order, run in turn for many rows
and side by side by the threads for a few. So a row's arithmetic is the same in any batch and
at any thread count. Other KV cache types (quantized, bf16) take the row-by-row kernel at every
row count.

The weights' products must be batch-invariant too, and in the installed library they are not
everywhere: a batch of some size takes another kernel than a lone row (llamafile's sgemm,
ARM's repacked gemm against its gemv, x86's tiled K-quant matmul).

Every change to llama.cpp's files is a unified diff in patches/ beside this module, one per
concern, each with a header saying what it changes and why (as Ollama's llama/patches/), applied
by runtimes/patching.py: a patch already in the tree is skipped, one that does not apply stops
the build naming the patch, the file and the hunk. The first patch routes the op to the kernel
and adds the kernel's files (copied from kernels/) to ggml-cpu's sources. The patches are made
for the llama-cpp-python release in patches/BASE; scripts/maintenance/upgrade_llama_cpp.py moves
them to another (docs/upgrading-llama-cpp.md).
It is built for this CPU (-march=native) and loaded only on the CPU it was built for.

It is loaded before llama_cpp (engine/library/native.py calls `preload`): the installed libggml-base
by its path, then this library, both globally, so that libggml's need of libggml-cpu.so.0
resolves to it by its soname and the installed one is never loaded. LOCALRUN_EXACT turns it
off (`off`), or asks for it (`on`: a warning when it is missing); `auto` loads it when it is
installed. `python -m localrun.engine.library.backend_check --exact MODULE` is the install's check.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from localrun.errors import RuntimeBuildError
from localrun.runtimes import layout, patching, source
from localrun.runtimes.layout import Runtime

BACKEND = "exact"
TARGET = "ggml-cpu"
HERE = Path(__file__).parent
PATCHES = HERE / "patches"
KERNELS = HERE / "kernels"  # copied into ggml-cpu/, where patch 0001 adds them to its sources
GGML_CPU = Path("ggml") / "src" / "ggml-cpu"


def patch_files() -> list[Path]:
    """The patches, in the order they are applied."""
    return sorted(PATCHES.glob("*.patch"))


def kernel_files() -> list[Path]:
    return sorted(p for p in KERNELS.iterdir() if p.suffix in (".cpp", ".h"))


def base_version() -> str:
    """The llama-cpp-python release the patches are made for."""
    return (PATCHES / "BASE").read_text(encoding="utf-8").strip()


def patch_source(tree: Path) -> list[patching.Outcome]:
    """Make `tree`'s ggml-cpu the exact runtime's (idempotent): the kernel's files copied beside
    ops.cpp, each patch applied unless it is there already. RuntimeBuildError, naming the patch,
    the file and the hunk, when one neither applies nor is applied; then nothing of that patch
    is written."""
    folder = tree / GGML_CPU
    if not folder.is_dir():
        raise RuntimeBuildError(
            f"the llama.cpp source has no {GGML_CPU}",
            hint="run the install again: its source is unpacked afresh",
        )
    for kernel in kernel_files():
        text = kernel.read_text(encoding="utf-8")
        target = folder / kernel.name
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            source.rewrite(target, text)  # an unchanged file is not compiled again
    outcomes = []
    for path in patch_files():
        patch = patching.parse(path.read_text(encoding="utf-8"), path.name)
        outcome = patching.status(tree, patch)
        if outcome.state == "failed":
            raise does_not_apply(outcome)
        for name, text in outcome.texts.items():
            source.rewrite(tree / name, text)
        outcomes.append(outcome)
    return outcomes


def does_not_apply(outcome: patching.Outcome) -> RuntimeBuildError:
    """The error for a patch that does not apply: its first hunk that does not match."""
    name, index, hunk = outcome.failed[0]
    if hunk is None or index == 0:
        where = f"{name} is missing"
    else:
        where = f"hunk {index} of {name} (patch line {hunk.line_no}: {hunk.first_change()[:60]!r})"
        where += " does not match"
    more = len(outcome.failed) - 1
    return RuntimeBuildError(
        f"patch {outcome.patch} does not apply to this llama.cpp: {where}"
        + (f" (and hunks of {more} more file(s))" if more else ""),
        hint=f"the exact runtime is made for llama-cpp-python {base_version()} "
        "(scripts/maintenance/upgrade_llama_cpp.py moves it to another); use the CPU as installed",
    )


def cpu_identity() -> str:
    """What the library's -march=native was for: this CPU's model and instruction sets."""
    text = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    keep = []
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip()
        if key in ("vendor_id", "model name", "flags", "Features", "CPU implementer", "CPU part"):
            keep.append(line.strip())
            if key in ("flags", "Features"):
                break  # the first processor's: they are all alike
    raw = "\n".join(keep) or f"{platform.machine()} {platform.processor()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


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


def preload(module: Path | None = None) -> Loaded:
    """Before llama_cpp is imported: load the exact library (the installed one for these
    bindings and this CPU, or `module`), once per process. Never raises."""
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
    mine = {p for p in paths if Path(p).resolve() == module.resolve()}
    others = paths - mine
    if not mine:
        return f"{module} is not mapped"
    if others:
        return f"the installed CPU library was loaded as well ({sorted(others)[0]})"
    return None


def confirm() -> None:
    """After llama_cpp is imported: a loaded exact library that llama.cpp does not use (another
    libggml-cpu came first) becomes a warning, and not in use."""
    state = current()
    if state.runtime is None:
        return
    problem = in_use(state.runtime.module_path)
    if problem is not None:
        state.warning = f"the exact runtime is not in use: {problem}"
        state.runtime = None
