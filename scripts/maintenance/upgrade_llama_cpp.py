#!/usr/bin/env python3
"""Move the exact runtime's patches to another llama-cpp-python release.

The steps, and what to do with a hunk that does not apply: docs/upgrading-llama-cpp.md.

    scripts/maintenance/upgrade_llama_cpp.py VERSION [--sdist FILE] [--work DIR] [--fuzz N]
                                 [--write] [--no-build] [--probe]

1. The release's source distribution: --sdist, or `pip download llama-cpp-python==VERSION
   --no-deps --no-binary :all:` into the work folder (kept there for the next run).
2. Each patch of localrun/runtimes/patches/, in order, on a fresh copy of its llama.cpp with the
   kernel's files beside ops.cpp: applied as the build applies it (exact context, at its line or
   the nearest one), else with up to --fuzz context lines at a hunk's ends ignored; a hunk that
   matches neither way is reported with the patch line and the change it makes.
3. Every patch that applied is written again against the new source (re-diffed: new line
   numbers and context) into WORK/VERSION/patches; with --write, and when every one applied,
   into localrun/runtimes/patches with BASE set to VERSION.
4. The patched tree's ggml-cpu compiled with the exact runtime's toolchain (--no-build: not).
   With --probe instead (the installed llama-cpp-python must be VERSION, and the checkout's
   patches the ones just made: --write), `localrun runtime install exact` into a home of its
   own, then scripts/measure/batch_invariance.py on it: every way of evaluating a token must
   give its logits bit for bit (`=`).

It exits 0 when every patch applied (and built, and probed where asked), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from localrun.errors import LocalrunError
from localrun.runtimes import build, exact, patching, patchset, source, toolchain

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("version", help="llama-cpp-python release, e.g. 0.3.37")
    parser.add_argument("--sdist", type=Path, help="its source distribution (.tar.gz)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/localrun-upgrade"))
    parser.add_argument("--fuzz", type=int, default=2, help="context lines a hunk may lose")
    parser.add_argument("--write", action="store_true", help="replace the checkout's patches")
    parser.add_argument("--no-build", action="store_true", help="apply and re-diff only")
    parser.add_argument("--probe", action="store_true", help="install the runtime and probe it")
    args = parser.parse_args()
    work = args.work / args.version
    try:
        sdist = args.sdist or download(args.version, work)
        tree = unpack(sdist, work / "tree")
        print(f"llama-cpp-python {args.version}: ggml {source.ggml_version(tree)}, {sdist.name}")
        made, failed = apply_all(tree, args.fuzz)
        out = work / "patches"
        write_patches(out, made, args.version)
        print(f"re-diffed patches: {out}")
        if failed:
            print(f"{failed} patch(es) do not apply: move their hunks by hand (the docs say how)")
            return 1
        if args.write:
            write_patches(patchset.PATCHES, made, args.version)
            print(f"written to {patchset.PATCHES} (BASE {args.version})")
        if args.probe:
            return probe(args.version, sdist, work)
        if not args.no_build:
            return compile_tree(tree, work / "build")
    except LocalrunError as exc:
        print(f"error: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""), file=sys.stderr)
        return 1
    return 0


def download(version: str, work: Path) -> Path:
    folder = work / "download"
    found = sorted(folder.glob("llama_cpp_python-*.tar.gz")) if folder.is_dir() else []
    if found:
        return found[0]
    print(f"downloading llama-cpp-python {version}'s source")
    source.run_pip(
        ["download", f"llama-cpp-python=={version}", "--no-deps", "--no-binary", ":all:",
         "-d", str(folder)],
        what=f"download llama-cpp-python {version}",
        hint="check the version and the connection to the package index",
        partial=folder,
        timeout=1800,
    )  # fmt: skip
    return sorted(folder.glob("llama_cpp_python-*.tar.gz"))[0]


def unpack(sdist: Path, into: Path) -> Path:
    """A fresh copy of the sdist's llama.cpp tree, the kernel's files beside ops.cpp."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    with tarfile.open(sdist, "r:*") as tar:
        tar.extractall(into, filter="data")
    tree = next(into.iterdir()) / "vendor" / "llama.cpp"
    for kernel in patchset.kernel_files():
        shutil.copyfile(kernel, tree / patchset.GGML_CPU / kernel.name)
    return tree


def apply_all(tree: Path, fuzz: int) -> tuple[dict[str, str], int]:
    """Each patch on `tree` in turn (written there when it applies); the patches written again
    against the tree as each found it, and how many did not apply."""
    made: dict[str, str] = {}
    failed = 0
    for path in patchset.patch_files():
        text = path.read_text(encoding="utf-8")
        patch = patching.parse(text, path.name)
        outcome = patching.status(tree, patch)
        how = "applies"
        if outcome.state == "failed" and fuzz:
            outcome = patching.status(tree, patch, fuzz=fuzz)
            how = "applies with fuzz"
        if outcome.state != "applies":
            failed += 1
            print(f"FAILED   {path.name}")
            for name, index, hunk in outcome.failed:
                if hunk is None or index == 0:
                    print(f"           {name}: no such file in this release")
                    continue
                print(f"           hunk {index} of {name} (patch line {hunk.line_no}): "
                      f"{hunk.first_change()[:70]}")  # fmt: skip
            continue
        placed = [p for found in outcome.placed.values() for p in found]
        moved = sum(1 for p in placed if p.offset)
        fuzzy = sum(1 for p in placed if p.fuzz)
        made[path.name] = patching.regenerate(tree, patch, outcome)
        state = "re-diffed" if made[path.name] != text else "unchanged"
        print(f"{'ok' if not fuzzy else 'FUZZ':8} {path.name}: {len(placed)} hunk(s) {how}, "
              f"{moved} moved, {fuzzy} with fuzz; {state}")  # fmt: skip
        for name, found in outcome.placed.items():
            for p in found:
                if p.fuzz:
                    print(f"           hunk {p.hunk} of {name} at line {p.line}: fuzz {p.fuzz}"
                          " (read the re-diffed hunk before trusting it)")  # fmt: skip
        for name, new in outcome.texts.items():
            patchset.rewrite(tree / name, new)
    return made, failed


def write_patches(folder: Path, made: dict[str, str], version: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in made.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "BASE").write_text(version + "\n", encoding="utf-8")


def compile_tree(tree: Path, out: Path) -> int:
    """ggml-cpu of the patched tree, built as `install exact` builds it."""
    tools = toolchain.cpu()
    argv = [tools.cmake, "-S", str(tree), "-B", str(out), *build.BASE_ARGS, *tools.cmake_args]
    if tools.generator:
        argv += ["-G", tools.generator]
    log = out.parent / "build.log"
    started = time.monotonic()
    with log.open("w") as sink:
        steps = [argv, [tools.cmake, "--build", str(out), "--target", exact.TARGET, "-j",
                        str(os.cpu_count() or 1)]]  # fmt: skip
        for step in steps:
            if subprocess.run(["nice", "-n", "10", *step], stdout=sink, stderr=sink).returncode:
                print(f"FAILED   the build (log: {log})")
                return 1
    print(f"built    lib{exact.TARGET}.so in {time.monotonic() - started:.0f} s (log: {log})")
    print("probe:   --probe installs the runtime and probes it (the bindings must be this release)")
    return 0


def probe(version: str, sdist: Path, work: Path) -> int:
    installed = source.bindings_version()
    if installed != version:
        print(f"probe:   the installed llama-cpp-python is {installed}, not {version}: "
              f"pip install llama-cpp-python=={version} first")  # fmt: skip
        return 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALRUN_")}
    env.update(LOCALRUN_HOME=str(work / "home"), LOCALRUN_RUNTIME_BUILDS=str(work / "builds"),
               LOCALRUN_RUNTIME_SOURCE=str(sdist), PYTHONPATH=str(ROOT))  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(
        ["nice", "-n", "10", sys.executable, "-m", "localrun", "runtime", "install", "exact"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        print(f"FAILED   the install: {(done.stderr or done.stdout).strip()[-500:]}")
        return 1
    last = done.stdout.strip().splitlines()[-1]
    print(f"built    {last}; {time.monotonic() - started:.0f} s in all")
    ran = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "measure" / "batch_invariance.py"),
         "--kv", "f16", "--fa", "1", "--prompts", "30,700"],
        env=env, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    lines = [line for line in ran.stdout.splitlines() if line.startswith("fa=")]
    for line in lines:
        print(f"probe:   {line}")
    same = ran.returncode == 0 and bool(lines) and all(map(_all_same, lines))
    print("probe:   bit for bit in every batch" if same else "FAILED   the probe: rows differ")
    return 0 if same else 1


def _all_same(line: str) -> bool:
    """A probe line ("fa=1 kv=f16 prompt= 30: whole =, again =, ... (9.5 s)"): every way `=`."""
    ways = [w.strip() for w in line.split(":", 1)[1].rsplit("(", 1)[0].split(",")]
    return len(ways) == 5 and all(w.endswith(" =") for w in ways)


if __name__ == "__main__":
    sys.exit(main())
