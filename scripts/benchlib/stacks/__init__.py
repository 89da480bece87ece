"""What a benchmark starts and measures: llama.cpp's own tools built from the sources
llama-cpp-python vendors (`build`), the servers (`serve`: localrun serve, llama-server,
llama_cpp.server through `llama_cpp_server`, Guidance through `guidance_server`), a localrun of
its own (`store`) and the jobs run in a child process (`worker`)."""
