"""A seeded GGUF fuzzer: mutants of a valid tiny model pushed through `create` and `run`.

Every mutant must end in one of two ways: `localrun create` refuses it with a one-line error, or
the model it made answers `localrun run` (or `run` fails with a one-line error). A signal, a
traceback, a hang past the timeout or memory past the bound is a defect, reported with the
mutant's name and kept on disk with --keep.

    python scripts/fuzz/gguf_files.py --count 600 --seed 0 [--jobs 2] [--out DIR] [--keep]

Mutants come in two families (scripts/fuzzlib/mutants.py):
- structural: flipped header bytes, truncation at every section, huge counts and lengths,
  tensor offsets past the end, bad dimension counts and types;
- semantic: every numeric hyper-parameter at 0, -1, NaN, inf and 2^32-1, alignments, block
  counts that disagree with the tensors, foreign tokenizers, invalid UTF-8 vocabularies,
  vocabulary and embedding sizes that disagree, swapped shapes, oversized chat templates, and
  headers with a million keys, strings or tensor infos.

The same code is used by tests/system/test_fuzz_gguf.py on a seeded sample small enough for CI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from fuzzlib.mutants import Mutant, mutants

# --- running ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    stage: str  # "create" refused, "run" failed cleanly, "answered", or "defect"
    detail: str
    seconds: float
    peak_rss: int = 0
    defects: list[str] = field(default_factory=list)


def _tree_rss(proc: Any) -> int:
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_bounded(
    argv: list[str], env: dict[str, str], timeout: float, memory: int
) -> tuple[int | None, str, str, int, str | None]:
    """Run argv; returns (exit code, stdout, stderr, peak RSS of its tree, a bound broken)."""
    import psutil

    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    ps = psutil.Process(proc.pid)
    peak, broken = 0, None
    outputs: dict[str, str] = {}

    def drain(name: str, stream: Any) -> None:
        outputs[name] = stream.read()

    readers = [
        threading.Thread(target=drain, args=("out", proc.stdout), daemon=True),
        threading.Thread(target=drain, args=("err", proc.stderr), daemon=True),
    ]
    for t in readers:
        t.start()
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        peak = max(peak, _tree_rss(ps))
        if peak > memory:
            broken = f"memory past {memory // 2**20} MiB"
        elif time.monotonic() > deadline:
            broken = f"still running after {timeout:.0f} s"
        if broken:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    code = proc.wait()
    for t in readers:
        t.join(5)
    return code, outputs.get("out", ""), outputs.get("err", ""), peak, broken


def clean_failure(code: int | None, stderr: str) -> str | None:
    """None when a failed command ended as it should (one 'Error:' line); else what was wrong."""
    if code is not None and code < 0:
        return f"died by {signal.Signals(-code).name}"
    if "Traceback" in stderr:
        return "printed a traceback"
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    if len(errors) != 1:
        return f"expected one 'Error:' line, got: {stderr.strip()[-300:]!r}"
    return None


def try_mutant(
    name: str, data: bytes, workdir: Path, env: dict[str, str], timeout: float, memory: int
) -> Outcome:
    started = time.monotonic()
    slot = workdir / f"m{zlib.crc32(name.encode()):08x}"
    slot.mkdir(parents=True, exist_ok=True)
    (slot / "model.gguf").write_bytes(data)
    (slot / "Modelfile").write_text("FROM ./model.gguf\n")
    model = f"fuzz-{slot.name}"
    cli = [sys.executable, "-m", "localrun"]
    outcome = Outcome(name, "defect", "", 0.0)
    try:
        code, _, err, peak, broken = run_bounded(
            [*cli, "create", model, "-f", str(slot / "Modelfile")], env, timeout, memory
        )
        outcome.peak_rss = peak
        if broken:
            outcome.defects.append(f"create: {broken}")
        elif code != 0:
            problem = clean_failure(code, err)
            if problem:
                outcome.defects.append(f"create: {problem}")
            else:
                outcome.stage, outcome.detail = "create", err.strip().splitlines()[-1]
        else:
            code, out, err, peak, broken = run_bounded(
                [*cli, "run", model, "-p", "num_predict=8", "--seed", "1", "Hello"],
                env,
                timeout,
                memory,
            )
            outcome.peak_rss = max(outcome.peak_rss, peak)
            if broken:
                outcome.defects.append(f"run: {broken}")
            elif code != 0:
                problem = clean_failure(code, err)
                if problem:
                    outcome.defects.append(f"run: {problem}")
                else:
                    outcome.stage, outcome.detail = "run", err.strip().splitlines()[-1]
            else:
                outcome.stage, outcome.detail = "answered", out.strip()[:60]
            # No `rm`: the home is the run's own (a temporary folder, or the test's); a process
            # start for each answered mutant cost 6 of the test's 89 s.
    finally:
        shutil.rmtree(slot, ignore_errors=True)
    if outcome.defects:
        outcome.stage, outcome.detail = "defect", "; ".join(outcome.defects)
    outcome.seconds = time.monotonic() - started
    return outcome


def fuzz(
    base: Path,
    *,
    seed: int,
    count: int,
    jobs: int = 2,
    timeout: float = 60.0,
    memory: int = 2 * 2**30,
    home: Path | None = None,
    keep: Path | None = None,
    progress: Callable[[Outcome], None] = lambda _: None,
) -> list[Outcome]:
    """Try `count` mutants of `base`; returns one Outcome each."""
    data = base.read_bytes()
    chosen = mutants(data, seed=seed, count=count)
    with tempfile.TemporaryDirectory(prefix="localrun-fuzz-") as tmp:
        root = Path(tmp)
        env = {
            **os.environ,
            "LOCALRUN_HOME": str(home or root / "home"),
            "LOCALRUN_HOST": "127.0.0.1:9",  # never a running server: every run is in-process
            "NO_COLOR": "1",
        }
        env.pop("LOCALRUN_MODELS", None)

        def one(item: Mutant) -> Outcome:
            name, make = item
            try:
                mutant = make()
            except Exception as exc:  # a mutation that does not apply to this base
                return Outcome(name, "skipped", f"{type(exc).__name__}: {exc}", 0.0)
            result = try_mutant(name, mutant, root / "work", env, timeout, memory)
            if result.stage == "defect" and keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / f"{len(os.listdir(keep)):04d}.gguf").write_bytes(mutant)
                (keep / f"{len(os.listdir(keep)) - 1:04d}.txt").write_text(
                    f"{name}\n{result.detail}\n"
                )
            progress(result)
            return result

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            return list(pool.map(one, chosen))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per command")
    parser.add_argument("--memory-mb", type=int, default=2048, help="bound on a command's tree RSS")
    parser.add_argument(
        "--base", type=Path, help="the valid GGUF to mutate (default: a tiny model)"
    )
    parser.add_argument("--keep", type=Path, help="write the mutants that found a defect here")
    parser.add_argument("--json", type=Path, help="write every outcome here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = args.base
        if base is None:
            from testmodels.text import write_tiny_model

            base = write_tiny_model(Path(tmp) / "tiny.gguf")
        started = time.monotonic()
        done = [0]

        def show(o: Outcome) -> None:
            done[0] += 1
            if o.stage == "defect":
                print(f"DEFECT {o.name}: {o.detail}", flush=True)
            elif done[0] % 50 == 0:
                print(f"{done[0]} mutants tried ({time.monotonic() - started:.0f} s)", flush=True)

        outcomes = fuzz(
            base,
            seed=args.seed,
            count=args.count,
            jobs=args.jobs,
            timeout=args.timeout,
            memory=args.memory_mb * 2**20,
            keep=args.keep,
            progress=show,
        )
    stages: dict[str, int] = {}
    for o in outcomes:
        stages[o.stage] = stages.get(o.stage, 0) + 1
    peak = max((o.peak_rss for o in outcomes), default=0)
    hangs = sum("still running" in o.detail for o in outcomes)
    blowups = sum("memory past" in o.detail for o in outcomes)
    crashes = stages.get("defect", 0) - hangs - blowups
    print(
        f"\n{len(outcomes)} mutants in {time.monotonic() - started:.0f} s: "
        f"{stages.get('create', 0)} refused by create, "
        f"{stages.get('answered', 0) + stages.get('run', 0)} accepted "
        f"({stages.get('answered', 0)} answered, {stages.get('run', 0)} refused by run), "
        f"{stages.get('skipped', 0)} skipped; defects: {crashes} crashes, {hangs} hangs, "
        f"{blowups} memory blow-ups; peak RSS of a command tree {peak / 2**20:.0f} MiB"
    )
    if args.json:
        args.json.write_text(json.dumps([vars(o) for o in outcomes], indent=1))
    return 1 if stages.get("defect") else 0


if __name__ == "__main__":
    sys.exit(main())
