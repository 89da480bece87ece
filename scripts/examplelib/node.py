"""The npm packages a JavaScript corpus runs with (its client at the version its examples came
with, and tsx to run TypeScript), installed from npm's registry into the folder its programs run
in; without node and npm, or without the registry, its programs are skipped, never failed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

__all__ = ["NodeUnavailable", "install", "tsx"]

INSTALL_TIMEOUT_S = 300.0


class NodeUnavailable(RuntimeError):
    """Node programs cannot run here; the message says why, in one line."""


def install(packages: tuple[str, ...], folder: Path) -> None:
    """`npm install` `packages` (pinned: name@version) into `folder`, an ES module package (the
    examples use top-level await). Install scripts are not run: none of these needs one."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise NodeUnavailable("node and npm are not installed")
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"name": "localrun-examples", "private": True, "type": "module"}
    (folder / "package.json").write_text(json.dumps(manifest))
    command = [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", *packages]
    try:
        done = subprocess.run(
            command,
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise NodeUnavailable(f"npm install took longer than {INSTALL_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if "ERR" in line] or ["(no output)"]
        raise NodeUnavailable(f"npm install {' '.join(packages)} failed: {lines[-1].strip()}")


def tsx(folder: Path) -> Path:
    """The tsx that `install` put in `folder`."""
    path = folder / "node_modules" / ".bin" / "tsx"
    if not path.exists():
        raise NodeUnavailable(f"no tsx in {folder} (install it with the corpus's packages)")
    return path
