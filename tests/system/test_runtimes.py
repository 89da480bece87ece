"""GPU runtimes (`localrun runtime`): built for real, loaded into the stock CPU llama.cpp.

The Vulkan runtime is built from llama-cpp-python's own source and run on Mesa's software
Vulkan device (lavapipe), which ggml skips unless GGML_VK_VISIBLE_DEVICES names it: every layer
on that device, the same answers on every run, and the CPU's answer up to its first near tie
(Vulkan rounds differently). Lavapipe is slower than the CPU: correctness only, never speed.
Without the Vulkan toolchain (scripts/system-deps installs it where it may) those tests skip;
what needs no build (selection, damaged and mismatched runtimes, the CUDA architecture list)
is in tests/unit/runtimes/test_runtimes.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localrun.errors import ToolchainError
from localrun.runtimes import toolchain
from localrun.runtimes.source import bindings_version

from support import PATIENCE_S
from support.cli import CLI, localrun_env
from support.runtimes import LAVAPIPE, builds_folder, vulkan_ready

VERSION = bindings_version()


def info(cli: CLI, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = cli("info", "--json", env=env)
    assert result.code == 0, result
    return json.loads(result.stdout)["llama_cpp"]  # type: ignore[no-any-return]


# -- no build needed ----------------------------------------------------------------------------


# -- the Vulkan runtime, built for real ----------------------------------------------------------


class Built:
    def __init__(self, home: Path, name: str) -> None:
        self.home = home
        self.name = name
        self.env = {"LOCALRUN_HOME": str(home), **LAVAPIPE}


@pytest.fixture(scope="session")
def vulkan(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Built]:
    missing = vulkan_ready()
    if missing:
        pytest.skip(f"no Vulkan toolchain: {missing}")
    home = tmp_path_factory.mktemp("vulkan-home")
    env = localrun_env(
        LOCALRUN_HOME=str(home), LOCALRUN_RUNTIME_BUILDS=str(builds_folder()), **LAVAPIPE
    )
    done = subprocess.run(
        [sys.executable, "-m", "localrun", "runtime", "install", "vulkan", "--keep-build"],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    mf = home / "Modelfile"
    mf.write_text(f"FROM {tiny_model}\n")
    subprocess.run(
        [sys.executable, "-m", "localrun", "create", "tiny", "-f", str(mf)],
        env=env,
        check=True,
        capture_output=True,
    )
    yield Built(home, f"vulkan-{VERSION}")


@pytest.mark.slow
@pytest.mark.model
def test_vulkan_runtime_is_listed_and_named(cli: CLI, vulkan: Built) -> None:
    listed = json.loads(cli("runtime", "list", "--json", env=vulkan.env).stdout)
    [runtime] = listed["runtimes"]
    assert runtime["name"] == vulkan.name and runtime["llama_cpp_version"] == VERSION
    assert runtime["size"] > 1_000_000 and "glslc" in runtime["toolchain"]
    built = info(cli, vulkan.env)
    assert built["runtime"] == vulkan.name and "Vulkan" in built["backends"]
    assert built["gpu_offload"] is True
    assert any("llvmpipe" in d["description"] for d in built["gpu_devices"])
    version = cli("--version", env=vulkan.env)
    assert f"runtime {vulkan.name}" in version.stdout and "llvmpipe" in version.stdout
    fit = cli("show", "tiny", "--fit", env=vulkan.env)
    assert vulkan.name in fit.stdout and "llvmpipe" in fit.stdout
    # The CPU, when asked for, whatever is installed.
    assert info(cli, {**vulkan.env, "LOCALRUN_RUNTIME": "cpu"})["runtime"] == "built-in"


@pytest.mark.slow
def test_the_registry_read_is_libllamas_under_llama_cpp_lib_path(
    cli: CLI, vulkan: Built, tmp_path: Path
) -> None:
    # llama_cpp loads libllama from LLAMA_CPP_LIB_PATH but its own _ggml from the package: the
    # backends and devices must be read from the ggml libllama uses, where the runtime went.
    import llama_cpp

    lib = tmp_path / "lib"
    shutil.copytree(Path(llama_cpp.__file__).parent / "lib", lib)
    built = info(cli, {**vulkan.env, "LLAMA_CPP_LIB_PATH": str(lib)})
    assert built["runtime"] == vulkan.name and built["gpu_offload"] is True
    assert "Vulkan" in built["backends"], built


def _answer(cli: CLI, env: dict[str, str], model: str, prompt: str, n: int) -> tuple[str, str]:
    result = cli(
        "run", model, prompt, "--verbose", "--param", "temperature=0", "--param",
        f"num_predict={n}", env=env,
    )  # fmt: skip
    assert result.code == 0, result.stderr[-2000:]
    return result.stdout.strip(), result.stderr


@pytest.mark.slow
@pytest.mark.model
def test_localrun_run_puts_every_layer_on_the_vulkan_device(cli: CLI, vulkan: Built) -> None:
    first, log = _answer(cli, vulkan.env, "tiny", "The capital of France is", 8)
    assert "llvmpipe" in log and "loaded Vulkan backend" in log
    assert "layers fit on GPU" in log, log[-1500:]
    assert first
    _, cpu_log = _answer(cli, {**vulkan.env, "LOCALRUN_RUNTIME": "cpu"}, "tiny", "Hi", 4)
    assert "llvmpipe" not in cpu_log and "on the CPU" in cpu_log


class Serve:
    """`localrun serve --port 0` with the Vulkan test home, on a runtime (or the CPU)."""

    def __init__(self, built: Built, runtime: str) -> None:
        env = localrun_env(**built.env, LOCALRUN_RUNTIME=runtime)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localrun", "serve", "--port", "0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        assert "http://" in first, first
        self.host = first.rsplit("http://", 1)[1].strip()
        self.env = {**built.env, "LOCALRUN_HOST": self.host}

    def greedy(self, model: str, prompt: str, n: int) -> list[tuple[str, float]]:
        """The greedy tokens of `prompt`, each with its margin over the runner-up (logprob)."""
        import openai

        ai = openai.OpenAI(
            base_url=f"http://{self.host}/v1", api_key="-", max_retries=0, timeout=PATIENCE_S
        )
        done = ai.completions.create(
            model=model, prompt=prompt, max_tokens=n, temperature=0, logprobs=2
        )
        lp = done.choices[0].logprobs
        assert lp is not None and lp.tokens and lp.top_logprobs
        out = []
        for token, top in zip(lp.tokens, lp.top_logprobs, strict=True):
            ranked = sorted(top.values(), reverse=True)
            out.append((token, ranked[0] - ranked[1] if len(ranked) > 1 else 99.0))
        return out

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=PATIENCE_S)


@pytest.mark.slow
@pytest.mark.model
@pytest.mark.server
@pytest.mark.parametrize("model", ["tiny", "smollm2:135m"])
def test_vulkan_answers_are_stable_and_the_cpus_up_to_a_near_tie(
    cli: CLI, vulkan: Built, model: str
) -> None:
    prompt = "The capital of France is"
    on_gpu, on_cpu = Serve(vulkan, vulkan.name), Serve(vulkan, "cpu")
    try:
        first = on_gpu.greedy(model, prompt, 12)
        # The same tokens on every run (the logprobs move in the fourth decimal: the second
        # run reuses the cached prompt, evaluated in batches of another shape).
        again = on_gpu.greedy(model, prompt, 12)
        assert [t for t, _ in again] == [t for t, _ in first]
        cpu = on_cpu.greedy(model, prompt, 12)
        # Vulkan rounds differently: equal tokens while both margins are wide.
        for (token, margin), (cpu_token, cpu_margin) in zip(first, cpu, strict=False):
            if min(margin, cpu_margin) < 0.5:
                break
            assert token == cpu_token, (first, cpu)
        assert first[0][0] == cpu[0][0] or min(first[0][1], cpu[0][1]) < 0.5
        ps = json.loads(cli("ps", "--json", env=on_gpu.env).stdout)
        [entry] = ps
        assert entry["runtime"] == vulkan.name
        assert any("llvmpipe" in d for d in entry["devices"])
        assert entry["processor"] == "100% GPU" and entry["size_vram"] > 0
        table = cli("ps", env=on_gpu.env).stdout
        assert vulkan.name in table and "100% GPU" in table
        cpu_ps = json.loads(cli("ps", "--json", env=on_cpu.env).stdout)
        assert cpu_ps[0]["processor"] == "100% CPU"
    finally:
        on_gpu.close()
        on_cpu.close()


@pytest.mark.slow
def test_an_interrupted_install_leaves_the_selection_working(
    cli: CLI, vulkan: Built, tmp_path: Path
) -> None:
    cli("runtime", "select", vulkan.name, env=vulkan.env)
    # A fresh build folder: the install has minutes of work ahead when it is stopped.
    env = localrun_env(**vulkan.env, LOCALRUN_RUNTIME_BUILDS=str(tmp_path / "builds"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "localrun", "runtime", "install", "vulkan"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + PATIENCE_S
    seen = ""
    while "configure" not in seen and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode != 0 and "Traceback" not in seen + rest, seen + rest
    listed = json.loads(cli("runtime", "list", "--json", env=vulkan.env).stdout)
    assert [r["name"] for r in listed["runtimes"]] == [vulkan.name]
    assert listed["selected"] == vulkan.name
    assert info(cli, vulkan.env)["runtime"] == vulkan.name
    staging = [p.name for p in (vulkan.home / "runtimes").iterdir() if p.name.startswith(".tmp")]
    assert staging == []
    # The interrupted build is kept, to resume (and its log to read).
    assert (tmp_path / "builds" / vulkan.name / "build.log").is_file()
    shutil.rmtree(tmp_path / "builds", ignore_errors=True)


# -- CUDA from PyPI wheels (no GPU needed) ---------------------------------------------------


@pytest.fixture(scope="session")
def cuda_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A LOCALRUN_HOME whose CUDA toolkit comes from PyPI's wheels (installed once a run)."""
    home = tmp_path_factory.mktemp("cuda-home")
    saved = os.environ.get("LOCALRUN_HOME")
    os.environ["LOCALRUN_HOME"] = str(home)
    try:
        try:
            toolchain.wheel_toolkit(lambda _: None)
        except ToolchainError as exc:
            if "could not install" in exc.message:
                pytest.skip(f"PyPI's CUDA wheels cannot be installed here: {exc.message}")
            raise
    finally:
        if saved is None:
            os.environ.pop("LOCALRUN_HOME", None)
        else:
            os.environ["LOCALRUN_HOME"] = saved
    yield home


@pytest.mark.slow
def test_cuda_toolchain_from_pypi_wheels_compiles_and_configures(
    cuda_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localrun.runtimes import build

    monkeypatch.setenv("LOCALRUN_HOME", str(cuda_home))
    # Configured, never compiled: nothing of it is worth keeping between runs.
    monkeypatch.setenv("LOCALRUN_RUNTIME_BUILDS", str(tmp_path / "builds"))
    tools = toolchain.cuda(["90"], use_system=False)
    assert "PyPI wheels" in tools.description and tools.description.startswith("nvcc 13.")
    toolkit = Path(tools.env["CUDA_HOME"])
    for link in ("libcudart.so", "libcublas.so", "libcublasLt.so", "stubs/libcuda.so"):
        assert (toolkit / "lib" / link).exists(), link
    # A CUDA source file compiles with the wheels' nvcc, on a machine with no GPU.
    kernel = tmp_path / "add.cu"
    kernel.write_text(
        "__global__ void add(float *a, const float *b, int n) {\n"
        "  int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) a[i] += b[i];\n}\n"
    )
    out = tmp_path / "add.o"
    done = subprocess.run(
        [str(toolkit / "bin" / "nvcc"), "-arch=sm_90", "-c", str(kernel), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )
    assert done.returncode == 0 and out.stat().st_size > 0, done.stderr
    # ggml-cuda configures against them: cmake finds the compiler, cudart and cuBLAS.
    plan = build.Plan("cuda", f"cuda-{VERSION}-sm90", ("sm90",), tools, VERSION)
    folder = build.configure(plan, say=lambda _: None)
    cache = (folder / "CMakeCache.txt").read_text()
    assert "GGML_CUDA:BOOL=ON" in cache
    assert re.search(rf"^CMAKE_CUDA_COMPILER:\w+={re.escape(str(toolkit))}/bin/nvcc$", cache, re.M)
    assert re.search(r"^CMAKE_CUDA_ARCHITECTURES:\w+=90$", cache, re.M)
    assert f"CUDA_cublas_LIBRARY:FILEPATH={toolkit / 'lib' / 'libcublas.so'}" in cache
