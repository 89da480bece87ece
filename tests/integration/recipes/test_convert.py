"""Safetensors checkpoints and PEFT adapters converted to GGUF (`FROM ./folder`,
`ADAPTER ./folder`), for every architecture localrun converts: tiny random-weight checkpoints
with real tokenizer files (scripts/testmodels/hf_checkpoints.py), converted, run by the real
llama.cpp, and held against what Hugging Face makes of the same files: the tokens its tokenizer
gives, and the logits of the architecture's own forward pass (numpy, from transformers'
modeling code). Quantized conversions stay close; hostile checkpoints are refused in one line
and nothing is left half-written."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from testmodels.hf_checkpoints import (
    FAMILIES,
    Checkpoint,
    reference_logits,
    write_adapter,
    write_checkpoint,
    write_safetensors,
)
from testmodels.hf_tokenizers import SAMPLES, hf_ids

from localrun.engine.library.machine import machine_params
from localrun.errors import CheckpointError
from localrun.recipes import convert, create, lora, modelfile
from localrun.store import names
from localrun.store.local import Store

from support.cli import CLI, assert_one_line_error

pytestmark = pytest.mark.model


def _llama(path: Path, lora_path: Path | None = None) -> Any:
    return machine_params().llama(
        str(path),
        lora_path=str(lora_path) if lora_path else None,
        logits_all=True,
        n_ctx=256,
        n_threads=2,
        verbose=False,
    )


def _logits(model: Any, ids: list[int]) -> np.ndarray[Any, Any]:
    model.reset()
    model.eval(ids)
    return np.array(model.scores[: len(ids)], dtype=np.float64)


def _close(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any], share: float) -> float:
    """The largest difference, asserted within `share` of the logits' range (the engine runs
    BF16/F16 weights with reduced-precision activations: not bit-equal, never far)."""
    error = float(np.abs(got - want).max())
    assert error <= share * float(np.abs(want).max()), (error, float(np.abs(want).max()))
    return error


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Checkpoint]:
    """One checkpoint a family: BF16 (what most hubs hold); Qwen 2 in F16 over two shards
    with an index; Phi-3 in F32."""
    root = tmp_path_factory.mktemp("checkpoints")
    made = {}
    for family in FAMILIES:
        dtype = {"qwen2": "F16", "phi3": "F32"}.get(family, "BF16")
        made[family] = write_checkpoint(
            root / family, family, dtype=dtype, shards=2 if family == "qwen2" else 1
        )
    return made


@pytest.fixture(scope="module")
def converted(
    checkpoints: dict[str, Checkpoint], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("converted")
    out = {}
    for family, ck in checkpoints.items():
        out[family] = root / f"{family}.gguf"
        convert.checkpoint(ck.folder, out[family])
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_architecture_converts_to_its_own_tokens_and_logits(
    family: str, checkpoints: dict[str, Checkpoint], converted: dict[str, Path]
) -> None:
    ck, path = checkpoints[family], converted[family]
    model = _llama(path)
    for text in SAMPLES:
        assert model.tokenize(text.encode(), add_bos=True, special=False) == hf_ids(ck.folder, text)
    ids = hf_ids(ck.folder, SAMPLES[1])
    want = reference_logits(ck, ids)
    _close(_logits(model, ids), want, 0.01)
    # The chat template and the end of a turn came from tokenizer_config.json.
    assert model.metadata["tokenizer.chat_template"].startswith("{% for m in messages %}")
    assert int(model.metadata["tokenizer.ggml.eos_token_id"]) == ck.config["eos_token_id"]


def test_a_sentencepiece_tokenizer_model_converts_with_its_own_scores(tmp_path: Path) -> None:
    """An older Llama 2 / Mistral folder: tokenizer.model only (no tokenizer.json), read
    without the sentencepiece package; llama.cpp tokenizes as SentencePiece does."""
    ck = write_checkpoint(tmp_path / "llama2", "mistral", tokenizer="sentencepiece")
    assert not (ck.folder / "tokenizer.json").exists()
    convert.checkpoint(ck.folder, tmp_path / "llama2.gguf")
    model = _llama(tmp_path / "llama2.gguf")
    for text in SAMPLES:
        assert model.tokenize(text.encode(), add_bos=True, special=False) == hf_ids(ck.folder, text)
    ids = hf_ids(ck.folder, SAMPLES[0])
    _close(_logits(model, ids), reference_logits(ck, ids), 0.01)


def test_the_safetensors_package_writes_what_the_converter_reads(
    tmp_path: Path, checkpoints: dict[str, Checkpoint], converted: dict[str, Path]
) -> None:
    """A checkpoint saved by Hugging Face's own safetensors writer converts to the same file."""
    from safetensors.numpy import save_file

    ck = checkpoints["qwen2"]  # written in F16 by the test's writer
    again = tmp_path / "qwen2"
    shutil.copytree(ck.folder, again)
    for path in again.glob("model*.safetensors*"):
        path.unlink()
    save_file({k: v.astype(np.float16) for k, v in ck.weights.items()}, again / "model.safetensors")
    convert.checkpoint(again, tmp_path / "again.gguf")
    ids = hf_ids(ck.folder, SAMPLES[0])
    first, second = (
        _logits(_llama(converted["qwen2"]), ids),
        _logits(_llama(tmp_path / "again.gguf"), ids),
    )
    assert np.array_equal(first, second)


def test_a_quantized_conversion_stays_close(
    tmp_path: Path, checkpoints: dict[str, Checkpoint], converted: dict[str, Path]
) -> None:
    from localrun.engine.library import quantize

    ck = checkpoints["llama"]
    small = tmp_path / "q8.gguf"
    quantize.quantize(converted["llama"], small, "q8_0")
    assert small.stat().st_size < converted["llama"].stat().st_size * 0.7
    ids = hf_ids(ck.folder, SAMPLES[0])
    _close(_logits(_llama(small), ids), reference_logits(ck, ids), 0.05)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_peft_adapter_converts_to_the_merged_models_logits(
    family: str, tmp_path: Path, checkpoints: dict[str, Checkpoint], converted: dict[str, Path]
) -> None:
    """Base + converted LoRA in llama.cpp = the reference with B @ A merged into the weights
    (Qwen's adapter uses rsLoRA's alpha / sqrt(r), which llama.cpp's alpha / r must match)."""
    ck = checkpoints[family]
    merged = write_adapter(tmp_path / "adapter", ck, rslora=family == "qwen2")
    out = tmp_path / "adapter.gguf"
    lora.adapter(tmp_path / "adapter", converted[family], out)
    ids = hf_ids(ck.folder, SAMPLES[1])
    want = reference_logits(ck, ids, merged)
    error = _close(_logits(_llama(converted[family], out), ids), want, 0.02)
    moved = float(np.abs(want - reference_logits(ck, ids)).max())
    assert moved > 20 * error  # the adapter changes the answer far more than the tolerance


def test_create_converts_a_checkpoint_and_an_adapter_quantizes_and_runs(
    cli: CLI, tmp_path: Path, checkpoints: dict[str, Checkpoint], home: Path
) -> None:
    ck = checkpoints["mistral"]
    write_adapter(tmp_path / "lora", ck)
    (tmp_path / "Modelfile").write_text(
        f"FROM {ck.folder}\nADAPTER ./lora\nPARAMETER temperature 0\n"
    )
    made = cli("create", "tuned", "-f", str(tmp_path / "Modelfile"), "--quantize", "q8_0")
    assert made.code == 0, made.stderr
    assert f"converting model {ck.folder} to GGUF" in made.stderr
    assert "converting adapter ./lora to GGUF" in made.stderr
    assert "quantized BF16 -> Q8_0" in made.stderr
    shown = cli("show", "tuned")
    assert shown.code == 0 and "{% for m in messages %}" in shown.stdout  # its chat template
    assert "Q8_0" in shown.stdout and "Adapters" in shown.stdout
    ran = cli("run", "tuned", "Hello", "--param", "num_predict=4")
    assert ran.code == 0, ran.stderr
    store = Store(home / "models")
    assert not [p for p in store.blobs.iterdir() if p.name.startswith(".")]  # no temporary file
    assert (ck.folder / "model.safetensors").exists()  # the checkpoint is left as it was


def test_an_interrupted_conversion_leaves_nothing(
    store: Store, checkpoints: dict[str, Checkpoint], tmp_path: Path
) -> None:
    def interrupt(event: create.Event) -> None:
        if event.status.startswith("converting") and event.completed:
            raise KeyboardInterrupt

    mf = modelfile.parse(f"FROM {checkpoints['gemma2'].folder}\n")
    with pytest.raises(KeyboardInterrupt):
        create.create(store, names.parse("half"), mf, tmp_path, report=interrupt)
    assert not store.exists(names.parse("half"))
    assert not store.blobs.exists() or not list(store.blobs.iterdir())


# -- hostile and wrong checkpoints -------------------------------------------------------------


def _copy(ck: Checkpoint, tmp_path: Path) -> Path:
    folder = tmp_path / "bad"
    shutil.copytree(ck.folder, folder)
    return folder


def _rewrite_header(path: Path, change: Any) -> None:
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (length - len(text)) if len(text) <= length else b""
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length :])


def _first_matrix(header: dict[str, Any]) -> dict[str, Any]:
    return header["model.layers.0.self_attn.q_proj.weight"]  # type: ignore[no-any-return]


def _overlap(header: dict[str, Any]) -> None:
    start = header["model.layers.0.self_attn.k_proj.weight"]["data_offsets"][0]
    first = _first_matrix(header)
    first["data_offsets"] = [start, start + first["data_offsets"][1] - first["data_offsets"][0]]


HOSTILE = {
    "a shape of 10^12 elements": (
        lambda h: _first_matrix(h).update(shape=[1_000_000, 1_000_000]), "claims shape"),
    "bytes outside the file": (
        lambda h: _first_matrix(h).update(data_offsets=[0, 1 << 40]), "outside the file"),
    "a quantized dtype": (lambda h: _first_matrix(h).update(dtype="F8_E4M3"), "F8_E4M3"),
    "two tensors on the same bytes": (_overlap, "overlap"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_safetensors_header_is_refused(
    case: str, tmp_path: Path, checkpoints: dict[str, Checkpoint]
) -> None:
    folder = _copy(checkpoints["llama"], tmp_path)
    change, said = HOSTILE[case]
    _rewrite_header(folder / "model.safetensors", change)
    with pytest.raises(CheckpointError, match=said):
        convert.checkpoint(folder, tmp_path / "out.gguf")


def test_a_header_longer_than_its_file_or_an_index_leaving_the_folder_is_refused(
    tmp_path: Path, checkpoints: dict[str, Checkpoint]
) -> None:
    folder = _copy(checkpoints["llama"], tmp_path)
    (folder / "model.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        convert.checkpoint(folder, tmp_path / "out.gguf")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "../../etc/passwd.safetensors"}})
    )
    with pytest.raises(CheckpointError, match="outside the folder"):
        convert.checkpoint(folder, tmp_path / "out.gguf")


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"num_hidden_layers": 10**9}, "not a count"),
        ({"num_hidden_layers": 3}, "config.json says 3 layers, the checkpoint holds 2"),
        ({"vocab_size": 10**6}, "vocab_size is 1000000, the token embedding has"),
        ({"hidden_size": "64"}, "not a count"),
        ({"num_attention_heads": 3}, "do not divide"),
        ({"rms_norm_eps": None}, "no rms_norm_eps"),
    ],
)
def test_a_hostile_config_is_refused_before_anything_is_sized_by_it(
    tmp_path: Path, checkpoints: dict[str, Checkpoint], change: dict[str, Any], said: str
) -> None:
    folder = _copy(checkpoints["llama"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=said):
        convert.checkpoint(folder, tmp_path / "out.gguf")
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        convert.checkpoint(folder, tmp_path / "out.gguf")


def test_a_checkpoint_that_disagrees_with_its_config_is_refused_in_one_line(
    cli: CLI, tmp_path: Path, checkpoints: dict[str, Checkpoint], home: Path
) -> None:
    ck = checkpoints["llama"]
    folder = _copy(ck, tmp_path)
    weights = dict(ck.weights)
    weights["model.layers.1.mlp.up_proj.weight"] = weights["model.layers.1.mlp.up_proj.weight"][:64]
    write_safetensors(folder / "model.safetensors", weights, "BF16")
    (tmp_path / "Modelfile").write_text("FROM ./bad\n")
    refused = cli("create", "bad", "-f", str(tmp_path / "Modelfile"))
    assert_one_line_error(refused, "model.layers.1.mlp.up_proj.weight", "[64, 64]", "[128, 64]")
    blobs = home / "models" / "blobs"
    assert not blobs.exists() or not list(blobs.iterdir())  # nothing stored, nothing left


def test_what_cannot_be_converted_is_named_in_one_line(
    cli: CLI, tmp_path: Path, checkpoints: dict[str, Checkpoint]
) -> None:
    folder = _copy(checkpoints["qwen3"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(
        json.dumps({**config, "architectures": ["GPTNeoXForCausalLM"]})
    )
    (tmp_path / "Modelfile").write_text("FROM ./bad\n")
    assert_one_line_error(cli("create", "x", "-f", str(tmp_path / "Modelfile")),
                          "GPTNeoXForCausalLM", "Llama, Mistral, Phi3, Qwen2, Qwen3")  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").unlink()
    assert_one_line_error(cli("create", "x", "-f", str(tmp_path / "Modelfile")), "tokenizer")
    (tmp_path / "empty").mkdir()
    (tmp_path / "Empty").write_text("FROM ./empty\n")
    assert_one_line_error(cli("create", "x", "-f", str(tmp_path / "Empty")), "config.json")


def test_an_adapter_for_another_model_is_refused(
    tmp_path: Path, checkpoints: dict[str, Checkpoint], converted: dict[str, Path]
) -> None:
    write_adapter(tmp_path / "for-llama", checkpoints["llama"])
    with pytest.raises(CheckpointError, match="base model"):
        lora.adapter(tmp_path / "for-llama", converted["phi3"], tmp_path / "out.gguf")
    # The same architecture, another width: every matrix's shape is checked against the base's.
    wide = write_checkpoint(tmp_path / "wide", "phi3", seed=3)
    config = json.loads((wide.folder / "config.json").read_text())
    narrow = {
        k: v[:, :32] if v.ndim == 2 and v.shape[1] == 64 else v for k, v in wide.weights.items()
    }
    write_adapter(tmp_path / "narrow", Checkpoint(wide.folder, "phi3", config, narrow))
    with pytest.raises(CheckpointError, match="matrix; the base model's"):
        lora.adapter(tmp_path / "narrow", converted["phi3"], tmp_path / "out.gguf")
    dora = tmp_path / "dora"
    write_adapter(dora, checkpoints["llama"])
    settings = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**settings, "use_dora": True}))
    with pytest.raises(CheckpointError, match="DoRA"):
        lora.adapter(dora, converted["llama"], tmp_path / "out.gguf")


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path: Path) -> Iterator[None]:
    yield
    assert not list(tmp_path.glob("**/.tmp-*"))
