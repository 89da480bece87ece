"""The llama.cpp parameters localrun uses on this machine (localrun.engine.library.machine): the
setting and the rule for CPUs with AMX, `localrun info`'s row, and a check that every test,
script and benchmark anchor loads its models through them. What llama.cpp really loads under
them: tests/integration/engine/test_machine.py."""

from __future__ import annotations

import ast
import itertools
import json
import textwrap

import pytest

from localrun.engine.library import buildinfo, machine
from localrun.errors import ConfigError

from support import ROOT
from support.cli import CLI


def test_cpu_repack_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALRUN_CPU_REPACK", "off")
    params = machine.machine_params()
    assert params.repack is False and params.repack_reason == "LOCALRUN_CPU_REPACK=off"
    assert params.server_args() == ["--no-repack"] and params.bench_args() == ["--repack", "0"]
    monkeypatch.setenv("LOCALRUN_CPU_REPACK", "ON")
    params = machine.machine_params()
    assert params.repack is True and params.server_args() == params.bench_args() == []
    monkeypatch.setenv("LOCALRUN_CPU_REPACK", "maybe")
    with pytest.raises(ConfigError, match="LOCALRUN_CPU_REPACK"):
        machine.machine_params()


def _with_system_info(monkeypatch: pytest.MonkeyPatch, system_info: str) -> None:
    """The build's facts as llama.cpp would give them on another CPU."""
    real = buildinfo.build_info()
    fake = buildinfo.BuildInfo(real.version, real.gpu_offload, real.backends, system_info)
    monkeypatch.setattr(machine, "build_info", lambda: fake)


def test_auto_turns_repacking_off_on_a_cpu_with_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    from localrun.cli.commands.info import _repacking

    amx = "CPU : SSE3 = 1 | AVX512 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1"
    _with_system_info(monkeypatch, amx)
    params = machine.machine_params()
    assert params.amx and not params.repack and params.server_args() == ["--no-repack"]
    assert _repacking(params).startswith("off: this CPU has AMX, whose llama.cpp kernels crash")
    monkeypatch.setenv("LOCALRUN_CPU_REPACK", "on")  # the user's word wins, and info says so
    params = machine.machine_params()
    assert params.repack and _repacking(params).startswith("on: LOCALRUN_CPU_REPACK=on (this")
    monkeypatch.delenv("LOCALRUN_CPU_REPACK")
    _with_system_info(monkeypatch, amx.replace("AMX_INT8 = 1 | ", ""))
    params = machine.machine_params()
    assert not params.amx and params.repack and _repacking(params).startswith("on: llama.cpp")


def test_info_says_whether_weights_are_repacked(cli: CLI) -> None:
    shown = cli("info", env={"LOCALRUN_CPU_REPACK": "off"})
    assert shown.code == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.startswith("weight repacking"))
    assert "off: LOCALRUN_CPU_REPACK=off" in row, row
    data = json.loads(cli("info", "--json").stdout)
    params = machine.machine_params()
    assert data["amx"] is params.amx
    assert data["weight_repacking"] == {"on": params.repack, "why": params.repack_reason}


# -- every load in tests/ and scripts/ goes through machine_params ------------------------------

# llama.cpp's programs that load a model, and the MachineParams method giving their arguments.
PROGRAMS = {
    "llama-server": "server_args",
    "llama-cli": "server_args",
    "llama-mtmd-cli": "server_args",
    "llama-bench": "bench_args",
}
# The attributes of scripts/benchlib/build.Build that name those programs' paths.
PROGRAM_ATTRIBUTES = {"llama_bench": "bench_args", "llama_server": "server_args"}
LOADERS = {"llama_model_load_from_file": 1, "llama_load_model_from_file": 1}
LOADERS_FROM_SPLITS = {"llama_model_load_from_splits": 2}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _applies(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and _name(node.func) == "apply"


def violations(source: str, where: str) -> list[str]:
    """The places in a module's source that load a model with llama.cpp's defaults."""
    tree = ast.parse(source)
    found: list[str] = []
    # A property that names a program's path (benchlib.stacks.build.Build.llama_bench) starts
    # nothing.
    for prop in ast.walk(tree):
        if isinstance(prop, ast.FunctionDef) and "property" in map(_name, prop.decorator_list):
            prop.body = []
    called = {_name(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    applied = {  # names assigned from MachineParams.apply(...)
        target.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign) and _applies(n.value)
        for target in n.targets
        if isinstance(target, ast.Name)
    }
    for node in ast.walk(tree):
        at = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call):
            name = _name(node.func)
            if name == "Llama":
                found.append(f"{at}: llama_cpp.Llama(...) without machine_params().llama")
            index = {**LOADERS, **LOADERS_FROM_SPLITS}.get(name)
            if index is not None:
                params = node.args[index] if len(node.args) > index else None
                ok = params is not None and (
                    _applies(params) or (isinstance(params, ast.Name) and params.id in applied)
                )
                if not ok:
                    found.append(f"{at}: {name} without machine_params().apply")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            program = node.right.value if isinstance(node.right, ast.Constant) else None
            if program in PROGRAMS and PROGRAMS[program] not in called:
                found.append(f"{at}: {program} without {PROGRAMS[program]}()")
        attr = node.attr if isinstance(node, ast.Attribute) else None
        if attr in PROGRAM_ATTRIBUTES and PROGRAM_ATTRIBUTES[attr] not in called:
            found.append(f"{at}: {attr} without {PROGRAM_ATTRIBUTES[attr]}()")
        if isinstance(node, ast.List):  # [python, "-m", "llama_cpp.server", ...]
            items = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            if any(a == "-m" and b == "llama_cpp.server" for a, b in itertools.pairwise(items)):
                found.append(
                    f"{at}: python -m llama_cpp.server (use benchlib/stacks/llama_cpp_server.py)"
                )
    return found


def test_the_check_finds_every_default_load() -> None:
    """The check itself: each way of loading with llama.cpp's defaults is found, and the ways
    through machine_params are not."""
    bad = textwrap.dedent(
        """
        import llama_cpp
        from llama_cpp import Llama
        a = llama_cpp.Llama("m.gguf")
        b = Llama(model_path="m.gguf")
        mp = llama_cpp.llama_model_default_params()
        c = llama_cpp.llama_model_load_from_file(b"m.gguf", mp)
        d = lc.llama_model_load_from_splits(paths, 2, lc.llama_model_default_params())
        cmd = [str(build / "bin" / "llama-server"), "-m", "m.gguf"]
        bench = [str(build.llama_bench), "-m", "m.gguf"]
        py = [sys.executable, "-m", "llama_cpp.server", "--model", "m.gguf"]
        """
    )
    assert len(violations(bad, "bad.py")) == 7, violations(bad, "bad.py")
    good = textwrap.dedent(
        """
        from localrun.engine.library.machine import machine_params
        a = machine_params().llama("m.gguf", n_ctx=64)
        mp = machine_params().apply(lc.llama_model_default_params())
        c = lc.llama_model_load_from_file(b"m.gguf", mp)
        d = lc.llama_model_load_from_splits(paths, 2, machine_params().apply(defaults()))
        cmd = [str(build / "bin" / "llama-server"), "-m", "m.gguf", *server_args()]
        bench = [str(build.llama_bench), "-m", "m.gguf", *bench_args()]
        """
    )
    assert violations(good, "good.py") == []


def test_every_model_load_uses_the_machines_parameters() -> None:
    """No file under tests/, scripts/ or localrun/ loads a model through llama-cpp-python or
    starts a llama.cpp program with llama.cpp's defaults (on a CPU with AMX they crash)."""
    files = [
        path
        for folder in ("tests", "scripts", "localrun")
        for path in sorted((ROOT / folder).rglob("*.py"))
    ]
    assert len(files) > 100
    found = [
        v
        for p in files
        if p
        != ROOT
        / "localrun"
        / "engine"
        / "library"
        / "machine.py"  # where the parameters are applied
        for v in violations(p.read_text(), str(p.relative_to(ROOT)))
    ]
    assert found == []
