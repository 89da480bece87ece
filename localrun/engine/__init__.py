"""The inference engine: the only package that imports llama_cpp.

`types` holds the backend-neutral protocols and data (imported by the layers above, and light:
it loads nothing native); `library/` is llama.cpp itself: `native` imports llama_cpp, after the
C++ runtime, for every module here that needs it, `buildinfo` what it was built with, `machine`
the parameters every model loads with here, `backend_check` a new backend tried in a child,
`quantize` its quantizer (for create). The llama.cpp engine, over llama-cpp-python's low-level
API: `batch` (the one generation loop, for one slot or many; `calls` hands it the process's
other compute; `rows` writes its llama_batch; `answering` its path from a sampled token to the
request's text), `slots` (which slot a request takes), `sequence` (batches and KV cuts),
`checkpoints` (what cannot be cut), `weights` (the model and its contexts), `scoring` (a
prompt's own log-probabilities), `embed` (embeddings), `media` (images and audio), `threads`
(how many threads decode). `sampling/`: `sampler` (sampler chains, log-probabilities),
`constraint` (a schema's or grammar's token masks, llguidance's), `grammar_guard` (a grammar
compiled first in a child), `schema_items` (uniqueItems and contains, held beside the grammar).
`speculation/`: `speculator` and `lookup` (prompt lookup), `draft` (a draft model), `costs`
(what a batch costs now, timed by the loop), `answers` (earlier answers a repeated request is
drafted from). `prompts/`: `disk_cache` (prefixes kept on disk), `disk_prefix` (which of them a
request reads), `prefix_tokens` (a prompt tokenized again only past what it shares). `fake` is
a scripted stand-in for tests of the layers above.
"""
