"""Hub references and how a tag picks the GGUF files of a repository (pure)."""

from __future__ import annotations

import pytest

from localrun.errors import InvalidNameError, ModelNotFoundError
from localrun.sources.base import RemoteFile, Repo, pick, quant_of
from localrun.store.reference import parse, parse_hub


def _repo(*paths: str) -> Repo:
    return Repo("hf", "Org/Repo-GGUF", "abc", [RemoteFile(p, 10, "0" * 64) for p in paths])


@pytest.mark.parametrize(
    ("text", "hub", "repo_id", "tag"),
    [
        ("hf.co/Org/Repo-GGUF", "hf", "Org/Repo-GGUF", None),
        ("huggingface.co/Org/Repo-GGUF:Q8_0", "hf", "Org/Repo-GGUF", "Q8_0"),
        ("hf://Org/Repo-GGUF:q4_k_m", "hf", "Org/Repo-GGUF", "q4_k_m"),
        ("modelscope.cn/Qwen/Qwen2-GGUF:Q5_K_M", "modelscope", "Qwen/Qwen2-GGUF", "Q5_K_M"),
        ("ms://Qwen/Qwen2-GGUF", "modelscope", "Qwen/Qwen2-GGUF", None),
        ("hf.co/Org/Repo:model.Q4_K_M.gguf", "hf", "Org/Repo", "model.Q4_K_M.gguf"),
    ],
)
def test_references(text: str, hub: str, repo_id: str, tag: str | None) -> None:
    ref = parse_hub(text)
    assert ref is not None
    assert (ref.hub, ref.repo_id, ref.tag) == (hub, repo_id, tag)
    name = ref.name
    assert name.host in ("hf.co", "modelscope.cn")
    assert name.namespace == repo_id.split("/")[0].lower()
    assert name.tag == (tag or "latest").lower()


def test_plain_names_are_not_hub_references() -> None:
    assert parse_hub("smollm2:135m") is None
    assert parse_hub("me/mario:v1") is None
    ref = parse("hf://Org/Repo:Q8_0")
    assert ref.hub is not None and str(ref.name) == "hf.co/org/repo:q8_0"
    assert ref.typed == ref.name and ref.entry is None
    # The store name of a hub reference is also what `localrun list` shows and accepts back.
    assert parse("hf.co/org/repo:q8_0").name == ref.name


def test_a_name_is_parsed_into_one_reference() -> None:
    alias = parse("smollm2")  # a catalog alias: the name as typed, the model it stands for
    assert str(alias.typed) == "smollm2:latest" and str(alias.name) == "smollm2:135m"
    assert alias.entry is not None and alias.entry.name == alias.name and alias.hub is None
    mine = parse("me/mario:v1")  # a store name nothing else knows
    assert mine.typed == mine.name and mine.entry is None and mine.hub is None
    with pytest.raises(InvalidNameError):
        parse("../etc/passwd")


@pytest.mark.parametrize(
    "text",
    ["hf.co/Org", "hf.co/a/b/c", "hf://../etc:x", "hf.co/Org/Repo:bad tag", "ms://Org/..:x"],
)
def test_bad_references(text: str) -> None:
    with pytest.raises(InvalidNameError):
        parse_hub(text)


@pytest.mark.parametrize(
    ("path", "quant"),
    [
        ("Model-7B.Q4_K_M.gguf", "Q4_K_M"),
        ("model-q8_0.gguf", "Q8_0"),
        ("Llama-3-8B-Instruct-IQ4_XS.gguf", "IQ4_XS"),
        ("model-bf16-00001-of-00002.gguf", "BF16"),
        ("sub/dir/model.f16.gguf", "F16"),
        ("model.gguf", None),
    ],
)
def test_quant_of(path: str, quant: str | None) -> None:
    assert quant_of(path) == quant


def test_default_prefers_q4_k_m_then_the_documented_order() -> None:
    repo = _repo("m.Q8_0.gguf", "m.Q4_K_M.gguf", "m.F16.gguf", "README.md")
    assert pick(repo, None, "x").files[0].path == "m.Q4_K_M.gguf"
    repo = _repo("m.Q8_0.gguf", "m.F16.gguf", "m.Q5_K_M.gguf")
    assert pick(repo, "latest", "x").files[0].path == "m.Q5_K_M.gguf"
    assert pick(_repo("only.gguf"), None, "x").files[0].path == "only.gguf"


def test_tag_is_a_quant_in_any_case_or_a_file_name() -> None:
    repo = _repo("m.Q8_0.gguf", "m.Q4_K_M.gguf", "mmproj-m-f16.gguf")
    assert pick(repo, "q8_0", "x").files[0].path == "m.Q8_0.gguf"
    assert pick(repo, "m.Q4_K_M.gguf", "x").files[0].path == "m.Q4_K_M.gguf"
    assert pick(repo, "m.q4_k_m", "x").files[0].path == "m.Q4_K_M.gguf"
    with pytest.raises(ModelNotFoundError) as info:
        pick(repo, "Q2_K", "hf.co/Org/Repo-GGUF:Q2_K")
    assert info.value.hint is not None
    assert "available: Q4_K_M, Q8_0" in info.value.hint  # the projector is not a model


def test_split_models_come_whole_and_in_order() -> None:
    repo = _repo(
        "big-Q4_K_M-00002-of-00003.gguf",
        "big-Q4_K_M-00001-of-00003.gguf",
        "big-Q4_K_M-00003-of-00003.gguf",
        "big-Q8_0.gguf",
    )
    choice = pick(repo, "Q4_K_M", "x")
    assert [f.path for f in choice.files] == [
        "big-Q4_K_M-00001-of-00003.gguf",
        "big-Q4_K_M-00002-of-00003.gguf",
        "big-Q4_K_M-00003-of-00003.gguf",
    ]
    assert choice.quant == "Q4_K_M" and choice.size == 30
    broken = _repo("big-Q4_K_M-00001-of-00003.gguf", "big-Q4_K_M-00003-of-00003.gguf")
    with pytest.raises(ModelNotFoundError, match="not found"):
        pick(broken, "Q4_K_M", "x")


def test_a_repository_without_gguf() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        pick(_repo("model.safetensors", "config.json"), None, "hf.co/Org/Repo")
    assert "no GGUF files" in (info.value.hint or "")
