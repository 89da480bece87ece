"""Cases watched while they run against a real server or as commands, and their rows: the
harness of fuzzlib.replay. A case is one request (`Fuzz.request`) or one `localrun` command
(`Fuzz.command`); its row holds its status, its time, the peaks of the server's parts
(fuzzlib.watch), the slowest /api/version and the other stream's longest pause, and what it
was meant to answer (`want`, `within`); `Row.misses` says where it fell short.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fuzzlib.processes import timed_cli
from fuzzlib.watch import MB, Seen, Watch

__all__ = ["HEADER", "UNEXPECTED", "Fuzz", "Row", "said"]

VERSION_S, PAUSE_S, JOB_MB = 0.5, 1.0, 512.0
UNEXPECTED = re.compile(r"unexpected .{0,200}report it|Traceback \(most recent call", re.S)
HEADER = (
    f"{'case':44} {'item':>5} {'status':>8} {'secs':>6} {'server':>6} {'runner':>6} "
    f"{'job':>6} {'version':>7} {'pause':>5}"
)


@dataclass
class Row:
    """One case's figures and what was wanted of it."""

    case: str
    item: str
    status: str
    seconds: float
    seen: Seen
    want: str = "400"  # a status, `a|b` for either, `exit 0`, `exit!0`
    within: float = 2.0  # its answer's time bound (s)
    defect: str = ""
    note: str = ""
    checks: list[str] = field(default_factory=list)  # what else failed (its MISS)
    capped: bool = True  # whether a job's memory target applies (not to a compiler)

    def misses(self) -> list[str]:
        exited = self.status.startswith("exit ")
        wanted = self.status in self.want.split("|") or (
            self.want == "exit!0" and exited and self.status != "exit 0"
        )
        out = [] if wanted else [f"want {self.want}"]
        out += [f">{self.within:g} s"] if self.seconds > self.within else []
        out += [f"version >{VERSION_S:g} s"] if self.seen.version_s > VERSION_S else []
        pause = self.seen.pause_s
        out += [f"pause >{PAUSE_S:g} s"] if pause is not None and pause > PAUSE_S else []
        out += [f"job >{JOB_MB:g} MB"] if self.capped and self.seen.job_mb > JOB_MB else []
        out += [f"{self.seen.cuts} other streams cut"] if self.seen.cuts else []
        return out + self.checks

    def line(self) -> str:
        s = self.seen
        pause = "-" if s.pause_s is None else f"{s.pause_s:.2f}"
        marks = ["DEFECT " + self.defect[:100]] if self.defect else []
        marks += ["MISS " + ", ".join(self.misses())] if self.misses() else []
        marks += [f"({self.note[:110]})"] if self.note else []
        return (
            f"{self.case[:44]:44} {self.item:>5} {self.status[:8]:>8} {self.seconds:6.2f} "
            f"{s.server_mb:6.0f} {s.runner_mb:6.0f} {s.job_mb:6.0f} {s.version_s:7.2f} "
            f"{pause:>5}  " + "  ".join(marks)
        )


def said(text: str) -> str:
    """An error answer's message (any dialect's shape), or the text."""
    try:
        data = json.loads(text.strip().splitlines()[-1] if text.strip() else text)
    except (ValueError, IndexError):
        return text[:160]
    error = data.get("error") if isinstance(data, dict) else None
    return str(error.get("message") if isinstance(error, dict) else error)[:160]


class Fuzz:
    """The rows, and the environment, server and registries the cases share."""

    def __init__(self, env: dict[str, str], work: Path, regs: Any, stream: dict[str, Any]) -> None:
        self.env, self.work, self.regs, self.item = env, work, regs, "-"
        self.home = Path(env["LOCALRUN_HOME"])
        self.stream = stream  # another client's request, streamed while a case runs
        self.rows: list[Row] = []
        self.proc: Any = None
        self.url = ""
        self.client = httpx.Client()
        self.log = work / "serve.log"

    def add(self, row: Row) -> Row:
        if self.proc is not None and self.proc.poll() is not None and not row.defect:
            row.defect = f"the server died (exit {self.proc.returncode})"
        print(row.line(), flush=True)
        self.rows.append(row)
        return row

    @contextlib.contextmanager
    def watch(self, stream: bool = True) -> Iterator[dict[str, Any]]:
        """Watch the server while the body runs; the figures land in the dict it yields."""
        watch = Watch(self.client, self.proc.pid, self.stream if stream else None)
        time.sleep(0.3)  # the other stream under way
        got: dict[str, Any] = {}
        started = time.monotonic()
        try:
            yield got
        finally:
            got["seconds"] = time.monotonic() - started
            got["seen"] = watch.stop()

    def request(
        self,
        case: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        want: str = "400",
        within: float = 2.0,
        check: Callable[[httpx.Response, str], list[str]] | None = None,
        stream: bool = True,
    ) -> Row:
        """One request, watched; `check` names what else is wrong with its answer."""
        text, status, defect, checks = "", "-1", "", []
        with self.watch(stream) as got:
            try:
                with self.client.stream(method, path, json=body, timeout=300) as answer:
                    text = answer.read().decode(errors="replace")
                    status = str(answer.status_code)
                    checks = check(answer, text) if check else []
            except httpx.HTTPError as exc:
                defect = f"no answer: {type(exc).__name__}: {exc}"[:200]
        # A registry's failure is the gateway's 502 (or 504, 507) in the dialect's shape.
        if not defect and (status in ("500", "501") or UNEXPECTED.search(text)):
            defect = f"{status}: {said(text)}"
        note = said(text) if status[:1] in ("4", "5") else ""
        row = Row(case, self.item, status, got["seconds"], got["seen"], want, within, defect, note)
        row.checks = checks
        return self.add(row)

    def command(
        self,
        case: str,
        *args: str,
        env: dict[str, str] | None = None,
        want: str = "exit!0",
        within: float = 5.0,
        check: Callable[[str, str], list[str]] | None = None,
        capped: bool = True,
    ) -> Row:
        """`localrun ARGS`, timed, its tree's peak (in the job column: it does a job's work)."""
        done = timed_cli(env or self.env, *args, timeout=max(60.0, 4 * within))
        found = UNEXPECTED.search(done.stderr)
        defect = "no exit" if done.code is None else (found.group(0)[:200] if found else "")
        lines = [x for x in done.stderr.splitlines() if x.strip()]
        seen = Seen(job_mb=max(0.0, done.peak / MB - self.cli_idle()))
        status = "hang" if done.code is None else f"exit {done.code}"
        note = lines[-1][:160] if lines and done.code else ""
        row = Row(case, self.item, status, done.seconds, seen, want, within, defect, note)
        row.capped = capped
        row.checks = check(done.stdout, done.stderr) if check else []
        errors = [x for x in lines if x.startswith("Error") or "Traceback" in x]
        if done.code and len(errors) != 1:
            row.checks.append(f"{len(errors)} error lines on stderr")
        return self.add(row)

    _idle: float | None = None

    def cli_idle(self) -> float:
        """The peak of a bare `localrun list` (MB): a command's idle."""
        if self._idle is None:
            self._idle = timed_cli(self.env, "list").peak / MB
        return self._idle
