"""No silent CPU: the one line that `run` and `serve` print when this machine has a GPU that
nothing installed can use, with the command that fixes it.

Said once per machine and GPU set (a marker under LOCALRUN_HOME/runtimes), never when the user
selected the CPU, and decided without loading llama.cpp: the GPU backends built into the
installed bindings are read from the names of their libraries.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from localrun.runtimes import layout

# ggml's library names -> the GPU kinds (system.GPU.backend) each can drive.
BUILT_IN = {"cuda": ("cuda",), "hip": ("rocm",), "vulkan": ("cuda", "rocm", "vulkan"),
            "metal": ("metal",)}  # fmt: skip
FIX = "localrun runtime install auto"


def built_in_backends() -> set[str]:
    """The GPU backends of the installed llama-cpp-python, from its library files."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return set()
    found = set()
    for folder in spec.submodule_search_locations:
        with contextlib.suppress(OSError):
            for f in (Path(folder) / "lib").iterdir():
                for name in BUILT_IN:
                    if f.name.startswith((f"libggml-{name}", f"ggml-{name}")):
                        found.add(name)
    return found


def idle_gpu_line(
    gpus: Sequence[Any], built_in: set[str], runtimes: Sequence[Any], version: str
) -> str | None:
    """The line to print when no installed llama.cpp backend or runtime can use these GPUs."""
    real = [g for g in gpus if g.backend != "metal"]
    if not real:
        return None
    reachable = {kind for name in built_in for kind in BUILT_IN[name]}
    for r in runtimes:
        if r.llama_cpp_version == version:
            reachable |= {"cuda"} if r.backend == "cuda" else {"cuda", "rocm", "vulkan"}
    if any(g.backend in reachable for g in real):
        return None
    names = ", ".join(sorted({g.name for g in real}))
    return (
        f"note: models run on the CPU: no installed runtime can use the GPU here ({names}); "
        f"to use it: {FIX}"
    )


def say_once(gpus: Sequence[Any], say: Any) -> None:
    """Print the idle-GPU line once for this set of GPUs (errors are never fatal here)."""
    try:
        if layout.selection() == layout.CPU:
            return
        from localrun.runtimes.source import bindings_version

        line = idle_gpu_line(gpus, built_in_backends(), layout.installed(), bindings_version())
        if line is None:
            return
        key = hashlib.sha256(line.encode()).hexdigest()[:16]
        marker = layout.root() / f".advised-{key}"
        if marker.exists():
            return
        say(line)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except Exception:  # advice must never stop a model from running
        return
