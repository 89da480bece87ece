"""`localrun import ollama`: an Ollama store laid out on disk as Ollama writes it (manifests,
sha256-named blobs: the model, its Go template, system prompt and parameters), found, listed,
imported in place (hard links, no copy), run, and left intact; hostile and half-downloaded
stores refused or skipped in one line."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from support import OLLAMA_TEMPLATES
from support.cli import CLI, assert_one_line_error
from support.stores import hf_cache, ollama_blob, ollama_manifest

DATA = OLLAMA_TEMPLATES
CHATML = (DATA / "chatml.gotmpl").read_text(encoding="utf-8")


@pytest.fixture
def ollama_store(tmp_path: Path, tiny_model: Path) -> Path:
    """An Ollama store with one chat model: GGUF, Go template, system prompt, parameters."""
    root = tmp_path / "ollama-models"
    gguf = tiny_model.read_bytes()
    layers = [
        ("model", ollama_blob(root, gguf), len(gguf)),
        ("template", ollama_blob(root, CHATML.encode()), len(CHATML)),
        ("system", ollama_blob(root, b"You are a lighthouse keeper."), 28),
        (
            "params",
            ollama_blob(root, json.dumps({"stop": ["<|im_end|>"], "temperature": 0.2}).encode()),
            50,
        ),
    ]
    said = [
        {"role": "user", "content": "Who keeps the light?"},
        {"role": "assistant", "content": "I do."},
        {"role": "user"},
    ]
    messages = json.dumps(said).encode()
    layers += [
        ("messages", ollama_blob(root, messages), len(messages)),
        ("license", ollama_blob(root, b"The lighthouse license"), 22),
    ]
    ollama_manifest(root, "keeper:latest", layers)
    ollama_manifest(root, "someone/keeper:v2", layers[:1])
    return root


def test_import_lists_imports_and_keeps_the_originals(cli: CLI, ollama_store: Path) -> None:
    env = {"OLLAMA_MODELS": str(ollama_store)}
    listed = cli("import", "ollama", "--dry-run", env=env)
    assert listed.code == 0, listed.stderr
    assert "keeper:latest" in listed.stdout and "someone/keeper:v2" in listed.stdout
    assert cli("list").stdout.count("keeper") == 0  # a dry run imports nothing
    done = cli("import", "ollama", "keeper", "-q", env=env)
    assert done.code == 0, done.stderr
    shown = cli("show", "keeper:latest", "--modelfile")
    assert shown.code == 0, shown.stderr
    assert CHATML.strip() in shown.stdout  # Ollama's Go template, as it was
    assert "You are a lighthouse keeper." in shown.stdout
    assert "temperature 0.2" in shown.stdout and "<|im_end|>" in shown.stdout
    assert "MESSAGE user Who keeps the light?" in shown.stdout  # a message without content: left
    assert "The lighthouse license" in shown.stdout
    # Linked, not copied: the store's blob is Ollama's file under a second name.
    blobs = sorted((ollama_store / "blobs").iterdir())
    assert all(b.stat().st_nlink >= 1 for b in blobs)
    model_blob = max(blobs, key=lambda b: b.stat().st_size)
    assert model_blob.stat().st_nlink == 2
    ran = cli("run", "keeper", "Hello", "--param", "num_predict=4")
    assert ran.code == 0, ran.stderr
    # Removing it leaves Ollama's files as they were.
    assert cli("rm", "keeper").code == 0
    assert cli("prune").code == 0
    assert sorted((ollama_store / "blobs").iterdir()) == blobs
    assert model_blob.stat().st_nlink == 1


def test_a_hostile_or_half_downloaded_store_is_refused_in_one_line(
    cli: CLI, tmp_path: Path, tiny_model: Path
) -> None:
    root = tmp_path / "bad-store"
    gguf = tiny_model.read_bytes()
    good = ollama_blob(root, gguf)
    # A digest that would name a path outside the store.
    ollama_manifest(root, "escape:latest", [("model", "sha256:../../../etc/passwd", 10)])
    # A blob still downloading.
    partial = "sha256:" + "ab" * 32
    (root / "blobs" / ("sha256-" + "ab" * 32 + "-partial")).write_bytes(b"half")
    ollama_manifest(root, "partial:latest", [("model", partial, 4)])
    # A blob whose content is not what its name says.
    liar = "sha256:" + "cd" * 32
    shutil.copyfile(
        root / "blobs" / ("sha256-" + good[7:]), root / "blobs" / ("sha256-" + "cd" * 32)
    )
    ollama_manifest(root, "liar:latest", [("model", liar, len(gguf))])
    # A system prompt whose content is not its digest, and one that links to a user's file.
    fake_system = "sha256:" + "ee" * 32
    (root / "blobs" / ("sha256-" + "ee" * 32)).write_bytes(b"not what the digest says")
    ollama_manifest(
        root, "wrongtext:latest", [("model", good, len(gguf)), ("system", fake_system, 24)]
    )
    secret = root.parent / "secret.txt"
    secret.write_text("a private key")
    linked = "sha256:" + "ff" * 32
    (root / "blobs" / ("sha256-" + "ff" * 32)).symlink_to(secret)
    ollama_manifest(root, "linked:latest", [("model", good, len(gguf)), ("system", linked, 13)])
    env = {"OLLAMA_MODELS": str(root)}
    listed = cli("import", "ollama", "--dry-run", env=env)
    assert listed.code == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert "no valid digest" in lines["escape:latest"]
    assert "still downloading" in lines["partial:latest"]
    assert "to import" in lines["liar:latest"]
    assert "its content is not" in lines["wrongtext:latest"]
    assert "is a link" in lines["linked:latest"]
    bad = cli("import", "ollama", "liar", env=env)
    assert_one_line_error(bad, "liar:latest")
    assert "liar" not in cli("list").stdout  # nothing half imported
    unknown = cli("import", "ollama", "nope", env=env)
    assert_one_line_error(unknown, "nope")
    assert_one_line_error(cli("import", "nosuch", env=env), "nosuch")


def test_import_the_hugging_face_cache_and_lm_studio(
    cli: CLI, tmp_path: Path, tiny_model: Path
) -> None:
    gguf = tiny_model.read_bytes()
    hub = tmp_path / "hub"
    repo = hf_cache(hub, gguf)
    home = tmp_path / "user"
    studio = home / ".lmstudio" / "models" / "lmstudio-community" / "Tiny-GGUF"
    studio.mkdir(parents=True)
    (studio / "Tiny-Q4_K_M.gguf").write_bytes(gguf)
    env = {"HF_HUB_CACHE": str(hub), "HOME": str(home)}
    listed = cli("import", "all", "--dry-run", env=env)
    assert listed.code == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()[1:] if line.strip()}
    assert "to import" in lines["hf.co/someorg/tiny-gguf:q8_0"]
    assert "links outside" in lines["hf.co/someorg/tiny-gguf:q4_0"]
    assert "link loop" in lines["hf.co/someorg/tiny-gguf:q5_0"]
    assert "still downloading" in lines["hf.co/someorg/tiny-gguf"]
    assert "to import" in lines["hf.co/lmstudio-community/tiny-gguf:q4_k_m"]
    done = cli("import", "hf", "hf.co/someorg/tiny-gguf:q8_0", "-q", env=env)
    assert done.code == 0, done.stderr
    studio_done = cli("import", "lmstudio", "-q", env=env)
    assert studio_done.code == 0, studio_done.stderr
    listed_store = cli("list").stdout
    assert "hf.co/someorg/tiny-gguf:q8_0" in listed_store
    assert "hf.co/lmstudio-community/tiny-gguf:q4_k_m" in listed_store
    blob = repo / "blobs" / hashlib.sha256(gguf).hexdigest()
    assert blob.stat().st_nlink == 2  # linked from the hub's blob, not copied
    ran = cli("run", "hf.co/someorg/tiny-gguf:q8_0", "Hi", "--param", "num_predict=3")
    assert ran.code == 0, ran.stderr
    # The same weights from LM Studio share the store's blob; removing both frees it, and the
    # hub's file stays as it was.
    assert cli("rm", "hf.co/someorg/tiny-gguf:q8_0").code == 0
    assert cli("rm", "hf.co/lmstudio-community/tiny-gguf:q4_k_m").code == 0
    assert cli("prune").code == 0
    assert blob.read_bytes() == gguf and blob.stat().st_nlink == 1
    assert (studio / "Tiny-Q4_K_M.gguf").read_bytes() == gguf


def test_a_projector_and_an_adapter_come_with_the_model(
    cli: CLI, tmp_path: Path, tiny_lora: Path, home: Path
) -> None:
    """Ollama's projector and adapter layers, and a hub snapshot's mmproj beside its model,
    are imported with the model (linked, checked like the model) and shown by `show`."""
    from testmodels.projectors import write_tiny_vision

    model, projector = write_tiny_vision(tmp_path / "vision")
    root = tmp_path / "ollama-models"
    parts = {kind: path.read_bytes() for kind, path in
             (("model", model), ("projector", projector), ("adapter", tiny_lora))}  # fmt: skip
    ollama_manifest(
        root, "seer:latest", [(k, ollama_blob(root, d), len(d)) for k, d in parts.items()]
    )
    hub = tmp_path / "hub" / "models--someorg--Seer-GGUF"
    snapshot = hub / "snapshots" / ("34" * 20)
    snapshot.mkdir(parents=True)
    shutil.copyfile(model, snapshot / "seer-Q8_0.gguf")
    shutil.copyfile(projector, snapshot / "mmproj-seer-f16.gguf")
    env = {"OLLAMA_MODELS": str(root), "HF_HUB_CACHE": str(tmp_path / "hub")}
    assert cli("import", "ollama", "seer", "-q", env=env).code == 0
    shown = cli("show", "seer", "--modelfile")
    assert shown.code == 0 and "PROJECTOR " in shown.stdout and "ADAPTER " in shown.stdout
    done = cli("import", "hf", "hf.co/someorg/seer-gguf:q8_0", "-q", env=env)
    assert done.code == 0, done.stderr
    assert "PROJECTOR " in cli("show", "hf.co/someorg/seer-gguf:q8_0", "--modelfile").stdout


def test_what_the_store_holds_already_is_said_and_skipped(
    cli: CLI, ollama_store: Path, tmp_path: Path, tiny_model: Path
) -> None:
    """A model imported before is listed as already in the store, by a dry run and by an
    import, which skips it (it was "to import", and hashed again); one its runner changed
    since (another system prompt, a new snapshot) is imported again."""
    hub = tmp_path / "hub"
    hf_cache(hub, tiny_model.read_bytes())
    env = {"OLLAMA_MODELS": str(ollama_store), "HF_HUB_CACHE": str(hub)}
    hf = "hf.co/someorg/tiny-gguf:q8_0"
    assert cli("import", "ollama", "keeper", "-q", env=env).code == 0
    assert cli("import", "hf", hf, "-q", env=env).code == 0
    listed = cli("import", "all", "--dry-run", env=env)
    assert listed.code == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:] if line.strip()}
    assert rows["keeper:latest"].endswith("skipped: already in the store")
    assert rows[hf].endswith("skipped: already in the store")
    assert rows["someone/keeper:v2"].endswith("to import")
    again = cli("import", "ollama", "keeper", env=env)
    assert again.code == 0, again.stderr
    assert "skipped: already in the store" in again.stdout
    assert again.stderr == ""  # nothing read, hashed or written

    # `ollama create keeper` with another system prompt: the same blob, another manifest.
    weights = ollama_blob(ollama_store, tiny_model.read_bytes())
    layers = [("model", weights, tiny_model.stat().st_size),
              ("system", ollama_blob(ollama_store, b"You are a ferryman."), 19)]  # fmt: skip
    ollama_manifest(ollama_store, "keeper:latest", layers)
    listed = cli("import", "ollama", "keeper", "--dry-run", env=env)
    assert listed.stdout.splitlines()[1].endswith("to import"), listed.stdout
    assert cli("import", "ollama", "keeper", "-q", env=env).code == 0
    assert "You are a ferryman." in cli("show", "keeper", "--modelfile").stdout
    listed = cli("import", "ollama", "keeper", "--dry-run", env=env)
    assert listed.stdout.splitlines()[1].endswith("skipped: already in the store")


def test_a_missing_folder_says_where_it_looked_and_what_moves_it(cli: CLI, tmp_path: Path) -> None:
    nowhere = tmp_path / "no-ollama"
    env = {"OLLAMA_MODELS": str(nowhere)}
    assert_one_line_error(cli("import", "ollama", env=env), str(nowhere), "OLLAMA_MODELS")
    named = cli("import", "ollama", "llama3.2", "--dry-run", env=env)
    assert_one_line_error(named, str(nowhere), "OLLAMA_MODELS")
    nowhere.mkdir()  # there, and empty: said where, and not an error
    empty = cli("import", "ollama", env=env)
    assert empty.code == 0, empty.stderr
    assert empty.stdout.strip() == f"no ollama models in {nowhere}"
    # `all` names each folder it looked in, and what moves the ones that are not there.
    user = tmp_path / "user"
    env = {"OLLAMA_MODELS": str(nowhere), "HF_HUB_CACHE": str(tmp_path / "no-hub"),
           "LLAMA_CACHE": str(tmp_path / "no-llama"), "HOME": str(user)}  # fmt: skip
    every = cli("import", "all", "--dry-run", env=env)
    assert every.code == 0, every.stderr
    lines = every.stdout.splitlines()
    assert len(lines) == 4, every.stdout
    assert lines[0] == f"no ollama models in {nowhere}"
    assert str(tmp_path / "no-hub") in lines[1] and "HF_HUB_CACHE" in lines[1]
    assert str(user / ".lmstudio" / "models") in lines[2] and ".lmstudio-home-pointer" in lines[2]
    assert str(tmp_path / "no-llama") in lines[3] and "LLAMA_CACHE" in lines[3]
