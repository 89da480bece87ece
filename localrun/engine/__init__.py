"""The inference engine: the only package that imports llama_cpp.

`types` holds the backend-neutral protocol and data (imported by the layers above); `llama` is the
llama.cpp implementation over llama-cpp-python's low-level API; `fake` is a scripted stand-in for
tests of the layers above; `buildinfo` reports what the installed llama.cpp was built with.

Importing the package loads the C++ runtime first (`load_cxx_runtime`), so that every module
here that imports llama_cpp finds it in place.
"""

from __future__ import annotations

import ctypes
import sys

CXX_RUNTIME = "libstdc++.so.6"


def load_cxx_runtime() -> bool:
    """Load the system's C++ runtime into the process's global symbols, before llama.cpp's
    libraries; True if it is loaded. Linux only (elsewhere there is nothing to do).

    Python links no C++ runtime, and llama_cpp opens its libraries with ctypes (RTLD_LOCAL),
    each with its dependencies in its own lookup scope. A CUDA build of ggml's libggml-cuda.so
    exports weak copies of standard-library symbols (1,764 in a CUDA 13 build for an H100).
    Seen there: every load of a model with a BPE tokenizer crashed (SIGSEGV) in libllama's
    std::regex, compiling the pre-tokenizer's regex inside llama_model_load_from_file, in code
    that resolved into libggml-cuda.so; with libstdc++ preloaded (LD_PRELOAD) it never did.
    llama-server links libstdc++ itself, so its symbols come first there. Loading it here,
    globally, puts the one runtime ahead of every library llama_cpp opens; a build without
    CUDA is unaffected.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL(CXX_RUNTIME, mode=ctypes.RTLD_GLOBAL)
    except OSError:  # a system on another C++ runtime (libc++): nothing to put first
        return False
    return True


load_cxx_runtime()
