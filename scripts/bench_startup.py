#!/usr/bin/env python3
"""Wall time of `localrun --help` and `localrun list` (20 models) against `python -c pass`.

Target (issue 2): each under 150 ms on the 2-core development machine. Prints the median and
best of N runs, and the overhead over a bare interpreter start. Measure an installed localrun
(`pip install .`): an editable install (`pip install -e .`) adds its import hook, about 15-20 ms.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _time(cmd: list[str], env: dict[str, str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        out.append(time.perf_counter() - start)
    return out


def _populate(home: Path, count: int) -> None:
    from make_test_models import write_tiny_model

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
    base_med = statistics.median(base)
    print(f"{'command':32} {'median ms':>10} {'best ms':>8} {'over python':>12}  target")
    for label, times in rows:
        med = statistics.median(times)
        verdict = "" if label.startswith("python") else ("ok" if med < 0.150 else "SLOW")
        print(
            f"{label:32} {med * 1000:10.1f} {min(times) * 1000:8.1f} "
            f"{(med - base_med) * 1000:12.1f}  {verdict}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
