"""The GPU runtimes as the tests build them: where the builds are kept between runs, and Mesa's
software Vulkan device (lavapipe) to run them on."""

from __future__ import annotations

import os
from pathlib import Path

from localrun.errors import ToolchainError
from localrun.runtimes import toolchain

LAVAPIPE = {"GGML_VK_VISIBLE_DEVICES": "0"}


def vulkan_ready() -> str | None:
    try:
        toolchain.vulkan()
    except ToolchainError as exc:
        return f"{exc.message} ({exc.hint})"
    return None


def builds_folder() -> Path:
    """Where the tests' runtime builds live: kept between runs, as a user's would be, so that a
    second run resumes the build (LOCALRUN_TEST_RUNTIME_BUILDS moves it)."""
    given = os.environ.get("LOCALRUN_TEST_RUNTIME_BUILDS")
    if given:
        return Path(given)
    from platformdirs import user_cache_path

    return user_cache_path("localrun-tests", appauthor=False) / "runtime-builds"
