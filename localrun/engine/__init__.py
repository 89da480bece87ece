"""The inference engine: the only package that imports llama_cpp, over its low-level API.

    types.py        the protocols and data the layers above import; it loads nothing native
    batch.py        the one generation loop, for one slot or many
    calls.py        the process's other compute, run on the loop's thread
    rows.py         the loop's llama_batch, written for every active slot
    answering.py    the path from a sampled token to the request's text
    slots.py        which slot a request takes, and how much of its KV it reuses
    sequence.py     tokens into a batch, KV cuts, what ends an answer
    checkpoints.py  the memory that cannot be cut, kept at checkpoints
    weights.py      the model, its vocabulary and its contexts
    scoring.py      a prompt's own log-probabilities
    embed.py        embeddings and reranking
    media.py        images and audio
    threads.py      how many threads decode
    fake.py         a scripted stand-in for tests of the layers above
    library/        llama.cpp itself: its import, build, load parameters, backend check, quantizer
    sampling/       sampler chains, a schema's or grammar's token masks, grammars checked first
    speculation/    guesses from prompt lookup or a draft model, and what a batch costs
    prompts/        prefixes kept on disk, and prompts tokenized again only where they change

Fakes serve the layers above; the engine itself is tested on a real llama.cpp and a small model.
"""
