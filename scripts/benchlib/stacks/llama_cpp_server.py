"""llama-cpp-python's own server (`python -m llama_cpp.server`) with the llama.cpp model
parameters localrun uses on this machine (localrun.engine.library.machine).

llama_cpp.server builds its Llama with llama-cpp-python's defaults, which repack weights into
AMX buffers on a CPU with AMX, whose matrix multiplication crashes (llama.cpp#20824); the
benchmarks start it through this file instead, with the same arguments.
"""

from __future__ import annotations

import runpy
import sys

from localrun.engine.library.machine import machine_params

if __name__ == "__main__":
    sys.argv[0] = "llama_cpp.server"
    with machine_params().defaults():
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
