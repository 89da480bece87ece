"""Other runners' models through the server and the engine: `serve` with
LOCALRUN_OTHER_RUNNERS lists them in /api/tags and /v1/models (the official clients) and imports
them in place on first use; llama.cpp's cache and LM Studio's imported and run; a model imported
again after its runner updated it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest
from testmodels.files import write_split
from testmodels.projectors import write_tiny_vision

from localrun.scheduler import Scheduler
from localrun.store.local import Store

from support.cli import CLI, assert_one_line_error
from support.server import LiveServer
from support.stores import (
    cached,
    hf_cache,
    hub_file,
    listing,
    llama_manifest,
    lm_studio,
    ollama_blob,
    ollama_manifest,
    sha256,
)


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry under `folder` (links as their target, files by content), to compare."""
    out = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            out[key] = "-> " + os.readlink(path)
        elif path.is_file():
            out[key] = sha256(path.read_bytes())
    return out


@pytest.fixture
def llama_cache(tmp_path: Path, tiny_model: Path) -> Path:
    """llama.cpp's cache with one of each: a vision model (two tags), a split model under the
    older manifest naming, a download in progress, a file fetched by URL, the hub layout llama.cpp
    moved to, and hostile entries."""
    cache = tmp_path / "llama-cache"
    cache.mkdir()
    gguf = tiny_model.read_bytes()
    vision, projector = write_tiny_vision(tmp_path / "vision")
    model = cached(cache, "visionorg_Tiny-GGUF_tiny-Q8_0.gguf", vision.read_bytes())
    mmproj = cached(cache, "visionorg_Tiny-GGUF_mmproj-tiny-F16.gguf", projector.read_bytes())
    for tag in ("latest", "Q8_0"):
        llama_manifest(cache, f"manifest=visionorg=Tiny-GGUF={tag}.json",
                        hub_file("tiny-Q8_0.gguf", model.read_bytes()),
                        mmprojFile=hub_file("mmproj-tiny-F16.gguf",
                                             mmproj.read_bytes()))  # fmt: skip
    parts = write_split(tiny_model, tmp_path / "split", "Split-Q4_K_M", parts=3)
    for part in parts:  # a file in a folder of the repository: every / a _
        cached(cache, f"otherorg_Split-GGUF_Q4_K_M_{part.name}", part.read_bytes())
    llama_manifest(cache, "manifest=otherorg_Split-GGUF=Q4_K_M.json",
                    hub_file(f"Q4_K_M/{parts[0].name}", parts[0].read_bytes()))  # fmt: skip
    (cache / "someorg_Half-GGUF_half-Q4_0.gguf.downloadInProgress").write_bytes(gguf[:1000])
    llama_manifest(cache, "manifest=someorg=Half-GGUF=latest.json",
                    hub_file("half-Q4_0.gguf", gguf))  # fmt: skip
    cached(cache, "gemma-tiny-Q4_0.gguf", gguf)  # `-mu URL`: no manifest
    llama_manifest(cache, "manifest=evil=Escape-GGUF=latest.json",
                    hub_file("../../../etc/passwd.gguf", gguf))  # fmt: skip
    cached(cache, "liar_Liar-GGUF_liar-Q4_0.gguf", gguf)
    llama_manifest(cache, "manifest=liar=Liar-GGUF=latest.json",
                    hub_file("liar-Q4_0.gguf", gguf, sha="ab" * 32))  # fmt: skip
    (cache / "loop-Q5_0.gguf").symlink_to("loop-Q5_0.gguf")
    (cache / "outside-Q4_0.gguf").symlink_to(tiny_model)
    hf_cache(cache, gguf)  # models--someorg--Tiny-GGUF, as llama.cpp keeps it since 2026-03
    return cache


@pytest.mark.model
def test_import_llama_cpps_cache(cli: CLI, llama_cache: Path) -> None:
    env = {"LLAMA_CACHE": str(llama_cache)}
    before = _snapshot(llama_cache)
    listed = cli("import", "llama.cpp", "--dry-run", env=env)
    assert listed.code == 0, listed.stderr
    rows = listing(listed.stdout)
    # Two tags' manifests name the same file: one model, listed once, with its projector.
    assert "to import" in rows["hf.co/visionorg/tiny-gguf:q8_0"]
    assert listed.stdout.count("hf.co/visionorg/tiny-gguf:q8_0") == 1
    assert "to import" in rows["hf.co/someorg/tiny-gguf:q8_0"]  # the hub layout's
    assert "to import" in rows["hf.co/otherorg/split-gguf:q4_k_m"]
    assert "still downloading" in rows["hf.co/someorg/half-gguf"]
    assert "to import" in rows["gemma-tiny-q4_0"]
    assert "not a GGUF file inside the cache" in rows["hf.co/evil/escape-gguf"]
    assert "to import" in rows["hf.co/liar/liar-gguf:q4_0"]
    assert "link loop" in rows["loop-q5_0"]
    assert "links outside" in rows["outside-q4_0"]
    assert "still downloading" in rows["hf.co/someorg/tiny-gguf"]  # the hub layout's .incomplete
    assert not any("mmproj" in name or "00002" in name for name in rows)

    done = cli("import", "llama.cpp", "-q", env=env)
    assert_one_line_error(done, "1 of", "hf.co/liar/liar-gguf:q4_0", "digest")
    stored = cli("list").stdout
    assert "liar" not in stored  # nothing half imported
    imported = ("hf.co/visionorg/tiny-gguf:q8_0", "hf.co/someorg/tiny-gguf:q8_0",
                "hf.co/otherorg/split-gguf:q4_k_m", "gemma-tiny-q4_0:latest")  # fmt: skip
    for name in imported:
        assert name in stored, stored
    split = json.loads(cli("show", "hf.co/otherorg/split-gguf:q4_k_m", "--json").stdout)
    assert split["details"]["split_count"] == 3
    ran = cli("run", "hf.co/otherorg/split-gguf:q4_k_m", "the a", "--param", "num_predict=3")
    assert ran.code == 0, ran.stderr
    assert "PROJECTOR" in cli("show", "hf.co/visionorg/tiny-gguf:q8_0", "--modelfile").stdout
    assert cli("verify").code == 0

    # Named, a model that cannot be imported is an error of one line.
    assert_one_line_error(cli("import", "llama.cpp", "loop-q5_0", env=env), "link loop")
    # rm and prune leave llama.cpp's files as they were.
    for name in imported:
        assert cli("rm", name).code == 0
    assert cli("prune").code == 0
    assert _snapshot(llama_cache) == before
    assert (llama_cache / "gemma-tiny-Q4_0.gguf").stat().st_nlink == 1


@pytest.fixture
def studio(tmp_path: Path, tiny_model: Path, tiny_fim_model: Path) -> dict[str, Path]:
    return lm_studio(tmp_path, tiny_model, tiny_fim_model)


TINY = "hf.co/bartowski/tiny-gguf:q4_k_m"


@pytest.mark.model
def test_lm_studio_where_it_is_with_its_settings(
    cli: CLI, studio: dict[str, Path], tiny_long_model: Path
) -> None:
    env = {"HOME": str(studio["user"])}
    before = _snapshot(studio["models"])
    listed = cli("import", "lmstudio", "--dry-run", env=env)
    assert listed.code == 0, listed.stderr
    rows = listing(listed.stdout)
    assert "to import" in rows[TINY] and "to import" in rows["hf.co/linked/elsewhere-gguf:q8_0"]
    assert "larger than" in rows["hf.co/bartowski/big-gguf:q4_0"]
    assert "not JSON" in rows["hf.co/bartowski/bad-gguf:q4_0"]
    assert "decoy" not in listed.stdout
    assert cli("import", "lmstudio", "-q", env=env).code == 0  # the broken ones are skipped
    assert "big-gguf" not in cli("list").stdout
    shown = cli("show", TINY, "--modelfile").stdout
    for line in (
        "PARAMETER temperature 0.7",
        "PARAMETER top_k 20",
        "PARAMETER top_p 0.8",
        "PARAMETER num_predict 64",
        "PARAMETER seed 42",
        "PARAMETER num_ctx 2048",
        "PARAMETER stop <|im_end|>",
        "PARAMETER stop </s>",
        "SYSTEM You are terse.",
    ):
        assert line in shown, (line, shown)  # fmt: skip
    assert "min_p" not in shown and "repeat_penalty" not in shown and "1.5" not in shown
    assert "<|im_start|>{{ m.role }}" in cli("show", TINY, "--template").stdout
    ran = cli("run", TINY, "Hello", "--param", "num_predict=3")
    assert ran.code == 0, ran.stderr
    # Known as imported by the link records of the files (LM Studio names no digest).
    rows = listing(cli("import", "lmstudio", "--dry-run", env=env).stdout)
    assert rows[TINY].endswith("skipped: already in the store")
    assert rows["hf.co/linked/elsewhere-gguf:q8_0"].endswith("skipped: already in the store")

    # LM Studio downloads the model again (a new file renamed over the old) and the linked-in
    # file is deleted: verify says so and stays green, the store's copies being intact.
    path = studio["models"] / "bartowski" / "Tiny-GGUF" / "Tiny-Q4_K_M.gguf"
    fresh = path.with_suffix(".part")
    shutil.copyfile(tiny_long_model, fresh)
    os.replace(fresh, path)
    assert listing(cli("import", "lmstudio", "--dry-run", env=env).stdout)[TINY].endswith(
        "to import"
    )
    studio["elsewhere"].unlink()
    checked = cli("verify")
    assert checked.code == 0, checked.stderr
    assert f"source changed: {path} " in checked.stdout and TINY in checked.stdout
    assert f"source gone: {studio['elsewhere']} " in checked.stdout
    assert "all intact" in checked.stdout
    kept = cli("run", "hf.co/linked/elsewhere-gguf:q8_0", "Hi", "--param", "num_predict=2")
    assert kept.code == 0, kept.stderr  # the store's hard link still holds its content
    # Imported again, the model is the new file.
    again = cli("import", "lmstudio", TINY, "-q", env=env)
    assert again.code == 0, again.stderr
    assert f"FROM {path}" in cli("show", TINY, "--modelfile").stdout
    assert path.stat().st_nlink == 2
    assert "source changed:" not in cli("verify").stdout
    for name in (TINY, "hf.co/linked/elsewhere-gguf:q8_0"):
        assert cli("rm", name).code == 0
    assert cli("prune").code == 0
    after = _snapshot(studio["models"])
    assert after.keys() == before.keys()
    assert after[str(path.relative_to(studio["models"]))] == sha256(tiny_long_model.read_bytes())
    assert path.stat().st_nlink == 1


@pytest.mark.model
def test_a_model_imported_again_follows_its_runners_update(
    cli: CLI,
    tmp_path: Path,
    tiny_model: Path,
    tiny_long_model: Path,
    tiny_fim_model: Path,
    tiny_thinking_model: Path,
) -> None:
    root = tmp_path / "ollama"
    old, new = tiny_model.read_bytes(), tiny_long_model.read_bytes()
    ollama_manifest(root, "keeper:latest", [("model", ollama_blob(root, old), len(old))])
    env = {"OLLAMA_MODELS": str(root)}
    assert cli("import", "ollama", "keeper", "-q", env=env).code == 0
    # `ollama pull keeper` found a new version: the manifest names a new blob in place, and
    # the old one, which no other manifest uses, is deleted.
    ollama_manifest(root, "keeper:latest", [("model", ollama_blob(root, new), len(new))])
    (root / "blobs" / f"sha256-{sha256(old)}").unlink()
    checked = cli("verify")
    assert checked.code == 0, checked.stderr
    assert f"source gone: {root / 'blobs' / ('sha256-' + sha256(old))} " in checked.stdout
    assert "keeper:latest" in checked.stdout and "notice:" in checked.stdout
    assert cli("run", "keeper", "Hi", "--param", "num_predict=2").code == 0  # the link holds it
    assert cli("import", "ollama", "keeper", "-q", env=env).code == 0
    assert (
        f"FROM {root / 'blobs' / ('sha256-' + sha256(new))}"
        in cli("show", "keeper", "--modelfile").stdout
    )
    checked = cli("verify")
    assert checked.code == 0 and "source" not in checked.stdout, checked.stdout

    # The hub cache: a new snapshot, refs/main moved to it (other weights than Ollama's, which
    # the store holds already and would not link again).
    old, new = tiny_fim_model.read_bytes(), tiny_thinking_model.read_bytes()
    hub = tmp_path / "hub"
    repo = hf_cache(hub, old)
    env = {"HF_HUB_CACHE": str(hub)}
    name = "hf.co/someorg/tiny-gguf:q8_0"
    assert cli("import", "hf", name, "-q", env=env).code == 0
    (repo / "blobs" / sha256(new)).write_bytes(new)
    snapshot = repo / "snapshots" / ("34" * 20)
    snapshot.mkdir()
    (snapshot / "tiny-Q8_0.gguf").symlink_to(f"../../blobs/{sha256(new)}")
    (repo / "refs" / "main").write_text("34" * 20)
    assert cli("import", "hf", name, "-q", env=env).code == 0
    assert f"FROM {repo / 'blobs' / sha256(new)}" in cli("show", name, "--modelfile").stdout


STUDIO = "hf.co/lmstudio-community/tiny-gguf:q4_k_m"


@pytest.fixture
def live(
    tmp_path: Path, tiny_model: Path, tiny_fim_model: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LiveServer]:
    """A server on an empty store, with an Ollama store and LM Studio's folder on the machine
    (a few hostile entries among them) and LOCALRUN_OTHER_RUNNERS naming both."""
    root = tmp_path / "ollama"
    gguf = tiny_model.read_bytes()
    system = b"You are a lighthouse keeper."
    layers = [("model", ollama_blob(root, gguf), len(gguf)),
              ("system", ollama_blob(root, system), len(system))]  # fmt: skip
    for name in ("keeper:latest", "someone/keeper:v2", "spare:latest"):
        ollama_manifest(root, name, layers)
    broken = root / "manifests" / "registry.ollama.ai" / "library" / "broken"
    broken.mkdir()
    (broken / "latest").write_text("{not json")
    models = tmp_path / "user" / ".lmstudio" / "models"
    studio = models / "lmstudio-community" / "Tiny-GGUF"
    studio.mkdir(parents=True)
    shutil.copyfile(tiny_fim_model, studio / "Tiny-Q4_K_M.gguf")
    (studio / "loop-Q4_0.gguf").symlink_to("loop-Q4_0.gguf")
    (models / "evil").symlink_to(models)  # a folder that contains itself: not followed
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("LOCALRUN_OTHER_RUNNERS", "ollama,lmstudio")
    store = Store(tmp_path / "models")
    server = LiveServer(store, Scheduler(store, num_parallel=1, max_loaded=2, max_queue=8))
    yield server
    server.close()


@pytest.mark.server
@pytest.mark.model
def test_serve_lists_other_runners_models_and_imports_them_on_first_use(
    live: LiveServer, oc: ollama.Client, ai: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = {m.model: m for m in oc.list().models}
    assert {"keeper:latest", "someone/keeper:v2", "spare:latest", STUDIO} <= set(listed)
    assert not any("broken" in n or "loop" in n for n in listed)
    studio = listed[STUDIO]
    assert studio.size and studio.size > 0 and studio.modified_at is not None
    assert studio.details is not None and studio.details.format == "gguf"
    assert studio.details.quantization_level == "Q4_K_M"
    owned = {m.id: m.owned_by for m in ai.models.list()}
    assert owned["keeper:latest"] == "ollama" and owned[STUDIO] == "lmstudio"
    assert ai.models.retrieve("someone/keeper:v2").owned_by == "ollama"
    assert live.store.names() == []  # listed, not imported

    # Used by name, a model is imported in place first, then answers as any other.
    shown = oc.show("keeper")
    assert "You are a lighthouse keeper." in (shown.modelfile or "")
    answer = oc.chat(STUDIO, [{"role": "user", "content": "Hi"}], options={"num_predict": 3})
    assert answer.done
    completion = ai.chat.completions.create(
        model="someone/keeper:v2", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert completion.choices[0].finish_reason in ("stop", "length")
    stored = {str(n) for n in live.store.names()}
    assert stored == {"keeper:latest", "someone/keeper:v2", STUDIO}
    again = [m.model for m in oc.list().models]
    assert sorted(again) == sorted(set(again))  # each once: the store's now
    with pytest.raises(ollama.ResponseError) as missing:
        oc.show("nobody-has-this")
    assert missing.value.status_code == 404

    # The setting is read at each call: off, only the store's models are listed.
    monkeypatch.delenv("LOCALRUN_OTHER_RUNNERS")
    now = {m.model for m in oc.list().models}
    assert stored <= now and "spare:latest" not in now
    assert "spare:latest" not in {m.id for m in ai.models.list()}
    with pytest.raises(ollama.ResponseError):
        oc.show("spare")


@pytest.fixture
def keeper(tmp_path: Path, tiny_model: Path) -> Path:
    """An Ollama store holding keeper:latest, a model no localrun store has."""
    root = tmp_path / "ollama"
    gguf = tiny_model.read_bytes()
    ollama_manifest(root, "keeper:latest", [("model", ollama_blob(root, gguf), len(gguf))])
    return root


@pytest.mark.server
@pytest.mark.model
def test_run_with_the_setting_imports_what_a_server_without_it_does_not_find(
    cli: CLI, keeper: Path, home: Path
) -> None:
    """A server started without LOCALRUN_OTHER_RUNNERS, a `localrun run` with it: the model
    is imported in place into the store the two share, then runs on the server (it was a
    "not found; try `localrun pull keeper`", which could not work)."""
    store = Store(home / "models")
    server = LiveServer(store, Scheduler(store, num_parallel=1, max_loaded=1, max_queue=8))
    try:
        env = {"LOCALRUN_HOST": f"127.0.0.1:{server.port}", "OLLAMA_MODELS": str(keeper),
               "LOCALRUN_OTHER_RUNNERS": "ollama"}  # fmt: skip
        ran = cli("run", "keeper", "Hi", "--param", "num_predict=3", env=env)
        assert ran.code == 0, ran.stderr
        assert ran.stdout.strip()
        assert [str(n) for n in store.names()] == ["keeper:latest"]
        assert "keeper:latest" in server.running()  # answered by the server, kept loaded
    finally:
        server.close()


@pytest.mark.server
def test_a_server_on_another_store_says_how_to_reach_the_model(
    cli: CLI, keeper: Path, tmp_path: Path
) -> None:
    """The server keeps another store and was started without the setting: one line says
    which runner has the model and how to start the server so that it finds it."""
    store = Store(tmp_path / "server-store")
    server = LiveServer(store, Scheduler(store, num_parallel=1, max_loaded=1, max_queue=8))
    try:
        address = f"127.0.0.1:{server.port}"
        env = {"LOCALRUN_HOST": address, "OLLAMA_MODELS": str(keeper)}
        ran = cli("run", "keeper", "Hi", env={**env, "LOCALRUN_OTHER_RUNNERS": "ollama"})
        assert_one_line_error(
            ran, "ollama has it", address, "LOCALRUN_OTHER_RUNNERS=1 localrun serve"
        )
        assert "localrun pull" not in ran.stderr
        assert store.names() == []
        # Without the setting here, nothing of Ollama's is looked at: the server's answer.
        plain = cli("run", "keeper", "Hi", env=env)
        assert_one_line_error(plain, "keeper")
        assert "ollama" not in plain.stderr
    finally:
        server.close()
