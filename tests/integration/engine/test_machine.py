"""What llama.cpp really loads under the machine's parameters (localrun.engine.library.machine): the
engine's runner and llama-cpp-python's Llama alike, read from llama.cpp's own log (a repacked
model has a "CPU_REPACK model buffer", one loaded without repacking has none)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localrun.engine.library import buildinfo, machine

from support import PATIENCE_S
from support.cli import CLI

# What llama.cpp logs while it loads a model whose weights it repacked for the CPU's kernels.
REPACKED = "CPU_REPACK model buffer"


@pytest.fixture(scope="module")
def q4_model(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """The tiny model in Q4_0, whose weights llama.cpp repacks on x86 and ARM CPUs."""
    from localrun.engine.library import quantize

    out = tmp_path_factory.mktemp("machine") / "tiny-q4_0.gguf"
    quantize.quantize(tiny_model, out, "q4_0")
    return out


def _repacks_here() -> bool:
    """Whether this CPU may repack at all without crashing (no AMX) and llama.cpp would."""
    info = buildinfo.build_info().system_info
    return buildinfo.AMX not in info and "REPACK = 1" in info


@pytest.mark.model
def test_the_engine_loads_with_the_machines_parameters(cli: CLI, q4_model: Path) -> None:
    """`localrun run` (the engine in its runner) under the AMX decision: no repacked buffer;
    under llama.cpp's default on a CPU without AMX: one."""
    assert cli("create", "q4", "-f", "-", input=f"FROM {q4_model}\n").code == 0
    modes = ["off", "auto"] if _repacks_here() else ["off"]
    for mode in modes:
        env = {"LOCALRUN_CPU_REPACK": mode, "LOCALRUN_DEBUG": "1"}
        done = cli("run", "q4", "Hello", "-p", "num_predict=2", env=env)
        assert done.code == 0, done.stderr[-2000:]
        assert "load_tensors" in done.stderr, done.stderr[-2000:]  # llama.cpp's log is there
        assert (REPACKED in done.stderr) is (mode != "off"), (mode, done.stderr[-2000:])


_LOAD = """
import json, os, sys
from localrun.engine.library.machine import machine_params
llm = machine_params().llama(sys.argv[1], n_ctx=64, verbose=True)
assert llm.create_completion("Hello", max_tokens=2)["choices"]
print(json.dumps([bool(llm.model_params.use_extra_bufts), llm.n_threads]))
"""


@pytest.mark.model
def test_llama_cpp_python_loads_with_the_machines_parameters(q4_model: Path) -> None:
    """A test's or a script's llama_cpp.Llama through machine_params().llama: llama-cpp-python
    takes no argument for repacking, and still loads without it under the AMX decision."""
    modes = ["off", "auto"] if _repacks_here() else ["off"]
    for mode in modes:
        done = subprocess.run(
            [sys.executable, "-c", _LOAD, str(q4_model)],
            capture_output=True, text=True, timeout=PATIENCE_S,
            env={**os.environ, "LOCALRUN_CPU_REPACK": mode},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        repack, threads = json.loads(done.stdout.splitlines()[-1])
        assert repack is (mode != "off")
        assert (REPACKED in done.stderr) is (mode != "off"), (mode, done.stderr[-2000:])
        assert threads == machine.machine_params().threads
