"""Tiny GGUF fixtures for localrun's tests, written with the ``gguf`` package and numpy only.

Modules (each imports only those listed before it):

* ``vocab`` - the tiny SentencePiece-style vocabulary and the chat templates (ChatML, thinking);
* ``files`` - writing a GGUF in one go, and splitting one into parts as gguf-split does;
* ``text`` - the tiny random-weight text models: llama (``write_tiny_model``; granite_swa with
  ``swa``), its LoRA adapter, a Mamba;
* ``malformed`` - broken files (truncated, bad magic, bad version, ...) patched from a valid one;
* ``projectors`` - a vision and an audio model with their libmtmd projectors;
* ``reranker`` - a Qwen3-Reranker-shaped model with rank pooling;
* ``scripted`` - a model whose greedy answer to any prompt is a given text, markers as their
  real special tokens (``scripts/scripted_model.py``), for testing a family's format end to end.

Importing any of them has no side effects. ``scripts/make_test_models.py OUT_DIR`` writes them
all.
"""
