"""The client side of the server benchmarks: the prompt every server gets, one measured request
(Stream: when it was sent, its first and last token, the token count as the server reports it)
and how to stream it from each kind of server: localrun's Ollama API, llama-server's
/completion, llama_cpp.server's /v1/completions.
"""

from __future__ import annotations

import http.client
import json
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CTX_PER_SLOT",
    "N_PREDICT",
    "THREADS",
    "Stream",
    "llama_cpp_python_stream",
    "llama_server_stream",
    "localrun_stream",
    "ollama_stream",
    "prompt",
    "request_json",
    "response_lines",
    "sse_events",
]

# The servers are compared on the same threads, context per request and answer length.
THREADS = 2
CTX_PER_SLOT = 2048
N_PREDICT = 128
REQUEST_TIMEOUT_S = 300.0

# About 200 tokens. Each request starts with a tag of its own whose first token (a letter or a
# digit) changes every request, so none shares a cached prefix with the requests before it:
# every TTFT evaluates the whole prompt.
TAGS = string.ascii_letters + string.digits
PROMPT = (
    "{tag}: You are a novelist. Write a long, detailed story about a lighthouse keeper on a "
    "remote northern island who finds a message in a bottle after a violent autumn storm. "
    "Describe the island: its black rocks, the seabirds, the small harbour, the village with "
    "its single shop, the old church and the lighthouse itself with its brass lamp and narrow "
    "spiral stairs. Describe the keeper: his age, his habits, his daily routine of cleaning the "
    "lens and writing the logbook, his memories of the wife he lost years ago and his loneliness "
    "in the long winter nights. Then describe the storm in detail, the night it came, the waves "
    "breaking over the harbour wall and the boats torn from their moorings. In the morning he "
    "walks the beach and finds a green glass bottle with a letter inside, written in a language "
    "he barely knows. Tell what the letter says, who wrote it and why, and what the keeper "
    "decides to do. The story begins:\n\n"
)


def prompt(n: int) -> str:
    # "A0", "B0", ... "90", "A1": the first token changes every request, and no prompt repeats
    # (llama-server also keeps old prompts in a RAM cache and would restore a repeated one).
    return PROMPT.format(tag=f"{TAGS[n % len(TAGS)]}{n // len(TAGS)}")


# --- streaming clients ----------------------------------------------------------------------


@dataclass
class Stream:
    """One measured request."""

    sent: float = 0.0  # perf_counter when the request went out
    first: float | None = None  # first token received
    last: float | None = None  # last token received
    tokens: int = 0  # as the server counts them (chunk count for llama_cpp.server)
    prompt_tokens: int | None = None
    complete: bool = False  # ended with a finish reason (stop/length), not cut
    server_rate: float | None = None  # the server's own decode tok/s, where it reports one
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.sent

    @property
    def decode_rate(self) -> float | None:
        if self.first is None or self.last is None or self.tokens < 2 or self.last <= self.first:
            return None
        return (self.tokens - 1) / (self.last - self.first)


def response_lines(port: int, path: str, body: dict[str, Any], result: Stream) -> Iterator[bytes]:
    """POST `body` and yield the response's non-empty lines as they arrive."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        data = json.dumps(body).encode()
        result.sent = time.perf_counter()
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read(300).decode(errors='replace')}")
        while line := resp.readline():
            if line.strip():
                yield line.strip()
    finally:
        conn.close()


def sse_events(lines: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return
            yield json.loads(payload)


def localrun_stream(
    port: int,
    model: str,
    n: int,
    n_predict: int,
    threads: int = THREADS,
    text: str = "",
    into: Stream | None = None,
    options: dict[str, Any] | None = None,
) -> Stream:
    """`text` (default: prompt(n)) as a raw, greedy /api/generate stream, timed in `into`
    (default: a new Stream) as its pieces arrive; `options` added to the request's."""
    body = {
        "model": model,
        "prompt": text or prompt(n),
        "raw": True,
        "stream": True,
        "keep_alive": -1,
        "options": {
            "temperature": 0,
            "repeat_penalty": 1.0,
            "num_predict": n_predict,
            "num_thread": threads,
            "num_ctx": CTX_PER_SLOT,
            **(options or {}),
        },
    }
    return ollama_stream(port, body, into)


def ollama_stream(port: int, body: dict[str, Any], into: Stream | None = None) -> Stream:
    """Stream /api/generate with `body`, timing each piece as it arrives (in `into`)."""
    result = into or Stream()
    for line in response_lines(port, "/api/generate", body, result):
        obj = json.loads(line)
        if "error" in obj:
            raise RuntimeError(str(obj["error"]))
        if obj.get("response"):
            result.last = time.perf_counter()
            result.first = result.first or result.last
        if obj.get("done"):
            result.tokens = int(obj.get("eval_count") or 0)
            result.prompt_tokens = obj.get("prompt_eval_count")
            result.complete = obj.get("done_reason") in ("stop", "length")
            if obj.get("eval_duration"):
                result.server_rate = result.tokens / (obj["eval_duration"] / 1e9)
    return result


def llama_server_stream(
    port: int, model: str, n: int, n_predict: int, text: str = "", into: Stream | None = None
) -> Stream:
    result = into or Stream()
    body = {
        "prompt": text or prompt(n),
        "n_predict": n_predict,
        "temperature": 0,
        "repeat_penalty": 1.0,
        "stream": True,
    }
    for obj in sse_events(response_lines(port, "/completion", body, result)):
        if obj.get("content"):
            result.last = time.perf_counter()
            result.first = result.first or result.last
        if obj.get("stop"):
            timings = obj.get("timings") or {}
            result.tokens = int(timings.get("predicted_n") or obj.get("tokens_predicted") or 0)
            result.prompt_tokens = timings.get("prompt_n")
            result.server_rate = timings.get("predicted_per_second")
            result.complete = True
    return result


def llama_cpp_python_stream(port: int, model: str, n: int, n_predict: int) -> Stream:
    result = Stream()
    body = {
        "prompt": prompt(n),
        "max_tokens": n_predict,
        "temperature": 0,
        "repeat_penalty": 1.0,
        "stream": True,
    }
    # One chunk per token, except that a token ending inside a UTF-8 character is held back and
    # sent with the next: the count can only be low, by the few such tokens.
    for obj in sse_events(response_lines(port, "/v1/completions", body, result)):
        choice = (obj.get("choices") or [{}])[0]
        if choice.get("text"):
            result.tokens += 1
            result.last = time.perf_counter()
            result.first = result.first or result.last
        if choice.get("finish_reason"):
            result.complete = True
    # A stream interrupted by a newer request ends with [DONE] and no finish reason: cut.
    return result


def request_json(
    port: int, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 600
) -> Any:
    """One request to a local server; its JSON answer (anything but HTTP 200 raises)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body) if body is not None else None
        conn.request(method, path, data, {"Content-Type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}: {raw[:300]!r}")
        return json.loads(raw)
    finally:
        conn.close()
