"""GPU runtimes that localrun builds and loads itself: `localrun runtime install|select|list|rm`.

A runtime is one ggml GPU backend (libggml-vulkan, libggml-cuda) built as a loadable module from
exactly the llama.cpp source the installed llama-cpp-python binds, and loaded into that
package's own ggml beside its CPU backend: ggml registers backends at run time
(`ggml_backend_load`), so the stock CPU wheel gains a GPU without a second libllama, and a
runtime costs one library (Vulkan: 29 MB) instead of a whole llama.cpp. A whole build
(reinstalling llama-cpp-python with CMAKE_ARGS) would have to be redone for every change of
backend and replaces the wheel that the CPU fallback relies on; a module that fails to load
leaves the CPU exactly as installed.

    layout.py     the installed runtimes and the selection, under LOCALRUN_HOME/runtimes
    source.py     the llama.cpp source of the installed bindings (sdist: kept, given, downloaded)
    toolchain.py  what a backend needs to build (Vulkan headers and glslc; nvcc: system or PyPI)
    build.py      configure, compile, install atomically, with progress and a log
    activate.py   in a process that runs models: load the selected runtime, or say why not

Imports flow: layout <- source, toolchain <- build; activate reads layout only. The engine
(engine/library/native.py) calls activate once, right after importing llama_cpp.
"""
