"""Where models come from: Hugging Face, ModelScope and the Python packages that ship GGUFs.

    base.py         what every hub provides: the remote file list, picking the GGUF for a tag
    hf.py           Hugging Face (the only importer of huggingface_hub)
    modelscope.py   ModelScope (the only importer of modelscope)
    partial.py      the file a download streams into, hashed on the way
    pull.py         a hub reference pulled into the store, verified by sha256
    obtain.py       a resolved Reference's manifest: the store answers or a source fetches it
    runners/        other runners' models on this machine: importing.py (found, imported in
                    place, and listed for `serve`: LOCALRUN_OTHER_RUNNERS), found.py (what a
                    runner's store yields, read with bounds and without trust), ollama.py
                    (Ollama's manifests and blobs), folders.py (GGUF folders named as `pull`
                    names them, and the Hugging Face cache), lmstudio.py (LM Studio's home,
                    models folder and per-model settings), llamacpp.py (llama.cpp's cache)
    registry/       Ollama's library and any OCI registry: pull.py, push.py, oci.py (the
                    distribution API), challenge.py (WWW-Authenticate), logins.py
    hosts.py        where a model name lives, and which addresses a registry may send us to
    ranges.py       one blob downloaded in parallel ranges, resumable, verified as it lands
    bodies.py       a peer's body read raw and inflated within a bound
    present.py      a pull of a model the store already holds, told as Ollama tells one

Imports settings, the store, recipes (a packaged model is created from its file) and gguf.
"""
