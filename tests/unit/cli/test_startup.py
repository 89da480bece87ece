"""Commands that only print must not import what they do not use (speed budget).

`localrun --help`, `list`, `env`, `ps` and `--version` start without the heavy packages, without
pydantic (typer converts option values through it; cli/typer_patches spares the values that need
no converting) and, but for --help, without rich; `list`, `env` and `--version` as they are
mostly typed (cli/main's PLAIN) without typer, and print what typer's commands print. No timings
here: scripts/setupbench/startup.py measures them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from localrun.cli import main, typer_patches
from localrun.cli.commands import version

from support import PATIENCE_S

HEAVY = ("llama_cpp", "fastapi", "uvicorn", "huggingface_hub", "modelscope", "gguf", "numpy")
# What the printing commands do without, besides HEAVY: typer's value conversion (pydantic),
# the server's and the templates' packages, and the help's Markdown and syntax highlighting.
UNUSED = ("pydantic", "httpx", "jinja2", "markdown_it", "pygments")
# Our own modules that --help, which only lists the commands, never needs.
NOT_FOR_HELP = (
    "localrun.store.local",
    "localrun.cli.run.session",
    "localrun.cli.run.connect",
    "localrun.cli.run.local",
    "localrun.cli.run.remote",
    "localrun.engine",
)
VERSION = ("--version", "-v")

_PROBE = """
import json, sys
from localrun.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def _loaded(args: list[str], prelude: str = "", env: dict[str, str] | None = None) -> set[str]:
    """The modules `localrun ARGS` imported, run through main() in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", prelude + _PROBE, *args],
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
        env={**os.environ, **(env or {})},
    )
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


def _packages(modules: set[str], wanted: tuple[str, ...]) -> list[str]:
    return sorted({m.split(".")[0] for m in modules} & set(wanted))


@pytest.mark.parametrize(
    "args", [["--help"], ["list"], ["list", "--json"], ["env"], ["env", "--json"], ["ps"]]
)
def test_light_commands_import_no_heavy_package(args: list[str]) -> None:
    loaded = _loaded(args)
    assert _packages(loaded, HEAVY + UNUSED) == [], f"`localrun {' '.join(args)}` imported them"
    if args != ["--help"]:
        assert "rich" not in {m.split(".")[0] for m in loaded}, f"`localrun {args}` imported rich"


@pytest.mark.parametrize("args", [list(line) for line in main.PLAIN if line[0] not in VERSION])
def test_plain_command_lines_run_without_typer(args: list[str]) -> None:
    """(--version's, after its first run: test_version_reads_llama_cpp_once.)"""
    assert _packages(_loaded(args), ("typer", "rich", *UNUSED)) == []


_BOTH_WAYS = """
import contextlib, io, json, sys
from localrun.cli.app import app
from localrun.cli.main import main
out = {}
for way in ("plain", "typer"):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            if way == "plain":
                main(sys.argv[1:])
            else:
                app(args=sys.argv[1:], prog_name="localrun", standalone_mode=False)
        except (SystemExit, Exception):
            pass
    out[way] = buf.getvalue()
print(json.dumps(out))
"""


def test_plain_command_lines_print_what_typer_does(tiny_model: Path, home: Path) -> None:
    """Each command line main runs without typer prints what its typer command prints."""
    for name in ("first", "second"):
        modelfile = home.parent / f"Modelfile.{name}"
        modelfile.write_text(f"FROM {tiny_model}\nSYSTEM {name}\n")
        made = subprocess.run([sys.executable, "-m", "localrun", "create", name, "-f",
                               str(modelfile), "-q"], capture_output=True, text=True,
                              timeout=PATIENCE_S)  # fmt: skip
        assert made.returncode == 0, made.stderr
    for line in main.PLAIN:
        proc = subprocess.run([sys.executable, "-c", _BOTH_WAYS, *line], capture_output=True,
                              text=True, timeout=PATIENCE_S)  # fmt: skip
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["plain"] and out["plain"] == out["typer"], (line, out)
        if line[0] in ("list", "ls"):
            assert "first:latest" in out["plain"] and "second:latest" in out["plain"]


def test_help_lists_the_commands_without_loading_them() -> None:
    loaded = _loaded(["--help"])
    assert "typer.rich_utils" in loaded  # the help is rich's, as before
    assert not [m for m in loaded if m.startswith(NOT_FOR_HELP)]


def test_plain_help_stays_without_rich() -> None:
    """Help imports rich's modules only where typer would use them for it."""
    assert "rich" not in _packages(_loaded(["--help"], env={"TYPER_USE_RICH": "0"}), ("rich",))


def test_version_reads_llama_cpp_once(home: Path) -> None:
    """The first --version loads llama.cpp and records its facts; the next reads the record."""
    first = _loaded(["--version"])
    assert "llama_cpp" in first
    assert (home / "cache" / "llama-build.json").exists()
    again = _loaded(["--version"])
    assert _packages(again, HEAVY + UNUSED + ("rich", "typer")) == []


def test_version_prints_the_same_from_the_record(home: Path) -> None:
    def shown() -> str:
        proc = subprocess.run([sys.executable, "-m", "localrun", "--version"],
                              capture_output=True, text=True, timeout=PATIENCE_S)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    read = shown()
    assert (home / "cache" / "llama-build.json").exists()
    assert shown() == read
    assert read.splitlines()[1].startswith("llama.cpp: llama-cpp-python ")


def test_probe_detects_heavy_imports() -> None:
    """The probe itself works: a heavy module that is loaded is reported."""
    assert "gguf" in _packages(_loaded(["--help"], prelude="import gguf\n"), HEAVY)


# --version's record -----------------------------------------------------------------------


@pytest.fixture
def fake_lib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A llama.cpp lib folder of our own (LLAMA_CPP_LIB_PATH), so its files can change."""
    folder = tmp_path / "lib"
    folder.mkdir()
    (folder / "libllama.so").write_bytes(b"x" * 10)
    (folder / "libggml-cpu.so").write_bytes(b"y" * 10)
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(folder))
    for name in [n for n in os.environ if n.startswith("GGML_")]:
        monkeypatch.delenv(name)
    return folder


def test_record_is_read_back_under_the_same_key(fake_lib: Path) -> None:
    key = version._key()
    assert key is not None
    version._record(key, "1.2.3", ["CPU"])
    assert version._recorded(key) == ("1.2.3", ["CPU"])
    assert version.llama_build() == "llama-cpp-python 1.2.3, backends CPU, runtime built-in"


def test_record_is_not_read_once_the_library_changes(
    fake_lib: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = version._key()
    assert key is not None
    version._record(key, "1.2.3", ["CPU"])
    (fake_lib / "libllama.so").write_bytes(b"x" * 11)  # rebuilt
    assert version._key() != key and version._recorded(version._key() or []) is None
    (fake_lib / "libggml-cuda.so").write_bytes(b"z")  # a backend added beside it
    monkeypatch.setenv("GGML_CUDA_ENABLE_UNIFIED_MEMORY", "1")
    changed = version._key()
    assert changed is not None and version._recorded(changed) is None


def test_no_record_where_the_machine_decides(
    fake_lib: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU runtime installed, or a GPU backend: read from llama.cpp every time."""
    from localrun.runtimes import layout

    key = version._key()
    assert key is not None
    version._record(key, "1.2.3", ["CUDA", "CPU"])
    assert version._recorded(key) is None
    monkeypatch.setattr(layout, "installed", lambda: ["a runtime"])
    assert version._key() is None


def test_no_record_without_libllama(fake_lib: Path) -> None:
    (fake_lib / "libllama.so").unlink()
    assert version._key() is None


# typer, patched ---------------------------------------------------------------------------


def _invoke(command: Any, args: list[str]) -> dict[str, Any]:
    """Run a one-command typer app with `args`; what its function received."""
    got: dict[str, Any] = {}
    app = typer.Typer()
    app.command()(command(got))
    typer_patches.apply()
    with contextlib.suppress(typer.Exit):
        app(args=args, standalone_mode=False)
    return got


def _options(got: dict[str, Any]) -> Any:
    def command(
        name: str = typer.Argument(...),
        tag: str | None = typer.Option(None, "--tag"),
        param: list[str] = typer.Option([], "--param"),  # noqa: B008
        seed: int | None = typer.Option(None, "--seed"),
        path: Path | None = typer.Option(None, "--path"),  # noqa: B008
        flag: bool = typer.Option(False, "--flag"),
    ) -> None:
        got.update(name=name, tag=tag, param=param, seed=seed, path=path, flag=flag)

    return command


def test_values_that_need_no_conversion_are_taken_as_they_are() -> None:
    got = _invoke(_options, ["m", "--param", "a=1", "--param", "b=2"])
    assert got == {"name": "m", "tag": None, "param": ["a=1", "b=2"], "seed": None,
                   "path": None, "flag": False}  # fmt: skip
    assert type(got["param"]) is list


def test_other_values_are_still_converted_by_typer() -> None:
    got = _invoke(_options, ["m", "--seed", "7", "--path", "x/y", "--flag", "--tag", "t"])
    assert got["seed"] == 7 and got["path"] == Path("x/y") and got["flag"] is True
    assert got["tag"] == "t"
    with pytest.raises(typer.BadParameter):
        _invoke(_options, ["m", "--seed", "seven"])


def test_help_stand_ins_hand_over_to_rich() -> None:
    """typer.rich_utils imported without Markdown and Traceback still has them on use, and a
    later import of either module is the real one."""
    code = """
import sys
from localrun.cli import typer_patches
typer_patches.import_rich_help()
assert "rich.markdown" not in sys.modules and "rich.traceback" not in sys.modules
import typer.rich_utils as ru
import rich.markdown
assert type(ru.Markdown("# x")) is rich.markdown.Markdown
assert ru.Traceback.from_exception is not None
import rich.traceback
assert rich.traceback.Traceback.__module__ == "rich.traceback"
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=PATIENCE_S)  # fmt: skip
    assert proc.stdout.strip() == "ok", proc.stderr
