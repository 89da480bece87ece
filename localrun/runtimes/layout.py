"""The installed runtimes and the selection, under LOCALRUN_HOME/runtimes.

    runtimes/
      selected                      "auto", "cpu" or a runtime's name (absent: auto)
      vulkan-0.3.36/                one runtime: a folder moved into place whole
        runtime.json                what it is (Runtime below)
        libggml-vulkan.so           the backend module
      exact-0.3.36/                 the CPU library built for batch-invariant answers
        runtime.json
        libggml-cpu.so
      .tmp-<pid>-<hex>/             an install under way (or one that was interrupted)
      sources/                      kept llama-cpp-python source distributions
      toolchains/cuda-13/           a CUDA toolkit put together from PyPI wheels

A runtime's folder is written elsewhere and renamed into place, so a listed runtime is whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from localrun.errors import GPURuntimeError, RuntimeNotFoundError
from localrun.settings import config
from localrun.store.blobs import TMP_PREFIX, fsync_dir, os_error, temp_path, write_atomic

BACKENDS = ("cuda", "vulkan", "exact", "rpc")
AUTO, CPU = "auto", "cpu"
RECORD = "runtime.json"


@dataclass(frozen=True)
class Runtime:
    name: str  # "vulkan-0.3.36", "cuda-0.3.36-sm89-sm90"
    backend: str  # "cuda" | "vulkan" | "exact" (the CPU library: runtimes/exact.py)
    llama_cpp_version: str  # the llama-cpp-python version whose llama.cpp source it was built from
    ggml_version: str  # ggml's own version in that source ("0.25.3")
    toolchain: str  # what built it: "glslc 2023.2, Vulkan headers 1.3.239"
    module: str  # the backend library's file name in the runtime's folder
    sha256: str  # of the module, checked before it is loaded (activate.checked says when)
    size: int  # bytes of the runtime's folder
    targets: tuple[str, ...] = ()  # CUDA architectures ("sm90"); Vulkan: any device
    library_path: tuple[str, ...] = ()  # folders the module's own dependencies load from
    built_at: float = 0.0
    build_seconds: float = 0.0
    stamp: tuple[int, int] = (0, 0)  # (size, mtime_ns) of the module when its hash was checked
    cpu: str = ""  # exact: the CPU its -march=native was for (patchset.cpu_identity)
    path: Path = field(default=Path(), compare=False)

    @property
    def module_path(self) -> Path:
        return self.path / self.module

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("path")
        return out


def module_file(target: str) -> str:
    """The file a ggml CMake target builds to as a loadable module on this system.

    lib<target>.so on Linux and macOS (CMake's MODULE suffix there), <target>.dll on Windows.
    """
    return f"{target}.dll" if sys.platform == "win32" else f"lib{target}.so"


def root() -> Path:
    return config.home() / "runtimes"


def runtime_name(backend: str, llama_cpp_version: str, targets: tuple[str, ...] = ()) -> str:
    return "-".join([backend, llama_cpp_version, *targets]).replace("+", "-").lower()


def architecture(target: str) -> int:
    """80 for "sm80" (and "sm90a"); ValueError for anything else."""
    match = re.fullmatch(r"sm(\d{2,3})[af]?", target)
    if match is None:
        raise ValueError(f"not a CUDA architecture: {target!r}")
    return int(match.group(1))


def _read(folder: Path) -> Runtime | None:
    """The runtime in `folder`, or None when its record is missing or damaged."""
    try:
        raw = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        stamp = raw.get("stamp", (0, 0))
        return Runtime(
            name=str(raw["name"]),
            backend=str(raw["backend"]),
            llama_cpp_version=str(raw["llama_cpp_version"]),
            ggml_version=str(raw.get("ggml_version", "")),
            toolchain=str(raw.get("toolchain", "")),
            module=str(raw["module"]),
            sha256=str(raw["sha256"]),
            size=int(raw.get("size", 0)),
            targets=tuple(str(t) for t in raw.get("targets", ()) if architecture(str(t))),
            library_path=tuple(str(p) for p in raw.get("library_path", ())),
            built_at=float(raw.get("built_at", 0.0)),
            build_seconds=float(raw.get("build_seconds", 0.0)),
            stamp=(int(stamp[0]), int(stamp[1])),
            cpu=str(raw.get("cpu", "")),
            path=folder,
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def installed() -> list[Runtime]:
    """The installed runtimes, by name (folders without a readable record are skipped)."""
    base = root()
    try:
        folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []
    found = []
    for folder in folders:
        if folder.name.startswith((TMP_PREFIX, ".")) or folder.name in ("sources", "toolchains"):
            continue
        runtime = _read(folder)
        if runtime is not None and runtime.name == folder.name:
            found.append(runtime)
    return found


def get(name: str) -> Runtime:
    for runtime in installed():
        if runtime.name == name:
            return runtime
    names = ", ".join(r.name for r in installed()) or "none"
    raise RuntimeNotFoundError(
        f"runtime '{name}' is not installed (installed: {names})",
        hint="see `localrun runtime list`, or install one: localrun runtime install auto",
    )


def selection() -> str:
    """What runs models: LOCALRUN_RUNTIME when set, else the saved selection ("auto" if none)."""
    return config.runtime() or saved_selection()


def select(name: str) -> None:
    """Save the selection: a runtime's name, "auto" or "cpu" (the name is checked first)."""
    backend = get(name).backend if name not in (AUTO, CPU) else ""
    if backend == "exact":
        raise GPURuntimeError(
            f"runtime '{name}' is the exact CPU library, not a GPU runtime to select",
            hint="it loads whenever it is installed; LOCALRUN_EXACT=off leaves it out",
        )
    if backend == "rpc":
        raise GPURuntimeError(
            f"runtime '{name}' is llama.cpp's RPC backend, not a GPU runtime to select",
            hint="`localrun worker` and `localrun serve --workers` load it when they need it",
        )
    base = root()
    try:
        config.make_dirs(base)
    except OSError as exc:
        raise os_error(exc, f"could not write to {base}") from None
    write_atomic(base / "selected", [name.encode() + b"\n"], sync_dir=True)


def saved_selection() -> str:
    try:
        return (root() / "selected").read_text(encoding="utf-8").strip() or AUTO
    except OSError:
        return AUTO


def install_folder(staged: Path, runtime: Runtime) -> Runtime:
    """Move a complete staged folder into place as `runtime.name` (replacing an older one)."""
    base = root()
    final = base / runtime.name
    record = json.dumps(runtime.to_json(), indent=2).encode() + b"\n"
    write_atomic(staged / RECORD, [record], sync_dir=True)
    old = None
    try:
        if final.exists():
            old = base / f"{TMP_PREFIX}old-{os.getpid()}-{runtime.name}"
            os.replace(final, old)
        os.replace(staged, final)
    except BaseException as exc:
        if old is not None and not final.exists():  # put the previous one back
            with contextlib.suppress(OSError):
                os.replace(old, final)
        if isinstance(exc, OSError):
            raise os_error(exc, f"could not install runtime {runtime.name}") from None
        raise
    fsync_dir(base)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return _read(final) or runtime


def staging_folder() -> Path:
    """A new, empty, process-unique folder in which an install puts its files."""
    base = root()
    try:
        config.make_dirs(base)
        prune_staging()
        staged = temp_path(base)
        staged.mkdir()
    except OSError as exc:
        raise os_error(exc, f"could not write to {base}") from None
    return staged


def remove(name: str) -> Runtime:
    """Remove a runtime (a selection naming it falls back to auto)."""
    runtime = get(name)
    doomed = root() / f"{TMP_PREFIX}rm-{os.getpid()}-{name}"
    try:
        os.replace(runtime.path, doomed)
    except OSError as exc:
        raise os_error(exc, f"could not remove runtime {name}") from None
    shutil.rmtree(doomed, ignore_errors=True)
    if saved_selection() == name:
        select(AUTO)
    return runtime


def prune_staging(older_than_s: float = 3600.0) -> None:
    """Remove the temporary folders of installs that ended without finishing."""
    with contextlib.suppress(OSError):
        for p in root().iterdir():
            if p.name.startswith(TMP_PREFIX) and time.time() - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)


def folder_size(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            with contextlib.suppress(OSError):
                total += (Path(dirpath) / f).lstat().st_size
    return total
