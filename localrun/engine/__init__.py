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

    Python itself does not link libstdc++, so in a process where no C++ extension came first,
    llama_cpp's libraries are the first to bring C++ symbols in. A CUDA build of ggml's
    libggml-cuda.so exports weak copies of standard-library symbols (1,764 in a CUDA 13 build
    for an H100); when it is loaded before libstdc++ itself, libllama's std::regex binds to
    some of them and crashes: SIGSEGV while compiling the BPE pre-tokenizer's regex, in the
    middle of llama_model_load_from_file, for every model with such a tokenizer. llama-server
    and other C++ programs never see it, since libstdc++ is their own dependency and loads
    first. Loading it here, globally, does the same; a build without CUDA is unaffected.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL(CXX_RUNTIME, mode=ctypes.RTLD_GLOBAL)
    except OSError:  # no libstdc++ (a musl system): llama.cpp's libraries bring their own
        return False
    return True


load_cxx_runtime()
