"""A store as the tests look into it: a file's digest, the blob and temporary files on disk, and
a manifest built from bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from localrun.store import blobs as blobs_mod
from localrun.store import names
from localrun.store.local import Store
from localrun.store.manifest import (
    MEDIA_CONFIG,
    MEDIA_TYPES,
    Layer,
    Manifest,
)
from localrun.store.names import ModelName


def file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def name(text: str) -> ModelName:
    return names.parse(text)


def blob_files(store: Store) -> list[Path]:
    if not store.blobs.is_dir():
        return []
    return sorted(p for p in store.blobs.iterdir() if p.name.startswith("sha256-"))


def temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob(blobs_mod.TMP_PREFIX + "*")) if root.is_dir() else []


def build(store: Store, *payloads: bytes, config: bytes = b'{"model_format": "gguf"}') -> Manifest:
    """A manifest whose blobs are in the store: one layer per payload (model, params, ...)."""
    kinds = list(MEDIA_TYPES)
    layers = []
    for index, data in enumerate(payloads):
        digest, size = store.add_bytes(data)
        layers.append(Layer(MEDIA_TYPES[kinds[index % len(kinds)]], digest, size))
    config_digest, config_size = store.add_bytes(config)
    return Manifest(Layer(MEDIA_CONFIG, config_digest, config_size), layers)
