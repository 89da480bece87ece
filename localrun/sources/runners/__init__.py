"""Models other runners keep on this machine (Ollama, LM Studio, llama.cpp's cache, GGUF folders),
found without trusting their stores and imported in place.
"""
