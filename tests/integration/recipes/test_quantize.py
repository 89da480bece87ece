"""`localrun create NAME --quantize TYPE` and Ollama's /api/create `quantize`: an F32 model
quantized by llama.cpp's quantizer, the sizes before and after said, the result stored and run;
an already-quantized source and an unknown type refused in one line, nothing left behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localrun.gguf import scan
from localrun.scheduler import Scheduler
from localrun.store import names
from localrun.store.local import Store

from support import PATIENCE_S
from support.cli import CLI, assert_one_line_error
from support.server import LiveServer, add_model


def _model_blobs(store: Store) -> list[Path]:
    return [p for p in store.blobs.iterdir() if p.stat().st_size > 10_000]


@pytest.mark.model
@pytest.mark.parametrize("kind", ["q8_0", "q4_k_m"])
def test_create_quantizes_an_f32_model(
    cli: CLI, tmp_path: Path, tiny_model: Path, home: Path, kind: str
) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {tiny_model}\nPARAMETER temperature 0\n")
    made = cli("create", "small", "-f", str(modelfile), "--quantize", kind.upper())
    assert made.code == 0, made.stderr
    assert f"quantizing F32 model to {kind.upper()}" in made.stderr
    assert f"quantized F32 -> {kind.upper()}: " in made.stderr  # the sizes before and after
    ran = cli("run", "small", "Hello", "--param", "num_predict=4")
    assert ran.code == 0, ran.stderr
    # One model blob, smaller than the source and of the type asked; no temporary file left,
    # and the store took the quantized file in without recording it as a user's linked file.
    store = Store(home / "models")
    (blob,) = _model_blobs(store)
    assert blob.stat().st_size < tiny_model.stat().st_size / 2
    assert scan.inspect(blob).quantization == kind.upper()
    assert not [p for p in store.blobs.iterdir() if p.name.startswith(".")]
    assert not (store.root / "links").exists() or not list((store.root / "links").iterdir())
    shown = cli("show", "small")
    assert kind.upper() in shown.stdout


@pytest.mark.model
@pytest.mark.parametrize("kind", ["q8_0", "q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q4_0"])
def test_every_type_the_issue_names_quantizes_and_loads(
    tmp_path: Path, tiny_model: Path, kind: str
) -> None:
    """Each type from F32 and from F16 (k-quants on rows narrower than 256 take llama.cpp's
    fallback, as llama-quantize does); the result loads and answers."""
    from localrun.engine.library import quantize
    from localrun.engine.library.machine import machine_params

    half = tmp_path / "f16.gguf"
    quantize.quantize(tiny_model, half, "f16")
    assert scan.inspect(half).quantization == "F16"
    for source in (tiny_model, half):
        out = tmp_path / f"{source.stem}-{kind}.gguf"
        quantize.quantize(source, out, kind)
        assert scan.inspect(out).quantization == kind.upper()
        model = machine_params().llama(str(out), n_ctx=64, verbose=False)
        assert model.create_completion("Hello", max_tokens=2)["choices"]


@pytest.mark.model
def test_a_stored_model_is_quantized_under_a_new_name(
    cli: CLI, tmp_path: Path, tiny_model: Path, home: Path
) -> None:
    """FROM a model of the store: its model layer is replaced, its other layers kept, and the
    F32 original stays as it was."""
    full = tmp_path / "Full"
    full.write_text(f"FROM {tiny_model}\nSYSTEM Be brief.\nPARAMETER temperature 0\n")
    assert cli("create", "full", "-f", str(full), "-q").code == 0
    small = tmp_path / "Small"
    small.write_text("FROM full\n")
    assert cli("create", "small", "-f", str(small), "--quantize", "q4_0", "-q").code == 0
    store = Store(home / "models")
    made = store.read_manifest(names.parse("small"))
    (layer,) = made.of_kind("model")
    assert scan.inspect(store.blob_path(layer.digest)).quantization == "Q4_0"
    assert made.of_kind("system") == store.read_manifest(names.parse("full")).of_kind("system")
    original = store.read_manifest(names.parse("full")).of_kind("model")[0]
    assert scan.inspect(store.blob_path(original.digest)).quantization == "F32"
    assert cli("run", "small", "Hi", "--param", "num_predict=2").code == 0


@pytest.mark.model
def test_quantize_refuses_what_it_cannot_do(cli: CLI, tmp_path: Path, tiny_model: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {tiny_model}\n")
    assert_one_line_error(
        cli("create", "x", "-f", str(modelfile), "--quantize", "q3_zz"), "q3_zz", "q4_k_m"
    )
    assert cli("create", "small", "-f", str(modelfile), "--quantize", "q8_0", "-q").code == 0
    again = tmp_path / "Again"
    again.write_text("FROM small\n")
    assert_one_line_error(
        cli("create", "smaller", "-f", str(again), "--quantize", "q4_0"), "already quantized"
    )
    assert cli("show", "smaller").code != 0  # nothing was created


# -- over Ollama's API, with the official client -----------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("quantize-server") / "models")
    add_model(store, "tiny", tiny_model)
    server = LiveServer(store, Scheduler(store, backend="fake"))
    yield server
    server.close()


@pytest.mark.server
@pytest.mark.model
def test_ollama_clients_create_with_quantize(live: LiveServer) -> None:
    import ollama

    client = ollama.Client(host=live.url, timeout=PATIENCE_S)
    parts = client.create("tiny-q", from_="tiny", quantize="q4_K_M", stream=True)
    statuses = [part.status for part in parts]
    assert "quantizing F32 model to Q4_K_M" in statuses and statuses[-1] == "success"
    shown = client.show("tiny-q")
    assert shown.details is not None and shown.details.quantization_level == "Q4_K_M"
    with pytest.raises(ollama.ResponseError) as refused:
        client.create("tiny-qq", from_="tiny-q", quantize="q8_0")
    assert "already quantized" in str(refused.value) and refused.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as unknown:
        client.create("tiny-qq", from_="tiny", quantize="q9_9")
    assert "unknown quantization type" in str(unknown.value) and unknown.value.status_code == 400
