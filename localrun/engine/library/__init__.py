"""The llama.cpp library of this process, imported after the C++ runtime.

    native.py         llama_cpp, after the C++ runtime and the exact runtime's CPU library
    buildinfo.py      what llama.cpp was built with and can use
    machine.py        the parameters every model loads with on this machine
    backend_check.py  a new backend module loaded first in a process of its own
    quantize.py       llama.cpp's quantizer, for create

Every module of the engine that needs llama_cpp imports it from `native`.
"""
