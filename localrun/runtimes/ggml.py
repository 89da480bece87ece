"""ggml's backend registry, reached through the libggml that libllama itself loaded.

llama-cpp-python's wheel holds libggml.so, libggml.so.0 and libggml.so.0.25.3 as three separate
files, and its own `llama_cpp._ggml` opens libggml.so, while libllama links libggml.so.0: two
copies of ggml in one process, each with its own registry. A backend registered in the wrong
one offloads nothing, and a registry read from it lists only the CPU. So the handle here is the
copy already loaded under libllama's soname (dlopen with RTLD_NOLOAD finds it, and loads
nothing), else the file of that name beside libllama.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SONAME = "libggml.so.0"
DEVICE_TYPES = ("CPU", "GPU", "IGPU", "ACCEL", "META")


@dataclass(frozen=True)
class Device:
    name: str  # "Vulkan0", "CUDA0"
    description: str  # "NVIDIA H100 80GB HBM3", "llvmpipe (LLVM 15.0.6, 256 bits)"
    backend: str  # the registry's name: "Vulkan", "CUDA", "CPU"
    kind: str  # "GPU", "IGPU", "CPU", ...
    free_bytes: int
    total_bytes: int

    def __str__(self) -> str:
        return f"{self.name} ({self.description})" if self.description else self.name


def library(libllama: str | None) -> Any:
    """The libggml that `libllama` (a path) uses, with the registry's signatures declared."""
    lib = None
    if sys.platform == "linux":
        try:
            lib = ctypes.CDLL(SONAME, mode=os.RTLD_NOLOAD | ctypes.RTLD_LOCAL)
        except OSError:
            lib = None
    if lib is None and libllama:
        folder = Path(libllama).parent
        for name in (SONAME, "libggml.so", "libggml.dylib", "ggml.dll"):
            if (folder / name).exists():
                lib = ctypes.CDLL(str(folder / name))
                break
    if lib is None:
        raise OSError("libggml is not loaded")
    _declare(lib)
    return lib


def _declare(lib: Any) -> None:
    pointer, size, text = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    for name, restype, argtypes in (
        ("ggml_backend_reg_count", size, []),
        ("ggml_backend_reg_get", pointer, [size]),
        ("ggml_backend_reg_name", text, [pointer]),
        ("ggml_backend_reg_dev_count", size, [pointer]),
        ("ggml_backend_reg_dev_get", pointer, [pointer, size]),
        ("ggml_backend_dev_count", size, []),
        ("ggml_backend_dev_get", pointer, [size]),
        ("ggml_backend_dev_name", text, [pointer]),
        ("ggml_backend_dev_description", text, [pointer]),
        ("ggml_backend_dev_type", ctypes.c_int, [pointer]),
        ("ggml_backend_dev_backend_reg", pointer, [pointer]),
        ("ggml_backend_dev_memory", None, [pointer, ctypes.POINTER(size), ctypes.POINTER(size)]),
        ("ggml_backend_load", pointer, [text]),
        ("ggml_backend_reg_by_name", pointer, [text]),
        ("ggml_backend_reg_get_proc_address", pointer, [pointer, text]),
        ("ggml_backend_register", None, [pointer]),
        ("ggml_backend_unload", None, [pointer]),
    ):
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value else ""


def backends(lib: Any) -> list[str]:
    return [
        _text(lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)))
        for i in range(lib.ggml_backend_reg_count())
    ]


def device(lib: Any, dev: int) -> Device:
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
    kind = lib.ggml_backend_dev_type(dev)
    return Device(
        name=_text(lib.ggml_backend_dev_name(dev)),
        description=_text(lib.ggml_backend_dev_description(dev)),
        backend=_text(lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev))),
        kind=DEVICE_TYPES[kind] if 0 <= kind < len(DEVICE_TYPES) else str(kind),
        free_bytes=int(free.value),
        total_bytes=int(total.value),
    )


def devices(lib: Any) -> list[Device]:
    return [d for _, d in described(lib)]


def described(lib: Any) -> list[tuple[int, Device]]:
    """Every registered device: its handle (what a load's `devices` lists) and what it is."""
    handles = [int(lib.ggml_backend_dev_get(i)) for i in range(lib.ggml_backend_dev_count())]
    return [(handle, device(lib, handle)) for handle in handles]


def registered_devices(lib: Any, reg: int) -> list[Device]:
    return [
        device(lib, lib.ggml_backend_reg_dev_get(reg, i))
        for i in range(lib.ggml_backend_reg_dev_count(reg))
    ]
