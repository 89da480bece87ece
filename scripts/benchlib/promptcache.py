"""The disk prompt cache measured for scripts/bench/speculative.py: a model with a ~1,500-token
SYSTEM prompt; two fresh `localrun run` processes in a row (the first evaluates and saves the
prefix, the second restores it), the time to the first token as each reports it (load excluded:
prompt eval duration) and as a person waits for it (process start to the first byte on stdout);
against a cold llama-server's time to the first token for the same rendered prompt."""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib.common import run_command
from benchlib.stacks.serve import llama_server_with
from benchlib.stacks.store import prepare_localrun
from benchlib.streams import request_json
from benchlib.workloads import CTX, SAMPLING

TARGET_CACHE_SPEEDUP = 5.0  # the first run's time to the first token over the second's


def long_system(n_words: int = 1480) -> str:
    rng = random.Random(7)
    words = ["keeper", "lamp", "storm", "island", "bottle", "letter", "tide", "harbor"]
    return "You answer in one sentence. Background notes: " + " ".join(
        rng.choice(words) for _ in range(n_words)
    )


def _run_first_byte(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds from spawn to the first byte on stdout, and stderr."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, stdin=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    proc.stdout.read(1)
    first = time.perf_counter() - started
    _, err = proc.communicate(timeout=600)
    return first, err.decode(errors="replace")


def _stat_ms(stderr: str, label: str) -> float | None:
    for line in stderr.splitlines():
        if line.startswith(label + ":"):
            value = line.split(":", 1)[1].strip()
            if value.endswith("ms"):
                return float(value[:-2]) / 1000
            if value.endswith("s"):
                return float(value[:-1])
    return None


def cache_suite(build_dir: Path | None, model: Path, threads: int, home: Path) -> dict[str, Any]:
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LOCALRUN_HOME": str(home)}
    env.pop("LOCALRUN_MODELS", None)
    lr = prepare_localrun(home, model, None, threads)
    system = long_system()
    modelfile = home / "Modelfile.system"
    modelfile.write_text(
        f'FROM {lr.model or model}\nSYSTEM """{system}"""\n'
        f"PARAMETER num_ctx {CTX}\nPARAMETER num_thread {threads}\nPARAMETER temperature 0\n"
    )
    run_command([*lr.cmd, "create", "system-notes", "-f", str(modelfile)], 900, env)
    run_command([*lr.cmd, "prune"], 300, env)  # no cached prefix yet
    args = [*lr.cmd, "run", "system-notes", "What does the keeper find?", "--verbose"]
    args += ["--param", "num_predict=8"]
    # A first run that loads the model once (probes, page cache) but keeps nothing cached.
    run_command(args, 900, {**env, "LOCALRUN_PROMPT_CACHE_MAX_BYTES": "0"})
    runs = []
    for _ in range(2):
        first_byte, err = _run_first_byte(args, env)
        runs.append(
            {
                "first_byte_s": first_byte,
                "prompt_s": _stat_ms(err, "prompt eval duration"),
                "load_s": _stat_ms(err, "load duration"),
                "disk": next(
                    (ln.split(":")[1].strip() for ln in err.splitlines() if "disk cache" in ln),
                    "?",
                ),
            }
        )
    cold_server = None
    if build_dir is not None:
        server = llama_server_with(build_dir, model, threads, [])
        with tempfile.TemporaryDirectory() as logs:
            server.start(Path(logs))
            try:
                server.wait_ready()
                prompt = (
                    f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
                    "What does the keeper find?<|im_end|>\n<|im_start|>assistant\n"
                )
                body = {"prompt": prompt, "n_predict": 8, "cache_prompt": False, **SAMPLING}
                answer = request_json(server.port, "POST", "/completion", body)
                cold_server = {
                    "prompt_s": answer["timings"]["prompt_ms"] / 1000,
                    "prompt_n": answer["timings"]["prompt_n"],
                }
            finally:
                server.stop()
    return {"runs": runs, "cold_llama_server": cold_server}


def cache_report(result: dict[str, Any]) -> str:
    first, second = result["runs"]
    lines = [
        "Prompt cache: two fresh `localrun run` processes, ~1,500-token SYSTEM prompt",
        f"  first:  prompt eval {first['prompt_s']:.3f} s, first byte after "
        f"{first['first_byte_s']:.2f} s (disk cache {first['disk']})",
        f"  second: prompt eval {second['prompt_s']:.3f} s, first byte after "
        f"{second['first_byte_s']:.2f} s (disk cache {second['disk']})",
    ]
    if first["prompt_s"] and second["prompt_s"]:
        lines.append(
            f"  time to first token, load excluded: {first['prompt_s'] / second['prompt_s']:.1f}x"
            f" shorter (target >= {TARGET_CACHE_SPEEDUP}x); process start to first byte: "
            f"{first['first_byte_s'] / second['first_byte_s']:.1f}x shorter"
        )
    cold = result.get("cold_llama_server")
    if cold:
        lines.append(
            f"  cold llama-server: prompt {cold['prompt_n']} tokens in {cold['prompt_s']:.3f} s;"
            f" localrun's second run {cold['prompt_s'] / second['prompt_s']:.2f}x shorter"
        )
    return "\n".join(lines)
