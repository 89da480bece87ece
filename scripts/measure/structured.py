#!/usr/bin/env python3
"""Structured outputs on JSONSchemaBench: localrun serve against llama-server, side by side.

    scripts/measure/structured.py --data DIR [--paper DIR] [--per-dataset N] [--maskbench N]
                                [--max-tokens N] [--json OUT]

DIR is a checkout of github.com/guidance-ai/jsonschemabench (its `data/` of ~10,000 real schemas
in ten datasets, and `maskbench/data/` of schemas with valid and invalid instances); nothing
of it is copied into this repository. Get it with `git clone` where GitHub is reachable.

For N schemas a dataset (seeded sample), the same request goes to both servers with the
SmolLM2 starter at its whole context (8192): `response_format` json_schema, greedy. The prompt
is, with `--paper DIR` (a checkout of github.com/epfl-dlab/jsonschemabench, the paper's own
harness), the paper's: its system turn and its two worked examples of the dataset (read from
its `core/messages.py`, not copied here), then the schema; without, one user turn asking for a
value of the schema. Each answer is one of: refused (4xx: the schema is not taken), too long
(the prompt, which holds the schema, is past the context: counted apart), valid (the answer
ended and validates as the paper's evaluator checks it: JSON Schema 2020-12 with its format
checker), format (it validates, but a `format` the engine leaves as an annotation is not met:
not coverage, not a broken promise), invalid (it ended and does not validate: a 200 breaking
the client's schema), cut (it reached max_tokens), failed (5xx, a timeout, a server that died:
restarted for the next). Reported per dataset and server: taken (not refused), empirical
coverage (valid / all that fit, the paper's measure), compliance (valid or format / ended: 100%
is the promise) and decode speed, constrained against the same prompt unconstrained to the same
number of tokens; with `--echo`, also the same text both ways: the model asked to repeat each
valid answer, with the schema and without, each way twice (the faster of the two), timed
where every request wrote exactly that answer. The
paper's harness ran with 2,048 tokens at most (`--max-tokens 2048`).

With `--guidance-python PY` (a Python environment with the `guidance` package, which pins its
own llguidance, and llama-cpp-python), Guidance itself runs the same requests on the same model
as the paper's harness runs it (benchlib/stacks/guidance_server.py): the anchor for the paper's
coverage figures, which it measured with a model eight times larger. For instance:

    python3 -m venv /tmp/gvenv && /tmp/gvenv/bin/pip install guidance
    echo "$PWD/.venv/lib/python3.11/site-packages" \
        > /tmp/gvenv/lib/python3.11/site-packages/localrun-venv.pth  # its llama_cpp

Without a model: localrun's compile time for every sampled schema (median, max), and MaskBench
(`--maskbench N` files): the share of valid instances the engine takes and of invalid ones it
refuses, each instance fed as SmolLM2's tokens.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import ipaddress
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from benchlib.common import Unavailable, default_model, say
from benchlib.stacks.build import CUDA_HELP, DEFAULT_CACHE, build_for
from benchlib.stacks.serve import (
    Server,
    guidance_server,
    llama_server_with,
    localrun_serve,
    localrun_store,
)

DATASETS = (
    "Github_trivial", "Github_easy", "Github_medium", "Github_hard", "Github_ultra",
    "Glaiveai2K", "JsonSchemaStore", "Kubernetes", "Snowplow", "WashingtonPost",
)  # fmt: skip
ASK = (
    "Write one JSON value that follows this JSON schema, with realistic content. Reply with the "
    "JSON only.\n\n{schema}"
)
# The paper's system turn (epfl-dlab/jsonschemabench core/messages.py), before its examples.
PAPER_SYSTEM = "You need to generate a JSON object that matches the schema below."
TIMEOUT_S = 180.0
CONTEXT = 8192


@dataclass
class Outcome:
    kind: str  # refused, valid, format, invalid, cut, failed
    tokens: int = 0
    decode_tps: float | None = None
    detail: str = ""
    text: str = ""
    seconds: float = 0.0  # from the first piece of the answer to its last


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    constrained_tps: list[float] = field(default_factory=list)
    free_tps: list[float] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)  # each schema's, for --json
    echoed: list[tuple[float, float]] = field(default_factory=list)  # --echo: (constrained, free) s


def sample(data: Path, per_dataset: int, seed: int) -> dict[str, list[tuple[str, Any]]]:
    out: dict[str, list[tuple[str, Any]]] = {}
    rng = random.Random(seed)
    for name in DATASETS:
        files = sorted((data / "data" / name).glob("*.json"))
        picked = rng.sample(files, min(per_dataset, len(files)))
        schemas = []
        for path in picked:
            try:
                schemas.append((path.name, json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError):
                continue
        out[name] = schemas
    return out


def paper_examples(checkout: Path) -> dict[str, list[tuple[str, str]]]:
    """The paper's worked examples, each dataset's (schema, answer) pairs, read from its
    harness's `core/messages.py` as data (never run)."""
    tree = ast.parse((checkout / "core" / "messages.py").read_text(encoding="utf-8"))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        named = any(isinstance(t, ast.Name) and t.id == "EXAMPLES_FOR_TASK" for t in targets)
        value = getattr(node, "value", None)
        if named and value is not None:
            table = ast.literal_eval(value)
            return {name: list(pairs) for names, pairs in table.items() for name in names}
    raise ValueError(f"no EXAMPLES_FOR_TASK in {checkout / 'core' / 'messages.py'}")


@dataclass(frozen=True)
class Asking:
    """How every request of a run is asked: the paper's worked examples, each dataset's
    (--paper; none: one user turn), the fields every request carries (--speculate: localrun's
    own), its token budget and its bound in seconds."""

    examples: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    max_tokens: int = 512
    timeout: float = TIMEOUT_S

    def turns(self, dataset: str, schema: Any) -> list[dict[str, str]]:
        """The request's turns: the paper's (its system turn, at most five of the dataset's
        examples, the schema) with examples, else one user turn asking for a value."""
        if not self.examples:
            return [{"role": "user", "content": ASK.format(schema=json.dumps(schema))}]
        turns = [{"role": "system", "content": PAPER_SYSTEM}]
        for shown, answer in self.examples.get(dataset, [])[:5]:
            turns += [{"role": "user", "content": shown}, {"role": "assistant", "content": answer}]
        return [*turns, {"role": "user", "content": json.dumps(schema)}]


FORMATS = jsonschema.FormatChecker()
# The paper's evaluator adds these three to jsonschema's own format checks.
for _name, _kind in (
    ("ipv4", ipaddress.IPv4Address),
    ("ipv6", ipaddress.IPv6Address),
    ("uuid", uuid.UUID),
):
    FORMATS.checks(_name, ValueError)(lambda value, kind=_kind: bool(kind(value)))


def judge(text: str, schema: Any) -> tuple[str, str]:
    """An ended answer as the paper's evaluator judges it (2020-12, formats checked): valid;
    format (valid but for a `format`, which JSON Schema makes an annotation unless asked); or
    invalid (the value breaks the schema: a 200 the promise forbids)."""
    try:
        value = json.loads(text)
        jsonschema.validate(value, schema)
    except (ValueError, jsonschema.ValidationError, jsonschema.SchemaError) as exc:
        return "invalid", str(exc)[:200]
    try:
        jsonschema.Draft202012Validator(schema, format_checker=FORMATS).validate(value)
    except jsonschema.ValidationError as exc:
        return ("format" if exc.validator == "format" else "invalid"), str(exc)[:200]
    except Exception as exc:  # the paper's evaluator counts any failure as not valid
        return "format", f"{type(exc).__name__}: {exc}"[:200]
    return "valid", ""


def too_long(said: str) -> bool:
    """Whether a refusal's body says the prompt is past the context: OpenAI's code
    `context_length_exceeded` (localrun's, the Guidance server's) or llama-server's error
    type `exceed_context_size_error`."""
    try:
        body = json.loads(said)
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return False
    return (
        error.get("code") == "context_length_exceeded"
        or error.get("type") == "exceed_context_size_error"
    )


def ask(
    server: Server,
    turns: list[dict[str, str]],
    schema: Any,
    asking: Asking,
    constrained: bool,
    max_tokens: int | None = None,
) -> Outcome:
    """One greedy request, streamed: its outcome and decode rate (the answer's tokens after the
    first over the time after the first). Tokens are counted by the server's `usage`, not by
    chunks: a chunk may carry several tokens (forced text, a speculator's kept draft).
    `max_tokens`: this request's budget, where not the run's."""
    timeout = asking.timeout
    body: dict[str, Any] = {
        "model": server.model or "m",
        "messages": turns,
        "temperature": 0,
        "max_tokens": max_tokens or asking.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        **asking.extra,
    }
    if constrained:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema},
        }
    url = f"http://127.0.0.1:{server.port}/v1/chat/completions"
    text, stamps, finish, counted = [], [], None, None
    try:
        with httpx.stream("POST", url, json=body, timeout=timeout) as response:
            if 400 <= response.status_code < 500:
                said = response.read().decode(errors="replace")
                kind = "too long" if too_long(said) else "refused"
                return Outcome(kind, detail=said[:200])
            if response.status_code != 200:
                return Outcome("failed", detail=f"HTTP {response.status_code}")
            deadline = time.perf_counter() + timeout  # httpx's timeout is a read's alone
            for line in response.iter_lines():
                if time.perf_counter() > deadline:
                    return Outcome("failed", detail=f"past {timeout:.0f} s")
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return Outcome("failed", detail=str(chunk["error"])[:200])
                counted = (chunk.get("usage") or {}).get("completion_tokens") or counted
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        text.append(piece)
                        stamps.append(time.perf_counter())
                    finish = choice.get("finish_reason") or finish
    except (httpx.HTTPError, ValueError) as exc:
        return Outcome("failed", detail=f"{type(exc).__name__}: {exc}"[:200])
    tokens = counted or len(stamps)  # a server without usage: one token a chunk
    tps = (tokens - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 2 else None
    whole, seconds = "".join(text), stamps[-1] - stamps[0] if stamps else 0.0
    if finish == "length":
        return Outcome("cut", tokens, tps, text=whole, seconds=seconds)
    if not constrained:
        return Outcome("free", tokens, tps, text=whole, seconds=seconds)
    kind, detail = judge(whole, schema)
    return Outcome(kind, tokens, tps, detail, whole, seconds)


ECHO = "Repeat this JSON exactly as it is written, and write nothing else:\n\n{answer}"


def echo(
    server: Server, schema: Any, answer: Outcome, first: bool, asking: Asking
) -> tuple[float, float] | None:
    """The same answer both ways: the model asked to repeat a valid answer of the schema, with
    the schema and without, greedy, each way twice in the order constrained, free, free,
    constrained (`first`; else free, constrained, constrained, free). (constrained s, free s),
    each way's faster span from the answer's first piece to its last, where every request
    wrote exactly that answer, else None. Such an answer takes a few decodes of 20-50 ms, and
    one request's span moves by one of them between runs: the faster of two is the answer's
    time, less the machine's noise."""
    turns = [{"role": "user", "content": ECHO.format(answer=answer.text)}]
    budget = answer.tokens + 16
    order = (True, False, False, True) if first else (False, True, True, False)
    spans: dict[bool, list[float]] = {True: [], False: []}
    for constrained in order:
        got = ask(server, turns, schema, asking, constrained, budget)
        if got.text != answer.text or got.kind in ("cut", "failed"):
            return None
        spans[constrained].append(got.seconds)
    return min(spans[True]), min(spans[False])


def run_servers(
    servers: list[Server],
    picked: dict[str, list[tuple[str, Any]]],
    asking: Asking,
    logdir: Path,
    with_free: bool = True,
    echoes: bool = False,
) -> dict[str, dict[str, Tally]]:
    results: dict[str, dict[str, Tally]] = {s.name: defaultdict(Tally) for s in servers}
    for server in servers:
        server.start(logdir)
        server.wait_ready()
        try:
            for dataset, schemas in picked.items():
                for file, schema in schemas:
                    turns = asking.turns(dataset, schema)
                    outcome = ask(server, turns, schema, asking, True)
                    tally = results[server.name][dataset]
                    tally.outcomes[outcome.kind] += 1
                    tally.answers.append(
                        {"file": file, "kind": outcome.kind, "tokens": outcome.tokens,
                         "detail": outcome.detail, "text": outcome.text}
                    )  # fmt: skip
                    say(f"{server.name} {dataset}/{file}: {outcome.kind} {outcome.detail[:120]}")
                    if outcome.kind == "failed" and server.details.get("exits after failing"):
                        with contextlib.suppress(subprocess.TimeoutExpired, AttributeError):
                            server.proc.wait(timeout=30)  # type: ignore[union-attr]
                    if outcome.kind == "failed" and server.proc and server.proc.poll() is not None:
                        say(f"{server.name} died: restarting it")
                        server.start(logdir)
                        server.wait_ready()
                    ended = outcome.kind in ("valid", "format")
                    free_too = not server.details.get("constrained only")
                    timed = outcome.tokens > 8
                    if with_free and free_too and ended and timed and outcome.decode_tps:
                        free = ask(server, turns, schema, asking, False, outcome.tokens)
                        if free.decode_tps:
                            tally.constrained_tps.append(outcome.decode_tps)
                            tally.free_tps.append(free.decode_tps)
                            say(
                                f"  {outcome.tokens} tokens at {outcome.decode_tps:.1f} tok/s; "
                                f"free: {free.tokens} at {free.decode_tps:.1f}"
                            )
                    if echoes and free_too and ended and timed:
                        pair = echo(server, schema, outcome, len(tally.answers) % 2 == 0, asking)
                        if pair:
                            tally.echoed.append(pair)
                            c, f = pair
                            say(f"  the same answer: {c:.2f} s constrained, {f:.2f} s free")
        finally:
            server.stop()
    return results


def compile_times(model: Path, picked: dict[str, list[tuple[str, Any]]]) -> dict[str, Any]:
    """localrun's compile of each sampled schema against SmolLM2's vocabulary, in ms."""
    from localrun.engine.sampling import constraint
    from localrun.engine.types import LoadOptions
    from localrun.engine.weights import Weights
    from localrun.errors import LocalrunError
    from localrun.worker.grammars.format import constraint_for

    weights = Weights(str(model), LoadOptions(num_ctx=256))
    tokens = weights.guide()
    times, refused = [], Counter[str]()
    try:
        for schemas in picked.values():
            for _, schema in schemas:
                started = time.perf_counter()
                try:
                    grammar = constraint_for(schema) if isinstance(schema, dict) else None
                    if grammar is None:
                        raise ValueError("not an object schema")
                    constraint.Constraint(tokens, grammar, weights.n_vocab)
                except (LocalrunError, ValueError) as exc:
                    refused[str(exc).split(":", 2)[-1].strip()[:60]] += 1
                times.append(1000 * (time.perf_counter() - started))
    finally:
        weights.close()
    return {
        "median_ms": statistics.median(times) if times else None,
        "max_ms": max(times, default=None),
        "refusals": refused.most_common(10),
    }


def maskbench(model: Path, data: Path, files: int, seed: int) -> dict[str, Any]:
    """MaskBench's instances through localrun's engine: valid ones taken, invalid refused."""
    from localrun.engine.sampling import constraint
    from localrun.engine.types import LoadOptions
    from localrun.engine.weights import Weights
    from localrun.errors import LocalrunError
    from localrun.worker.grammars.format import constraint_for

    paths = sorted((data / "maskbench" / "data").glob("*.json"))
    paths = random.Random(seed).sample(paths, min(files, len(paths)))
    weights = Weights(str(model), LoadOptions(num_ctx=256))
    tokens = weights.guide()
    seen: Counter[str] = Counter()
    try:
        for path in paths:
            case = json.loads(path.read_text(encoding="utf-8"))
            schema = case.get("schema")
            try:
                grammar = constraint_for(schema) if isinstance(schema, dict) else None
                if grammar is None:
                    raise ValueError("not an object schema")
                constraint.Constraint(tokens, grammar, weights.n_vocab)
            except (LocalrunError, ValueError):
                seen["schema refused"] += 1
                continue
            seen["schema taken"] += 1
            for test in case.get("tests") or []:
                matcher = constraint.Constraint(tokens, grammar, weights.n_vocab).matcher
                text = json.dumps(test["data"], ensure_ascii=False)
                ids = weights.tokenize(text, add_special=False, parse_special=False)
                taken = matcher.consume_tokens(ids) and not matcher.is_error()
                taken = bool(taken and matcher.is_accepting())
                kind = "valid" if test["valid"] else "invalid"
                seen[f"{kind} {'taken' if taken else 'refused'}"] += 1
    finally:
        weights.close()
    return dict(seen)


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def report(results: dict[str, dict[str, Tally]], picked: dict[str, list[Any]]) -> list[str]:
    lines = [
        "| dataset | server | schemas | prompt too long | taken | valid (coverage) | format | "
        "invalid | cut | failed | compliance | decode tok/s constrained / free | "
        "the same answers: free s / constrained s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in picked:
        for server, per in results.items():
            t = per[dataset]
            long = t.outcomes["too long"]
            n = sum(t.outcomes.values()) - long  # the schemas whose prompt fits
            kept = t.outcomes["valid"] + t.outcomes["format"]
            ended = kept + t.outcomes["invalid"]
            speed = "-"
            if t.constrained_tps:
                c, f = statistics.median(t.constrained_tps), statistics.median(t.free_tps)
                speed = f"{c:.0f} / {f:.0f} ({c / f:.2f}x)"
            same = "-"
            if t.echoed:
                c, f = sum(p[0] for p in t.echoed), sum(p[1] for p in t.echoed)
                same = f"{f:.1f} / {c:.1f} ({f / c:.2f}x, {len(t.echoed)} answers)"
            lines.append(
                f"| {dataset} | {server} | {n + long} | {long} | "
                f"{share(n - t.outcomes['refused'], n)} | "
                f"{share(t.outcomes['valid'], n)} | {t.outcomes['format']} | "
                f"{t.outcomes['invalid']} | {t.outcomes['cut']} | {t.outcomes['failed']} | "
                f"{share(kept, ended)} | {speed} | {same} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a jsonschemabench checkout")
    parser.add_argument(
        "--paper", type=Path, help="an epfl-dlab/jsonschemabench checkout: the paper's prompts"
    )
    parser.add_argument("--per-dataset", type=int, default=10, help="schemas a dataset")
    parser.add_argument("--maskbench", type=int, default=200, help="MaskBench files (0: none)")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", type=Path, help="GGUF file (default: the SmolLM2 starter)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-llama-server", action="store_true")
    parser.add_argument("--no-localrun", action="store_true", help="llama-server's side alone")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds a request")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--llama-cpp-build", type=Path, help="reuse (or build into) this folder")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="build jobs")
    parser.add_argument("--cuda", action="store_true", help=CUDA_HELP)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--speculate", help="localrun's speculate field on every request")
    parser.add_argument("--datasets", help="comma-separated: only these datasets")
    parser.add_argument(
        "--no-free", action="store_true", help="no unconstrained request (coverage alone)"
    )
    parser.add_argument(
        "--echo", action="store_true", help="also time each valid answer repeated both ways"
    )
    parser.add_argument(
        "--guidance-python",
        type=Path,
        help="a Python with `guidance` installed (and llama_cpp importable): Guidance's "
        "side, as the paper's harness runs it",
    )
    args = parser.parse_args(argv)
    asking = Asking(
        examples=paper_examples(args.paper) if args.paper else {},
        extra={"speculate": args.speculate} if args.speculate else {},
        max_tokens=args.max_tokens,
        timeout=args.timeout,
    )
    model = args.model or default_model()
    if model is None or not (args.data / "data").is_dir():
        parser.error("needs --data (a jsonschemabench checkout) and the SmolLM2 starter")
    picked = sample(args.data, args.per_dataset, args.seed)
    if args.datasets:
        picked = {k: v for k, v in picked.items() if k in args.datasets.split(",")}
    out: dict[str, Any] = {"compile": compile_times(model, picked)}
    say(f"compile: {out['compile']}")
    if args.maskbench:
        out["maskbench"] = maskbench(model, args.data, args.maskbench, args.seed)
        say(f"maskbench: {out['maskbench']}")
    with tempfile.TemporaryDirectory(prefix="bench-structured-") as tmp:
        home = Path(tmp)
        lr = localrun_store(home / "lr", model, None, args.threads)
        ours = localrun_serve(lr, args.threads)
        # The model's whole training context (SmolLM2's 8192): the prompt holds the schema.
        ours.env = {**(ours.env or {}), "LOCALRUN_CONTEXT_LENGTH": str(CONTEXT)}
        servers = [] if args.no_localrun else [ours]
        if not args.no_llama_server:
            build = build_for(args, parser)
            if build is not None:
                llama = llama_server_with(build.dir, model, args.threads, [])
                llama.cmd += ["-c", str(CONTEXT)]  # the last -c is the one it takes
                servers.append(llama)
        if args.guidance_python:
            servers.append(
                guidance_server(args.guidance_python, model, args.threads, CONTEXT, args.timeout)
            )
        ready = []
        for server in servers:
            if server.failure:
                say(f"{server.name}: {server.failure}")
            else:
                ready.append(server)
        try:
            results = run_servers(ready, picked, asking, home, not args.no_free, args.echo)
        except Unavailable as exc:
            say(f"a server failed: {exc}")
            return 1
    lines = report(results, picked)
    print("\n".join(lines))
    print(f"\ncompile (localrun, SmolLM2's vocabulary): {out['compile']}")
    if "maskbench" in out:
        print(f"maskbench (localrun): {out['maskbench']}")
    if args.json:
        out["table"] = lines
        out["answers"] = {
            server: {dataset: tally.answers for dataset, tally in per.items()}
            for server, per in results.items()
        }
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
