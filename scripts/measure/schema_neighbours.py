#!/usr/bin/env python3
"""One client's schema beside another client's stream: what a hostile schema costs the others.

    scripts/measure/schema_neighbours.py [--model GGUF] [--tokens N] [--runs N]

`localrun serve` with the SmolLM2 starter, several requests decoded in one batch. A victim
streams free text (greedy, N tokens) while a neighbour streams an answer of one of these:

- free: no schema, a short answer; free-long: no schema, a long one (the baseline: a second
  slot in the batch costs its share of each decode); free-copy: no schema, a list copied from
  the prompt (an answer speculation drafts as far as the repetitive answers below);
- object: an ordinary schema (a country's name, capital and population);
- wide: `anyOf` of 400 object branches, each its own required key;
- words: a string whose `pattern` is an alternation of 2,000 words, repeated;
- deep: arrays nested 45 levels (a request's JSON nests at most 100);
- counts: a string of 1,000 to 30,000 characters of a class.

Each neighbour's answer is built token by token with llguidance's mask, on the batch loop's
thread; a step's work is bounded by llguidance's fuel (engine.sampling.constraint.LIMITS). The
victim's decode tok/s beside each neighbour is reported against beside `free` (the ratio a schema
costs the others) and alone; the neighbour's own tok/s beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from benchlib.common import default_model, say
from benchlib.stacks.serve import Server, localrun_serve, localrun_store

WORDS = [f"w{i:04d}x" for i in range(2000)]
NEIGHBOURS: dict[str, Any] = {
    "free": None,
    "free-long": None,
    "free-copy": None,
    "object": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "capital": {"type": "string", "maxLength": 40},
            "population": {"type": "integer", "minimum": 0},
        },
        "required": ["name", "capital", "population"],
    },
    "wide": {
        "anyOf": [
            {
                "type": "object",
                "properties": {f"key{i}": {"type": "string"}},
                "required": [f"key{i}"],
                "additionalProperties": False,
            }
            for i in range(400)
        ]
    },
    "words": {"type": "string", "pattern": "^((" + "|".join(WORDS) + ") )+$"},  # 14 kB
    "deep": {"type": "array", "items": {}},
    "counts": {"type": "string", "pattern": "^[a-z ]{1000,30000}$"},
}
for _ in range(44):  # 45 levels: a request's JSON nests 2 a level, at most 100
    NEIGHBOURS["deep"] = {"type": "array", "items": NEIGHBOURS["deep"], "maxItems": 2}
VICTIM = "Write a long story about a lighthouse keeper and the sea."
ASK = "Write a JSON value for this schema."
LONG = "Write a very long story about a dragon who learns to sing."  # free-long's ask
# free-copy's: a free answer as repetitive as a schema's, which speculation drafts as far.
COPY = "Copy this list exactly, then copy it again:\n" + " ".join(WORDS[:300])
ASKS = {"free-long": LONG, "free-copy": COPY}


SPECULATE = {"mode": "auto"}  # every request's `speculate` (localrun's field): --speculate


def stream(url: str, model: str, ask: str, tokens: int, schema: Any, out: dict[str, Any]) -> None:
    """One streamed chat answer: its decode tok/s (its tokens, as the usage counts them,
    from its first piece to its last) into `out`."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": ask}],
        "temperature": 0,
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},  # chunks may carry several tokens
        "speculate": SPECULATE["mode"],
    }
    if schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": schema},
        }
    stamps: list[float] = []
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as reply:
            if reply.status_code != 200:
                out["error"] = f"HTTP {reply.status_code}: {reply.read()[:200]!r}"
                return
            for line in reply.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        out["error"] = str(chunk["error"])[:200]
                    if chunk.get("usage"):
                        out["tokens"] = chunk["usage"]["completion_tokens"]
                    for choice in chunk.get("choices") or []:
                        if (choice.get("delta") or {}).get("content"):
                            stamps.append(time.perf_counter())
    except httpx.HTTPError as exc:
        out["error"] = repr(exc)
    if len(stamps) > 2 and out.get("tokens", 0) > 2:
        out["tps"] = (out["tokens"] - 1) / (stamps[-1] - stamps[0])


def beside(server: Server, name: str, tokens: int) -> tuple[float | None, float | None]:
    """The victim's and the neighbour's tok/s, the two streamed at once."""
    url = f"http://127.0.0.1:{server.port}"
    model = server.model or ""
    victim: dict[str, Any] = {}
    neighbour: dict[str, Any] = {}
    threads = [
        threading.Thread(target=stream, args=(url, model, VICTIM, tokens, None, victim)),
        threading.Thread(
            target=stream,
            args=(
                url,
                model,
                ASKS.get(name, ASK),
                4 * tokens,
                NEIGHBOURS[name],
                neighbour,
            ),
        ),
    ]
    for thread in threads[::-1]:  # the neighbour first: its prompt read before the victim's
        thread.start()
        time.sleep(0.3)
    for thread in threads:
        thread.join()
    if "error" in neighbour:
        say(f"{name}: the neighbour's answer: {neighbour['error']}")
    return victim.get("tps"), neighbour.get("tps")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the SmolLM2 starter)")
    parser.add_argument("--tokens", type=int, default=300, help="the victim's answer, tokens")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--speculate", default="auto", help="every request's speculation mode")
    args = parser.parse_args(argv)
    SPECULATE["mode"] = args.speculate
    model = args.model or default_model()
    if model is None:
        parser.error("needs --model or the SmolLM2 starter")
    rows: dict[str, list[tuple[float | None, float | None]]] = {n: [] for n in NEIGHBOURS}
    alone: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-neighbours-") as tmp:
        home = Path(tmp)
        server = localrun_serve(
            localrun_store(home / "lr", model, None, args.threads), args.threads
        )
        server.start(home)
        server.wait_ready()
        url = f"http://127.0.0.1:{server.port}"
        try:
            warm: dict[str, Any] = {}
            stream(url, server.model or "", VICTIM, 16, None, warm)
            for _ in range(args.runs):
                out: dict[str, Any] = {}
                stream(url, server.model or "", VICTIM, args.tokens, None, out)
                if out.get("tps"):
                    alone.append(out["tps"])
                for name in NEIGHBOURS:
                    rows[name].append(beside(server, name, args.tokens))
                    say(f"{name}: {rows[name][-1]}")
        finally:
            server.stop()

    def median(values: list[float | None]) -> float | None:
        got = [v for v in values if v]
        return statistics.median(got) if got else None

    base = median([v for v, _ in rows["free"]])
    print(f"victim alone: {median(list(alone)) or 0:.1f} tok/s (median of {len(alone)})")
    print("| neighbour | victim tok/s | victim vs beside free | neighbour tok/s |")
    print("|---|---|---|---|")
    for name, got in rows.items():
        victim, neighbour = median([v for v, _ in got]), median([n for _, n in got])
        ratio = f"{victim / base:.2f}x" if victim and base else "-"
        print(f"| {name} | {victim or 0:.1f} | {ratio} | {neighbour or 0:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
