"""The exact runtime's changes to llama.cpp: its patches and kernels, applied to a source tree.

Only the standard library is imported here (and localrun.errors and runtimes.patching), so that
pip's build of llama-cpp-python can run it: exact.cmake applies the patch set while pip
compiles, and `localrun runtime install exact` applies it to its own unpacked source.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

from localrun.errors import RuntimeBuildError
from localrun.runtimes import patching

MARKER = "localrun-exact.json"  # beside a pip-built libggml-cpu that carries the patch set

HERE = Path(__file__).parent
PATCHES = HERE / "patches"
KERNELS = HERE / "kernels"  # copied into ggml-cpu/, where patch 0001 adds them to its sources
GGML_CPU = Path("ggml") / "src" / "ggml-cpu"


def patch_files() -> list[Path]:
    """The patches, in the order they are applied."""
    return sorted(PATCHES.glob("*.patch"))


def kernel_files() -> list[Path]:
    return sorted(p for p in KERNELS.iterdir() if p.suffix in (".cpp", ".h"))


def base_version() -> str:
    """The llama-cpp-python release the patches are made for."""
    return (PATCHES / "BASE").read_text(encoding="utf-8").strip()


def patch_source(tree: Path) -> list[patching.Outcome]:
    """Make `tree`'s ggml-cpu the exact runtime's; applied twice, it changes nothing.

    The kernel's files are copied beside ops.cpp and each patch is applied unless it is there
    already. A patch that neither applies nor is applied raises RuntimeBuildError, naming the
    patch, the file and the hunk, and nothing of that patch is written.
    """
    folder = tree / GGML_CPU
    if not folder.is_dir():
        raise RuntimeBuildError(
            f"the llama.cpp source has no {GGML_CPU}",
            hint="run the install again: its source is unpacked afresh",
        )
    for kernel in kernel_files():
        text = kernel.read_text(encoding="utf-8")
        target = folder / kernel.name
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            rewrite(target, text)  # an unchanged file is not compiled again
    outcomes = []
    for path in patch_files():
        patch = patching.parse(path.read_text(encoding="utf-8"), path.name)
        outcome = patching.status(tree, patch)
        if outcome.state == "failed":
            raise does_not_apply(outcome)
        for name, text in outcome.texts.items():
            rewrite(tree / name, text)
        outcomes.append(outcome)
    return outcomes


def does_not_apply(outcome: patching.Outcome) -> RuntimeBuildError:
    """The error for a patch that does not apply: its first hunk that does not match."""
    name, index, hunk = outcome.failed[0]
    if hunk is None or index == 0:
        where = f"{name} is missing"
    else:
        where = f"hunk {index} of {name} (patch line {hunk.line_no}: {hunk.first_change()[:60]!r})"
        where += " does not match"
    more = len(outcome.failed) - 1
    return RuntimeBuildError(
        f"patch {outcome.patch} does not apply to this llama.cpp: {where}"
        + (f" (and hunks of {more} more file(s))" if more else ""),
        hint=f"the exact runtime is made for llama-cpp-python {base_version()} "
        "(scripts/maintenance/upgrade_llama_cpp.py moves it to another); use the CPU as installed",
    )


def cpu_identity() -> str:
    """What the library's -march=native was for: this CPU's model and instruction sets."""
    text = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    keep = []
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip()
        if key in ("vendor_id", "model name", "flags", "Features", "CPU implementer", "CPU part"):
            keep.append(line.strip())
            if key in ("flags", "Features"):
                break  # the first processor's: they are all alike
    raw = "\n".join(keep) or f"{platform.machine()} {platform.processor()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def rewrite(path: Path, text: str) -> None:
    """Replace a file of an unpacked tree with `text` through a rename.

    A link there (copied from the folder LOCALRUN_RUNTIME_SOURCE names) is replaced, never
    written through.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RuntimeBuildError(
            f"could not patch {path} ({exc.strerror or exc})",
            hint="run the install again: its source is unpacked afresh",
        ) from None


def fingerprint() -> str:
    """A hash of the patches and kernels: what a library built with them carries."""
    digest = hashlib.sha256()
    for path in [*patch_files(), *kernel_files()]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def marker(version: str) -> dict[str, str]:
    """The record a pip build writes beside its libggml-cpu (exact.builtin reads it)."""
    return {"llama_cpp_version": version, "patches": fingerprint(), "cpu": cpu_identity()}


def main(argv: list[str] | None = None) -> int:
    """Patch TREE (llama.cpp's source) and write the marker to MARKER_PATH: exact.cmake's step."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        usage = "usage: python -m localrun.runtimes.patchset TREE VERSION MARKER_PATH"
        print(usage, file=sys.stderr)
        return 2
    tree, version, marker_path = Path(args[0]), args[1], Path(args[2])
    try:
        outcomes = patch_source(tree)
    except RuntimeBuildError as exc:
        print(f"localrun: {exc.message} ({exc.hint})", file=sys.stderr)
        return 1
    marker_path.write_text(json.dumps(marker(version)), encoding="utf-8")
    for outcome in outcomes:
        print(f"localrun: patch {outcome.patch}: {outcome.state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
