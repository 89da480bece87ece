"""Commands that only print must not import what they do not use (speed budget).

`localrun --help`, `list`, `env` and `ps` start without the heavy packages, without pydantic
(typer converts option values through it; cli/typer_patches spares the values that need no
converting) and, but for --help, without rich. No timings here: scripts/bench_startup.py measures
them.
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
from conftest import PATIENCE_S

from localrun.cli import typer_patches

HEAVY = ("llama_cpp", "fastapi", "uvicorn", "huggingface_hub", "modelscope", "gguf", "numpy")
# What the printing commands do without, besides HEAVY: typer's value conversion (pydantic),
# the server's and the templates' packages, and the help's Markdown and syntax highlighting.
UNUSED = ("pydantic", "httpx", "jinja2", "markdown_it", "pygments")
# Our own modules that --help, which only lists the commands, never needs.
NOT_FOR_HELP = ("localrun.store.models", "localrun.cli.session", "localrun.engine")

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


def test_help_lists_the_commands_without_loading_them() -> None:
    loaded = _loaded(["--help"])
    assert "typer.rich_utils" in loaded  # the help is rich's, as before
    assert not [m for m in loaded if m.startswith(NOT_FOR_HELP)]


def test_probe_detects_heavy_imports() -> None:
    """The probe itself works: a heavy module that is loaded is reported."""
    assert "gguf" in _packages(_loaded(["--help"], prelude="import gguf\n"), HEAVY)


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
