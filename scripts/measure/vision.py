#!/usr/bin/env python3
"""Images: localrun's answers against llama.cpp's own multimodal tool, and its speed beside
llama-server, on the tiny vision model and projector of scripts/testmodels/projectors.py.

llama-mtmd-cli and llama-server are built from the llama.cpp that llama-cpp-python vendors
(scripts/bench/decode.py builds them). Every answer is greedy (temperature 0, no repeat penalty).

  same answers     for each image (solid colours, a gradient, a photo-like noise) the text
                   llama-mtmd-cli writes for "PROMPT" with the image before it, and what
                   `localrun serve` answers on /v1/chat/completions (image_url data URL, then
                   the text): equal, token for token (as text), or the first difference shown;
                   the same for 3 audio clips (input_audio) on the tiny audio model
  first question   time to first token of a question with an image neither server has seen
                   (the image's encode and its decode included), median of --rounds
  second question  the conversation continued (the image, the answer, another question): time
                   to first token, against the first
  text alone       the same question without the image: its time to first token, and the
                   difference (what the image costs)
  decode           tokens per second after an image, against after text alone, by each
                   server's own clock (localrun's eval_duration on /api/chat, llama-server's
                   timings), 160 tokens without speculation

A benchmark, not a test: it never fails on a slow number.

Usage: .venv/bin/python scripts/measure/vision.py [--rounds 5] [--threads 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from benchlib.common import Unavailable, run_command, say
from benchlib.stacks.build import ensure_build, server_args
from benchlib.stacks.serve import Server, free_port
from benchlib.stacks.store import served_env
from benchlib.streams import Stream, localrun_stream, response_lines, sse_events
from testmodels.projectors import write_tiny_audio, write_tiny_vision
from testmodels.vocab import build_vocab

PROMPT = "the a"
N_PREDICT = 24
TIMED_PREDICT = 160  # timed answers: long enough that their decode rate is not one SSE chunk


def images(n: int, seed: int) -> list[bytes]:
    """`n` PNGs no server has seen: solid colours, gradients and noise, by `seed`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            pixels = np.full((40, 48, 3), rng.integers(0, 256, 3), dtype=np.uint8)
        elif kind == 1:
            ramp = np.linspace(0, 255, 48, dtype=np.uint8)
            pixels = np.stack([np.tile(ramp, (40, 1))] * 3, axis=-1)
            pixels[..., i % 3] = rng.integers(0, 256)
        else:
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        data = io.BytesIO()
        Image.fromarray(pixels).save(data, "PNG")
        out.append(data.getvalue())
    return out


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _never_stop() -> dict[str, int]:
    """logit_bias that keeps the tiny model from ending its answer (</s>, <|im_end|>): every
    timed answer is TIMED_PREDICT tokens, so decode rates compare like with like."""
    tokens, _, _ = build_vocab()
    return {str(tokens.index(piece)): -100 for piece in ("</s>", "<|im_end|>")}


def chat_stream(
    port: int, model: str, messages: list[dict[str, Any]], *, timed: bool = False
) -> Stream:
    """One /v1/chat/completions stream, timed as bench_serve times its streams (`timed`:
    TIMED_PREDICT tokens, whatever the model would say)."""
    result = Stream()
    body = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "max_tokens": TIMED_PREDICT if timed else N_PREDICT,
        **({"logit_bias": _never_stop()} if timed else {}),
    }
    text = []
    for event in sse_events(response_lines(port, "/v1/chat/completions", body, result)):
        for choice in event.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                now = time.perf_counter()
                result.first = result.first or now
                result.last = now
                text.append(piece)
            if choice.get("finish_reason"):
                result.complete = True
        usage = event.get("usage")
        if usage:
            result.tokens = int(usage.get("completion_tokens") or 0)
            result.prompt_tokens = usage.get("prompt_tokens")
        timings = event.get("timings")  # llama-server's own, on its last chunk
        if isinstance(timings, dict) and timings.get("predicted_per_second"):
            result.server_rate = float(timings["predicted_per_second"])
    result.error = None
    result.text = "".join(text)  # type: ignore[attr-defined]
    return result


def ollama_rate(port: int, png: bytes | None, text: str) -> float:
    """localrun's own decode rate (eval_count / eval_duration) for the question on Ollama's
    /api/chat: the server's clock, not the client's, which at thousands of tokens per second
    times the transport more than the decode."""
    message: dict[str, Any] = {"role": "user", "content": text}
    if png is not None:
        message["images"] = [base64.b64encode(png).decode()]
    body = {
        "model": "vis",
        "messages": [message],
        "stream": False,
        "options": {"num_predict": TIMED_PREDICT},
    }
    answer = httpx.post(f"http://127.0.0.1:{port}/api/chat", json=body, timeout=300).json()
    return float(answer["eval_count"]) / (answer["eval_duration"] / 1e9)


def question(png: bytes | None, text: str = PROMPT) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if png is not None:
        parts.append({"type": "image_url", "image_url": {"url": data_url(png)}})
    parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


def clips(n: int) -> list[bytes]:
    """`n` short 16 kHz WAV clips: tones of different pitches, and noise."""
    import wave

    import numpy as np

    out = []
    for i in range(n):
        t = np.arange(16000 + 4000 * i) / 16000
        if i % 3 == 2:
            samples = np.random.default_rng(i).standard_normal(t.size) * 6000
        else:
            samples = np.sin(2 * np.pi * (220 + 110 * i) * t) * 12000
        data = io.BytesIO()
        with wave.open(data, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(samples.astype(np.int16).tobytes())
        out.append(data.getvalue())
    return out


def audio_question(wav: bytes) -> dict[str, Any]:
    clip = {"data": base64.b64encode(wav).decode(), "format": "wav"}
    parts = [{"type": "input_audio", "input_audio": clip}, {"type": "text", "text": PROMPT}]
    return {"role": "user", "content": parts}


def mtmd_cli(
    build: Path, model: Path, projector: Path, data: bytes, threads: int, kind: str = "image"
) -> str:
    """llama-mtmd-cli's greedy answer to PROMPT with the image (or audio) `data` before it (the
    model's template)."""
    with tempfile.NamedTemporaryFile(suffix=".png" if kind == "image" else ".wav") as medium:
        medium.write(data)
        medium.flush()
        cmd = [
            str(build / "bin" / "llama-mtmd-cli"), "-m", str(model), "--mmproj", str(projector),
            f"--{kind}", medium.name, "-p", PROMPT, "-n", str(N_PREDICT), "--temp", "0",
            "--repeat-penalty", "1.0", "-t", str(threads), "--seed", "1", *server_args(),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise Unavailable(f"llama-mtmd-cli: exit {done.returncode}: {done.stderr[-500:]}")
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    cache = Path(os.environ.get("LOCALRUN_BENCH_CACHE", "~/.cache/localrun-bench")).expanduser()
    build = ensure_build(None, cache, args.jobs).dir
    work = Path(tempfile.mkdtemp(prefix="localrun-bench-vision-"))
    model, projector = write_tiny_vision(work)
    modelfile = work / "Modelfile"
    # No speculation: llama-server has none by default, and prompt lookup on this random
    # model's repetitive answers would make "decode after an image" a measure of repetition.
    modelfile.write_text(
        f"FROM {model}\nPROJECTOR {projector}\n"
        "PARAMETER temperature 0\nPARAMETER repeat_penalty 1.0\nPARAMETER speculate off\n"
    )
    home = work / "home"
    env = served_env(home)
    lr = [sys.executable, "-m", "localrun"]
    run_command([*lr, "create", "vis", "-f", str(modelfile)], timeout=300, env=env)
    audio = write_tiny_audio(work)
    modelfile.write_text(
        f"FROM {audio[0]}\nPROJECTOR {audio[1]}\n"
        "PARAMETER temperature 0\nPARAMETER repeat_penalty 1.0\n"
    )
    run_command([*lr, "create", "aud", "-f", str(modelfile)], timeout=300, env=env)

    port = free_port()
    ours = Server(
        "localrun serve",
        [*lr, "serve", "--host", "127.0.0.1", "--port", str(port)],
        port,
        "/api/version",
        localrun_stream,
        env={**env, "LOCALRUN_HOST": f"127.0.0.1:{port}"},
        model="vis",
    )
    port2 = free_port()
    cmd = [
        str(build / "bin" / "llama-server"), "-m", str(model), "--mmproj", str(projector),
        "--host", "127.0.0.1", "--port", str(port2), "-t", str(args.threads),
        "-np", "1", "-c", "2048", "--no-webui", "--repeat-penalty", "1.0", *server_args(),
    ]  # fmt: skip
    theirs = Server(
        "llama-server",
        cmd,
        port2,
        "/health",
        localrun_stream,
        model="vis",
    )
    results: dict[str, Any] = {"rounds": args.rounds, "threads": args.threads}
    try:
        for server in (ours, theirs):
            server.start(work)
            server.wait_ready()
        # The same answers as llama.cpp's own tool.
        # llama-mtmd-cli is run three times per image: on this random-weight model its own
        # answers were seen to vary between runs (an immediate end of generation, once).
        agree, varies = [], 0
        for png in images(6, seed=0):
            theirs_all = [mtmd_cli(build, model, projector, png, args.threads) for _ in range(3)]
            expected = max(set(theirs_all), key=theirs_all.count)
            varies += len(set(theirs_all)) > 1
            got = chat_stream(port, "vis", [question(png)]).text  # type: ignore[attr-defined]
            agree.append(expected == got.strip())  # the tool's output is stripped
            if expected != got.strip():
                say(f"differs: llama-mtmd-cli {theirs_all!r}, localrun {got!r}")
        results["same_answers"] = f"{sum(agree)}/{len(agree)}"
        results["mtmd_cli_runs_that_varied"] = varies
        say(f"same answers as llama-mtmd-cli: {results['same_answers']}")
        heard = []
        for wav in clips(3):
            expected = mtmd_cli(build, *audio, wav, args.threads, "audio")
            got = chat_stream(port, "aud", [audio_question(wav)]).text  # type: ignore[attr-defined]
            heard.append(expected == got.strip())
            if expected != got.strip():
                say(f"differs (audio): llama-mtmd-cli {expected!r}, localrun {got!r}")
        results["same_answers_audio"] = f"{sum(heard)}/{len(heard)}"
        # Speed, each server in turn on images neither has seen.
        for name, server_port in (("localrun", port), ("llama-server", port2)):
            first, second, text, rate_image, rate_text = [], [], [], [], []
            for r, png in enumerate(images(args.rounds, seed=100 + r_seed(name))):
                asked = chat_stream(
                    server_port, "vis", [question(png, f"{PROMPT} {r}")], timed=True
                )
                follow = [
                    question(png, f"{PROMPT} {r}"),
                    {"role": "assistant", "content": asked.text},  # type: ignore[attr-defined]
                    question(None, "hello"),
                ]
                again = chat_stream(server_port, "vis", follow, timed=True)
                alone = chat_stream(
                    server_port, "vis", [question(None, f"{PROMPT} {r} x")], timed=True
                )
                first.append(asked.ttft)
                second.append(again.ttft)
                text.append(alone.ttft)
                if name == "localrun":
                    rate_image.append(ollama_rate(server_port, png, f"{PROMPT} {r} y"))
                    rate_text.append(ollama_rate(server_port, None, f"{PROMPT} {r} y"))
                else:
                    rate_image.append(asked.server_rate or asked.decode_rate)
                    rate_text.append(alone.server_rate or alone.decode_rate)
            results[name] = {
                "first_question_ttft_ms": round(1000 * median(first), 2),
                "second_question_ttft_ms": round(1000 * median(second), 2),
                "text_alone_ttft_ms": round(1000 * median(text), 2),
                "image_cost_ms": round(1000 * (median(first) - median(text)), 2),
                "decode_after_image_tok_s": round(median(rate_image), 1),
                "decode_after_text_tok_s": round(median(rate_text), 1),
            }
            say(f"{name}: {json.dumps(results[name])}")
    finally:
        for server in (ours, theirs):
            server.stop()
    a, b = results.get("localrun"), results.get("llama-server")
    if a and b:
        for key in ("first_question_ttft_ms", "second_question_ttft_ms", "image_cost_ms"):
            ratio = a[key] / b[key] if b[key] else None
            print(f"{key:28} localrun {a[key]:8.2f}  llama-server {b[key]:8.2f}  ratio {ratio}")
        print(
            f"{'decode tok/s (image/text)':28} localrun {a['decode_after_image_tok_s']}/"
            f"{a['decode_after_text_tok_s']}  llama-server {b['decode_after_image_tok_s']}/"
            f"{b['decode_after_text_tok_s']}"
        )
    print(
        f"same answers as llama-mtmd-cli: {results.get('same_answers')} (images on which "
        f"llama-mtmd-cli's own 3 runs varied: {results.get('mtmd_cli_runs_that_varied')}); "
        f"audio clips: {results.get('same_answers_audio')}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def median(values: list[float | None]) -> float:
    return statistics.median([v for v in values if v is not None])


def r_seed(name: str) -> int:
    """A different series of images per server: neither finds the other's in a cache."""
    return 0 if name == "localrun" else 50


if __name__ == "__main__":
    sys.exit(main())
