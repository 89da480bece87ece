"""The API dialects of `localrun serve` measured against each other, and editor autocomplete.

Part of scripts/bench/serve.py's run (it calls `measure` while its servers are up):

  dialects   the same chat request, streamed through /v1/chat/completions, /v1/responses and
             /v1/messages of the same localrun server (greedy, 128 tokens, a prompt of its own
             per request so no KV cache is shared): decode tok/s as the client sees it, the
             token count from each dialect's own usage. Target: each new dialect decodes at
             >= 0.95x /v1/chat/completions (they are translations over one implementation).
  FIM        fill-in-the-middle, what an editor sends while typing: localrun's /infill against
             llama-server's /infill on the same model: time to the first token, with the model
             loaded (side by side; no target). The starter model has no FIM tokens, so this
             part uses a random-weight code-model-sized llama GGUF with FIM tokens written by
             testmodels.text (8 layers, 512 wide: about 30M parameters), served by
             the same localrun server and by a second llama-server of its own.

Rounds are interleaved, each in a rotating order; medians are reported.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testmodels.text import write_tiny_model

from benchlib.common import Unavailable, run_command, say
from benchlib.report import fmt, median
from benchlib.stacks.serve import Server, llama_server
from benchlib.streams import N_PREDICT, Stream, prompt, response_lines, sse_events

TARGET_DIALECT = 0.95
FIM_PREDICT = 16
CHAT_PATH = "/v1/chat/completions"


def _received(result: Stream) -> None:
    result.last = time.perf_counter()
    result.first = result.first or result.last


def chat_stream(port: int, model: str, n: int, n_predict: int) -> Stream:
    result = Stream()
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt(n)}],
        "max_tokens": n_predict,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    for obj in sse_events(response_lines(port, CHAT_PATH, body, result)):
        if "error" in obj:
            raise RuntimeError(json.dumps(obj["error"])[:300])
        for choice in obj.get("choices") or []:
            if choice.get("delta", {}).get("content"):
                _received(result)
            if choice.get("finish_reason"):
                result.complete = True
        if obj.get("usage"):
            result.tokens = int(obj["usage"]["completion_tokens"])
            result.prompt_tokens = obj["usage"]["prompt_tokens"]
    return result


def responses_stream(port: int, model: str, n: int, n_predict: int) -> Stream:
    result = Stream()
    body = {
        "model": model,
        "input": prompt(n),
        "max_output_tokens": n_predict,
        "temperature": 0,
        "stream": True,
        "store": False,
    }
    for obj in sse_events(response_lines(port, "/v1/responses", body, result)):
        kind = obj.get("type")
        if kind == "response.output_text.delta" and obj.get("delta"):
            _received(result)
        elif kind == "response.completed":
            usage = obj["response"]["usage"]
            result.tokens = int(usage["output_tokens"])
            result.prompt_tokens = usage["input_tokens"]
            result.complete = True
        elif kind in ("response.failed", "error"):
            raise RuntimeError(json.dumps(obj)[:300])
    return result


def messages_stream(port: int, model: str, n: int, n_predict: int) -> Stream:
    result = Stream()
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt(n)}],
        "max_tokens": n_predict,
        "temperature": 0,
        "stream": True,
    }
    for obj in sse_events(response_lines(port, "/v1/messages", body, result)):
        kind = obj.get("type")
        if kind == "content_block_delta" and obj.get("delta", {}).get("text"):
            _received(result)
        elif kind == "message_delta":
            result.tokens = int(obj["usage"]["output_tokens"])
            usage = obj["usage"]  # the prompt in three parts, as Anthropic counts it
            result.prompt_tokens = sum(
                usage.get(k) or 0
                for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
            )
            result.complete = obj["delta"].get("stop_reason") is not None
        elif kind == "error":
            raise RuntimeError(json.dumps(obj)[:300])
    return result


DIALECTS: dict[str, Callable[[int, str, int, int], Stream]] = {
    CHAT_PATH: chat_stream,
    "/v1/responses": responses_stream,
    "/v1/messages": messages_stream,
}

# A function being written: the editor asks for the middle while the cursor is in it.
FIM_PREFIX = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    '
FIM_SUFFIX = "\n    return a\n\n\nprint(fibonacci({n}))\n"


def infill_stream(port: int, model: str, n: int, n_predict: int) -> Stream:
    """POST /infill (llama-server's shape; localrun also takes `model`), streamed."""
    result = Stream()
    body: dict[str, Any] = {
        "input_prefix": FIM_PREFIX,
        "input_suffix": FIM_SUFFIX.format(n=n),  # a request of its own: no shared KV suffix
        "n_predict": n_predict,
        "temperature": 0,
        "stream": True,
    }
    if model:
        body["model"] = model
    for obj in sse_events(response_lines(port, "/infill", body, result)):
        if "error" in obj:
            raise RuntimeError(json.dumps(obj["error"])[:300])
        if obj.get("content"):
            _received(result)
        if obj.get("stop"):
            timings = obj.get("timings") or {}
            result.tokens = int(timings.get("predicted_n") or obj.get("tokens_predicted") or 0)
            result.complete = True
    return result


@dataclass
class Series:
    decode: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _one(
    streamer: Callable[[int, str, int, int], Stream],
    server: Server,
    n: int,
    n_predict: int,
    into: Series,
) -> None:
    try:
        got = streamer(server.port, server.model, n, n_predict)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        into.errors.append(f"{type(exc).__name__}: {exc}")
        return
    if got.decode_rate is not None:
        into.decode.append(got.decode_rate)
    if got.ttft is not None:
        into.ttft.append(got.ttft)
    into.tokens.append(got.tokens)


FIM_MODEL = "fim-bench:latest"


def fim_servers(
    localrun: Server | None, build_dir: Path | None, work: Path, threads: int
) -> tuple[Server | None, Server | None]:
    """The FIM model in localrun's store and a llama-server of its own (None where either
    cannot be had)."""
    path = write_tiny_model(
        work / "fim-bench.gguf", n_layer=8, n_embd=512, n_ff=1536, n_head=8, n_head_kv=4,
        n_ctx=4096, dtype="f16", fim=True,
    )  # fmt: skip
    ours: Server | None = None
    if localrun is not None and localrun.env is not None:
        modelfile = work / "Modelfile.fim"
        modelfile.write_text(f"FROM {path}\nPARAMETER num_ctx 2048\n")
        try:
            cmd = localrun.cmd[: localrun.cmd.index("serve")]
            run_command([*cmd, "create", FIM_MODEL, "-f", str(modelfile)], 600, localrun.env)
            ours = Server(localrun.name, localrun.cmd, localrun.port, "", infill_stream)
            ours.model = FIM_MODEL
        except (Unavailable, ValueError) as exc:
            say(f"FIM model not created in localrun: {exc}")
    theirs: Server | None = None
    if build_dir is not None:
        theirs = llama_server(build_dir, path, threads)
        try:
            theirs.start(work)
            theirs.wait_ready()
        except (OSError, Unavailable, subprocess.SubprocessError) as exc:
            say(f"llama-server with the FIM model: n/a: {exc}")
            theirs.stop()
            theirs = None
    return ours, theirs


def measure(
    localrun: Server | None,
    build_dir: Path | None,
    work: Path,
    *,
    threads: int,
    rounds: int,
    first: int,
) -> dict[str, dict[str, Series]]:
    """Dialect rounds on localrun, then FIM rounds on it and on a llama-server of the FIM
    model (those that can be had)."""
    out: dict[str, dict[str, Series]] = {"dialects": {}, "fim": {}}
    n = first
    if localrun is not None:
        out["dialects"] = {path: Series() for path in DIALECTS}
        for round_ in range(rounds):
            paths = list(DIALECTS)
            shift = round_ % len(paths)
            for path in paths[shift:] + paths[:shift]:
                say(f"dialects round {round_ + 1}/{rounds}: {path}")
                _one(DIALECTS[path], localrun, n, N_PREDICT, out["dialects"][path])
                n += 1
    ours, theirs = fim_servers(localrun, build_dir, work, threads)
    try:
        fim = {s.name: s for s in (ours, theirs) if s is not None}
        out["fim"] = {name: Series() for name in fim}
        for server in fim.values():
            _one(infill_stream, server, n, FIM_PREDICT, Series())  # warm-up: loads the model
            n += 1
        for round_ in range(rounds):
            for name, server in fim.items():
                say(f"FIM round {round_ + 1}/{rounds}: {name}")
                _one(infill_stream, server, n, FIM_PREDICT, out["fim"][name])
                n += 1
    finally:
        if theirs is not None:
            theirs.stop()
    return out


def report(measured: dict[str, dict[str, Series]]) -> str:
    lines = []
    dialects = measured.get("dialects") or {}
    if dialects:
        ref = median(dialects[CHAT_PATH].decode)
        lines.append("dialects (localrun serve, streamed chat, greedy, median)")
        lines.append(f"  {'route':<22} {'decode tok/s':>12} {'x chat':>7} {'TTFT ms':>8}  target")
        for path, series in dialects.items():
            decode, ttft = median(series.decode), median(series.ttft)
            ratio = decode / ref if decode and ref else None
            verdict = (
                ""
                if path == CHAT_PATH or ratio is None
                else (f">= {TARGET_DIALECT} {'met' if ratio >= TARGET_DIALECT else 'MISSED'}")
            )
            lines.append(
                f"  {path:<22} {fmt(decode):>12} {fmt(ratio, 2):>7} "
                f"{fmt(None if ttft is None else ttft * 1000, 0):>8}  {verdict}".rstrip()
            )
            if series.errors:
                lines.append(f"    {len(series.errors)} error(s), e.g. {series.errors[0][:200]}")
        lines.append("")
    fim = measured.get("fim") or {}
    if fim:
        ref_ttft = median(fim["llama-server"].ttft) if "llama-server" in fim else None
        lines.append(f"FIM (/infill, {FIM_PREDICT} tokens, model loaded, median)")
        lines.append(f"  {'server':<16} {'TTFT ms':>8} {'x llama-server':>14}")
        for name, series in fim.items():
            ttft = median(series.ttft)
            ratio = ttft / ref_ttft if ttft and ref_ttft else None
            shown = fmt(None if ttft is None else ttft * 1000, 0)
            lines.append(f"  {name:<16} {shown:>8} {fmt(ratio, 2):>14}")
            if series.errors:
                lines.append(f"    {len(series.errors)} error(s), e.g. {series.errors[0][:200]}")
    return "\n".join(lines)
