"""A pull of a model the store has: Ollama's steps from its manifest, and a damaged blob named
(sources.present). The servers' and CLIs' pulls of one are in tests/integration (test_server,
test_registry, test_catalog)."""

from __future__ import annotations

import pytest

from localrun.errors import CorruptBlobError, MissingBlobError
from localrun.recipes.create import Event
from localrun.sources import present
from localrun.store.local import Store
from localrun.store.manifest import MEDIA_CONFIG, MEDIA_TYPES, Layer, Manifest
from localrun.store.names import ModelName
from localrun.store.names import parse as parse_name


def stored(store: Store) -> tuple[ModelName, Manifest]:
    name = parse_name("held:latest")
    weights = store.add_bytes(b"GGUF" + bytes(60))
    system = store.add_bytes(b"You keep the lighthouse.")
    config = store.add_bytes(b'{"details": {}}')
    layers = [Layer(MEDIA_TYPES["model"], *weights), Layer(MEDIA_TYPES["system"], *system)]
    manifest = Manifest(Layer(MEDIA_CONFIG, *config), layers)
    store.write_manifest(name, manifest)
    return name, manifest


def test_the_steps_are_ollamas_for_a_model_it_has(store: Store) -> None:
    name, manifest = stored(store)
    events: list[Event] = []
    digest = present.tell(store, name, events.append, pulling_manifest=True)
    layers = [*manifest.layers, manifest.config]
    assert [(e.status, e.digest, e.total, e.completed) for e in events] == [
        ("pulling manifest", None, None, None),
        *[(f"pulling {x.digest[7:19]}", x.digest, x.size, x.size) for x in layers],
        ("verifying sha256 digest", None, None, None),
        ("writing manifest", None, None, None),
        ("success", digest, None, None),
    ]
    assert digest == store.write_manifest(name, manifest)  # the manifest's own digest
    quiet: list[Event] = []
    present.tell(store, name, quiet.append, pulling_manifest=False)  # said by the caller
    assert [e.status for e in quiet] == [e.status for e in events[1:]]


def test_a_cut_or_missing_blob_is_named(store: Store) -> None:
    name, manifest = stored(store)
    weights = store.blob_path(manifest.layers[0].digest)
    weights.write_bytes(b"GGUF")  # cut: its size is not the manifest's
    with pytest.raises(CorruptBlobError, match="4 bytes; its manifest says 64") as cut:
        present.tell(store, name, lambda _: None, pulling_manifest=True)
    assert "localrun verify" in cut.value.hint
    weights.unlink()
    with pytest.raises(MissingBlobError, match=manifest.layers[0].digest):
        present.tell(store, name, lambda _: None, pulling_manifest=True)
