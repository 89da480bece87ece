"""What the machine offers a model and how a model would fit in it.

    system.py    CPU, memory and GPU detection
    offload.py   how many layers fit on a GPU, and what a load costs in VRAM and RAM
    fit.py       a stored model's plan (context, offload, draft, projector), refused before a
                 load that cannot fit; the errors of a model's damaged files

Imports gguf, store and model below it. What the llama.cpp build can offload is handed in
(`plan_fit(build=...)`) by the engine above, which this wing never imports.
"""
