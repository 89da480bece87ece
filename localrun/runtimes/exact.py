"""The exact runtime: llama.cpp's CPU library built so that a token's logits do not depend on
the batch it is evaluated in.

The installed libggml-cpu picks one of three flash-attention kernels by the batch's shape (a
tiled one for 64 or more rows of a sequence, a split-KV one for a lone token once 512 cells are
in use, whose chunks follow the thread count, and a row-by-row one otherwise), and the three
sum in different orders and precisions. So the same token's logits differ in their last bits
between a cold prompt and a cached one, alone and beside another stream, in a speculation's
verification batch and in a decode of its own, and a greedy answer flips where two tokens are
nearly tied (scripts/probe_batch_invariance.py finds the first graph node that differs).

This runtime is that library built from the same source (the installed llama-cpp-python's
sdist, as the GPU runtimes are: localrun/runtimes/build.py) with its CPU flash attention
replaced (fattn_exact.cpp beside this file, which says how): one kernel at every row count for
an F16/F32 KV cache, matrix products whose every element is one fixed chain of FMAs, the cells
cut into segments at fixed positions and merged in order, run in turn for many rows and side by
side by the threads for a few. So a row's arithmetic is the same in any batch and at any thread
count. Other KV cache types (quantized, bf16) take the row-by-row kernel at every row count.

The weights' products must be batch-invariant too, and in the installed library they are not
everywhere: a batch of some size takes another kernel than a lone row (llamafile's sgemm,
ARM's repacked gemm against its gemv, x86's tiled K-quant matmul). runtimes/exact_edits.py
holds the edits that make each row's sum the same in any batch, and says what each was found
with.
It is built for this CPU (-march=native) and loaded only on the CPU it was built for.

It is loaded before llama_cpp (engine/native.py calls `preload`): the installed libggml-base
by its path, then this library, both globally, so that libggml's need of libggml-cpu.so.0
resolves to it by its soname and the installed one is never loaded. LOCALRUN_EXACT turns it
off (`off`), or asks for it (`on`: a warning when it is missing); `auto` loads it when it is
installed. `python -m localrun.engine.backend_check --exact MODULE` is the install's check.
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
from localrun.runtimes import layout, source
from localrun.runtimes.exact_edits import BRANCH_EDITS, EDITS, SUPERSEDED
from localrun.runtimes.layout import Runtime

BACKEND = "exact"
TARGET = "ggml-cpu"
KERNEL = Path(__file__).with_name("fattn_exact.cpp")
GGML_CPU = Path("ggml") / "src" / "ggml-cpu"
# ops.cpp: from the tiled kernel to the op's entry point (the tiled kernel, split-KV's reduction
# and the kernel choice) becomes fattn_exact.cpp.
KERNEL_FROM = "static void ggml_compute_forward_flash_attn_ext_tiled("
KERNEL_TO = "void ggml_compute_forward_flash_attn_ext(\n"


def patch_source(tree: Path) -> None:
    """Make `tree`'s ggml-cpu the exact runtime's (idempotent). RuntimeBuildError when the
    source is not the one this change was written for."""
    folder = tree / GGML_CPU
    texts: dict[str, str] = {}
    names = ("ops.cpp", *(edit[0] for edit in EDITS), *(edit[0] for edit in BRANCH_EDITS))
    for name in dict.fromkeys(names):  # each file once
        try:
            texts[name] = (folder / name).read_text(encoding="utf-8")
        except OSError as exc:
            raise RuntimeBuildError(
                f"the llama.cpp source has no readable {GGML_CPU / name} ({exc.strerror or exc})",
                hint="run the install again: its source is unpacked afresh",
            ) from None
    before = dict(texts)
    kernel = KERNEL.read_text(encoding="utf-8")
    ops = texts["ops.cpp"]
    # An earlier install's kernel is replaced by this one (a newer localrun may change it).
    start = ops.find(kernel.split("\n", 1)[0])
    start = start if start >= 0 else ops.find(KERNEL_FROM)
    end = ops.find(KERNEL_TO)
    if start < 0 or end < start:
        raise _not_this_source()
    texts["ops.cpp"] = ops[:start] + kernel + "\n" + ops[end:]
    for name, old, new in EDITS:
        if new in texts[name]:
            continue  # an earlier install's
        for earlier in SUPERSEDED.get(new, ()):  # an earlier localrun's edit: this one instead
            if texts[name].count(earlier) == 1:
                texts[name] = texts[name].replace(earlier, old)
        if texts[name].count(old) != 1:
            raise _not_this_source()
        texts[name] = texts[name].replace(old, new)
    for name, scope, pairs in BRANCH_EDITS:
        texts[name] = _patch_branch(texts[name], scope, pairs)
    for name, text in texts.items():
        if text != before[name]:  # an unchanged file is not compiled again
            source.rewrite(folder / name, text)


_AVX2_BRANCH = ("#if defined __AVX2__", "#if defined(__AVX2__)")


def _patch_branch(text: str, scope: str, pairs: tuple[tuple[str, str], ...]) -> str:
    """`text` with the (old, new) pairs made in the AVX2 branch of the function `scope` opens
    (exact_edits_x86.X86_BRANCH_EDITS); unchanged where this version made them already."""
    if text.count(scope) != 1:
        raise _not_this_source()
    opens = text.index(scope)
    closes = text.find("\n}\n", opens)  # the function's end: its branch lies before it
    if closes < 0:
        raise _not_this_source()
    found = [text.find(mark, opens, closes) for mark in _AVX2_BRANCH]
    start = min((at for at in found if at >= 0), default=-1)
    end = _branch_end(text, start, closes) if start >= 0 else -1
    if end < 0:
        raise _not_this_source()
    branch = text[start:end]
    if all(new in branch for _, new in pairs) and not any(old in branch for old, _ in pairs):
        return text  # an earlier install of this version
    for old, new in pairs:
        if branch.count(old) != 1:
            raise _not_this_source()
        branch = branch.replace(old, new)
    return text[:start] + branch + text[end:]


def _branch_end(text: str, start: int, limit: int) -> int:
    """Where the #if branch opened at `start` ends, before `limit`: its #elif or #else (nested
    ones skipped); -1 when it does not end there."""
    lines = text[start:limit].split("\n")
    depth, at = 0, start
    for line in lines:
        directive = line.strip().replace(" ", "")  # `#  if` and indented ones too
        if directive.startswith("#if"):
            depth += 1
        elif directive.startswith("#endif"):
            depth -= 1
        elif directive.startswith(("#elif", "#else")) and depth == 1:
            return at
        if depth == 0:
            return at
        at += len(line) + 1
    return -1


def _not_this_source() -> RuntimeBuildError:
    return RuntimeBuildError(
        "this llama.cpp's CPU library is not the one the exact runtime changes",
        hint="the exact runtime is made for llama-cpp-python 0.3.36; use the CPU as installed",
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
