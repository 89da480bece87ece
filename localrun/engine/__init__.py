"""The inference engine: the only package that imports llama_cpp.

`types` holds the backend-neutral protocol and data (imported by the layers above, and light:
it loads nothing native); `native` imports llama_cpp, after the C++ runtime, for every module
here that needs it; `llama` is the llama.cpp implementation over llama-cpp-python's low-level
API; `fake` is a scripted stand-in for tests of the layers above; `buildinfo` reports what the
installed llama.cpp was built with.
"""
