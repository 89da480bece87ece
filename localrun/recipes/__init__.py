"""Modelfile recipes: the text, its parameters, and the model built from them.

    modelfile.py   Modelfile text <-> dataclasses, with line numbers in every error
    params.py      the PARAMETERs (Ollama's set): names, types, ranges, parsing
    create.py      a Modelfile and local files -> blobs and a manifest in the store

Imports the store and gguf below it; a FROM that names a model the store lacks is resolved by
the caller's resolver (sources.obtain), never fetched from here.
"""
