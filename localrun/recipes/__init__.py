"""Modelfile recipes: the text, its parameters, and the model built from them.

    modelfile.py   Modelfile text <-> dataclasses, with line numbers in every error
    params.py      the PARAMETERs (Ollama's set): names, types, ranges, parsing
    create.py      a Modelfile and local files -> blobs and a manifest in the store (a
                   safetensors folder converted, a model quantized on the way)
    checks.py      what create checks before it stores anything
    checkpoint.py  a Hugging Face checkpoint folder: its JSON and safetensors, checked, mapped
    architectures.py  each architecture converted: llama.cpp's keys and tensor rules for it
    tokenizer.py   a Hugging Face tokenizer as llama.cpp's vocabulary
    convert.py     a safetensors checkpoint -> one GGUF file, streamed
    lora.py        a PEFT LoRA adapter folder -> a GGUF LoRA for its base model
    patterns.py    PEFT's alpha_pattern keys, matched in time linear in the name

Imports the store and gguf below it (numpy and the gguf package only where a conversion runs:
the server imports create for its events); a FROM that names a model the store lacks is
found by the caller's finder (sources.obtain.base_finder), never fetched from here. Quantizing needs
llama.cpp, which lives in the engine above: the caller hands create the engine's quantizer.
"""
