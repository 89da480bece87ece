#!/usr/bin/env python3
"""The offload planner against a real GPU: the VRAM localrun predicts for a model beside what
the GPU reports while the model is loaded.

For each GGUF and each context size: `localrun serve` (a fresh store, one slot) loads the model
with that num_ctx; the planner's figure is what GET /api/ps reports as size_vram (from
localrun.hardware.offload.plan_offload, with the layers it chose); the GPU's figure is nvidia-smi's
memory of the runner process tree while the model is loaded. llama-server from the same llama.cpp
build then loads the same model with the same context and all layers offloaded, and its log's
CUDA buffer sizes (weights, KV cache, compute) show where the difference lies; the rest of a
process is the CUDA runtime (the context, ggml-cuda's kernels, cuBLAS's workspace), which the
planner counts as a fixed offload.RUNTIME_BYTES, measured with this script.

A benchmark, not a test, and only meaningful with a GPU build of llama.cpp:
  .venv/bin/python scripts/bench/offload.py --cuda [--model GGUF]... [--ctx 2048,8192,32768]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from benchlib.common import Unavailable, default_model, say
from benchlib.stacks.build import Build, add_build_arguments, build_for, server_args
from benchlib.stacks.serve import Server, free_port, localrun_serve, localrun_store, tree_pids
from benchlib.streams import llama_server_stream, request_json

MIB = 1024**2
# llama.cpp's load log: "CUDA0 model buffer size =    94.02 MiB", "CUDA0 KV buffer size = ...",
# "CUDA0 compute buffer size = ..." (llama_kv_cache and llama_context print them).
BUFFER = re.compile(r"(CUDA\d+) (model|KV|compute) buffer size =\s*([\d.]+) MiB")


def gpu_memory() -> dict[int, int]:
    """Bytes of GPU memory per process id, as nvidia-smi reports them."""
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    used: dict[int, int] = {}
    for line in out.splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip().isdigit() and mib.strip().isdigit():
            used[int(pid)] = used.get(int(pid), 0) + int(mib) * MIB
    return used


def tree_gpu_memory(pid: int) -> int:
    """GPU bytes of a process and all its descendants (localrun's runner is a child)."""
    pids = tree_pids(pid)
    return sum(b for p, b in gpu_memory().items() if p in pids)


def localrun_loaded(model: Path, num_ctx: int, logdir: Path) -> dict[str, Any]:
    """Load `model` in a fresh `localrun serve` at `num_ctx`; the plan and the GPU's figure."""
    home = Path(tempfile.mkdtemp(prefix="localrun-offload-", dir=logdir))
    lr = localrun_store(home, model, None, threads=4)
    lr.env["LOCALRUN_NUM_PARALLEL"] = "1"
    lr.env["LOCALRUN_DEBUG"] = "1"  # the runner's llama.cpp log, with its buffer sizes
    server = localrun_serve(lr, 4, f"localrun-{num_ctx}")
    try:
        server.start(logdir)
        server.wait_ready()
        options = {"num_ctx": num_ctx, "num_predict": 1, "temperature": 0}
        body = {"model": server.model, "prompt": "hi", "options": options, "keep_alive": -1}
        request_json(server.port, "POST", "/api/generate", {**body, "stream": False})
        time.sleep(1.0)  # let the allocator settle after the first decode
        assert server.proc is not None
        measured = tree_gpu_memory(server.proc.pid)
        ps = request_json(server.port, "GET", "/api/ps")["models"]
    finally:
        server.stop()
    return {
        "planned": int(ps[0]["size_vram"]) if ps else 0,
        "size": int(ps[0]["size"]) if ps else 0,
        "measured": measured,
        "buffers": buffers(server),
    }


def buffers(server: Server) -> dict[str, float]:
    """The GPU buffers llama.cpp logged while loading (bytes by kind: model, KV, compute);
    read once the server has exited, since a log to a file is buffered until then."""
    found: dict[str, float] = {}
    for _, kind, mib in BUFFER.findall(Path(server.log.name).read_text(errors="replace")):
        found[kind] = found.get(kind, 0.0) + float(mib) * MIB
    return found


def llama_server_loaded(build: Build, model: Path, num_ctx: int, logdir: Path) -> dict:
    """llama-server with all layers on the GPU at `num_ctx`: its CUDA buffers and the GPU's
    figure for its process."""
    port = free_port()
    cmd = [
        str(build.dir / "bin" / "llama-server"), "-m", str(model), "--host", "127.0.0.1",
        "--port", str(port), "-np", "1", "-c", str(num_ctx), "-ngl", "99", "--no-webui",
        "-lv", "4", *server_args(),
    ]  # fmt: skip
    stream = llama_server_stream
    server = Server(f"llama-server-{num_ctx}", cmd, port, "/health", stream)
    try:
        server.start(logdir)
        server.wait_ready()
        time.sleep(1.0)
        assert server.proc is not None
        measured = tree_gpu_memory(server.proc.pid)
    finally:
        server.stop()
    return {"measured": measured, "buffers": buffers(server)}


def _mib(n: float) -> str:
    return f"{n / MIB:,.0f}"


def _parts(found: dict[str, float]) -> str:
    if not found:
        return "not logged"
    parts = "/".join(_mib(found.get(k, 0)) for k in ("model", "KV", "compute"))
    return f"{_mib(sum(found.values()))} ({parts})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, action="append", help="GGUF file (repeatable)")
    parser.add_argument("--ctx", default="2048,8192,32768", help="context sizes")
    add_build_arguments(parser)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    models = args.model or [default_model()]
    if any(m is None or not m.is_file() for m in models):
        parser.error(f"no GGUF model at {models}; pass --model PATH")
    build = build_for(args, parser)
    if build is None:
        parser.error("llama-server is needed beside localrun: the llama.cpp build failed")
    sizes = [int(c) for c in args.ctx.split(",") if c.strip()]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-offload-") as tmp:
        logdir = Path(tmp)
        for model in models:
            for num_ctx in sizes:
                say(f"{model.name} at num_ctx {num_ctx}")
                row: dict[str, Any] = {"model": model.name, "num_ctx": num_ctx}
                try:
                    row["localrun"] = localrun_loaded(model, num_ctx, logdir)
                    row["llama_server"] = llama_server_loaded(build, model, num_ctx, logdir)
                except (
                    Unavailable, RuntimeError, OSError, KeyError, subprocess.SubprocessError
                ) as exc:  # fmt: skip
                    row["error"] = f"{type(exc).__name__}: {exc}"
                rows.append(row)
    lines = [
        "Offload planner against the GPU (MiB): planned = localrun's size_vram (GET /api/ps); "
        "GPU = nvidia-smi for the process tree while loaded; buffers = the CUDA buffers "
        "llama.cpp logged (model/KV/compute); the rest of a process's GPU memory is the CUDA "
        "context. llama-server: all layers, same context.",
        "",
        "model | num_ctx | planned | localrun GPU | GPU - planned | localrun buffers "
        "| llama-server GPU | llama-server buffers",
        "--- | --- | --- | --- | --- | --- | --- | ---",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['model']} | {row['num_ctx']} | {row['error']}")
            continue
        lr, ls = row["localrun"], row["llama_server"]
        lines.append(
            f"{row['model']} | {row['num_ctx']} | {_mib(lr['planned'])} | {_mib(lr['measured'])} "
            f"| {_mib(lr['measured'] - lr['planned'])} | {_parts(lr['buffers'])} "
            f"| {_mib(ls['measured'])} | {_parts(ls['buffers'])}"
        )
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
