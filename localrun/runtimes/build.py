"""Build a runtime: source, toolchain, configure, compile, check, install; resumable and atomic.

The build folder (LOCALRUN_RUNTIME_BUILDS/<name>: the unpacked source, the objects, build.log)
survives an interrupted or failed install, so running the install again continues where it
stopped (cmake rebuilds only what is missing) and the log stays to be read; a successful install
removes it (some 225 MB for the exact runtime, 420 MB for Vulkan), unless asked to keep it
(`keep`: installing the same runtime again then compiles nothing). The runtime appears in
LOCALRUN_HOME/runtimes only once its module was built and loaded by a check process, moved into
place whole; the selection is never touched by a failed install.

Only the backend module is compiled (`--target ggml-vulkan`), with GGML_BACKEND_DL so that it
exports ggml_backend_init, and no rpath: it loads into the ggml that llama-cpp-python already
has, whose libggml-base it shares by soname.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from localrun.errors import RuntimeBuildError
from localrun.host import locks, private
from localrun.runtimes import exact, layout, patchset, rpc, source, toolchain
from localrun.runtimes.layout import Runtime
from localrun.settings import config
from localrun.store.blobs import hash_file, os_error

Progress = Callable[[str, int, int], None]
"""Called with (stage, steps done, steps in all); 0 in all while a stage cannot count."""

STAGES = ("source", "toolchain", "configure", "compile", "check", "install")
MODULES = {
    "vulkan": "ggml-vulkan",
    "cuda": "ggml-cuda",
    exact.BACKEND: exact.TARGET,
    rpc.BACKEND: rpc.TARGET,
}

BASE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_BACKEND_DL=ON",
    "-DGGML_NATIVE=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DCMAKE_SKIP_RPATH=ON",
)


@dataclass(frozen=True)
class Plan:
    backend: str
    name: str
    targets: tuple[str, ...]
    tools: toolchain.Toolchain
    version: str


def plan(backend: str, *, arch: str | None = None, say: Callable[[str], None]) -> Plan:
    """What `install BACKEND` would build: its name, targets and toolchain (checked)."""
    version = source.bindings_version()
    if backend == exact.BACKEND:
        if sys.platform != "linux":
            # Loaded ahead of llama.cpp's own CPU library by Linux's dynamic linker
            # (exact.preload); macOS' and Windows' loaders take another way, not built yet.
            raise RuntimeBuildError(
                "the exact runtime is built and loaded on Linux only; here answers are the "
                "installed llama.cpp's",
                hint="`localrun help platforms` says what each system has",
            )
        return Plan(
            exact.BACKEND, layout.runtime_name(exact.BACKEND, version), (), toolchain.cpu(), version
        )
    if backend == rpc.BACKEND:
        name = layout.runtime_name(rpc.BACKEND, version)
        return Plan(rpc.BACKEND, name, (), toolchain.rpc(), version)
    if backend == "vulkan":
        return Plan(
            "vulkan", layout.runtime_name("vulkan", version), (), toolchain.vulkan(), version
        )
    from localrun.hardware import system

    detected = [g.compute or "" for g in system.probe_cuda()]
    archs = toolchain.cuda_architectures(arch, detected)
    targets = tuple(f"sm{a}" for a in archs)
    tools = toolchain.cuda(archs, say=say)
    return Plan("cuda", layout.runtime_name("cuda", version, targets), targets, tools, version)


@contextlib.contextmanager
def _locked(work: Path) -> Iterator[None]:
    try:
        config.make_dirs(work)
        fd = os.open(work / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise os_error(exc, f"could not write to {work}") from None
    try:
        if not locks.try_lock(fd):
            raise RuntimeBuildError(
                f"another install of {work.name} is running",
                hint="wait for it to finish (or stop it) and try again",
            )
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Installed:
    runtime: Runtime
    devices: list[str]  # what the check process saw it register ("Vulkan0 (...)")


def install(
    p: Plan,
    *,
    jobs: int | None,
    progress: Progress,
    say: Callable[[str], None],
    keep: bool = False,
) -> Installed:
    """Build `p` and install it, then remove its build folder unless `keep`.

    When a step fails, RuntimeBuildError names the log, kept with the folder.
    """
    work = config.runtime_builds() / p.name
    started = time.monotonic()
    with _locked(work):
        src, build, log = _configured(p, work, progress, say)
        progress("compile", 0, 0)
        target = MODULES[p.backend]
        _compile(p, build, target, jobs, log, progress)
        module = _find_module(build, target)
        progress("check", 0, 0)
        staged = layout.staging_folder()
        try:
            try:
                shutil.copy2(module, staged / module.name)
            except OSError as exc:
                raise os_error(exc, f"could not copy the runtime into {staged.parent}") from None
            if p.backend == exact.BACKEND:
                devices = check_exact(staged / module.name, log)
            else:
                devices = check_loads(staged / module.name, p.tools.library_path, log)
            st = (staged / module.name).stat()
            runtime = Runtime(
                name=p.name,
                backend=p.backend,
                llama_cpp_version=p.version,
                ggml_version=src.ggml_version,
                toolchain=p.tools.description,
                module=module.name,
                sha256=hash_file(staged / module.name),
                size=layout.folder_size(staged),
                targets=p.targets,
                library_path=p.tools.library_path,
                built_at=time.time(),
                build_seconds=round(time.monotonic() - started, 1),
                stamp=(st.st_size, st.st_mtime_ns),
                cpu=patchset.cpu_identity() if p.backend == exact.BACKEND else "",
            )
            progress("install", 0, 0)
            installed = layout.install_folder(staged, runtime)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    if not keep:
        with contextlib.suppress(OSError):
            work.parent.rmdir()  # the last build of the folder: nothing in progress is left
    return Installed(installed, devices)


def configure(p: Plan, *, say: Callable[[str], None]) -> Path:
    """Only the source and configure steps of an install (its build folder is returned)."""
    work = config.runtime_builds() / p.name
    with _locked(work):
        _, build, _ = _configured(p, work, lambda *_: None, say)
    return build


def prepared(p: Plan, work: Path, say: Callable[[str], None]) -> source.Source:
    """The source of `p`, patched for its backend.

    A tree unpacked before and patched otherwise (the exact runtime of another localrun) is
    unpacked afresh once, and patched again.
    """
    src = source.prepare(p.version, work, say)
    patch_source(src.tree)
    if p.backend != exact.BACKEND:
        return src
    try:
        patchset.patch_source(src.tree)
    except RuntimeBuildError:
        source.discard(work)
        src = source.prepare(p.version, work, say)
        patch_source(src.tree)
        patchset.patch_source(src.tree)
    return src


def _configured(
    p: Plan, work: Path, progress: Progress, say: Callable[[str], None]
) -> tuple[source.Source, Path, Path]:
    progress("source", 0, 0)
    src = prepared(p, work, say)
    log = work / "build.log"
    build = work / "build"
    progress("configure", 0, 0)
    _configure(p, src.tree, build, log)
    return src, build, log


def patch_source(tree: Path) -> None:
    """Let ggml-vulkan build against Vulkan headers older than VK_EXT_layer_settings.

    Debian 12 ships 1.3.239. The validation-layer settings are used only where the headers have
    them. Idempotent; a source without the block is left as it is.
    """
    path = tree / "ggml" / "src" / "ggml-vulkan" / "ggml-vulkan.cpp"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return
    if "#ifdef VK_EXT_layer_settings\n    VkBool32 enable_best_practice" in text:
        return
    start = text.find("    VkBool32 enable_best_practice = layer_settings;")
    tail = "&layer_setting_info);\n"
    end = text.find(tail, start)
    if start < 0 or end < 0:
        return
    end += len(tail)
    plain = (
        "    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, "
        "layers, extensions);\n"
    )
    guarded = "#ifdef VK_EXT_layer_settings\n" + text[start:end] + "#else\n" + plain + "#endif\n"
    patchset.rewrite(path, text[:start] + guarded + text[end:])


@contextlib.contextmanager
def _appending(log: Path) -> Iterator[TextIO]:
    """The build's log, opened to append as localrun's private files are (private.open_log).

    A link planted in its place is refused, never followed (issue 76).
    """
    try:
        raw = private.open_log(log)
    except OSError as exc:
        raise RuntimeBuildError(
            f"cannot write the build's log {log} ({exc.strerror or exc})",
            hint=f"remove {log} (a link or another file is in its place) and install again",
        ) from None
    with io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as out:
        yield out


def _run_logged(
    argv: list[str], log: Path, env: dict[str, str], on_line: Callable[[str], None]
) -> int:
    with _appending(log) as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        try:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                text=True,
                errors="replace",
            )
        except OSError as exc:
            raise RuntimeBuildError(
                f"could not run {argv[0]} ({exc.strerror or exc})", hint="check the toolchain"
            ) from None
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                out.write(line)
                on_line(line)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return proc.wait()


def _failed(step: str, log: Path) -> RuntimeBuildError:
    last = ""
    with contextlib.suppress(OSError):
        lines = [x for x in log.read_text(errors="replace").splitlines() if "error" in x.lower()]
        last = lines[-1].strip()[:160] if lines else ""
    detail = f": {last}" if last else ""
    return RuntimeBuildError(
        f"the runtime's {step} failed{detail} (log: {log})",
        hint="fix what the log names and run the install again (it resumes: the build folder "
        "is kept until an install succeeds)",
    )


def _configure(p: Plan, tree: Path, build: Path, log: Path) -> None:
    args = [*BASE_ARGS, *p.tools.cmake_args]
    stamp = build / "localrun-configure.json"
    wanted = json.dumps({"args": args, "tree": str(tree), "generator": p.tools.generator})
    if (build / "CMakeCache.txt").is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    argv = [p.tools.cmake, "-S", str(tree), "-B", str(build), *args]
    if p.tools.generator:
        argv += ["-G", p.tools.generator]
    if _run_logged(argv, log, p.tools.env, lambda _: None) != 0:
        raise _failed("configure", log)
    stamp.write_text(wanted)


STEP = re.compile(r"^\[\s*(\d+)\s*/\s*(\d+)\s*\]")  # ninja: [12/334]
PERCENT = re.compile(r"^\[\s*(\d+)%\]")  # make: [ 45%]


def _compile(
    p: Plan, build: Path, target: str, jobs: int | None, log: Path, progress: Progress
) -> None:
    argv = [p.tools.cmake, "--build", str(build), "--target", target]
    argv += ["-j", str(jobs or os.cpu_count() or 1)]

    def on_line(line: str) -> None:
        if m := STEP.match(line):
            progress("compile", int(m.group(1)), int(m.group(2)))
        elif m := PERCENT.match(line):
            progress("compile", int(m.group(1)), 100)

    if _run_logged(argv, log, p.tools.env, on_line) != 0:
        raise _failed("compile", log)


def _find_module(build: Path, target: str) -> Path:
    file = layout.module_file(target)
    # bin/ (make, ninja), bin/Release/ (Visual Studio's generators build a configuration each)
    for candidate in (build / "bin" / file, build / "lib" / file, build / "bin" / "Release" / file):
        if candidate.is_file():
            return candidate
    found = sorted(build.rglob(file))
    if not found:
        raise RuntimeBuildError(
            f"the build made no {file} (log: {build.parent / 'build.log'})",
            hint="run the install again; if it repeats, report it with the log",
        )
    return found[0]


def check_loads(module: Path, library_path: tuple[str, ...], log: Path) -> list[str]:
    """Load `module` into a fresh process's llama.cpp and return the devices it registered.

    A crash there cannot touch this process. RuntimeBuildError when it does not load.
    """
    from localrun.host import selfexec

    argv = selfexec.command("localrun.engine.library.backend_check", str(module), *library_path)
    return _checked(argv, module, log)


def check_exact(module: Path, log: Path) -> list[str]:
    """check_loads for the exact runtime's CPU library: loaded in place of the installed one."""
    from localrun.host import selfexec

    argv = selfexec.command("localrun.engine.library.backend_check", "--exact", str(module))
    return _checked(argv, module, log)


def _checked(argv: list[str], module: Path, log: Path) -> list[str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeBuildError(
            f"the built runtime could not be checked ({exc})", hint=f"see {log}"
        ) from None
    with _appending(log) as out:
        out.write(f"\n$ check {module}\n{done.stdout}{done.stderr}")
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        answer = {"error": f"the check process ended with status {done.returncode}"}
    if answer.get("error"):
        raise RuntimeBuildError(
            f"the built runtime does not load: {answer['error']} (log: {log})",
            hint="run the install again; if it repeats, report it with the log",
        )
    return [str(d) for d in answer.get("devices", [])]
