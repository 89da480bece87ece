"""The llama.cpp source that the installed llama-cpp-python binds, unpacked for a build.

A runtime must be built from exactly the source of the bindings it loads into (ggml's internal
structures cross the module boundary), so the source is llama-cpp-python's own source
distribution for the installed version, from, in order:

1. LOCALRUN_RUNTIME_SOURCE: an sdist (.tar.gz) or its unpacked folder (copied: a build patches
   its own copy), for offline machines;
2. the sdist kept under LOCALRUN_HOME/runtimes/sources by an earlier install;
3. the package index, through pip (so its index, proxy and certificate settings apply), then kept.

Whichever it is, its version must be the bindings' version.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from localrun.errors import RuntimeBuildError, ToolchainError
from localrun.runtimes.layout import root
from localrun.settings import config

SDIST = "llama_cpp_python-{version}.tar.gz"
DONE = ".unpacked"


@dataclass(frozen=True)
class Source:
    version: str  # llama-cpp-python's
    ggml_version: str
    tree: Path  # the llama.cpp folder (holds ggml/ and CMakeLists.txt)


def bindings_version() -> str:
    """The installed llama-cpp-python's version, read without loading its libraries."""
    from importlib import metadata

    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        pass
    # The single binary carries the package without its metadata: read its version from its
    # source rather than import it (and load llama.cpp) here.
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is not None and spec.origin:
        try:
            text = Path(spec.origin).read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        match = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", text, re.MULTILINE)
        if match:
            return match.group(1)
    raise ToolchainError("llama-cpp-python is not installed", hint="pip install llama-cpp-python")


def sources_folder() -> Path:
    return root() / "sources"


def kept() -> list[Path]:
    """The source distributions an install kept for the next build (runtimes/sources)."""
    try:
        return sorted(p for p in sources_folder().glob(SDIST.format(version="*")) if p.is_file())
    except OSError:
        return []


def clear_kept() -> tuple[int, int]:
    """Remove the kept source distributions (`localrun prune`): how many, and their bytes.

    The next install downloads its source again.
    """
    count = size = 0
    for path in kept():
        try:
            bytes_ = path.stat().st_size
            path.unlink()
        except OSError:
            continue
        count, size = count + 1, size + bytes_
    return count, size


def prepare(version: str, work: Path, say: Callable[[str], None]) -> Source:
    """The unpacked llama.cpp tree of llama-cpp-python `version`, under `work`.

    A tree an earlier, interrupted install unpacked there is reused.
    """
    unpacked = work / "src"
    if (unpacked / DONE).is_file():
        return _source(version, unpacked)
    given = config.runtime_source()
    shutil.rmtree(unpacked, ignore_errors=True)
    staged = work / "src.partial"
    shutil.rmtree(staged, ignore_errors=True)
    if given is not None and given.is_dir():
        _copy(version, given, staged, say)
    else:
        _unpack(given if given is not None else _kept_or_downloaded(version, say), staged, say)
    tops = [p for p in staged.iterdir() if p.is_dir()]
    top = tops[0] if len(tops) == 1 else staged
    _source(version, top, check=True)
    os.replace(staged, unpacked)
    (unpacked / DONE).write_text(str(top.relative_to(staged)) + "\n")
    return _source(version, unpacked)


def _copy(version: str, given: Path, staged: Path, say: Callable[[str], None]) -> None:
    """Copy the unpacked source a person named whole into `staged`, for the build to patch.

    A build never patches the person's own files (issue 76: `install exact` patched 8 of them
    in place). Links are copied as links: a patch replaces one and never writes through it.
    """
    _source(version, given, check=True)  # before anything is copied
    say(f"copying {given}")
    staged.mkdir(parents=True)
    try:
        shutil.copytree(given, staged / (given.name or "source"), symlinks=True,
                        ignore=shutil.ignore_patterns(".git"))  # fmt: skip
    except (OSError, shutil.Error) as exc:
        raise RuntimeBuildError(
            f"could not copy {given} ({str(exc)[:300]})", hint="check LOCALRUN_RUNTIME_SOURCE"
        ) from None
    _no_folder_links_out(given, staged)


def _no_folder_links_out(given: Path, staged: Path) -> None:
    """Refuse a copy with a link to a folder outside it.

    A patch of a file in there would replace that file in the person's own folder.
    """
    root = staged.resolve()
    for folder, names, files in os.walk(staged):
        for name in [*names, *files]:
            path = Path(folder) / name
            if path.is_symlink() and path.is_dir() and not path.resolve().is_relative_to(root):
                shown = path.relative_to(staged)
                raise RuntimeBuildError(
                    f"{given} links a folder outside itself ({shown} -> {os.readlink(path)}); "
                    "a build patches files in there",
                    hint="set LOCALRUN_RUNTIME_SOURCE to a copy of the source without such links",
                )


def _unpack(archive: Path, staged: Path, say: Callable[[str], None]) -> None:
    say(f"unpacking {archive.name}")
    staged.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):  # Python 3.10.12+: no links out, no devices
                tar.extractall(staged, filter="data")
            else:
                members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
                if any(m.name.startswith("/") or ".." in Path(m.name).parts for m in members):
                    raise tarfile.TarError("a member's path leaves the folder")
                tar.extractall(staged, members=members)
    except (OSError, tarfile.TarError) as exc:
        raise RuntimeBuildError(
            f"could not unpack {archive} ({exc})",
            hint="check LOCALRUN_RUNTIME_SOURCE"
            if config.runtime_source() is not None
            else "delete it and run the install again (it is downloaded anew)",
        ) from None


def discard(work: Path) -> None:
    """Forget the tree `prepare` unpacked under `work`: the next prepare unpacks it afresh."""
    shutil.rmtree(work / "src", ignore_errors=True)


def _source(version: str, folder: Path, *, check: bool = False) -> Source:
    marker = folder / DONE
    if marker.is_file():
        folder = folder / marker.read_text().strip()
    tree = folder / "vendor" / "llama.cpp" if (folder / "vendor").is_dir() else folder
    if not (tree / "ggml" / "CMakeLists.txt").is_file():
        raise ToolchainError(
            f"{folder} holds no llama.cpp source (no ggml/CMakeLists.txt)",
            hint="point LOCALRUN_RUNTIME_SOURCE at llama-cpp-python's source distribution",
        )
    if check:
        found = _sdist_version(folder)
        if found is not None and found != version:
            raise ToolchainError(
                f"the source in {folder} is llama-cpp-python {found}; the installed one is "
                f"{version}",
                hint=f"use the {SDIST.format(version=version)} source distribution",
            )
    return Source(version, ggml_version(tree), tree)


def _sdist_version(folder: Path) -> str | None:
    try:
        text = (folder / "PKG-INFO").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r"^Version:\s*(\S+)", text, re.MULTILINE)
    return match.group(1) if match else None


def ggml_version(tree: Path) -> str:
    try:
        text = (tree / "ggml" / "CMakeLists.txt").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    parts = [
        re.search(rf"set\(GGML_VERSION_{part}\s+(\d+)\)", text)
        for part in ("MAJOR", "MINOR", "PATCH")
    ]
    return ".".join(m.group(1) for m in parts if m) if all(parts) else ""


def _kept_or_downloaded(version: str, say: Callable[[str], None]) -> Path:
    folder = sources_folder()
    kept = folder / SDIST.format(version=version)
    if kept.is_file():
        return kept
    config.make_dirs(folder)  # a home made here is its owner's alone, as any of localrun's
    say(f"downloading llama-cpp-python {version} source")
    partial = folder / f".download-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    run_pip(
        ["download", "--no-deps", "--no-binary", "llama-cpp-python", "-d", str(partial),
         f"llama-cpp-python=={version}"],
        what=f"download llama-cpp-python {version}'s source",
        hint="check the connection to the package index, or set LOCALRUN_RUNTIME_SOURCE "
        "to the source distribution (.tar.gz)",
        partial=partial,
        timeout=1800,
    )  # fmt: skip
    archives = sorted(partial.glob("*.tar.gz")) if partial.is_dir() else []
    if not archives:
        shutil.rmtree(partial, ignore_errors=True)
        raise ToolchainError(
            f"pip downloaded no source archive of llama-cpp-python {version}",
            hint="set LOCALRUN_RUNTIME_SOURCE to the source distribution (.tar.gz)",
        )
    os.replace(archives[0], kept)
    shutil.rmtree(partial, ignore_errors=True)
    return kept


def run_pip(args: list[str], *, what: str, hint: str, partial: Path, timeout: float) -> None:
    """pip with `args`; ToolchainError (pip's last line, `partial` removed) when it fails."""
    try:
        done = subprocess.run(
            [*pip_command(), *args, "--disable-pip-version-check"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise ToolchainError(f"could not {what} ({exc})", hint=hint) from None
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["pip failed"]
        shutil.rmtree(partial, ignore_errors=True)
        raise ToolchainError(f"could not {what}: {last[0][:200]}", hint=hint)


def pip_command() -> list[str]:
    """pip of this Python; the single binary, which has none, uses the first python3 on PATH."""
    if not getattr(sys, "frozen", False):
        return [sys.executable, "-m", "pip"]
    python = shutil.which("python3") or shutil.which("python")
    if python is None:
        raise ToolchainError(
            "installing a runtime from the single binary needs a python3 with pip on PATH",
            hint="install python3, or set LOCALRUN_RUNTIME_SOURCE to the source distribution",
        )
    return [python, "-m", "pip"]
