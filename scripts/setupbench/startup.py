#!/usr/bin/env python3
"""Wall time of `localrun --help`, `list` (20 models) and `--version` against `python -c pass`.

Target (issue 2): --help and list each under 150 ms on the 2-core development machine. Prints
the median and best of N runs, the overhead over a bare interpreter start and the ratio to it
(issue 55: a command that only prints pays for nothing it does not use). --version is timed
after one run that records the llama.cpp build's facts (cli/commands/version.py), as every later run
finds them. Measure an installed localrun (`pip install .`): an editable install
(`pip install -e .`) adds its import hook, about 15-20 ms.

With --binary PATH (scripts/maintenance/build_binary.py's dist/localrun) the same commands run from
the binary too, beside `run`'s time to the first token (process start to the first byte of the
answer on stdout, SmolLM2 from the starter wheel, one token), and the binary's first start,
which unpacks it into a fresh cache folder. Targets (issue 13): --help and list within 1.5x of
the pip install's, `run` within 1.2x, after the first start.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share


def _time(cmd: list[str], env: dict[str, str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        out.append(time.perf_counter() - start)
    return out


def _first_byte(cmd: list[str], env: dict[str, str], runs: int) -> list[float]:
    """Seconds from starting `cmd` to the first byte on its stdout."""
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        first = proc.stdout.read(1)
        out.append(time.perf_counter() - start)
        proc.communicate()
        if not first or proc.returncode != 0:
            raise SystemExit(f"{cmd} failed (exit {proc.returncode})")
    return out


def _starter(home: Path) -> str | None:
    """Create `smol` from the starter wheel's GGUF, if that wheel is installed."""
    from localrun.store import catalog, names

    entry = catalog.lookup(names.parse("smollm2:135m"))
    path = catalog.package_file(entry.sources[0]) if entry else None
    if path is None:
        return None
    mf = home / "Modelfile.smol"
    mf.write_text(f"FROM {path}\n")
    env = {**os.environ, "LOCALRUN_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "localrun", "create", "smol", "-f", str(mf), "-q"],
                   env=env, check=True)  # fmt: skip
    return "smol"


def _populate(home: Path, count: int) -> None:
    from testmodels.text import write_tiny_model

    env = {**os.environ, "LOCALRUN_HOME": str(home)}
    gguf_path = write_tiny_model(home / "tiny.gguf")
    for i in range(count):
        mf = home / f"Modelfile{i}"
        mf.write_text(f"FROM {gguf_path}\nSYSTEM model number {i}\n")
        subprocess.run(
            [sys.executable, "-m", "localrun", "create", f"bench{i}", "-f", str(mf), "-q"],
            env=env,
            check=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--binary", type=Path, help="also time this single binary")
    args = parser.parse_args()
    exe = Path(sys.executable).with_name("localrun")
    localrun = [str(exe)] if exe.exists() else [sys.executable, "-m", "localrun"]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        _populate(home, args.models)
        env = {**os.environ, "LOCALRUN_HOME": str(home)}
        base = _time([sys.executable, "-c", "pass"], env, args.runs)
        rows = [("python -c pass", base)]
        rows.append(("localrun --help", _time([*localrun, "--help"], env, args.runs)))
        rows.append(
            (f"localrun list ({args.models} models)", _time([*localrun, "list"], env, args.runs))
        )
        _time([*localrun, "--version"], env, 1)  # records the llama.cpp build's facts
        rows.append(("localrun --version", _time([*localrun, "--version"], env, args.runs)))
        if args.binary is not None:
            binary_rows(args, home, localrun, env, rows)
    base_med = statistics.median(base)
    print(
        f"{'command':32} {'median ms':>10} {'best ms':>8} {'over python':>12} "
        f"{'x python':>9}  target"
    )
    for label, times in rows:
        med = statistics.median(times)
        plain = label.startswith("localrun --help") or label.startswith("localrun list")
        verdict = ("ok" if med < 0.150 else "SLOW") if plain else ""
        print(
            f"{label:32} {med * 1000:10.1f} {min(times) * 1000:8.1f} "
            f"{(med - base_med) * 1000:12.1f} {med / base_med:8.2f}x  {verdict}"
        )
    return 0


def binary_rows(
    args: argparse.Namespace,
    home: Path,
    localrun: list[str],
    env: dict[str, str],
    rows: list[tuple[str, list[float]]],
) -> None:
    """Time the binary beside the pip install; print the ratios against the issue's targets."""
    binary = [str(args.binary.resolve())]
    with tempfile.TemporaryDirectory() as cache:
        benv = {**env, "LOCALRUN_BINARY_CACHE": cache}
        first = _time([*binary, "--version"], benv, 1)
        rows.append(("binary first start (unpacks)", first))
        pairs = [
            ("--help", _time([*binary, "--help"], benv, args.runs), rows[1][1]),
            ("list", _time([*binary, "list"], benv, args.runs), rows[2][1]),
        ]
        rows.append(("binary --help", pairs[0][1]))
        rows.append((f"binary list ({args.models} models)", pairs[1][1]))
        model = _starter(home)
        if model is not None:
            prompt = [model, "Why is the sky blue?", "--param", "num_predict=1"]
            runs = max(3, args.runs // 3)
            pip_run = _first_byte([*localrun, "run", *prompt], env, runs)
            bin_run = _first_byte([*binary, "run", *prompt], benv, runs)
            rows.append(("localrun run, first token", pip_run))
            rows.append(("binary run, first token", bin_run))
            pairs.append(("run (first token)", bin_run, pip_run))
    size = args.binary.stat().st_size
    print(f"binary: {args.binary} ({size / 2**20:.0f} MiB)")
    targets = {"--help": 1.5, "list": 1.5, "run (first token)": 1.2}
    for label, ours, pip in pairs:
        ratio = statistics.median(ours) / statistics.median(pip)
        target = targets[label]
        verdict = "ok" if ratio <= target else "SLOW"
        print(f"binary / pip install, {label}: {ratio:.2f}x (target <= {target}x) {verdict}")


if __name__ == "__main__":
    raise SystemExit(main())
