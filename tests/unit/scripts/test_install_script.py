"""scripts/install.py, README's first command's install: pip's lines read into progress that
moves, pip's whole output kept in a log, a failure shown by its last lines and exit status. pip
runs for real here, on a wheel made by the test and no index (the unit tier opens no socket)."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from contextlib import redirect_stdout
from pathlib import Path

import install

from support import PATIENCE_S, ROOT

PIP_LINES = """\
Collecting numpy>=1.20.0 (from llama-cpp-python)
  Downloading numpy-2.3.5-cp311-cp311-manylinux_2_27_x86_64.whl (16.9 MB)
Building wheels for collected packages: llama-cpp-python
  Building wheel for llama-cpp-python (pyproject.toml): started
  -- localrun: the exact runtime's patches applied to ggml-cpu
  [36/137] Building CXX object vendor/llama.cpp/src/CMakeFiles/llama.dir/llama-grammar.cpp.o
  [37/137] /usr/bin/g++ -O3 -MD -o ggml/src/CMakeFiles/ggml-cpu.dir/ops.cpp.o -c ops.cpp
"""


def test_pip_s_lines_move_the_progress_and_finished_steps_stay() -> None:
    """Each compiled target names itself ([37/137] ops.cpp), whether ninja prints its command or
    its description; the patch step and the finished compile stay as lines."""
    progress = install.Progress(tty=False)
    out = io.StringIO()
    with redirect_stdout(out):
        for line in PIP_LINES.splitlines():
            install.read(line, progress)
        assert progress.step == "compiling llama.cpp"
        assert progress.detail == "[37/137] ops.cpp"
        install.read("  [36/137] Building CXX object src/llama-grammar.cpp.o", progress)
        assert progress.detail == "[36/137] llama-grammar.cpp"
        install.read("  Created wheel for llama_cpp_python: filename=x.whl size=1", progress)
        install.read("Installing collected packages: numpy, llama-cpp-python, localrun", progress)
        assert (progress.step, progress.detail) == ("installing", "3 packages")
    lines = out.getvalue().splitlines()
    assert lines[0] == "llama.cpp's CPU library: built as the exact runtime (compiled once)"
    assert lines[1].startswith("compiled llama.cpp: 137 targets in ")
    assert lines[2] == "built llama_cpp_python"


def test_a_quiet_pip_still_gets_a_line_every_ten_seconds_off_a_terminal() -> None:
    progress = install.Progress(tty=False)
    out = io.StringIO()
    with redirect_stdout(out):
        progress.set("installing", "40 packages")
        progress.show()  # just said: nothing yet
        progress.said -= install.QUIET_LINE_S
        progress.show()
    assert out.getvalue().startswith("installing (0 s): 40 packages")


def test_the_environment_adds_exact_cmake_after_the_user_s_cmake_args() -> None:
    include = (ROOT / "localrun" / "runtimes" / "exact.cmake").as_posix()
    env = install.environment({"CMAKE_ARGS": "-DGGML_CUDA=on", "PATH": "/bin"})
    assert env == {
        "CMAKE_ARGS": f"-DGGML_CUDA=on -DCMAKE_PROJECT_INCLUDE={include}",
        "PATH": "/bin",
    }
    plain = install.environment({}, exact=False)["CMAKE_ARGS"]
    assert plain == f"-DCMAKE_PROJECT_INCLUDE={include} -DLOCALRUN_EXACT=OFF"


def _wheel(folder: Path) -> Path:
    path = folder / "tinypkg-1.0-py3-none-any.whl"
    info = "tinypkg-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("tinypkg/__init__.py", "ANSWER = 42\n")
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n")
        wheel.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(f"{info}/RECORD", "")
    return path


def _install(tmp_path: Path, *pip_args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "install.py"),
            "--log",
            str(tmp_path / "pip.log"),
            "--",
            "--no-index",
            "--no-deps",
            "--target",
            str(tmp_path / "target"),
            *pip_args,
        ],
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )


def test_pip_installs_and_its_whole_output_is_in_the_log(tmp_path: Path) -> None:
    done = _install(tmp_path, str(_wheel(tmp_path)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "target" / "tinypkg" / "__init__.py").is_file()
    assert "Successfully installed tinypkg-1.0" in (tmp_path / "pip.log").read_text()
    assert "installed 1 packages" in done.stdout and "localrun installed in" in done.stdout
    assert done.stderr == ""


def test_a_failed_pip_shows_its_last_lines_the_log_and_its_exit_status(tmp_path: Path) -> None:
    done = _install(tmp_path, str(tmp_path / "missing-1.0-py3-none-any.whl"))
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"pip failed (exit {done.returncode}); its whole output: {tmp_path / 'pip.log'}"
    assert "missing-1.0" in done.stderr  # pip's own last lines (with -v, its traceback too)
