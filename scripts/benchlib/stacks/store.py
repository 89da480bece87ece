"""A localrun of a benchmark's own: how to call its CLI against a store in a temporary home
(the model created in it when it is not the starter), and the environment of a served one.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from benchlib.common import DEFAULT_MODEL_NAME, Unavailable, default_model, run_command, say

__all__ = ["Localrun", "localrun_cmd", "prepare_localrun", "served_env", "share_runtimes"]


@dataclass
class Localrun:
    """How to call the localrun CLI against an isolated store."""

    cmd: list[str]
    env: dict[str, str]
    model: str
    threads: int

    def params(self, n_predict: int | None) -> list[str]:
        """--param options: greedy, the bench's thread count, and a token budget if given."""
        params = ["temperature=0", f"num_thread={self.threads}"]
        if n_predict is not None:
            params.append(f"num_predict={n_predict}")
        return [arg for p in params for arg in ("--param", p)]


def localrun_cmd() -> list[str]:
    """The localrun CLI beside this interpreter (`python -m localrun` without one)."""
    exe = Path(sys.executable).with_name("localrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "localrun"]


def share_runtimes(home: Path) -> None:
    """The caller's installed runtimes (the GPU ones, the exact runtime) run the benchmark's own
    home's models too, as they run the caller's: its `runtimes` folder is linked there."""
    from localrun.settings import config

    mine, theirs = config.home() / "runtimes", home / "runtimes"
    if mine.is_dir() and not theirs.exists() and not theirs.is_symlink():
        home.mkdir(parents=True, exist_ok=True)
        theirs.symlink_to(mine.resolve(), target_is_directory=True)


def served_env(home: Path, **settings: str) -> dict[str, str]:
    """The environment of a `localrun serve` (or run) of a benchmark: its own home (with the
    caller's runtimes), models kept loaded, and none of the caller's store, key or address
    (plus `settings`)."""
    share_runtimes(home)
    env = {**os.environ, "LOCALRUN_HOME": str(home), "LOCALRUN_KEEP_ALIVE": "-1", **settings}
    for unset in ("LOCALRUN_MODELS", "LOCALRUN_API_KEY", "LOCALRUN_HOST"):
        if unset not in settings:
            env.pop(unset, None)
    return env


def prepare_localrun(home: Path, model: Path, name: str | None, threads: int) -> Localrun:
    """A Localrun with its own store; a --model other than the starter is created in it."""
    share_runtimes(home)
    env = {**os.environ, "LOCALRUN_HOME": str(home)}
    env.pop("LOCALRUN_MODELS", None)  # the store must live in the temporary home
    lr = Localrun(localrun_cmd(), env, name or DEFAULT_MODEL_NAME, threads)
    default = default_model()
    if name is None and (default is None or model.resolve() != default.resolve()):
        lr.model = "bench:latest"
        home.mkdir(parents=True, exist_ok=True)
        modelfile = home / "Modelfile"
        modelfile.write_text(f"FROM {model.resolve()}\n")
        try:
            run_command([*lr.cmd, "create", lr.model, "-f", str(modelfile)], timeout=600, env=env)
        except Unavailable as exc:
            lr.model = ""
            say(f"localrun create failed: {exc}")
    return lr
