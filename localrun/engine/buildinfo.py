"""What the installed llama.cpp was built to use: GPU offload, backends, devices, CPU features.

The one place these facts are read from llama_cpp. The backend names come from ggml's backend
registry when its C API can be reached, else from `llama_print_system_info()`, which lists only the
backends that report features.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass, field
from typing import Any

from localrun.errors import EngineError


@dataclass(frozen=True)
class BuildInfo:
    version: str  # llama-cpp-python's version
    gpu_offload: bool  # llama_supports_gpu_offload(): a GPU backend with a device
    backends: list[str]  # ggml backend names, e.g. ["CUDA", "CPU"]
    system_info: str  # llama_print_system_info(), e.g. "CPU : SSE3 = 1 | AVX = 1 | ..."
    devices: list[str] = field(default_factory=list)  # "CPU (AMD EPYC)", "CUDA0 (NVIDIA H100)"


@functools.cache
def build_info() -> BuildInfo:
    """The facts of the llama.cpp build in this environment (read once per process)."""
    try:
        from localrun.engine.native import lc as llama_cpp
    except (ImportError, OSError, RuntimeError) as exc:  # the last two: libllama did not load
        raise EngineError(
            f"llama.cpp could not be loaded ({type(exc).__name__}: {exc})",
            hint="reinstall it: pip install --force-reinstall llama-cpp-python",
        ) from exc
    system_info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    system_info = system_info.strip().removesuffix("|").strip()
    registry = _registry()
    backends = registry[0] if registry else parse_backends(system_info)
    return BuildInfo(
        version=str(getattr(llama_cpp, "__version__", "unknown")),
        gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()),
        backends=backends,
        system_info=system_info,
        devices=registry[1] if registry else [],
    )


def parse_backends(system_info: str) -> list[str]:
    """Backend names from a system info line: "CUDA : ARCHS = 890 | ... | CPU : SSE3 = 1 |"."""
    out: list[str] = []
    for part in system_info.split("|"):
        name, sep, _ = part.partition(" : ")
        if sep and name.strip() and name.strip() not in out:
            out.append(name.strip())
    return out


def _registry() -> tuple[list[str], list[str]] | None:
    """(backend names, device descriptions) from ggml's registry, or None if unreachable."""
    try:
        from llama_cpp._ggml import libggml  # the library llama_cpp already loaded

        # A fresh handle on the same library, so that setting signatures here cannot disturb
        # llama_cpp's own function objects.
        lib = ctypes.CDLL(libggml._name)
        _declare(lib)
        backends = [
            lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)).decode("utf-8", "replace")
            for i in range(lib.ggml_backend_reg_count())
        ]
        devices = []
        for i in range(lib.ggml_backend_dev_count()):
            dev = lib.ggml_backend_dev_get(i)
            name = lib.ggml_backend_dev_name(dev).decode("utf-8", "replace")
            description = lib.ggml_backend_dev_description(dev).decode("utf-8", "replace")
            devices.append(f"{name} ({description})" if description else name)
    except (ImportError, AttributeError, OSError):
        return None
    return backends, devices


def _declare(lib: Any) -> None:
    pointer, size, text = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    for name, restype, argtypes in (
        ("ggml_backend_reg_count", size, []),
        ("ggml_backend_reg_get", pointer, [size]),
        ("ggml_backend_reg_name", text, [pointer]),
        ("ggml_backend_dev_count", size, []),
        ("ggml_backend_dev_get", pointer, [size]),
        ("ggml_backend_dev_name", text, [pointer]),
        ("ggml_backend_dev_description", text, [pointer]),
    ):
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
