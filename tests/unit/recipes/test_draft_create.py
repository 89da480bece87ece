"""Modelfile DRAFT at create time: a "draft" layer of the same vocabulary as the model, by file
or by store name, inherited through FROM, shown back, refused (storing nothing) when it cannot
draft for the model. Nothing here loads llama.cpp: the vocabularies are compared from the GGUF
headers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from localrun.errors import FileNotFoundError_, InvalidGGUFError, ModelNotFoundError
from localrun.gguf import scan
from localrun.model import stored as model_mod
from localrun.recipes import checks, create, modelfile
from localrun.store import names
from localrun.store.local import Store
from localrun.store.manifest import Manifest

from support.cli import CLI, assert_one_line_error


def _create(store: Store, name: str, text: str, base_dir: Path) -> str:
    return create.create(store, names.parse(name), modelfile.parse(text), base_dir)


def _load(store: Store, name: str) -> model_mod.Model:
    return model_mod.load(store, names.parse(name))


def _write(folder: Path, text: str, name: str = "Modelfile") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _blob_files(store: Store) -> list[Path]:
    return sorted(store.blobs.iterdir()) if store.blobs.exists() else []


# -- accepted --------------------------------------------------------------------------------


def test_a_model_drafting_for_itself(store: Store, draft_project: Path) -> None:
    _create(store, "self", "FROM tiny.gguf\nDRAFT ./tiny.gguf\n", draft_project)
    manifest = store.read_manifest(names.parse("self"))
    (model_layer,) = manifest.of_kind("model")
    (draft_layer,) = manifest.of_kind("draft")
    assert draft_layer.media_type == "application/vnd.localrun.draft"
    assert draft_layer.digest == model_layer.digest  # the same bytes, stored once
    assert [layer.kind for layer in manifest.layers] == ["model", "draft"]
    m = _load(store, "self")
    assert m.draft_path == m.model_path == store.blob_path(model_layer.digest)
    assert m.draft == {
        "digest": draft_layer.digest,
        "model": None,
        "details": scan.inspect(draft_project / "tiny.gguf").details(),
    }
    assert m.to_modelfile().draft == str(m.draft_path)


def test_a_draft_of_other_weights_is_stored_as_its_own_blob(
    store: Store, draft_project: Path
) -> None:
    _create(store, "m", "FROM tiny.gguf\nDRAFT small.gguf\n", draft_project)
    m = _load(store, "m")
    assert m.draft_path is not None and m.draft_path != m.model_path
    assert m.draft_path.read_bytes() == (draft_project / "small.gguf").read_bytes()
    assert m.draft is not None and m.draft["details"]["block_count"] == 1


def test_no_draft(store: Store, draft_project: Path) -> None:
    _create(store, "plain", "FROM tiny.gguf\n", draft_project)
    m = _load(store, "plain")
    assert (m.draft_path, m.draft, m.to_modelfile().draft) == (None, None, None)
    assert "draft" not in m.config


def test_a_vocabulary_a_few_tokens_longer_is_accepted(
    store: Store, draft_project: Path, tiny_fim_model: Path
) -> None:
    # llama.cpp allows up to 128 tokens more or fewer when the common ones are the same: the
    # FIM model has the tiny vocabulary and three tokens after it.
    _create(store, "a", f"FROM tiny.gguf\nDRAFT {tiny_fim_model}\n", draft_project)
    _create(store, "b", f"FROM {tiny_fim_model}\nDRAFT tiny.gguf\n", draft_project)
    assert _load(store, "a").draft_path and _load(store, "b").draft_path


def test_draft_by_store_name_shares_the_blob(store: Store, draft_project: Path) -> None:
    _create(store, "small", "FROM small.gguf\nSYSTEM not used by a draft\n", draft_project)
    small_blob = store.read_manifest(names.parse("small")).of_kind("model")[0]
    _create(store, "big", "FROM tiny.gguf\nDRAFT small\n", draft_project)
    (draft_layer,) = store.read_manifest(names.parse("big")).of_kind("draft")
    assert (draft_layer.digest, draft_layer.size) == (small_blob.digest, small_blob.size)
    weights = [p for p in _blob_files(store) if p.stat().st_size > 100_000]
    assert len(weights) == 2  # small's and big's FROM file: the draft is not copied
    m = _load(store, "big")
    assert m.draft is not None and m.draft["model"] == "small:latest"
    assert m.draft_path == store.blob_path(small_blob.digest)
    assert m.system is None  # a draft brings its weights only


def test_draft_is_inherited_through_from_and_can_be_replaced(
    store: Store, draft_project: Path
) -> None:
    _create(store, "base", "FROM tiny.gguf\nDRAFT small.gguf\nPARAMETER top_k 5\n", draft_project)
    base = store.read_manifest(names.parse("base"))
    _create(store, "child", "FROM base\nSYSTEM child\n", draft_project)
    child = _load(store, "child")
    assert child.manifest.of_kind("draft") == base.of_kind("draft")
    assert child.draft == _load(store, "base").draft
    assert child.parameters == {"top_k": 5}

    _create(store, "redrafted", "FROM child\nDRAFT tiny.gguf\n", draft_project)
    redrafted = _load(store, "redrafted")
    assert len(redrafted.manifest.of_kind("draft")) == 1
    assert redrafted.draft_path == redrafted.model_path
    assert redrafted.system == "child"


def test_the_draft_is_checked_against_a_from_model_in_the_store(
    store: Store, draft_project: Path, smollm2_path: str
) -> None:
    _create(store, "base", "FROM tiny.gguf\n", draft_project)
    with pytest.raises(InvalidGGUFError) as info:
        _create(store, "x", f"FROM base\nDRAFT {smollm2_path}\n", draft_project)
    assert "a different vocabulary than base (375 tokens" in str(info.value)
    _create(store, "y", "FROM base\nDRAFT small.gguf\n", draft_project)


# -- shown and recreated -----------------------------------------------------------------------


def test_show_and_show_modelfile_recreate_the_same_model(cli: CLI, draft_project: Path) -> None:
    mf = _write(draft_project, "FROM ./tiny.gguf\nDRAFT ./small.gguf\nPARAMETER speculate draft\n")
    assert cli("create", "orig", "-f", str(mf)).code == 0
    text = cli("show", "orig")
    assert text.code == 0, text.stderr
    (line,) = [x for x in text.stdout.splitlines() if x.strip().startswith("draft ")]
    assert "(llama, " in line and "parameters, F32)" in line
    data = json.loads(cli("show", "orig", "--json").stdout)
    assert data["draft"]["model"] is None
    assert data["draft"]["details"]["architecture"] == "llama"
    assert Path(data["draft"]["file"]).read_bytes() == (draft_project / "small.gguf").read_bytes()
    assert data["parameters"] == {"speculate": "draft"}

    printed = cli("show", "orig", "--modelfile").stdout
    assert f"DRAFT {data['draft']['file']}\n" in printed
    again = _write(draft_project, printed, "Again")
    result = cli("create", "copy", "-f", str(again))
    assert result.code == 0, result.stderr
    listed = {e["name"]: e["digest"] for e in json.loads(cli("list", "--json").stdout)}
    assert listed["copy:latest"] == listed["orig:latest"]

    copied = json.loads(cli("show", "copy", "--json").stdout)
    assert copied["draft"] == data["draft"]


def test_show_names_a_draft_given_by_store_name(cli: CLI, draft_project: Path) -> None:
    assert (
        cli("create", "small", "-f", str(_write(draft_project, "FROM small.gguf\n", "S"))).code == 0
    )
    mf = _write(draft_project, "FROM tiny.gguf\nDRAFT small\n", "M")
    assert cli("create", "big", "-f", str(mf)).code == 0
    shown = cli("show", "big").stdout
    assert "draft               small:latest (llama, " in shown
    assert "draft" not in cli("show", "small").stdout
    assert json.loads(cli("show", "small", "--json").stdout)["draft"] is None


# -- refused -----------------------------------------------------------------------------------


def test_a_different_vocabulary_is_refused_in_one_line_and_stores_nothing(
    cli: CLI, draft_project: Path, home: Path, smollm2_path: str
) -> None:
    mf = _write(draft_project, f"FROM ./tiny.gguf\nDRAFT {smollm2_path}\n")
    result = cli("create", "x", "-f", str(mf))
    assert_one_line_error(
        result,
        f"the draft model {smollm2_path} has 49152 tokens and a different vocabulary than "
        "./tiny.gguf (375 tokens; its tokenizer is 'gpt2', not 'llama')",
    )
    assert "use a smaller model of the same family" in result.stderr  # the hint
    store = Store(home / "models")
    assert _blob_files(store) == []
    assert store.names() == []


def test_vocabulary_differences_are_named(tiny_model: Path) -> None:
    tiny = scan.inspect(tiny_model)

    def refusal(draft: scan.GGUFInfo, target: scan.GGUFInfo = tiny) -> str:
        with pytest.raises(InvalidGGUFError) as info:
            checks.vocabulary(target, draft, "big", "small")
        assert info.value.hint and "\n" not in str(info.value)
        return str(info.value)

    checks.vocabulary(tiny, tiny, "big", "small")
    renamed = [*tiny.tokens]
    renamed[300] = b"\xe2\x96\x81\x1b[31mred"
    assert refusal(dataclasses.replace(tiny, tokens=renamed)) == (
        f"the draft model small has 375 tokens and a different vocabulary than big (375 tokens; "
        f"token 300 is '▁\\x1b[31mred', not {tiny.tokens[300].decode()!r})"
    )
    # The first five ids are llama.cpp's to differ (special tokens); the count may differ by 128.
    checks.vocabulary(tiny, dataclasses.replace(tiny, tokens=[b"x", *tiny.tokens[1:]]), "b", "s")
    longer = dataclasses.replace(tiny, tokens=[*tiny.tokens, *(b"%d" % i for i in range(128))])
    checks.vocabulary(tiny, longer, "big", "small")
    much_longer = dataclasses.replace(longer, tokens=[*longer.tokens, b"one too many"])
    assert "has 504 tokens and a different vocabulary than big (375 tokens)" in refusal(much_longer)
    assert "has 375 tokens" in refusal(tiny, much_longer)
    # BOS and EOS ids and whether they are added, where both files say.
    meta = tiny.metadata
    for key, value, words in (
        ("tokenizer.ggml.bos_token_id", 7, "has BOS token id 7, big has 1"),
        ("tokenizer.ggml.eos_token_id", 7, "has EOS token id 7, big has 2"),
        (
            "tokenizer.ggml.add_bos_token",
            False,
            "does not add a BOS token to a prompt and big does",
        ),
    ):
        changed = dataclasses.replace(tiny, metadata={**meta, key: value})
        assert refusal(changed) == f"the draft model small {words}"
    unsaid = {k: v for k, v in meta.items() if k != "tokenizer.ggml.bos_token_id"}
    checks.vocabulary(tiny, dataclasses.replace(tiny, metadata=unsaid), "big", "small")


def test_a_lora_adapter_is_not_a_draft(cli: CLI, draft_project: Path, home: Path) -> None:
    mf = _write(draft_project, "FROM tiny.gguf\nDRAFT tiny-lora.gguf\n")
    assert_one_line_error(
        cli("create", "x", "-f", str(mf)), "the draft model tiny-lora.gguf is a LoRA adapter"
    )
    assert _blob_files(Store(home / "models")) == []


def test_a_missing_draft_file_or_model(store: Store, draft_project: Path) -> None:
    with pytest.raises(FileNotFoundError_, match=r"^DRAFT ./nope.gguf: no such file"):
        _create(store, "x", "FROM tiny.gguf\nDRAFT ./nope.gguf\n", draft_project)
    with pytest.raises(ModelNotFoundError, match="'nothere:latest' not found"):
        _create(store, "x", "FROM tiny.gguf\nDRAFT nothere\n", draft_project)
    assert _blob_files(store) == []


def test_the_draft_file_is_validated_as_gguf(
    store: Store, draft_project: Path, malformed: dict[str, Path]
) -> None:
    with pytest.raises(InvalidGGUFError, match="is not a valid GGUF file"):
        _create(store, "x", f"FROM tiny.gguf\nDRAFT {malformed['truncated']}\n", draft_project)
    assert _blob_files(store) == []


def test_a_split_model_is_not_a_draft(store: Store, draft_project: Path) -> None:
    _create(store, "one", "FROM tiny.gguf\n", draft_project)
    _create(store, "two", "FROM small.gguf\n", draft_project)
    parts = [store.read_manifest(names.parse(n)).of_kind("model")[0] for n in ("one", "two")]
    config = store.read_manifest(names.parse("one")).config
    store.write_manifest(names.parse("split"), Manifest(config, parts))
    with pytest.raises(
        InvalidGGUFError, match="the draft model split:latest is split into 2 files"
    ):
        _create(store, "x", "FROM tiny.gguf\nDRAFT split\n", draft_project)


# -- over the API ------------------------------------------------------------------------------


def test_the_chat_shows_the_draft_of_a_model_on_the_server() -> None:
    from localrun.cli.run.remote import view_from_show
    from localrun.cli.views import show_text

    digest = "sha256:" + "ab" * 32
    data = {
        "details": {"family": "llama", "quantization_level": "Q4_1"},
        "draft": {"model": "small:latest", "digest": digest, "details": {"family": "llama"}},
    }
    view = view_from_show(data)
    assert view.draft == {
        "model": "small:latest",
        "digest": digest,
        "details": view.draft["details"],
    }
    assert "small:latest (llama)" in show_text(view, None)
    assert view_from_show({"details": {}}).draft is None
    assert "draft" not in show_text(view_from_show({"details": {}}), None)
