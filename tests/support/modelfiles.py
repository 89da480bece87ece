"""Modelfiles as the tests write them: a text into a folder, or a GGUF with an Ollama template."""

from __future__ import annotations

from pathlib import Path


def write_modelfile(folder: Path, text: str, name: str = "Modelfile") -> Path:
    """`text` as `folder/name` (the folder made if need be)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def template_modelfile(path: Path, gguf: Path, template: str, extra: str = "") -> Path:
    """A Modelfile at `path`: FROM `gguf` with `template` (Go or Jinja) and `extra` lines."""
    path.write_text(f'FROM {gguf}\nTEMPLATE """{template}"""\n{extra}')
    return path
