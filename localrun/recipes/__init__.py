"""Modelfile recipes: the text, its parameters, and the model built from them.

    modelfile.py   Modelfile text <-> dataclasses, with line numbers in every error
    params.py      the PARAMETERs (Ollama's set): names, types, ranges, parsing
    create.py      a Modelfile and local files -> blobs and a manifest, converted or quantized
    checks.py      what create checks before it stores anything
    checkpoint.py  a Hugging Face checkpoint folder: its JSON and safetensors, checked, mapped
    architectures.py  each architecture converted: llama.cpp's keys and tensor rules for it
    tokenizer.py   a Hugging Face tokenizer as llama.cpp's vocabulary
    convert.py     a safetensors checkpoint -> one GGUF file, streamed
    lora.py        a PEFT LoRA adapter folder -> a GGUF LoRA for its base model
    patterns.py    PEFT's alpha_pattern keys, matched in time linear in the name

It imports the store and gguf below it, numpy only for a conversion. The caller hands create a
finder for a FROM the store lacks (sources.obtain.base_finder) and the engine's quantizer.
"""
