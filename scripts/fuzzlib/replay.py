"""Issue 76's harness for replaying its cases (scripts/fuzz/registries.py, schemas.py,
launch_and_runtime.py): a LOCALRUN_HOME of the run's own with `base` made from the catalog's
smollm2:135m and pushed to a hostile registry (fuzzlib.registry), the commands' cases run first,
then the server's against a real `localrun serve`, and a summary of each item against the
issue's targets.

Each case prints a row: its name, the issue's item, the status (HTTP, `exit N` of a command,
`hang`), the seconds to its answer, the peak RSS above idle of the server process (with its
schema checkers), of its runners and of its largest job process (of a command: its whole
tree), the slowest GET /api/version meanwhile and the longest pause of another client's stream
on the same model. The targets are the issue's: /api/version within 0.5 s, the stream never
paused 1 s, a job under 512 MB above idle, and each case's own bound on its time. A case past
a target, or answering otherwise than the fix intends, is marked MISS and listed: recorded, not
failed. The exit status is 1 when a case got a 5xx, a dropped connection, a traceback, or the
server died.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from fuzzlib import inputs
from fuzzlib.processes import serving, timed_cli
from fuzzlib.registry import Registries
from fuzzlib.report import verdict
from fuzzlib.watched import HEADER, JOB_MB, PAUSE_S, VERSION_S, Fuzz

STREAM = {"model": "base", "prompt": "Count from one to two hundred in words.",
          "options": {"num_predict": 400, "temperature": 0}}  # fmt: skip
Steps = dict[str, Callable[[Fuzz], None]]


def serve(fz: Fuzz, steps: Steps, wanted: list[str]) -> bool:
    """Run the server's items; whether it was up at the end."""
    fz.log = fz.work / "serve.log"
    with serving(fz.env, fz.log) as (url, proc):
        fz.proc, fz.url = proc, url
        fz.client = httpx.Client(base_url=url, timeout=300)
        fz.item = "-"
        fz.request("baseline: a stream of the model", "POST", "/api/generate",
                   {**STREAM, "stream": False}, want="200", within=60.0,
                   stream=False)  # fmt: skip
        for item, step in steps.items():
            if item in wanted and proc.poll() is None:
                fz.item = item
                step(fz)
        try:
            alive = fz.client.get("/api/version", timeout=30).status_code == 200
        except httpx.HTTPError:
            alive = False
    if any(r.defect for r in fz.rows) or not alive:
        print("the server's log ends:\n" + fz.log.read_text()[-3000:], file=sys.stderr)
    return alive


def summary(fz: Fuzz, items: list[str], alive: bool, seconds: float) -> int:
    print(f"\n{'item':>5} {'cases':>5} {'slowest s':>9} {'server':>6} {'runner':>6} {'job':>6} "
          f"{'version':>7} {'pause':>5} {'defects':>7} {'misses':>6}")  # fmt: skip
    for item in ["-", *items]:
        rows = [r for r in fz.rows if r.item == item]
        if not rows:
            continue
        pauses = [r.seen.pause_s for r in rows if r.seen.pause_s is not None]
        most = {
            k: max(getattr(r.seen, k) for r in rows)
            for k in ("server_mb", "runner_mb", "job_mb", "version_s")
        }
        pause = f"{max(pauses):.2f}" if pauses else "-"
        print(
            f"{item:>5} {len(rows):5} {max(r.seconds for r in rows):9.2f} "
            f"{most['server_mb']:6.0f} {most['runner_mb']:6.0f} {most['job_mb']:6.0f} "
            f"{most['version_s']:7.2f} {pause:>5} {sum(bool(r.defect) for r in rows):7} "
            f"{sum(bool(r.misses()) for r in rows):6}"
        )
    print(f"\ntargets: /api/version within {VERSION_S:g} s and the other stream never paused "
          f"{PAUSE_S:g} s while a case runs; a job under {JOB_MB:g} MB above idle; each case "
          "within its bound")  # fmt: skip
    return verdict(fz.rows, seconds, alive)


def main(
    doc: str | None,
    items: list[str],
    commands: Steps,
    server: Steps,
    slow: tuple[str, ...] = (),
    argv: list[str] | None = None,
) -> int:
    """A replay script's command line: `--only ITEM` (repeatable), and `--runtime` for the
    `slow` items (left out unless asked); the run's exit status."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--only", choices=items, action="append", help="an item of issue 76")
    if slow:
        parser.add_argument(
            "--runtime", action="store_true", help=f"items {', '.join(slow)} (minutes)"
        )
    args = parser.parse_args(argv)
    wanted = args.only or [i for i in items if i not in slow or args.runtime]
    return run(wanted, commands, server, items)


def run(wanted: list[str], commands: Steps, server: Steps, items: list[str]) -> int:
    """Make the run's home and registries, run the `commands` cases then the `server` ones
    that `wanted` names, and print the summary; the exit status."""
    started = time.monotonic()
    regs = Registries()
    with tempfile.TemporaryDirectory(prefix="localrun-fuzz-") as tmp:
        home, work = Path(tmp) / "home", Path(tmp) / "work"
        env = {
            **os.environ,
            **regs.env(),
            "LOCALRUN_HOME": str(home),
            "LOCALRUN_HOST": "127.0.0.1:9",
            "LOCALRUN_CONTEXT_LENGTH": "2048",
            "LOCALRUN_NUM_PARALLEL": "2",
            "LOCALRUN_REGISTRY": "off",
            "OLLAMA_MODELS": str(work / "ollama"),
        }
        base = inputs.modelfile(work / "base", 'FROM smollm2:135m\nSYSTEM "You are brief."\n')
        shared = f"{regs.host(regs.models)}/library/base"
        steps = (("create", "base", "-f", str(base)), ("cp", "base", shared), ("push", shared))
        for setup in steps:
            made = timed_cli(env, *setup)
            if made.code != 0:
                raise SystemExit(f"localrun {' '.join(setup)}: {made.stderr.strip()}")
        timed_cli(env, "rm", shared)
        fz = Fuzz(env, work, regs, STREAM)
        print(HEADER, flush=True)
        try:
            for item, step in commands.items():
                if item in wanted:
                    fz.item = item
                    step(fz)
            alive = serve(fz, server, wanted) if set(wanted) & set(server) else True
        finally:
            regs.close()
    return summary(fz, items, alive, time.monotonic() - started)
