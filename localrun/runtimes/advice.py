"""No silent CPU: the lines that say a GPU or the exact runtime waits to be installed.

`run` and `serve` print one line when this machine has a GPU that nothing installed can use,
with the command that fixes it. Finding the GPUs (NVML, rocm-smi, vulkaninfo) takes 0.2 to 0.4 s,
so it is done once per installed llama-cpp-python version (a marker under
LOCALRUN_HOME/runtimes): the first `run` or `serve` after an install or an upgrade. It is never
done when the user selected the CPU, and never loads llama.cpp: the GPU backends built into the
bindings are read from the names of their libraries.

`serve` also says at every start when a greedy answer can depend on the batch on this CPU for
want of the exact runtime (runtimes/exact.py), with the command that installs it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from localrun.host import private
from localrun.runtimes import layout
from localrun.settings import config

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
    from localrun.runtimes.activate import suiting_gpus

    reachable = {kind for name in built_in for kind in BUILT_IN[name]}
    if any(g.backend in reachable for g in real):
        return None
    if any(suiting_gpus(r, real) for r in runtimes if r.llama_cpp_version == version):
        return None
    names = ", ".join(sorted({g.name for g in real}))
    return (
        f"note: models run on the CPU: no installed runtime can use the GPU here ({names}); "
        f"to use it: {FIX}"
    )


def detected_gpus() -> list[Any]:
    """This machine's GPUs (localrun.hardware.system, imported only when they are looked for)."""
    from localrun.hardware import system

    return system.detect().gpus


def say_once(find_gpus: Callable[[], Sequence[Any]], say: Callable[[str], None]) -> None:
    """Print the idle-GPU line on the first look since llama-cpp-python was installed.

    `find_gpus` is only called then. Errors are never fatal here.
    """
    try:
        if layout.selection() == layout.CPU:
            return
        from localrun.runtimes.source import bindings_version

        version = bindings_version()
        marker = layout.root() / f".gpu-checked-{version}"
        if marker.exists():
            return
        line = idle_gpu_line(find_gpus(), built_in_backends(), layout.installed(), version)
        config.make_dirs(marker.parent)
        private.touch(marker)  # never through a link planted there
        if line is not None:
            say(line)
    except Exception:  # advice must never stop a model from running
        return


EXACT_FIX = "localrun runtime install exact"


def exact_line() -> str | None:
    """What `serve` says when a greedy or seeded answer can depend on the batch here.

    That is when models run on this CPU (no GPU backend built in or installed), LOCALRUN_EXACT
    is not off, and no exact runtime is in use for these bindings and this CPU. Never raises.
    """
    try:
        from localrun.runtimes import exact
        from localrun.runtimes.source import bindings_version

        if not sys.platform.startswith("linux") or config.exact() == "off":
            return None
        if built_in_backends():
            return None
        version = bindings_version()
        gpu = [r for r in layout.installed() if r.backend != exact.BACKEND]
        if layout.selection() != layout.CPU and any(r.llama_cpp_version == version for r in gpu):
            return None
        if exact.installed(version) or exact.builtin() is not None:
            return None
    except Exception:  # advice must never stop the server
        return None
    return (
        "note: a greedy or seeded answer can depend on the prompt cache and the batch on this "
        f"CPU; to make it exact: {EXACT_FIX} (localrun help exact-runtime)"
    )
