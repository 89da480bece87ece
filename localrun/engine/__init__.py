"""The inference engine: the only package that imports llama_cpp.

`types` holds the backend-neutral protocols and data (imported by the layers above, and light:
it loads nothing native); `native` imports llama_cpp, after the C++ runtime, for every module
here that needs it. The llama.cpp engine, over llama-cpp-python's low-level API: `batch` (the
one generation loop, for one slot or many; `calls` hands it the process's other compute;
`answering` its path from a sampled token to the request's text), `slots` (which slot a request
takes), `weights` (the model and its contexts), `sampling` (sampler chains, log-probabilities),
`constraint` (a schema's or grammar's token masks, llguidance's), `sequence` (batches and KV
cuts), `speculate` and
`draft` (speculative decoding), `costs` (what a batch costs now, timed by the loop), `answers`
(earlier answers a repeated request is drafted from), `embed` (embeddings), `quantize`
(llama.cpp's quantizer, for create). `fake` is a scripted stand-in for tests of the layers
above; `buildinfo` reports what the installed llama.cpp was built with.
"""
