#!/usr/bin/env python3
"""Speed of `localrun serve` against llama.cpp's llama-server and `python -m llama_cpp.server`.

One run, the same GGUF (SmolLM2 135M by default), the same threads (2) and the same greedy
sampling (temperature 0, no repeat penalty) for the three servers, all started by this script:

  localrun serve     LOCALRUN_HOME in a temporary folder, the model imported first; POST
                     /api/generate with raw: true (no chat template), NDJSON stream
  llama-server       built from the llama.cpp that llama-cpp-python vendors (scripts/bench/decode.py
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

Then benchlib/dialects.py: the /v1/responses and /v1/messages streams against
/v1/chat/completions on the same localrun server, and fill-in-the-middle (/infill) time to first
token against llama-server's.

Usage: .venv/bin/python scripts/bench/serve.py [--rounds 3] [--threads 2] [--json OUT]
       (or scripts/bench/decode.py --suite serve)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from benchlib import dialects
from benchlib.common import Unavailable, default_model, say
from benchlib.machine import BUSY_CORES, Meter, wait_for_quiet
from benchlib.report import fmt, median, ratio
from benchlib.stacks.build import CUDA_HELP, DEFAULT_CACHE, build_for
from benchlib.stacks.serve import (
    SLOTS,
    Server,
    llama_cpp_python_server,
    llama_server,
    localrun_server,
)
from benchlib.streams import (
    CTX_PER_SLOT,
    N_PREDICT,
    THREADS,
    Stream,
    llama_server_stream,
    localrun_stream,
)

TARGET_DECODE = 0.95
TARGET_TTFT = 1.2
TARGET_AGGREGATE = 0.9
TARGET_IDLE_RSS_MB = 120.0


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
            except Unavailable as exc:
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
            except (OSError, Unavailable) as exc:
                s.failure = str(exc)
                say(f"{s.name}: n/a: {exc}")
                continue
            if s.name == "localrun serve":
                time.sleep(1.0)  # let the import settle; nothing is loaded until a request
                idle = s.rss()
        meter = Meter([s.proc.pid for s in servers if s.proc is not None])
        results = measure(servers, rounds, meter, quiet_s)
        others, steal = meter.cores()
        measured = _dialects(servers, build_dir, work, threads, rounds)
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
            kind: {k: asdict(v) for k, v in rows.items()} for kind, rows in measured.items()
        },
        "report": report(ctx, results) + "\n" + dialects.report(measured),
    }


def _dialects(
    servers: list[Server], build_dir: Path | None, work: Path, threads: int, rounds: int
) -> dict[str, Any]:
    """benchlib/dialects.py while the servers are up (localrun's dialects, FIM)."""
    up = {s.name: s for s in servers if not s.failure and s.proc is not None}
    return dialects.measure(
        up.get("localrun serve"), build_dir, work, threads=threads, rounds=rounds, first=100_000
    )


def report(ctx: dict[str, Any], results: dict[str, Results]) -> str:
    ref = results.get("llama-server")
    busy = ctx["other_cores"] + ctx["steal_cores"] > BUSY_CORES
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
    ref_decode = median(ref.decode) if ref else None
    ref_ttft = median(ref.ttft) if ref else None
    ref_agg = median(ref.aggregate) if ref else None
    for r in results.values():
        if r.failure and not r.decode:
            rows.append((r.name, f"n/a: {r.failure[:150]}"))
            continue
        decode, ttft, agg = median(r.decode), median(r.ttft), median(r.aggregate)
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
                f"{fmt(decode)} ({min(r.decode):.0f}-{max(r.decode):.0f})" if r.decode else "-",
                fmt(ratio(decode, ref_decode), 2),
                fmt(None if ttft is None else ttft * 1000, 0),
                fmt(ratio(ttft, ref_ttft), 2),
                done,
                fmt(agg),
                fmt(ratio(agg, ref_agg), 2),
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
            lines.append(f"{r.name}: its own decode rate {median(r.server_rate):.1f} tok/s")
        if r.errors:
            lines.append(f"{r.name}: {len(r.errors)} request error(s), e.g. {r.errors[0][:200]}")
    return "\n".join(lines)


def _verdicts(
    lr: Results, ref_decode: float | None, ref_ttft: float | None, ref_agg: float | None
) -> list[str]:
    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else "met" if ok else "MISSED"

    decode = ratio(median(lr.decode), ref_decode)
    ttft = ratio(median(lr.ttft), ref_ttft)
    agg = ratio(median(lr.aggregate), ref_agg)
    all_done = bool(lr.streams_done) and min(lr.streams_done) == SLOTS
    idle_mb = None if lr.idle_rss is None else lr.idle_rss / 1e6
    return [
        "targets (localrun serve)",
        f"  decode     {fmt(decode, 2)}x llama-server   target >= {TARGET_DECODE}  "
        f"{verdict(None if decode is None else decode >= TARGET_DECODE)}",
        f"  TTFT       {fmt(ttft, 2)}x llama-server   target <= {TARGET_TTFT}   "
        f"{verdict(None if ttft is None else ttft <= TARGET_TTFT)}",
        f"  4 streams  all complete: {'yes' if all_done else 'NO'}; aggregate {fmt(agg, 2)}x   "
        f"target >= {TARGET_AGGREGATE}  "
        f"{verdict(None if agg is None else agg >= TARGET_AGGREGATE and all_done)}",
        f"  idle RSS   {fmt(idle_mb, 0)} MB   target < {TARGET_IDLE_RSS_MB:.0f} MB  "
        f"{verdict(None if idle_mb is None else idle_mb < TARGET_IDLE_RSS_MB)}",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, help="GGUF file (default: the SmolLM2 starter)")
    parser.add_argument(
        "--localrun-model", help="name localrun serves (default: as scripts/bench/decode.py)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--threads", type=int, default=THREADS, help="threads (default: 2)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--llama-cpp-build", type=Path, help="reuse (or build into) this folder")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="build jobs")
    parser.add_argument(
        "--only",
        default="localrun,llama-server,llama_cpp.server",
        help="comma-separated servers to measure (default: all three)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--cuda", action="store_true", help=CUDA_HELP)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each round, wait up to this long for the CPUs to be idle (default: 0)",
    )
    args = parser.parse_args(argv)
    model = args.model or default_model()
    if model is None or not model.is_file():
        parser.error(f"no GGUF model at {model}; pass --model PATH")
    only = tuple(part.strip() for part in args.only.split(",") if part.strip())
    build_dir: Path | None = None
    if "llama-server" in only or args.cuda:
        build = build_for(args, parser)
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
