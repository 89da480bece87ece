"""The `localrun` command end to end: the real CLI in a subprocess over a real store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from localrun.settings import config
from localrun.store.local import Store

from support import PATIENCE_S
from support.cli import CLI, NO_SERVER, assert_one_line_error, check_no_default_server, localrun_env
from support.modelfiles import write_modelfile


def _store(home: Path) -> Store:
    return Store(home / "models")


def test_create_list_show_from_relative_path(cli: CLI, project: Path, home: Path) -> None:
    mf = write_modelfile(project, "FROM ./tiny.gguf\n")
    result = cli("create", "tiny", "-f", str(mf))
    assert result.code == 0, result.stderr
    assert "success" in result.stderr
    listed = cli("list")
    assert listed.code == 0
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert row.split()[0] == "tiny:latest"
    shown = cli("show", "tiny")
    assert shown.code == 0, shown.stderr
    assert "architecture        llama" in shown.stdout
    assert "context length      256" in shown.stdout
    assert "quantization        F32" in shown.stdout
    assert "Template" in shown.stdout  # the GGUF's own chat template


def test_list_json_and_empty_store(cli: CLI, project: Path) -> None:
    assert cli("list").stdout.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert json.loads(cli("list", "--json").stdout) == []
    cli("create", "a", "-f", str(write_modelfile(project, "FROM tiny.gguf\n")))
    (entry,) = json.loads(cli("list", "--json").stdout)
    assert entry["name"] == "a:latest"
    assert entry["model"] == "localrun/library/a:latest"
    assert entry["digest"].startswith("sha256:")
    assert entry["size"] > (project / "tiny.gguf").stat().st_size


def test_full_modelfile_and_show_json(cli: CLI, project: Path) -> None:
    mf = write_modelfile(
        project,
        '''# an assistant with every instruction
FROM ./tiny.gguf
ADAPTER ./tiny-lora.gguf
PARAMETER temperature 0.2
PARAMETER num_ctx 128
PARAMETER stop "<|im_end|>"
PARAMETER stop "User:"
SYSTEM """You are Mario.
Answer briefly."""
TEMPLATE """{% for m in messages %}{{ m.content }}{% endfor %}"""
MESSAGE user Hi
MESSAGE assistant It's-a me!
LICENSE MIT
''',
    )
    assert cli("create", "mario", "-f", str(mf)).code == 0
    data = json.loads(cli("show", "mario", "--json").stdout)
    assert data["parameters"] == {
        "temperature": 0.2,
        "num_ctx": 128,
        "stop": ["<|im_end|>", "User:"],
    }
    assert data["system"] == "You are Mario.\nAnswer briefly."
    assert data["template"] == "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert data["template_source"] == "modelfile"
    assert data["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "It's-a me!"},
    ]
    assert data["license"] == ["MIT"]
    assert len(data["adapters"]) == 1
    assert data["details"]["architecture"] == "llama"
    assert cli("show", "mario", "--system").stdout == "You are Mario.\nAnswer briefly.\n"
    assert cli("show", "mario", "--license").stdout == "MIT\n"
    params = cli("show", "mario", "--parameters").stdout
    assert "temperature    0.2" in params and 'stop           "User:"' in params
    text = cli("show", "mario").stdout
    for section in ("Model", "Adapters", "Parameters", "System", "Messages", "Template", "License"):
        assert f"  {section}\n" in text


def test_show_modelfile_recreates_the_same_model(cli: CLI, project: Path, home: Path) -> None:
    mf = write_modelfile(
        project,
        "FROM ./tiny.gguf\nADAPTER ./tiny-lora.gguf\nPARAMETER seed 42\nSYSTEM be kind\n",
    )
    cli("create", "orig", "-f", str(mf))
    printed = cli("show", "orig", "--modelfile").stdout
    assert "FROM " in printed and "ADAPTER " in printed
    again = write_modelfile(project / "other", printed)
    result = cli("create", "copy", "-f", str(again))
    assert result.code == 0, result.stderr
    assert "using existing layer" in result.stderr
    orig = json.loads(cli("show", "orig", "--json").stdout)
    copy = json.loads(cli("show", "copy", "--json").stdout)
    for key in ("details", "parameters", "system", "adapters", "model_file", "messages"):
        assert orig[key] == copy[key], key


def test_identical_content_is_stored_once(cli: CLI, project: Path, home: Path) -> None:
    shutil.copy(project / "tiny.gguf", project / "same-bytes.gguf")
    cli("create", "one", "-f", str(write_modelfile(project, "FROM tiny.gguf\n", "M1")))
    second = cli(
        "create", "two", "-f", str(write_modelfile(project, "FROM same-bytes.gguf\n", "M2"))
    )
    assert second.code == 0
    assert "using existing layer" in second.stderr
    blobs = [p for p in (home / "models" / "blobs").iterdir() if p.stat().st_size > 100_000]
    assert len(blobs) == 1


def test_from_store_model_inherits_and_overrides(cli: CLI, project: Path) -> None:
    base = (
        "FROM tiny.gguf\nPARAMETER temperature 0.5\nPARAMETER top_k 20\nSYSTEM base\nLICENSE L1\n"
    )
    cli("create", "base", "-f", str(write_modelfile(project, base, "Base")))
    child = "FROM base\nPARAMETER temperature 0.9\nSYSTEM child\nLICENSE L2\n"
    result = cli("create", "me/child:v1", "-f", str(write_modelfile(project, child, "Child")))
    assert result.code == 0, result.stderr
    data = json.loads(cli("show", "me/child:v1", "--json").stdout)
    assert data["parameters"] == {"temperature": 0.9, "top_k": 20}
    assert data["system"] == "child"
    assert data["license"] == ["L1", "L2"]
    assert data["parent"] == "base:latest"
    assert data["name"] == "me/child:v1"
    base_data = json.loads(cli("show", "base", "--json").stdout)
    assert base_data["model_file"] == data["model_file"]


def test_modelfile_from_stdin(cli: CLI, tiny_model: Path) -> None:
    result = cli("create", "piped", "-f", "-", input=f"FROM {tiny_model}\n")
    assert result.code == 0, result.stderr
    assert "piped:latest" in cli("list").stdout


def test_cp_and_rm_keep_shared_blobs(cli: CLI, project: Path, home: Path) -> None:
    cli("create", "a", "-f", str(write_modelfile(project, "FROM tiny.gguf\n")))
    copied = cli("cp", "a", "b")
    assert copied.code == 0 and "copied 'a:latest' to 'b:latest'" in copied.stdout
    store = _store(home)
    model_blob = store.read_manifest(store.names()[0]).of_kind("model")[0].digest
    removed = cli("rm", "a")
    assert removed.code == 0 and "deleted 'a:latest'" in removed.stdout
    assert store.has_blob(model_blob)  # b still uses it
    assert [str(n) for n in store.names()] == ["b:latest"]
    assert cli("rm", "b").code == 0
    assert not store.has_blob(model_blob)
    assert list((home / "models" / "blobs").iterdir()) == []
    assert not any((home / "models" / "manifests").rglob("*"))


def test_rm_several_with_one_unknown(cli: CLI, project: Path) -> None:
    cli("create", "a", "-f", str(write_modelfile(project, "FROM tiny.gguf\n")))
    cli("cp", "a", "b")
    result = cli("rm", "a", "nope", "b")
    assert result.code == 1
    assert "deleted 'a:latest'" in result.stdout and "deleted 'b:latest'" in result.stdout
    assert_one_line_error(result, "model 'nope:latest' not found", "localrun list")
    assert cli("list", "--json").stdout.strip() == "[]"


def test_prune_and_verify(cli: CLI, project: Path, home: Path) -> None:
    cli("create", "a", "-f", str(write_modelfile(project, "FROM tiny.gguf\nSYSTEM hi\n")))
    blobs = home / "models" / "blobs"
    (blobs / ("sha256-" + "0" * 64)).write_bytes(b"orphan")
    (blobs / ".tmp-999-dead").write_bytes(b"partial")
    ok = cli("verify")
    assert ok.code == 1  # the orphan's content does not match its name
    assert "corrupt: sha256:" + "0" * 64 + " (used by no model)" in ok.stdout
    pruned = cli("prune")
    assert pruned.code == 0
    assert "removed 1 temporary file and 1 unused blob" in pruned.stdout
    healthy = cli("verify")
    assert healthy.code == 0 and "all intact" in healthy.stdout
    store = _store(home)
    model = store.read_manifest(store.names()[0]).of_kind("model")[0]
    path = store.blob_path(model.digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    damaged = cli("verify")
    assert damaged.code == 1
    assert f"corrupt: {model.digest} (used by a:latest)" in damaged.stdout
    assert_one_line_error(damaged, "localrun rm a:latest")


def test_corrupt_small_layer_points_to_verify(cli: CLI, project: Path, home: Path) -> None:
    cli("create", "a", "-f", str(write_modelfile(project, "FROM tiny.gguf\nSYSTEM be brief\n")))
    store = _store(home)
    system = store.read_manifest(store.names()[0]).of_kind("system")[0]
    store.blob_path(system.digest).write_text("be evil")
    assert_one_line_error(cli("show", "a"), "corrupt", "localrun verify")


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            "FROM tiny.gguf\nPARAMS temperature 1\n",
            ["Modelfile:2:1", "unknown instruction 'PARAMS'"],
        ),
        ("FROM tiny.gguf\nPARAMETER warmth 1\n", ["Modelfile:2:11", "unknown parameter 'warmth'"]),
        ("FROM tiny.gguf\nPARAMETER top_p 2\n", ["Modelfile:2:17", "above the maximum 1"]),
        ("FROM tiny.gguf\nPARAMETER num_ctx lots\n", ["Modelfile:2:19", "expected an integer"]),
        ("SYSTEM hi\n", ["Modelfile:1:1", "missing FROM"]),
        ('FROM tiny.gguf\nSYSTEM """never\nends\n', ["Modelfile:2:8", 'unterminated """']),
        ("FROM tiny.gguf\nMESSAGE robot hi\n", ["Modelfile:2:9", "unknown MESSAGE role 'robot'"]),
    ],
)
def test_malformedwrite_modelfile(cli: CLI, project: Path, text: str, fragments: list[str]) -> None:
    mf = write_modelfile(project, text)
    result = cli("create", "bad", "-f", str(mf))
    assert_one_line_error(result, *fragments)
    # a hint follows the error
    assert "localrun help modelfile" in result.stderr or "`FROM" in result.stderr
    assert cli("list", "--json").stdout.strip() == "[]"


def test_bad_template_is_refused_with_its_line(cli: CLI, project: Path) -> None:
    mf = write_modelfile(project, "FROM tiny.gguf\n\nTEMPLATE {% for m in messages %}\n")
    assert_one_line_error(cli("create", "t", "-f", str(mf)), "Modelfile:3:1", "Jinja")


def test_modelfile_not_utf8(cli: CLI, project: Path) -> None:
    path = project / "Modelfile"
    path.write_bytes(b"FROM tiny.gguf\nSYSTEM caf\xe9\n")
    assert_one_line_error(cli("create", "x", "-f", str(path)), "Modelfile:2:11", "UTF-8")


def test_missing_and_irregularwrite_modelfile(cli: CLI, project: Path) -> None:
    assert_one_line_error(cli("create", "x", "-f", str(project / "nope")), "no such file")
    assert_one_line_error(cli("create", "x", "-f", str(project)), "not a regular file")


@pytest.mark.parametrize("target", ["/dev/random", "/dev/zero", "{project}", "{fifo}"])
def test_from_refuses_devices_dirs_and_fifos_at_once(cli: CLI, project: Path, target: str) -> None:
    fifo = project / "pipe.gguf"
    os.mkfifo(fifo)
    value = target.format(project=project, fifo=fifo)
    mf = write_modelfile(project, f"FROM {value}\n")
    start = time.monotonic()
    result = cli("create", "x", "-f", str(mf), timeout=30)
    assert time.monotonic() - start < 20
    # A folder may be a safetensors checkpoint: one without config.json is said to be neither.
    said = "a folder without config.json" if target == "{project}" else "not a GGUF file"
    assert_one_line_error(result, said)


def test_from_missing_file(cli: CLI, project: Path) -> None:
    mf = write_modelfile(project, "FROM ./missing.gguf\n")
    assert_one_line_error(cli("create", "x", "-f", str(mf)), "FROM ./missing.gguf: no such file")


@pytest.mark.parametrize(
    "sample",
    [
        "truncated",
        "truncated_header",
        "bad_magic",
        "bad_version",
        "tensor_offset_past_end",
        "absurd_array_length",
        "zero_alignment",
        "empty",
    ],
)
def test_from_malformed_gguf(
    cli: CLI, project: Path, malformed: dict[str, Path], sample: str
) -> None:
    mf = write_modelfile(project, f"FROM {malformed[sample]}\n")
    result = cli("create", "x", "-f", str(mf), timeout=PATIENCE_S)
    assert_one_line_error(result, "is not a valid GGUF file")
    blobs = project.parent / "localrun-home" / "models" / "blobs"
    assert not blobs.exists() or not list(blobs.iterdir())


def test_adapter_and_model_kinds_are_checked(cli: CLI, project: Path) -> None:
    as_model = write_modelfile(project, "FROM tiny-lora.gguf\n", "M1")
    assert_one_line_error(cli("create", "x", "-f", str(as_model)), "is a LoRA adapter, not a model")
    as_adapter = write_modelfile(project, "FROM tiny.gguf\nADAPTER tiny.gguf\n", "M2")
    assert_one_line_error(cli("create", "x", "-f", str(as_adapter)), "is not a LoRA adapter")


def test_from_unknown_model_and_bad_names(cli: CLI, project: Path) -> None:
    mf = write_modelfile(project, "FROM nothere:1b\n")
    assert_one_line_error(cli("create", "x", "-f", str(mf)), "model 'nothere:1b' not found")
    good = write_modelfile(project, "FROM tiny.gguf\n", "Good")
    for bad in ("../evil", "a/b/c/d", "name:", "UPPER CASE", "x" * 500):
        assert_one_line_error(cli("create", bad, "-f", str(good)), "model name")
    assert_one_line_error(cli("show", "..%2f"), "invalid model name")
    assert_one_line_error(cli("show", "ghost"), "model 'ghost:latest' not found", "localrun list")
    assert_one_line_error(cli("cp", "ghost", "other"), "not found")


def test_usage_errors_are_one_line(cli: CLI) -> None:
    result = cli("list", "--frobnicate")
    assert result.code == 2
    assert_one_line_error(result, "--frobnicate", "localrun list --help")


def test_debug_shows_the_traceback(cli: CLI) -> None:
    quiet = cli("show", "ghost")
    assert "Traceback" not in quiet.stderr
    loud = cli("show", "ghost", env={"LOCALRUN_DEBUG": "1"})
    assert loud.code == 1 and "Traceback" in loud.stderr


# -- settings -----------------------------------------------------------------------------------


def test_env_lists_every_setting_and_its_source(
    cli: CLI, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOCALRUN_HOST")  # conftest points it at a closed port
    models = tmp_path / "elsewhere"
    result = cli(
        "env", "--json", env={"LOCALRUN_MODELS": str(models), "LOCALRUN_HOST": "0.0.0.0:9"}
    )
    assert result.code == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) >= {"LOCALRUN_HOME", "LOCALRUN_MODELS", "LOCALRUN_HOST", "LOCALRUN_DEBUG"}
    assert set(rows) == set(config.SETTINGS)
    assert rows["LOCALRUN_HOME"] == {
        **rows["LOCALRUN_HOME"],
        "value": str(home),
        "source": "environment",
    }
    assert rows["LOCALRUN_MODELS"]["value"] == str(models)
    assert rows["LOCALRUN_HOST"]["value"] == "0.0.0.0:9"
    assert rows["LOCALRUN_DEBUG"] == {**rows["LOCALRUN_DEBUG"], "value": "0", "source": "default"}
    text = cli("env").stdout
    assert "LOCALRUN_HOST" in text and "127.0.0.1:11435" in text and "default" in text
    # One long value cuts itself short rather than widening every row.
    origins = ",".join(f"https://app{i}.example.com" for i in range(20))
    text = cli("env", env={"LOCALRUN_ORIGINS": origins}).stdout
    row = next(line for line in text.splitlines() if line.startswith("LOCALRUN_HOST "))
    assert row.index("default") < 100, row
    assert "LOCALRUN_ORIGINS: cut at" in text and "--json" in text
    whole = json.loads(cli("env", "--json", env={"LOCALRUN_ORIGINS": origins}).stdout)
    assert {r["name"]: r["value"] for r in whole}["LOCALRUN_ORIGINS"].count("example.com") == 20


def test_ps_says_what_its_size_and_context_count(cli: CLI) -> None:
    """A newcomer saw 814 MB for a 98 MB model and context 4096 where `show` said 8192."""
    shown = " ".join(cli("ps", "--help").stdout.split())
    assert "KV cache" in shown and "LOCALRUN_CONTEXT_LENGTH" in shown, shown


def test_no_test_starts_a_localrun_that_a_default_server_would_answer(tmp_path: Path) -> None:
    """The guard conftest puts on every process the tests start: a localrun whose environment
    leaves LOCALRUN_HOST at the default port (an environment built from HOME alone, say) is
    refused before it starts, since a `localrun serve` left running there would answer it."""
    binary = str(tmp_path / "dist" / "localrun")
    bare = {"HOME": str(tmp_path)}
    for argv in (
        [sys.executable, "-m", "localrun", "run", "tiny", "hi"],
        [binary, "run", "tiny", "hi"],
        ["bash", "-c", f"cd {tmp_path} && localrun run tiny hi"],
    ):
        with pytest.raises(AssertionError, match="default port"):
            subprocess.run(argv, env=bare, check=False)
        with pytest.raises(AssertionError, match="default port"):
            check_no_default_server(argv, {**bare, "LOCALRUN_HOST": "localhost"})
        check_no_default_server(argv, {**bare, "LOCALRUN_HOST": NO_SERVER})
        check_no_default_server(argv, None)  # this environment: conftest's NO_SERVER
    with pytest.raises(AssertionError, match="default port"):
        pexpect.spawn(binary, ["run", "tiny"], env=bare)
    # Not the localrun command (a runner, a file named after it, other programs), or one that
    # asks no server (the binary's build runs its --version with HOME alone).
    for argv in (
        [sys.executable, "-m", "localrun.worker"],
        ["bash", "-c", f"ls {tmp_path}/localrun-home"],
        ["true"],
        [binary, "--version"],
        [sys.executable, "-m", "localrun", "env"],
    ):
        check_no_default_server(argv, bare)
    assert localrun_env(LOCALRUN_HOME="x")["LOCALRUN_HOST"] == NO_SERVER
    assert os.environ["LOCALRUN_HOST"] == NO_SERVER


def test_models_setting_moves_the_store(cli: CLI, project: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "big-disk"
    env = {"LOCALRUN_MODELS": str(elsewhere)}
    cli("create", "moved", "-f", str(write_modelfile(project, "FROM tiny.gguf\n")), env=env)
    assert (elsewhere / "manifests" / "localrun" / "library" / "moved" / "latest").is_file()
    assert "moved:latest" in cli("list", env=env).stdout
    assert "moved" not in cli("list").stdout


def test_bad_setting_is_one_line(cli: CLI) -> None:
    result = cli("env", env={"LOCALRUN_HOST": "localhost:99999"})
    assert_one_line_error(result, "LOCALRUN_HOST", "port")


def test_version_and_module_entry(cli: CLI) -> None:
    result = cli("--version")
    assert result.code == 0 and result.stdout.startswith("localrun ")
    help_text = cli("--help").stdout
    for command in ("create", "list", "show", "cp", "rm", "prune", "verify", "env"):
        assert command in help_text


def test_usage_mistakes_read_as_one_sentence(cli: CLI) -> None:
    bare = cli()  # the help is the answer, not an error
    assert bare.code == 0 and "Usage: localrun" in bare.stdout and "Error" not in bare.stderr
    group = cli("upstream")
    assert group.code == 0 and "add" in group.stdout and not group.stderr.strip()
    assert_one_line_error(cli("bogus"), "Error: no such command 'bogus'; see `localrun --help`")
    assert_one_line_error(cli("pul", "x"), "no such command 'pul'; did you mean 'pull'?")
    assert_one_line_error(cli("run"), "missing argument 'model'; see `localrun run --help`")
    # Flags take no value: help shows no type for them (typer's `<bool>`).
    for args in (["--help"], ["run", "--help"], ["serve", "--help"]):
        shown = cli(*args).stdout
        assert "<bool>" not in shown and "--version" in cli("--help").stdout
    assert "<list[str]>" in cli("run", "--help").stdout  # options with values keep theirs


def test_word_wrap_breaks_at_spaces() -> None:
    import io

    from localrun.cli.output import WordWrap

    out = io.StringIO()
    wrap = WordWrap(out, 20)
    for piece in ["The quick br", "own fox jumps over the la", "zy dog.\n", "    indented\nend"]:
        wrap.write(piece)
    wrap.finish()
    lines = out.getvalue().split("\n")
    assert lines == ["The quick brown fox", "jumps over the lazy", "dog.", "    indented", "end"]
    assert all(len(line) <= 20 for line in lines)


def test_progress_lines_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from localrun.cli.output import CreateProgress
    from localrun.recipes.create import Event

    progress = CreateProgress()
    assert not progress.tty  # captured: not a terminal
    for event in (
        Event("converting model ./ckpt to GGUF"),
        *(Event("converting model ./ckpt to GGUF", completed=n, total=4) for n in range(5)),
        *(Event("hashing model data", completed=n, total=2000) for n in range(3)),
        Event("creating new layer", digest="sha256:" + "a" * 64),
        *(Event("hashing model data", completed=n, total=2000) for n in range(3)),  # a 2nd part
        Event("success"),
    ):
        progress(event)
    progress.close()
    assert capsys.readouterr().err.splitlines() == [
        "converting model ./ckpt to GGUF",
        "hashing model data (2 KB)",
        "creating new layer sha256:" + "a" * 64,
        "hashing model data (2 KB)",
        "success",
    ]
