"""Model hubs: the only importers of huggingface_hub and modelscope.

`base` holds what every hub shares (the remote file list, picking the GGUF for a tag, the
protocol a hub implements); `hf` and `modelscope` implement it; `localrun.pull` drives them.
"""
