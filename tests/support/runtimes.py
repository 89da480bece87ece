"""The GPU runtimes as the tests build them: where the builds are kept between runs, and Mesa's
software Vulkan device (lavapipe) to run them on."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Any

from localrun.errors import ToolchainError
from localrun.runtimes import toolchain
from localrun.runtimes.source import bindings_version

LAVAPIPE = {"GGML_VK_VISIBLE_DEVICES": "0"}


def vulkan_ready() -> str | None:
    try:
        toolchain.vulkan()
    except ToolchainError as exc:
        return f"{exc.message} ({exc.hint})"
    return None


# The builds the tests keep between runs (installed with --keep-build), so that a second run
# compiles nothing: some 225 MB for the exact runtime, 420 MB for Vulkan, 120 MB for RPC.
KEPT_BUILDS = tuple(f"{backend}-{bindings_version()}" for backend in ("exact", "vulkan", "rpc"))


@functools.cache
def builds_folder() -> Path:
    """Where the tests' runtime builds live between runs: KEPT_BUILDS and nothing else (a build
    of an older llama-cpp-python, or of another runtime, is removed the first time it is asked
    for). LOCALRUN_TEST_RUNTIME_BUILDS moves it, and is then left as it is."""
    given = os.environ.get("LOCALRUN_TEST_RUNTIME_BUILDS")
    if given:
        return Path(given)
    from platformdirs import user_cache_path

    folder = user_cache_path("localrun-tests", appauthor=False) / "runtime-builds"
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name not in KEPT_BUILDS:
                shutil.rmtree(entry, ignore_errors=True)
    return folder


def home_with(factory: Any, backend: str) -> Path:
    """A new LOCALRUN_HOME from pytest's `factory` with the runtime of `backend` (exact, rpc)
    installed for real; the test skips where the toolchain to build it is missing."""
    import pytest

    needs = {"exact": toolchain.cpu, "rpc": toolchain.rpc}[backend]
    try:
        needs()
    except ToolchainError as exc:
        pytest.skip(f"no toolchain to build the {backend} runtime: {exc.message}")
    home = Path(factory.mktemp(f"{backend}-home"))
    install(home, backend)
    return home


def install(home: Path, backend: str) -> str:
    """`localrun runtime install BACKEND --keep-build` into `home` for real, its build kept in
    builds_folder(); its stdout once it said it installed the runtime."""
    import subprocess
    import sys

    from support.cli import localrun_env

    env = localrun_env(LOCALRUN_HOME=str(home), LOCALRUN_RUNTIME_BUILDS=str(builds_folder()))
    done = subprocess.run(
        [sys.executable, "-m", "localrun", "runtime", "install", backend, "--keep-build"],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"installed runtime {backend}-{bindings_version()}" in done.stdout, done.stdout
    return done.stdout
