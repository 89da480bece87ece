"""llama_cpp, imported after the C++ runtime: every module of the engine imports it from here.

from localrun.engine.library.native import lc
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import Any, cast

CXX_RUNTIME = "libstdc++.so.6"


def load_cxx_runtime() -> None:
    """Load the system's C++ runtime globally, before llama.cpp's libraries (Linux only).

    Python links no C++ runtime, and llama_cpp opens its libraries with ctypes (RTLD_LOCAL), each
    with its dependencies in its own lookup scope. A CUDA build's libggml-cuda.so exports weak
    copies of standard-library symbols (1,764 in a CUDA 13 build for an H100). There, every load of
    a model with a BPE tokenizer crashed (SIGSEGV) in libllama's std::regex, in code that resolved
    into libggml-cuda.so. With libstdc++ preloaded (LD_PRELOAD) it never did, and llama-server links
    libstdc++ itself. Loading it here puts the one runtime ahead of every library llama_cpp opens; a
    build without CUDA is unaffected.
    """
    # The crash was in compiling the pre-tokenizer's regex, inside llama_model_load_from_file.
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):  # a system on another C++ runtime (libc++): nothing to do
        ctypes.CDLL(CXX_RUNTIME, mode=ctypes.RTLD_GLOBAL)


def _preload_exact() -> None:
    # The exact runtime's CPU library must be in the process before llama_cpp loads the
    # installed one (localrun/runtimes/exact.py). Never raises.
    from localrun.runtimes import exact

    exact.preload()


load_cxx_runtime()
_preload_exact()

import llama_cpp as lc  # noqa: E402  (after the C++ runtime and the exact runtime, on purpose)


def memory(ctx: Any) -> lc.llama_memory_t:
    """A context's memory (llama_get_memory), the handle the llama_memory_* calls take.

    It is NULL (None) for a model that keeps none (an encoder: BERT, nomic-bert). llama.cpp's
    llama_memory_* functions take NULL and do nothing (seq_rm answers true, seq_pos_max -1), though
    llama_cpp annotates them as needing a handle. It is typed as one: callers pass it on as it is,
    NULL included.
    """
    return cast("lc.llama_memory_t", lc.llama_get_memory(ctx))


def libllama_path() -> str | None:
    """The file llama_cpp loaded libllama from (LLAMA_CPP_LIB_PATH's, or the package's)."""
    return getattr(getattr(lc.llama_cpp, "_lib", None), "_name", None)


def _activate_runtime() -> None:
    # Before any model loads, so that llama.cpp plans and offloads with the selected runtime's
    # devices (localrun/runtimes/activate.py). Never raises.
    from localrun.runtimes import exact
    from localrun.runtimes.activate import activate

    exact.confirm()
    activate(libllama_path(), str(getattr(lc, "__version__", "")))


_activate_runtime()

__all__ = ["CXX_RUNTIME", "lc", "libllama_path", "load_cxx_runtime", "memory"]
