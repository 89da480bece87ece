"""Where models come from: Hugging Face, ModelScope and the Python packages that ship GGUFs.

    base.py         what every hub provides: the remote file list, picking the GGUF for a tag
    hf.py           Hugging Face (the only importer of huggingface_hub)
    modelscope.py   ModelScope (the only importer of modelscope)
    partial.py      the file a download streams into, hashed on the way
    pull.py         a hub reference pulled into the store, verified by sha256
    obtain.py       a resolved Reference's manifest: the store answers or a source fetches it
    runners.py      other runners' models on this machine (Ollama, the hub cache, LM Studio)

Imports the store, recipes (a packaged model is created from its file) and gguf.
"""
