"""Hostile input on the surfaces the second audit found: tokenizing, a gateway's upstreams, and
the prompt cache folder; against a real `localrun serve` and real `localrun run` processes.

    python scripts/fuzz/tokens_gateway_cache.py [--from smollm2:135m] [--cases 60] [--seed 0]
    [--scale 1]

It makes a LOCALRUN_HOME of its own, creates a model from `--from` (a catalog name or a GGUF
path, trained on 2048 tokens or more) with a long SYSTEM prompt, starts two scripted upstreams
(scripts/fuzzlib/upstream.py): one that answers the model `remote-model` in a mode each case
picks (one endless line, a gzip bomb, a 96 MB embedding, a stall, a cut, a 500), and one whose
model list is 16 MB, read every second. Then:

- tokenize: /tokenize (with and without pieces), /detokenize, /api/chat and count_tokens on
  megabytes of CJK text, tens of thousands of special tokens and million-token lists; meanwhile
  a short generate on the same model must still answer (its slowest time is printed);
- upstream: chat, completions and embeddings routed to the hostile upstream, streamed and not,
  in every dialect; /api/version must answer within a second meanwhile (the event loop is free);
- cache: `localrun run` after each prompt cache entry is replaced by a FIFO, a symlink (to
  /dev/zero, to another entry), a sparse 2 GB file, a truncated, flipped or empty one, a folder:
  it must exit 0 with the answer it gave with a clean cache, in bounded time and memory.

Every answer must be a 2xx or a 4xx in its dialect's shape; an upstream's failure may be a 502
or 504 in that shape (the gateway's own word for it). Prints cases tried, statuses, the peak
RSS of the server and its runners, and of each `localrun run`; exits 1 on any defect.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from fuzzlib.checks import problem, send
from fuzzlib.hostile import Request
from fuzzlib.processes import Peak, Prober, cli, serving
from fuzzlib.upstream import FakeUpstream, huge_answers

# Long enough to be cached on disk (prompt_cache.MIN_TOKENS) by any tokenizer.
SYSTEM = "You are a careful assistant. " + " ".join(f"Rule {i}: be brief." for i in range(40))
SPECIALS = "<|im_start|><|endoftext|>"
GATEWAY_STATUSES = (502, 504)


class Outcome:
    """What the cases found."""

    def __init__(self) -> None:
        self.cases = 0
        self.statuses: dict[int, int] = {}
        self.defects: list[str] = []
        self.notes: dict[str, float] = {}

    def check(self, family: str, request: Request, status: int, text: str) -> None:
        print(f"{family}: {request.describe()[:70]} -> {status}", flush=True)
        self.cases += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        allowed = family.startswith("upstream") and status in GATEWAY_STATUSES
        found = text if status < 0 else problem(request, 400 if allowed else status, text)
        if found:
            self.defect(f"{family}: {request.describe()[:200]} -> {found}")

    def defect(self, text: str) -> None:
        self.defects.append(text)
        print("DEFECT", text, flush=True)

    def most(self, key: str, value: float) -> None:
        self.notes[key] = max(self.notes.get(key, 0.0), value)


# -- tokenize --------------------------------------------------------------------------------


def _cjk(rng: random.Random, size: int) -> str:
    """About `size` bytes of CJK text (3 bytes a character)."""
    alphabet = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 2000))
    return "".join(rng.choices(alphabet, k=size // 3))


def tokenize_cases(rng: random.Random, model: str, scale: float) -> Iterator[Request]:
    mb = int((1 << 20) * scale)
    for size in (mb // 2, 2 * mb, 3 * mb, 8 * mb):
        text = _cjk(rng, size)
        for pieces in (False, True):
            yield Request(
                "POST", "/tokenize", {"model": model, "content": text, "with_pieces": pieces}
            )
        yield Request(
            "POST",
            "/v1/messages/count_tokens",
            {"model": model, "messages": [{"role": "user", "content": text}]},
        )
    for pairs in (1000, int(8000 * scale), int(100_000 * scale)):
        text = SPECIALS * pairs
        yield Request("POST", "/tokenize", {"model": model, "content": text, "add_special": True})
        yield Request(
            "POST",
            "/api/chat",
            {
                "model": model,
                "stream": False,
                "messages": [{"role": "user", "content": text}],
                "options": {"num_predict": 2},
            },
        )
        yield Request(
            "POST",
            "/v1/messages/count_tokens",
            {"model": model, "messages": [{"role": "user", "content": text}]},
        )
    for count in (100_000, int(1_000_000 * scale), int(5_000_000 * scale)):
        yield Request(
            "POST", "/detokenize", {"model": model, "tokens": [rng.randrange(1, 300)] * count}
        )
    yield Request("POST", "/tokenize", {"model": model, "content": "\ud800" * 1000})
    yield Request("POST", "/tokenize", {"model": model, "content": ["a", 1, None]})


def _generate(client: httpx.Client, model: str, into: dict[str, Any]) -> None:
    started = time.monotonic()
    body = {"model": model, "prompt": "Hi", "stream": False, "options": {"num_predict": 4}}
    try:
        into["status"] = client.post("/api/generate", json=body, timeout=300).status_code
    except httpx.HTTPError as exc:
        into["status"] = repr(exc)
    into["s"] = time.monotonic() - started


def run_tokenize(client: httpx.Client, model: str, out: Outcome, cases: list[Request]) -> None:
    """Each case with a short generate beside it: the generate must answer meanwhile."""
    for request in cases:
        beside: dict[str, Any] = {}
        thread = threading.Thread(target=_generate, args=(client, model, beside))
        thread.start()
        status, text = send(client, request, timeout=300)
        out.check("tokenize", request, status, text)
        thread.join()
        out.most("slowest generate beside a tokenize (s)", beside.get("s", 0.0))
        if beside.get("status") != 200:
            out.defect(f"tokenize: a generate beside {request.describe()[:120]} was {beside}")


# -- upstreams -------------------------------------------------------------------------------

UPSTREAM_MODES = [
    "huge_line",
    "gzip_bomb",
    "huge",
    "stall",
    "cut",
    "error500",
    "error_line",
    "gzip",
    "ok",
]


def upstream_request(rng: random.Random) -> Request:
    chat = [{"role": "user", "content": "hi"}]
    stream = rng.random() < 0.5
    path, body = rng.choice(
        [
            ("/v1/chat/completions", {"messages": chat, "stream": stream}),
            ("/v1/completions", {"prompt": "hi", "stream": stream}),
            ("/api/chat", {"messages": chat, "stream": stream}),
            ("/api/generate", {"prompt": "hi", "stream": stream}),
            ("/v1/messages", {"messages": chat, "max_tokens": 8, "stream": stream}),
            ("/v1/responses", {"input": "hi", "stream": stream}),
            ("/v1/embeddings", {"input": ["hi"]}),
            ("/api/embed", {"input": ["hi"]}),
        ]
    )
    return Request("POST", path, {"model": "remote-model", **body})


def run_upstream(
    client: httpx.Client, upstream: FakeUpstream, out: Outcome, rng: random.Random, count: int
) -> None:
    for _ in range(count):
        upstream.mode = rng.choice(UPSTREAM_MODES)
        request = upstream_request(rng)
        prober = Prober(client)
        status, text = send(client, request, timeout=300)
        worst = prober.stop()
        out.check(f"upstream {upstream.mode}", request, status, text)
        out.most("slowest /api/version beside a hostile upstream (s)", worst)
        if worst > 1.0:
            out.defect(f"upstream {upstream.mode}: /api/version took {worst:.1f} s")


# -- the prompt cache folder -----------------------------------------------------------------


def _mutations(rng: random.Random) -> dict[str, Callable[[Path], None]]:
    def fifo(path: Path) -> None:
        path.unlink()
        os.mkfifo(path)

    def to_zero(path: Path) -> None:
        path.unlink()
        path.symlink_to("/dev/zero")

    def to_other(path: Path) -> None:
        other = path.with_name("outside.bin")
        other.write_bytes(path.read_bytes())
        path.unlink()
        path.symlink_to(other)

    def sparse(path: Path) -> None:
        with path.open("r+b") as fh:
            fh.truncate(2 << 30)

    def truncated(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: rng.randrange(1, max(2, len(data)))])

    def flipped(path: Path) -> None:
        data = bytearray(path.read_bytes())
        for _ in range(8):
            data[rng.randrange(len(data))] ^= 0xFF
        path.write_bytes(bytes(data))

    def empty(path: Path) -> None:
        path.write_bytes(b"")

    def folder(path: Path) -> None:
        path.unlink()
        path.mkdir()

    def header_lies(path: Path) -> None:  # a state of 1 TB, says the header
        data = path.read_bytes()
        start = data.index(b"\n") + 1
        (length,) = struct.unpack("<I", data[start : start + 4])
        header = json.loads(data[start + 4 : start + 4 + length])
        header["size"] = 1 << 40
        text = json.dumps(header).encode()
        path.write_bytes(data[:start] + struct.pack("<I", len(text)) + text)

    return {
        f.__name__: f
        for f in (fifo, to_zero, to_other, sparse, truncated, flipped, empty, folder, header_lies)
    }


def run_cache(env: dict[str, str], model: str, out: Outcome, rng: random.Random) -> None:
    folder = Path(env["LOCALRUN_HOME"]) / "cache" / "prompts"
    args = (
        "run",
        model,
        "Say hi.",
        "--seed",
        "1",
        "--param",
        "temperature=0",
        "--param",
        "num_predict=8",
    )
    clean = cli(env, *args)
    if clean.returncode != 0 or not any(folder.glob("*.kv")):
        out.defect(f"cache: the clean run failed or cached nothing: {clean.stderr[-300:]}")
        return
    for name, mutate in _mutations(rng).items():
        for entry in sorted(folder.iterdir()):  # a fresh, clean cache for each mutation
            if entry.is_dir() and not entry.is_symlink():
                entry.rmdir()
            else:
                entry.unlink()
        cli(env, *args)
        for entry in sorted(folder.glob("*.kv")):
            mutate(entry)
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "localrun", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        peak = Peak(proc.pid)
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        seconds = time.monotonic() - started
        out.cases += 1
        out.statuses[proc.returncode] = out.statuses.get(proc.returncode, 0) + 1
        out.most("peak RSS of a `localrun run` (MiB)", peak.stop() / 2**20)
        out.most("slowest `localrun run` over a hostile entry (s)", seconds)
        if proc.returncode != 0 or stdout != clean.stdout:
            out.defect(
                f"cache {name}: exit {proc.returncode}, {stdout!r} (clean: "
                f"{clean.stdout!r}) {stderr[-300:]!r}"
            )


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", default="smollm2:135m")
    parser.add_argument("--cases", type=int, default=60, help="upstream cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="of the tokenize sizes")
    parser.add_argument("--only", choices=["tokenize", "upstream", "cache"], action="append")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    families = args.only or ["tokenize", "upstream", "cache"]
    out = Outcome()
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as home,
        FakeUpstream(("remote-model",)) as hostile,
        FakeUpstream(("listed",)) as lister,
    ):
        hostile.stall_s = 3.0
        hostile.huge_bytes = 96 << 20  # past the 64 MiB an upstream's answer may have
        lister.mode = "huge"  # past the 4 MiB a model list may have, read every second
        lister.huge_bytes = 16 << 20
        # Made now: made at the first request, they held this process's GIL (and the probe's
        # thread) for seconds.
        huge_answers(hostile.huge_bytes, lister.huge_bytes)
        env = {
            **os.environ,
            "LOCALRUN_HOME": home,
            "LOCALRUN_HOST": "127.0.0.1:9",
            "LOCALRUN_UPSTREAM_HEALTH_INTERVAL": "1s",
            "LOCALRUN_UPSTREAM_READ_TIMEOUT": "2s",
            "LOCALRUN_UPSTREAM_COOLDOWN": "0s",
            "LOCALRUN_UPSTREAM_EJECT_AFTER": "1000",
        }
        source = str(Path(args.source).resolve()) if Path(args.source).exists() else args.source
        modelfile = Path(home) / "Modelfile"
        modelfile.write_text(f'FROM {source}\nSYSTEM """{SYSTEM}"""\nPARAMETER num_ctx 2048\n')
        for command in (
            ("create", "target", "-f", str(modelfile)),
            ("upstream", "add", "hostile", hostile.url, "--model", "remote-model"),
            ("upstream", "add", "lister", lister.url),
        ):
            done = cli(env, *command)
            if done.returncode != 0:
                raise SystemExit(f"localrun {' '.join(command)}: {done.stderr.strip()}")
        if "cache" in families:
            run_cache(env, "target", out, rng)
        log = Path(home) / "serve.log"
        # No kept-alive connections: one the server closed as idle is no defect of its own.
        limits = httpx.Limits(max_keepalive_connections=0)
        with serving(env, log) as (url, proc), httpx.Client(base_url=url, limits=limits) as client:
            peak = Peak(proc.pid)
            if "tokenize" in families:
                run_tokenize(client, "target", out, list(tokenize_cases(rng, "target", args.scale)))
            if "upstream" in families:
                run_upstream(client, hostile, out, rng, args.cases)
            alive = client.get("/api/tags", timeout=30).status_code == 200
            server_peak = peak.stop()
        if out.defects:
            print("the server's log ends:\n" + log.read_text()[-3000:], file=sys.stderr)
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(out.statuses.items()))
    notes = "; ".join(f"{k} {v:.1f}" for k, v in out.notes.items())
    print(json.dumps({"families": families}), file=sys.stderr)
    print(
        f"\n{out.cases} cases in {time.monotonic() - started:.0f} s; statuses (exit codes for "
        f"`localrun run`) {counts}; {len(out.defects)} defects; server up afterwards: {alive}; "
        f"peak RSS of the server and its runners {server_peak / 2**20:.0f} MiB; {notes}"
    )
    return 1 if out.defects or not alive else 0


if __name__ == "__main__":
    sys.exit(main())
