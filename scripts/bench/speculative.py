#!/usr/bin/env python3
"""Speculative decoding and the disk prompt cache: `localrun serve` and `localrun run` against
llama-server built from the same llama.cpp, on the same GGUF (SmolLM2 135M by default) with the
same threads and the same greedy sampling (temperature 0, no repeat penalty).

Decode (effective rate: tokens generated / generation time, as each server reports it):

  llama-server            no speculation
  llama-server ngram-mod  --spec-type ngram-mod (its defaults)
  llama-server ngram-simple --spec-type ngram-simple
  localrun off            localrun serve, options.speculate = "off"
  localrun auto           localrun serve, the default (prompt lookup where it pays)

(each its own process, llama-server's and localrun's alike, so every stack's slots see the same
requests in the same order; with --draft, `localrun draft` is the auto server's other model,
which has a runner of its own)

on three workloads of several prompts each (scripts/benchlib/workloads.py): `code` (rewrite a
Python file of 40-60 lines with one identifier renamed), `quote` (summarise a text by quoting
its sentences) and `prose` (a story, an essay). Every request is a raw completion of the same
prompt text, N_PREDICT tokens at most; rounds are interleaved (every stack once per round, in a
rotating order); a round's rate is all of a workload's tokens over their generation time, and
the median over rounds is reported; localrun auto's ratios are given twice, as the ratio of
those medians and as the median of the round-by-round ratios (with their range), the steadier
reading where a shared machine's speed drifts from one minute to the next. The output token
counts of all stacks are checked equal (a stack that stopped early is flagged), and how often
each speculating stack's greedy text differs from its own without speculation is reported (a
batch of tokens can flip a near tie in the last bits of the logits).

ngram-mod keeps its n-gram table across requests, so from the second round on it drafts each
answer from the one it gave the same prompt before; its first request of each prompt is
reported apart. Then scripts/measure/lookup_bound.py's bound (benchlib/bound.py): how fast an oracle
that drafts every run a prompt lookup could find would be, at this machine's measured batch
costs.

Prompt cache (benchlib/promptcache.py): a model with a ~1,500-token SYSTEM prompt; two fresh
`localrun run` processes in a row (the first evaluates and saves the prefix, the second restores
it), the time to the first token as each reports it (load excluded: prompt eval duration) and as
a person waits for it (process start to the first byte on stdout); against a cold llama-server's
time to the first token for the same rendered prompt.

A benchmark, not a test: it prints ratios and the issue's targets, it never fails on a slow
number. Usage: .venv/bin/python scripts/bench/speculative.py [--rounds 3] [--threads 2] [--json OUT]
(or scripts/bench/decode.py --suite spec)
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from benchlib import bound
from benchlib.common import Unavailable, default_model, run_command, say
from benchlib.load import busy
from benchlib.promptcache import cache_report, cache_suite
from benchlib.stacks.build import CUDA_HELP, DEFAULT_CACHE, OFFLOAD, build_for
from benchlib.stacks.serve import Server, llama_server_with, localrun_serve, localrun_store
from benchlib.stacks.store import localrun_cmd
from benchlib.streams import request_json
from benchlib.workloads import CTX, EDIT_WORKLOADS, N_PREDICT, SAMPLING, WORKLOADS

THREADS = 2
# The issues' targets, as ratios of effective decode rates: localrun auto against llama-server
# without speculation (the gains kept, issue 45), against its best n-gram mode, and against
# localrun off (speculation never costs).
TARGET_VS_PLAIN = {"code": 1.45, "quote": 1.29, "prose": 1.04}
TARGET_EDIT_VS_NGRAM = 1.0


@dataclass
class Sample:
    tokens: int = 0
    rate: float = 0.0  # tokens per second of generation
    drafted: int = 0
    accepted: int = 0
    text: str = ""
    error: str | None = None


def _post(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = request_json(port, "POST", path, body)
    return answer


def llama_server_sample(port: int, prompt: str) -> Sample:
    body = {"prompt": prompt, "n_predict": N_PREDICT, "cache_prompt": False, **SAMPLING}
    answer = _post(port, "/completion", body)
    t = answer["timings"]
    return Sample(
        tokens=int(t["predicted_n"]),
        rate=float(t["predicted_per_second"]),
        drafted=int(t.get("draft_n") or 0),
        accepted=int(t.get("draft_n_accepted") or 0),
        text=str(answer["content"]),
    )


def localrun_sample(port: int, model: str, prompt: str, speculate: str) -> Sample:
    options = {**SAMPLING, "num_predict": N_PREDICT, "speculate": speculate, "num_ctx": CTX}
    body = {"model": model, "prompt": prompt, "raw": True, "stream": False, "options": options}
    answer = _post(port, "/api/generate", body)
    seconds = answer["eval_duration"] / 1e9
    return Sample(
        tokens=int(answer["eval_count"]),
        rate=answer["eval_count"] / seconds if seconds > 0 else 0.0,
        drafted=int(answer.get("draft_count") or 0),
        accepted=int(answer.get("draft_accepted_count") or 0),
        text=str(answer["response"]),
    )


def _sample(stack: Any, prompt: str) -> Sample:
    try:
        sample: Sample = stack.measure(prompt)
    except (OSError, http.client.HTTPException, RuntimeError, KeyError) as exc:
        sample = Sample(error=f"{type(exc).__name__}: {exc}")
    return sample


@dataclass
class Stack:
    name: str
    measure: Any  # (prompt) -> Sample
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def round(self, workload: str, r: int) -> Sample | None:
        """Round `r` of a workload, all its prompts as one sample: tokens, drafts and
        generation time summed (None if a prompt failed)."""
        per = len(WORKLOADS[workload])
        samples = self.samples.get(workload, [])[r * per : (r + 1) * per]
        if len(samples) < per or any(s.error is not None or not s.rate for s in samples):
            return None
        tokens = sum(s.tokens for s in samples)
        seconds = sum(s.tokens / s.rate for s in samples)
        return Sample(
            tokens=tokens,
            rate=tokens / seconds if seconds > 0 else 0.0,
            drafted=sum(s.drafted for s in samples),
            accepted=sum(s.accepted for s in samples),
        )

    def per_round(self, other: Stack, workload: str) -> list[float]:
        """This stack's rate over `other`'s, round by round: the two ran minutes apart at most,
        so a machine whose speed drifts (a shared host) moves both."""
        n = len(self.samples.get(workload, [])) // len(WORKLOADS[workload])
        pairs = [(self.round(workload, r), other.round(workload, r)) for r in range(n)]
        return [a.rate / b.rate for a, b in pairs if a is not None and b is not None and b.rate]

    def median(self, workload: str) -> float | None:
        """The median over rounds of a round's rate (all its prompts' tokens over their
        generation time)."""
        per = len(WORKLOADS[workload])
        n = len(self.samples.get(workload, [])) // per
        rates = [got.rate for r in range(n) if (got := self.round(workload, r)) is not None]
        return statistics.median(rates) if rates else None


def decode_suite(
    build_dir: Path | None,
    model: Path,
    threads: int,
    rounds: int,
    logdir: Path,
    home: Path,
    draft: Path | None = None,
    *,
    busy_cores: int = 0,
    workloads: tuple[str, ...] = tuple(WORKLOADS),
    only_stacks: tuple[str, ...] = (),
) -> dict[str, Any]:
    servers: list[Server] = []
    stacks: list[Stack] = []
    lr = localrun_store(home, model, None, threads)
    # One server per mode, as llama-server runs one process per mode: each sees the same
    # requests in the same order, so its slots hold the same prompts when an answer is
    # compared with another mode's. (In one server a mode's request would find the prompt
    # the other mode left in the slot and evaluate only its last token, whose logits differ
    # in the last bits from a prompt evaluated whole, flipping near ties speculation never
    # touched.)
    modes = ["off", "auto"]
    # Each request of these is a fresh one (no earlier answer drafted from); `localrun repeat`
    # is auto with the answers of earlier rounds to draft from, as ngram-mod has them.
    fresh = dataclasses.replace(lr, env={**lr.env, "LOCALRUN_ANSWER_MEMORY": "0"})
    lr_by_mode = {m: localrun_serve(fresh, threads, f"localrun serve {m}") for m in modes}
    lr_by_mode["repeat"] = localrun_serve(lr, threads, "localrun serve repeat")
    servers.extend(lr_by_mode.values())
    specs: list[list[str]] = [[], ["--spec-type", "ngram-mod"], ["--spec-type", "ngram-simple"]]
    drafted = ""
    if draft is not None:
        offload = ["-ngld", "99"] if OFFLOAD else []
        specs.append(["--spec-type", "draft-simple", "-md", str(draft), *offload])
        drafted = _create_drafted(home, model, draft)
    llama_servers = []
    if build_dir is not None:
        llama_servers = [llama_server_with(build_dir, model, threads, spec) for spec in specs]
    servers.extend(llama_servers)
    try:
        for server in servers:
            server.start(logdir)
        for server in servers:
            server.wait_ready()
        for server in llama_servers:
            port = server.port
            stacks.append(Stack(server.name, lambda p, port=port: llama_server_sample(port, p)))
        for mode in [*modes, "repeat"]:
            port = lr_by_mode[mode].port
            speculate = "auto" if mode == "repeat" else mode
            stacks.append(
                Stack(
                    f"localrun {mode}",
                    lambda p, m=speculate, port=port: localrun_sample(port, lr.model, p, m),
                )
            )
        if drafted:
            # The drafted model has a runner of its own in the auto server.
            port = lr_by_mode["auto"].port
            stacks.append(
                Stack(
                    "localrun draft",
                    lambda p, port=port: localrun_sample(port, drafted, p, "draft"),
                )
            )
        if only_stacks:
            stacks = [s for s in stacks if s.name in only_stacks]
        # Warm up: load the model in every server, outside the measurement.
        for stack in stacks:
            stack.measure("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
        for r in range(rounds):
            load = f", {busy_cores} core(s) kept busy" if busy_cores else ""
            say(f"round {r + 1} of {rounds}{load}")
            order = stacks[r % len(stacks) :] + stacks[: r % len(stacks)]
            with busy(busy_cores, max_s=3600):
                for workload in workloads:
                    for stack in order:
                        for prompt in WORKLOADS[workload]:
                            stack.samples.setdefault(workload, []).append(_sample(stack, prompt))
    finally:
        for server in servers:
            server.stop()
    return {"stacks": stacks}


def _create_drafted(home: Path, model: Path, draft: Path) -> str:
    """A localrun model FROM `model` with DRAFT `draft` (in the bench's store); "" if refused."""
    env = {**os.environ, "LOCALRUN_HOME": str(home)}
    env.pop("LOCALRUN_MODELS", None)
    modelfile = home / "Modelfile.draft"
    modelfile.write_text(f"FROM {model.resolve()}\nDRAFT {draft.resolve()}\n")
    try:
        run_command([*localrun_cmd(), "create", "drafted", "-f", str(modelfile)], 600, env)
    except Unavailable as exc:
        say(f"localrun create with DRAFT failed: {exc}")
        return ""
    return "drafted:latest"


def _later(stack: Stack, workload: str) -> float | None:
    """The median rate of rounds 2 on (each prompt asked before)."""
    per = len(WORKLOADS[workload])
    n = len(stack.samples.get(workload, [])) // per
    rates = [got.rate for r in range(1, n) if (got := stack.round(workload, r)) is not None]
    return statistics.median(rates) if rates else None


def _first(stack: Stack, workload: str) -> Sample | None:
    return stack.round(workload, 0)


def decode_report(stacks: list[Stack]) -> tuple[str, dict[str, Any]]:
    by_name = {s.name: s for s in stacks}
    lines = [
        f"Decode, effective tok/s, greedy, N_PREDICT={N_PREDICT}: per round, all of a workload's "
        "prompts' tokens over their generation time; the median over rounds",
        "",
    ]
    header = ["workload", *[s.name for s in stacks]]
    lines.append(" | ".join(header))
    lines.append(" | ".join("---" for _ in header))
    figures: dict[str, Any] = {}
    for workload in WORKLOADS:
        row = [workload]
        for stack in stacks:
            median = stack.median(workload)
            first = _first(stack, workload)
            cell = "-" if median is None else f"{median:.1f}"
            if first is not None and first.drafted:
                cell += f" ({first.accepted}/{first.drafted} acc.)"
            row.append(cell)
            figures.setdefault(workload, {})[stack.name] = median
        lines.append(" | ".join(row))
    lines += ["", "Token counts (first round):"]
    for workload in WORKLOADS:
        counts = {s.name: (_first(s, workload) or Sample()).tokens for s in stacks}
        same = len(set(counts.values())) == 1
        lines.append(f"  {workload}: {counts}" + ("" if same else "  <- NOT EQUAL"))
    lines += ["", "Greedy answers equal to the same stack's without speculation (every prompt):"]
    pairs = [("localrun auto", "localrun off")]
    pairs += [(n, "llama-server") for n in by_name if n.startswith("llama-server ")]
    pairs += [("localrun draft", "localrun off")]
    for fast, plain in pairs:
        if fast not in by_name or plain not in by_name:
            continue
        equal = total = 0
        for workload in WORKLOADS:
            for a, b in zip(
                by_name[fast].samples.get(workload, []),
                by_name[plain].samples.get(workload, []),
                strict=False,
            ):
                if a.error is None and b.error is None:
                    total += 1
                    equal += a.text == b.text
        lines.append(f"  {fast}: {equal}/{total}")

    # localrun auto over each reference round by round: a second reading of the ratio of
    # medians, steadier where the machine's speed drifts.
    auto = by_name.get("localrun auto")
    rounds: dict[str, dict[str, list[float]]] = {
        workload: {
            ref: auto.per_round(by_name[ref], workload)
            for ref in ("localrun off", "llama-server")
            if auto is not None and ref in by_name
        }
        for workload in WORKLOADS
    }
    figures["per_round"] = rounds

    def paired(workload: str, ref: str) -> str:
        got = rounds[workload].get(ref)
        if not got:
            return ""
        middle = statistics.median(got)
        return f" (round by round: median {middle:.2f}x, {min(got):.2f}-{max(got):.2f})"

    lines += ["", "localrun auto against localrun off, the same server build (target >= 0.98x):"]
    for workload in WORKLOADS:
        on, off = figures[workload].get("localrun auto"), figures[workload].get("localrun off")
        if on and off:
            lines.append(f"  {workload}: {on / off:.2f}x{paired(workload, 'localrun off')}")
    lines += ["", "Ratios of localrun auto (targets from the issue):"]

    def ratio(workload: str, ref: str) -> float | None:
        mine = figures[workload].get("localrun auto")
        other = figures[workload].get(ref)
        return mine / other if mine and other else None

    best_ngram = ("llama-server ngram-mod", "llama-server ngram-simple")
    for workload in WORKLOADS:
        vs_plain = ratio(workload, "llama-server")
        target = TARGET_VS_PLAIN.get(workload)
        wanted = f" (target >= {target}x)" if target else ""
        parts = [
            f"{workload}: {_x(vs_plain)} llama-server{paired(workload, 'llama-server')}{wanted}"
        ]
        if workload in EDIT_WORKLOADS:
            rates = [figures[workload].get(n) for n in best_ngram]
            best = max((r for r in rates if r), default=None)
            mine = figures[workload].get("localrun auto")
            vs = mine / best if mine and best else None
            parts.append(f"{_x(vs)} its best n-gram mode (target >= {TARGET_EDIT_VS_NGRAM}x)")
        lines.append("  " + "; ".join(parts))
    # ngram-mod keeps its n-gram table across requests: from the second round on it drafts
    # this prompt's answer from the answer it gave before, whoever asked. Its first request is
    # the same request without that memory; `localrun repeat` drafts from earlier answers too,
    # but only the same party's (engine.speculation.answers), here the one user of a loopback
    # server.
    lines += ["", "A repeated request (rounds 2 on: each prompt asked before), median tok/s:"]
    for workload in WORKLOADS:
        later = {
            n: _later(by_name[n], workload)
            for n in ("localrun repeat", "llama-server ngram-mod", "localrun auto")
            if n in by_name
        }
        shown = ", ".join(f"{n} {r:.1f}" for n, r in later.items() if r)
        mine, theirs = later.get("localrun repeat"), later.get("llama-server ngram-mod")
        vs = f"; localrun repeat {mine / theirs:.2f}x ngram-mod" if mine and theirs else ""
        if shown:
            lines.append(f"  {workload}: {shown}{vs}")
        figures.setdefault("repeated", {})[workload] = later
    lines += ["", "llama-server's n-gram modes on the first request of each prompt:"]
    for workload in EDIT_WORKLOADS:
        fresh = {n: _first(by_name[n], workload) for n in best_ngram if n in by_name}
        firsts = {n: s.rate for n, s in fresh.items() if s is not None and s.rate}
        figures.setdefault("first_request", {})[workload] = firsts
        mine = figures[workload].get("localrun auto")
        top = max(firsts.values(), default=None)
        shown = ", ".join(f"{n.removeprefix('llama-server ')} {r:.1f}" for n, r in firsts.items())
        vs = mine / top if mine and top else None
        lines.append(f"  {workload}: {shown} tok/s; localrun auto {_x(vs)} the best of them")
    return "\n".join(lines), figures


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def run(
    build_dir: Path | None,
    model: Path,
    *,
    rounds: int,
    threads: int,
    only: tuple[str, ...],
    draft: Path | None = None,
    busy_cores: int = 0,
    workloads: tuple[str, ...] = tuple(WORKLOADS),
    stacks: tuple[str, ...] = (),
    with_bound: bool = True,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    report = []
    with tempfile.TemporaryDirectory(prefix="localrun-bench-spec-") as tmp:
        root = Path(tmp)
        if "decode" in only:
            decoded = decode_suite(
                build_dir, model, threads, rounds, root, root / "home-decode", draft,
                busy_cores=busy_cores, workloads=workloads, only_stacks=stacks,
            )  # fmt: skip
            text, figures = decode_report(decoded["stacks"])
            if with_bound:  # what any prompt-lookup drafter could reach here (servers gone)
                text += _bound_text(model, threads, workloads, figures)
            print(text + "\n", flush=True)
            report.append(text)
            out["decode"] = figures
        if "cache" in only:
            cached = cache_suite(build_dir, model, threads, root / "home-cache")
            report.append(cache_report(cached))
            out["cache"] = cached
    out["report"] = "\n\n".join(report)
    return out


def _bound_text(
    model: Path, threads: int, workloads: tuple[str, ...], figures: dict[str, Any]
) -> str:
    costs, found = bound.bounds(
        model,
        threads,
        {w: WORKLOADS[w] for w in workloads},
        SAMPLING,
        n_predict=N_PREDICT,
        n_ctx=CTX,
        gpu_layers=99 if OFFLOAD else 0,
    )
    text = "\n\n" + bound.report(costs, found, 64)
    for workload, f in found.items():
        mine = figures[workload].get("localrun auto")
        off = figures[workload].get("localrun off")
        if mine and off:
            text += f"\n  {workload}: localrun auto measured {mine / off:.2f}x localrun off"
        figures.setdefault("bound", {})[workload] = f["bound"]
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, help="GGUF file (default: the SmolLM2 starter)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--threads", type=int, default=THREADS, help="threads (default: 2)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--llama-cpp-build", type=Path, help="reuse (or build into) this folder")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="build jobs")
    parser.add_argument("--only", default="decode,cache", help="decode, cache or both")
    parser.add_argument(
        "--draft",
        type=Path,
        help="a draft model of the same vocabulary: localrun's DRAFT against llama-server's "
        "--spec-type draft-simple -md (e.g. the model itself: acceptance without a smaller one)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--cuda", action="store_true", help=CUDA_HELP)
    parser.add_argument("--busy", type=int, default=0, help="cores kept busy while decoding")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="which workloads")
    parser.add_argument("--stacks", default="", help="only these stacks, comma-separated")
    parser.add_argument("--no-bound", action="store_true", help="skip the oracle bound")
    args = parser.parse_args(argv)
    model = args.model or default_model()
    if model is None or not model.is_file():
        parser.error(f"no GGUF model at {model}; pass --model PATH")
    build = build_for(args, parser)  # None: localrun alone
    build_dir = build.dir if build else None
    only = tuple(p.strip() for p in args.only.split(",") if p.strip())
    out = run(
        build_dir, model, rounds=args.rounds, threads=args.threads, only=only, draft=args.draft,
        busy_cores=args.busy,
        workloads=tuple(w.strip() for w in args.workloads.split(",") if w.strip()),
        stacks=tuple(s.strip() for s in args.stacks.split(",") if s.strip()),
        with_bound=not args.no_bound,
    )  # fmt: skip
    if "cache" in out:
        print(cache_report(out["cache"]))
    if args.json:
        args.json.write_text(json.dumps({k: v for k, v in out.items() if k != "report"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
