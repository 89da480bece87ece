"""The GPU runtimes as the tests build them: where the builds are kept between runs, and Mesa's
software Vulkan device (lavapipe) to run them on."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

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
