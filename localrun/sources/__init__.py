"""Where models come from: Hugging Face, ModelScope and the Python packages that ship GGUFs.

    base.py         what every hub provides: the remote file list, picking the GGUF for a tag
    hf.py           Hugging Face (the only importer of huggingface_hub)
    modelscope.py   ModelScope (the only importer of modelscope)
    partial.py      the file a download streams into, hashed on the way
    pull.py         a hub reference pulled into the store, verified by sha256
    obtain.py       a resolved Reference's manifest: the store answers or a source fetches it
    runners.py      other runners' models on this machine: found, imported in place (linked),
                    and listed for `serve` (LOCALRUN_OTHER_RUNNERS)
    found.py        what a runner's store yields (Found), read with bounds and without trust
    ollama_store.py Ollama's manifests and blobs
    folders.py      GGUF folders named as `pull` names them, and the Hugging Face cache
    lmstudio.py     LM Studio's home, models folder and per-model settings
    llamacpp.py     llama.cpp's download cache (the flat layout and the hub's)

Imports settings, the store, recipes (a packaged model is created from its file) and gguf.
"""
