"""GGUF files read and checked before anything native touches them.

    header.py   the header, read by a walk that checks every length, count and offset
    rules.py    what a model GGUF must satisfy before llama.cpp is given it
    scan.py     a file scanned: its header, its kind (model, projector, adapter), its details

Imports only errors: the lowest wing that reads a file a user brings.
"""
