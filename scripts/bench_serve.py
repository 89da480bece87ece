#!/usr/bin/env python3
"""Speed of `localrun serve` against llama.cpp's llama-server and `python -m llama_cpp.server`.

One run, the same GGUF (SmolLM2 135M by default), the same threads (2) and the same greedy
sampling (temperature 0, no repeat penalty) for the three servers, all started by this script:

  localrun serve     LOCALRUN_HOME in a temporary folder, the model imported first; POST
                     /api/generate with raw: true (no chat template), NDJSON stream
  llama-server       built from the llama.cpp that llama-cpp-python vendors (scripts/bench.py
                     builds it); 4 slots (-np 4) of the same context each; POST /completion, SSE
  llama_cpp.server   llama-cpp-python's own server (one context); POST /v1/completions, SSE

Every request is a raw completion of the same kind of prompt (about 200 tokens, made distinct
at its first token so that no server reuses another request's KV cache), 128 tokens at most.

  decode tok/s     one stream: (tokens - 1) / (last token - first token), timed here; the token
                   count comes from the server's own final object (eval_count, timings.predicted_n;
                   llama_cpp.server streams no usage: one chunk per token is counted)
  TTFT             request sent -> first token received, with the model already loaded
  4 streams        four requests at once: did all complete (a finish reason, not cut)? aggregate
                   tok/s = all tokens / (last token of any - first request sent)
  idle RSS         localrun serve with no model loaded, the whole process tree (psutil); the
                   others cannot run without their model, so theirs is shown with it

Rounds are interleaved (each round measures every server, in a rotating order); medians are
reported with ratios to llama-server and the targets of issue 5: decode >= 0.95x, TTFT <= 1.2x,
4-stream aggregate >= 0.9x, idle RSS < 120 MB. A benchmark, not a test: it never fails on a
slow number.

Then scripts/bench_dialects.py: the /v1/responses and /v1/messages streams against
/v1/chat/completions on the same localrun server, and fill-in-the-middle (/infill) time to first
token against llama-server's.

Usage: .venv/bin/python scripts/bench_serve.py [--rounds 3] [--threads 2] [--json OUT]
       (or scripts/bench.py --suite serve)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import os
import shutil
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench

THREADS = 2
SLOTS = 4
CTX_PER_SLOT = 2048
N_PREDICT = 128
START_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 300.0
TARGET_DECODE = 0.95
TARGET_TTFT = 1.2
TARGET_AGGREGATE = 0.9
TARGET_IDLE_RSS_MB = 120.0

# About 200 tokens. Each request starts with a tag of its own whose first token (a letter or a
# digit) changes every request, so none shares a cached prefix with the requests before it:
# every TTFT evaluates the whole prompt.
TAGS = string.ascii_letters + string.digits
PROMPT = (
    "{tag}: You are a novelist. Write a long, detailed story about a lighthouse keeper on a "
    "remote northern island who finds a message in a bottle after a violent autumn storm. "
    "Describe the island: its black rocks, the seabirds, the small harbour, the village with "
    "its single shop, the old church and the lighthouse itself with its brass lamp and narrow "
    "spiral stairs. Describe the keeper: his age, his habits, his daily routine of cleaning the "
    "lens and writing the logbook, his memories of the wife he lost years ago and his loneliness "
    "in the long winter nights. Then describe the storm in detail, the night it came, the waves "
    "breaking over the harbour wall and the boats torn from their moorings. In the morning he "
    "walks the beach and finds a green glass bottle with a letter inside, written in a language "
    "he barely knows. Tell what the letter says, who wrote it and why, and what the keeper "
    "decides to do. The story begins:\n\n"
)


def prompt(n: int) -> str:
    # "A0", "B0", ... "90", "A1": the first token changes every request, and no prompt repeats
    # (llama-server also keeps old prompts in a RAM cache and would restore a repeated one).
    return PROMPT.format(tag=f"{TAGS[n % len(TAGS)]}{n // len(TAGS)}")


def say(message: str) -> None:
    bench.say(message)


# --- streaming clients ----------------------------------------------------------------------


@dataclass
class Stream:
    """One measured request."""

    sent: float = 0.0  # perf_counter when the request went out
    first: float | None = None  # first token received
    last: float | None = None  # last token received
    tokens: int = 0  # as the server counts them (chunk count for llama_cpp.server)
    prompt_tokens: int | None = None
    complete: bool = False  # ended with a finish reason (stop/length), not cut
    server_rate: float | None = None  # the server's own decode tok/s, where it reports one
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.sent

    @property
    def decode_rate(self) -> float | None:
        if self.first is None or self.last is None or self.tokens < 2 or self.last <= self.first:
            return None
        return (self.tokens - 1) / (self.last - self.first)


def _lines(port: int, path: str, body: dict[str, Any], result: Stream) -> Iterator[bytes]:
    """POST `body` and yield the response's non-empty lines as they arrive."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        data = json.dumps(body).encode()
        result.sent = time.perf_counter()
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read(300).decode(errors='replace')}")
        while line := resp.readline():
            if line.strip():
                yield line.strip()
    finally:
        conn.close()


def _sse(lines: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return
            yield json.loads(payload)


def localrun_stream(
    port: int, model: str, n: int, n_predict: int, threads: int = THREADS
) -> Stream:
    body = {
        "model": model,
        "prompt": prompt(n),
        "raw": True,
        "stream": True,
        "keep_alive": -1,
        "options": {
            "temperature": 0,
            "repeat_penalty": 1.0,
            "num_predict": n_predict,
            "num_thread": threads,
            "num_ctx": CTX_PER_SLOT,
        },
    }
    return ollama_stream(port, body)


def ollama_stream(port: int, body: dict[str, Any]) -> Stream:
    """Stream /api/generate with `body`, timing each piece as it arrives."""
    result = Stream()
    for line in _lines(port, "/api/generate", body, result):
        obj = json.loads(line)
        if "error" in obj:
            raise RuntimeError(str(obj["error"]))
        if obj.get("response"):
            result.last = time.perf_counter()
            result.first = result.first or result.last
        if obj.get("done"):
            result.tokens = int(obj.get("eval_count") or 0)
            result.prompt_tokens = obj.get("prompt_eval_count")
            result.complete = obj.get("done_reason") in ("stop", "length")
            if obj.get("eval_duration"):
                result.server_rate = result.tokens / (obj["eval_duration"] / 1e9)
    return result


def llama_server_stream(port: int, model: str, n: int, n_predict: int) -> Stream:
    result = Stream()
    body = {
        "prompt": prompt(n),
        "n_predict": n_predict,
        "temperature": 0,
        "repeat_penalty": 1.0,
        "stream": True,
    }
    for obj in _sse(_lines(port, "/completion", body, result)):
        if obj.get("content"):
            result.last = time.perf_counter()
            result.first = result.first or result.last
        if obj.get("stop"):
            timings = obj.get("timings") or {}
            result.tokens = int(timings.get("predicted_n") or obj.get("tokens_predicted") or 0)
            result.prompt_tokens = timings.get("prompt_n")
            result.server_rate = timings.get("predicted_per_second")
            result.complete = True
    return result


def llama_cpp_python_stream(port: int, model: str, n: int, n_predict: int) -> Stream:
    result = Stream()
    body = {
        "prompt": prompt(n),
        "max_tokens": n_predict,
        "temperature": 0,
        "repeat_penalty": 1.0,
        "stream": True,
    }
    # One chunk per token, except that a token ending inside a UTF-8 character is held back and
    # sent with the next: the count can only be low, by the few such tokens.
    for obj in _sse(_lines(port, "/v1/completions", body, result)):
        choice = (obj.get("choices") or [{}])[0]
        if choice.get("text"):
            result.tokens += 1
            result.last = time.perf_counter()
            result.first = result.first or result.last
        if choice.get("finish_reason"):
            result.complete = True
    # A stream interrupted by a newer request ends with [DONE] and no finish reason: cut.
    return result


# --- servers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_pids(pid: int) -> set[int]:
    """A process and all its descendants (localrun's runner is a child of the server)."""
    try:
        return {pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))}
    except psutil.Error:
        return set()


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    total = 0
    for each in tree_pids(pid):
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(each).memory_info().rss
    return total


def request_json(
    port: int, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 600
) -> Any:
    """One request to a local server; its JSON answer (anything but HTTP 200 raises)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body) if body is not None else None
        conn.request(method, path, data, {"Content-Type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}: {raw[:300]!r}")
        return json.loads(raw)
    finally:
        conn.close()


@dataclass
class Server:
    """A server process this script started, and how to stream from it."""

    name: str
    cmd: list[str]
    port: int
    ready_path: str
    streamer: Callable[[int, str, int, int], Stream]
    env: dict[str, str] | None = None
    model: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None
    failure: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def start(self, logdir: Path) -> None:
        self.log = open(logdir / f"{self.name.replace(' ', '_')}.log", "wb")  # noqa: SIM115
        say(f"starting {self.name}: {' '.join(self.cmd)}")
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise bench.Unavailable(f"exited with {self.proc.returncode}: {self.tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", self.ready_path)
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return
            time.sleep(0.1)
        raise bench.Unavailable(f"not ready within {START_TIMEOUT_S:.0f} s: {self.tail()}")

    def tail(self) -> str:
        if self.log is None:
            return "(no log)"
        self.log.flush()
        try:
            text = Path(self.log.name).read_bytes()[-4000:].decode(errors="replace")
        except OSError:
            return "(no log)"
        return bench._tail(text)

    def rss(self) -> int:
        return tree_rss(self.proc.pid) if self.proc is not None else 0

    def stream(self, n: int, n_predict: int = N_PREDICT) -> Stream:
        try:
            return self.streamer(self.port, self.model, n, n_predict)
        except (OSError, http.client.HTTPException, RuntimeError, ValueError) as exc:
            return Stream(error=f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not None:
            self.log.close()


def localrun_server(home: Path, model: Path, name: str | None, threads: int) -> Server:
    """`localrun serve` on a fresh store with the model imported (not loaded)."""
    return localrun_serve(localrun_store(home, model, name, threads), threads)


def localrun_store(home: Path, model: Path, name: str | None, threads: int) -> bench.Localrun:
    """A fresh store in `home` with the model imported (not loaded), for `localrun serve`."""
    env = bench.served_env(home, LOCALRUN_NUM_PARALLEL=str(SLOTS))
    lr = bench.prepare_localrun(home, model, name, threads)
    lr.env = env
    if lr.model:
        # Import the starter into the store now, outside every measurement.
        bench._run([*lr.cmd, "show", lr.model], timeout=600, env=env)
    return lr


def localrun_serve(lr: bench.Localrun, threads: int, name: str = "localrun serve") -> Server:
    """`localrun serve` of the store `localrun_store` prepared, on a port of its own."""
    port = free_port()
    server = Server(
        name,
        [*lr.cmd, "serve", "--host", "127.0.0.1", "--port", str(port)],
        port,
        "/api/version",
        functools.partial(localrun_stream, threads=threads),
        env={**lr.env, "LOCALRUN_HOST": f"127.0.0.1:{port}"},
        model=lr.model,
    )
    if not lr.model:
        server.failure = "`localrun create` failed for this model"
    return server


def llama_server(build_dir: Path, model: Path, threads: int) -> Server:
    port = free_port()
    exe = build_dir / "bin" / "llama-server"
    cmd = [
        str(exe), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
        "-t", str(threads), "-tb", str(threads), "-np", str(SLOTS),
        "-c", str(CTX_PER_SLOT * SLOTS), "--no-kv-unified", "--no-webui", *bench.OFFLOAD,
    ]  # fmt: skip
    server = Server("llama-server", cmd, port, "/health", llama_server_stream)
    if not exe.is_file():
        server.failure = f"no llama-server in {build_dir / 'bin'}"
    return server


def llama_cpp_python_server(model: Path, threads: int) -> Server:
    port = free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port),
        "--n_threads", str(threads), "--n_threads_batch", str(threads),
        "--n_ctx", str(CTX_PER_SLOT),
    ]  # fmt: skip
    env = None
    if bench.OFFLOAD:  # every layer on the GPU, and the C++ runtime first (bench.CXX_FIRST)
        cmd += ["--n_gpu_layers", "-1"]
        env = {**os.environ, **bench.CXX_FIRST}
    return Server("llama_cpp.server", cmd, port, "/v1/models", llama_cpp_python_stream, env=env)


# --- measurement ------------------------------------------------------------------------------


@dataclass
class Results:
    name: str
    decode: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    aggregate: list[float] = field(default_factory=list)
    streams_done: list[int] = field(default_factory=list)  # complete streams of 4, per round
    idle_rss: int | None = None  # bytes, no model loaded (localrun only)
    loaded_rss: int | None = None  # bytes, model loaded
    server_rate: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    failure: str | None = None
    errors: list[str] = field(default_factory=list)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def concurrent(server: Server, base: int, n: int = SLOTS) -> list[Stream]:
    """`n` streams started together (a barrier), each with its own prompt."""
    results: list[Stream] = [Stream() for _ in range(n)]
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        barrier.wait()
        results[i] = server.stream(base + i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


class Meter:
    """Cores that other processes took during the measured stretches (quiet waits excluded):
    everything busy minus this process and the servers it started (whole process trees)."""

    def __init__(self, servers: list[Server]) -> None:
        self.pids = [s.proc.pid for s in servers if s.proc is not None]
        self.wall = self.others = self.steal = 0.0
        self._start: tuple[float, float, float, float] | None = None

    def _ours(self) -> float:
        own = os.times()
        total = own.user + own.system
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        t = proc.cpu_times()
                        total += t.user + t.system + t.children_user + t.children_system
        return total

    def _sample(self) -> tuple[float, float, float, float]:
        cpu = psutil.cpu_times()
        busy = sum(getattr(cpu, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))
        return time.monotonic(), busy, self._ours(), getattr(cpu, "steal", 0.0)

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> None:
        assert self._start is not None
        t0, busy0, ours0, steal0 = self._start
        t1, busy1, ours1, steal1 = self._sample()
        self.wall += t1 - t0
        self.others += max(0.0, (busy1 - busy0) - (ours1 - ours0))
        self.steal += steal1 - steal0

    def cores(self) -> tuple[float, float]:
        wall = max(self.wall, 1e-9)
        return self.others / wall, self.steal / wall


def measure(
    servers: list[Server], rounds: int, meter: Meter, quiet_s: float = 0.0
) -> dict[str, Results]:
    results = {s.name: Results(s.name, failure=s.failure) for s in servers}
    live = [s for s in servers if not s.failure]
    counter = 1000  # request numbers: every request gets a prompt of its own
    for s in live:
        r = results[s.name]
        say(f"{s.name}: warm-up (loads the model)")
        warm = s.stream(counter, 16)
        counter += 1
        if warm.error or not warm.tokens:
            r.failure = f"warm-up failed: {warm.error or 'no tokens'}"
            s.failure = r.failure
            continue
        r.loaded_rss = s.rss()
    live = [s for s in live if not s.failure]
    for round_ in range(rounds):
        if quiet_s > 0:
            wait_for_quiet(quiet_s)
        meter.start()
        shift = round_ % max(len(live), 1)
        for s in live[shift:] + live[:shift]:
            r = results[s.name]
            say(f"round {round_ + 1}/{rounds}: {s.name}: one stream")
            one = s.stream(counter)
            counter += 1
            if one.error:
                r.errors.append(one.error)
            else:
                if one.decode_rate is not None:
                    r.decode.append(one.decode_rate)
                if one.ttft is not None:
                    r.ttft.append(one.ttft)
                if one.server_rate:
                    r.server_rate.append(float(one.server_rate))
                r.prompt_tokens = one.prompt_tokens
            say(f"round {round_ + 1}/{rounds}: {s.name}: {SLOTS} streams at once")
            many = concurrent(s, counter)
            counter += SLOTS
            r.errors += [m.error for m in many if m.error]
            r.streams_done.append(sum(1 for m in many if m.complete and not m.error))
            lasts = [m.last for m in many if m.last is not None]
            tokens = sum(m.tokens for m in many if not m.error)
            if lasts and tokens:
                r.aggregate.append(tokens / (max(lasts) - min(m.sent for m in many)))
        meter.stop()
        for s in live:
            r = results[s.name]
            r.loaded_rss = max(r.loaded_rss or 0, s.rss())
    return results


def run(
    build_dir: Path | None,
    model: Path,
    *,
    rounds: int = 3,
    threads: int = THREADS,
    localrun_model: str | None = None,
    only: tuple[str, ...] = ("localrun", "llama-server", "llama_cpp.server"),
    quiet_s: float = 0.0,
) -> dict[str, Any]:
    """Start the servers, measure, stop them; returns the numbers and a report under 'report'."""
    work = Path(tempfile.mkdtemp(prefix="localrun-bench-serve-"))
    servers: list[Server] = []
    try:
        if "localrun" in only:
            home = work / "home"
            home.mkdir()
            try:
                servers.append(localrun_server(home, model, localrun_model, threads))
            except bench.Unavailable as exc:
                failed = Server("localrun serve", [], 0, "", localrun_stream)
                failed.failure = str(exc)
                servers.append(failed)
        if "llama-server" in only:
            if build_dir is None:
                failed = Server("llama-server", [], 0, "", llama_server_stream)
                failed.failure = "llama.cpp build unavailable"
                servers.append(failed)
            else:
                servers.append(llama_server(build_dir, model, threads))
        if "llama_cpp.server" in only:
            servers.append(llama_cpp_python_server(model, threads))
        idle: int | None = None
        # Started one at a time: a start (and localrun's idle RSS) is measured on a quiet machine.
        for s in servers:
            if s.failure:
                continue
            try:
                s.start(work)
                s.wait_ready()
            except (OSError, bench.Unavailable) as exc:
                s.failure = str(exc)
                say(f"{s.name}: n/a: {exc}")
                continue
            if s.name == "localrun serve":
                time.sleep(1.0)  # let the import settle; nothing is loaded until a request
                idle = s.rss()
        meter = Meter(servers)
        results = measure(servers, rounds, meter, quiet_s)
        others, steal = meter.cores()
        dialects = _dialects(servers, build_dir, work, threads, rounds)
        if idle is not None:
            results["localrun serve"].idle_rss = idle
        logs = {s.name: s.tail() for s in servers if s.failure}
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)
    for name, tail in logs.items():
        if results[name].failure is None:
            results[name].failure = tail
    ctx = {
        "model": str(model),
        "threads": threads,
        "rounds": rounds,
        "n_predict": N_PREDICT,
        "slots": SLOTS,
        "ctx_per_slot": CTX_PER_SLOT,
        "other_cores": round(others, 2),
        "steal_cores": round(steal, 2),
    }
    return {
        "context": ctx,
        "results": {k: asdict(v) for k, v in results.items()},
        "dialects": {
            kind: {k: asdict(v) for k, v in rows.items()} for kind, rows in dialects.items()
        },
        "report": report(ctx, results) + "\n" + _dialects_report(dialects),
    }


def _dialects_report(measured: dict[str, Any]) -> str:
    import bench_dialects

    return bench_dialects.report(measured)


def _dialects(
    servers: list[Server], build_dir: Path | None, work: Path, threads: int, rounds: int
) -> dict[str, Any]:
    """scripts/bench_dialects.py while the servers are up (localrun's dialects, FIM)."""
    import bench_dialects  # it imports this module: loaded once this one is

    up = {s.name: s for s in servers if not s.failure and s.proc is not None}
    return bench_dialects.measure(
        up.get("localrun serve"), build_dir, work, threads=threads, rounds=rounds, first=100_000
    )


# --- report -----------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None, ref: float | None) -> float | None:
    return None if value is None or not ref else value / ref


def report(ctx: dict[str, Any], results: dict[str, Results]) -> str:
    ref = results.get("llama-server")
    busy = ctx["other_cores"] + ctx["steal_cores"] > bench.BUSY_CORES
    lines = [
        f"model    {ctx['model']}",
        f"threads  {ctx['threads']}   rounds {ctx['rounds']} (interleaved, median)   "
        f"{ctx['n_predict']} tokens, greedy, raw completion of a ~200-token prompt",
        f"slots    localrun and llama-server {ctx['slots']} x {ctx['ctx_per_slot']} context; "
        f"llama_cpp.server one {ctx['ctx_per_slot']} context; flash attention llama.cpp's default "
        "(auto) in localrun and llama-server, off in llama_cpp.server (its default)",
        f"machine  while measuring, other processes used {ctx['other_cores']:.2f} cores, the "
        "hypervisor stole "
        f"{ctx['steal_cores']:.2f}"
        + ("  -- BUSY: the numbers are unreliable, rerun when quiet" if busy else ""),
        "",
    ]
    header = (
        "server", "decode tok/s (min-max)", "x llama-server", "TTFT ms", "x llama-server",
        "4 streams done", "4-stream tok/s", "x llama-server", "RSS MB",
    )  # fmt: skip
    rows: list[tuple[str, ...]] = [header]
    ref_decode = _median(ref.decode) if ref else None
    ref_ttft = _median(ref.ttft) if ref else None
    ref_agg = _median(ref.aggregate) if ref else None
    for r in results.values():
        if r.failure and not r.decode:
            rows.append((r.name, f"n/a: {r.failure[:150]}"))
            continue
        decode, ttft, agg = _median(r.decode), _median(r.ttft), _median(r.aggregate)
        done = (
            f"{min(r.streams_done)}-{max(r.streams_done)}/{SLOTS}"
            if r.streams_done and min(r.streams_done) != max(r.streams_done)
            else f"{r.streams_done[0] if r.streams_done else 0}/{SLOTS}"
        )
        cut = SLOTS * len(r.streams_done) - sum(r.streams_done)
        if cut:
            done += f" ({cut} cut)"
        rss = []
        if r.idle_rss is not None:
            rss.append(f"{r.idle_rss / 1e6:.0f} idle")
        if r.loaded_rss:
            rss.append(f"{r.loaded_rss / 1e6:.0f} loaded")
        rows.append(
            (
                r.name,
                f"{_fmt(decode)} ({min(r.decode):.0f}-{max(r.decode):.0f})" if r.decode else "-",
                _fmt(_ratio(decode, ref_decode), 2),
                _fmt(None if ttft is None else ttft * 1000, 0),
                _fmt(_ratio(ttft, ref_ttft), 2),
                done,
                _fmt(agg),
                _fmt(_ratio(agg, ref_agg), 2),
                ", ".join(rss) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows if len(row) > i) for i in range(len(header))]
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    lr = results.get("localrun serve")
    if lr is not None and not (lr.failure and not lr.decode):
        lines += _verdicts(lr, ref_decode, ref_ttft, ref_agg)
    counted = [f"{r.name} {r.prompt_tokens}" for r in results.values() if r.prompt_tokens]
    if counted:
        lines.append("prompt tokens (as each server counts them): " + ", ".join(counted))
    for r in results.values():
        if r.server_rate:
            lines.append(f"{r.name}: its own decode rate {_median(r.server_rate):.1f} tok/s")
        if r.errors:
            lines.append(f"{r.name}: {len(r.errors)} request error(s), e.g. {r.errors[0][:200]}")
    return "\n".join(lines)


def _verdicts(
    lr: Results, ref_decode: float | None, ref_ttft: float | None, ref_agg: float | None
) -> list[str]:
    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else "met" if ok else "MISSED"

    decode = _ratio(_median(lr.decode), ref_decode)
    ttft = _ratio(_median(lr.ttft), ref_ttft)
    agg = _ratio(_median(lr.aggregate), ref_agg)
    all_done = bool(lr.streams_done) and min(lr.streams_done) == SLOTS
    idle_mb = None if lr.idle_rss is None else lr.idle_rss / 1e6
    return [
        "targets (localrun serve)",
        f"  decode     {_fmt(decode, 2)}x llama-server   target >= {TARGET_DECODE}  "
        f"{verdict(None if decode is None else decode >= TARGET_DECODE)}",
        f"  TTFT       {_fmt(ttft, 2)}x llama-server   target <= {TARGET_TTFT}   "
        f"{verdict(None if ttft is None else ttft <= TARGET_TTFT)}",
        f"  4 streams  all complete: {'yes' if all_done else 'NO'}; aggregate {_fmt(agg, 2)}x   "
        f"target >= {TARGET_AGGREGATE}  "
        f"{verdict(None if agg is None else agg >= TARGET_AGGREGATE and all_done)}",
        f"  idle RSS   {_fmt(idle_mb, 0)} MB   target < {TARGET_IDLE_RSS_MB:.0f} MB  "
        f"{verdict(None if idle_mb is None else idle_mb < TARGET_IDLE_RSS_MB)}",
        "",
    ]


def wait_for_quiet(limit_s: float, busy_percent: float = 10.0) -> None:
    """Wait (up to `limit_s`) until the machine's CPUs are mostly idle for a few seconds."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        used = psutil.cpu_percent(interval=3.0)
        if used < busy_percent:
            return
        say(f"the machine is busy ({used:.0f}% CPU); waiting for it to quiet down")
    say(f"still busy after {limit_s:.0f} s; measuring anyway")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, help="GGUF file (default: the SmolLM2 starter)")
    parser.add_argument(
        "--localrun-model", help="name localrun serves (default: as scripts/bench.py)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--threads", type=int, default=THREADS, help="threads (default: 2)")
    parser.add_argument("--cache-dir", type=Path, default=bench.DEFAULT_CACHE)
    parser.add_argument("--llama-cpp-build", type=Path, help="reuse (or build into) this folder")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="build jobs")
    parser.add_argument(
        "--only",
        default="localrun,llama-server,llama_cpp.server",
        help="comma-separated servers to measure (default: all three)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--cuda", action="store_true", help=bench.CUDA_HELP)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each round, wait up to this long for the CPUs to be idle (default: 0)",
    )
    args = parser.parse_args(argv)
    model = args.model or bench._default_model()
    if model is None or not model.is_file():
        parser.error(f"no GGUF model at {model}; pass --model PATH")
    only = tuple(part.strip() for part in args.only.split(",") if part.strip())
    build_dir: Path | None = None
    if "llama-server" in only or args.cuda:
        build = bench.build_for(args, parser)
        build_dir = build.dir if build else None
    out = run(
        build_dir,
        model,
        rounds=args.rounds,
        threads=args.threads,
        localrun_model=args.localrun_model,
        only=only,
        quiet_s=args.wait_quiet,
    )
    print(out["report"])
    if args.json:
        args.json.write_text(json.dumps({k: v for k, v in out.items() if k != "report"}, indent=2))
        say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
