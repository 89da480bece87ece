"""Where models come from: Hugging Face, ModelScope and the Python packages that ship GGUFs.

    base.py         what every hub provides: the remote file list, picking the GGUF for a tag
    hf.py           Hugging Face; modelscope.py: ModelScope (each the only importer of its library)
    partial.py      the file a download streams into, hashed on the way
    pull.py         a hub reference pulled into the store, verified by sha256
    obtain.py       a resolved Reference's manifest: the store answers or a source fetches it
    runners/        other runners' models on this machine, imported in place (see its __init__)
    registry/       Ollama's library and any OCI registry: pull, push, the distribution API
    hosts.py        where a model name lives, and which addresses a registry may send us to
    ranges.py       one blob downloaded in parallel ranges, resumable, verified as it lands
    bodies.py       a peer's body read raw and inflated within a bound
    present.py      a pull of a model the store already holds, told as Ollama tells one

Imports settings, the store, recipes (a packaged model is created from its file) and gguf.
"""
