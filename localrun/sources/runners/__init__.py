"""Models other runners keep on this machine, found without trusting their stores.

    importing.py  what is found, imported in place, and listed for `serve`
    found.py      what a runner's store yields, read with bounds and without trust
    ollama.py     Ollama's manifests and blobs
    folders.py    GGUF folders named as `pull` names them, and the Hugging Face cache
    lmstudio.py   LM Studio's home, models folder and per-model settings
    llamacpp.py   llama.cpp's cache

LOCALRUN_OTHER_RUNNERS says whose models `serve` lists and a first use imports in place.
"""
