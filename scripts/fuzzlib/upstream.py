"""A scripted OpenAI-only upstream for the gateway tests and scripts/fuzz/tokens_gateway_cache.py:
/v1/models and a streaming /v1/chat/completions (and /v1/completions) that answer, or fail on
cue.

Modes (set `mode` between requests):
  ok          stream WORDS as chat chunks, then usage and [DONE]
  error500    answer HTTP 500 before any byte of an answer
  stall       accept the request and send nothing for `stall_s`
  cut         send two chunks, then close the connection without finishing
  slow        send a chunk every `interval_s`, `pieces` times (for cancellation)
  slow_first  wait `stall_s` before the answer's first byte, then answer as ok
  tool        stream a call of the tool get_weather, its arguments in two parts
  error400    answer HTTP 400: the request itself is wrong
  error_line  start a stream, then end it as llama-server ends a refused one (`error: {...}`)
  gzip        answer as ok, the whole answer gzip-compressed (Content-Encoding: gzip)
Hostile modes (an upstream that would take a gateway down):
  huge_line   start a stream, then send one line that never ends (`huge_bytes` of it)
  gzip_bomb   a gzip-compressed stream of `huge_bytes` zero bytes (about 1000 times smaller)
  huge        /v1/embeddings and /v1/models answer `huge_bytes` of JSON
  endless     stream `endless_piece` chunk after chunk, whatever max_tokens says, until the
              client goes away (at most `huge_bytes` of it); also on Ollama's /api/chat and
              /api/generate (with /api/tags), as JSON lines, for an Ollama-dialect upstream

It records each request (path, headers, JSON body) and whether a client went away mid-answer.
"""

from __future__ import annotations

import functools
import gzip
import json
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = ["Hello", " from", " the", " fake", " upstream", "."]


class FakeUpstream:
    def __init__(self, models: tuple[str, ...] = ("big-model",)) -> None:
        self.models = list(models)
        self.mode = "ok"
        self.stall_s = 5.0
        self.interval_s = 0.05
        self.pieces = 400
        self.huge_bytes = 256 * 1024 * 1024
        self.endless_piece = "tick "
        self.sent_bytes = 0  # of the last endless answer
        self.requests: list[dict[str, Any]] = []
        self.disconnected = threading.Event()
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/v1/models" and fake.mode == "huge":
                    self._raw(200, _huge("models", fake.huge_bytes))
                elif self.path == "/api/tags":
                    self._json(200, {"models": [{"name": m, "model": m} for m in fake.models]})
                elif self.path == "/v1/models":
                    data = {
                        "object": "list",
                        "data": [{"id": m, "object": "model"} for m in fake.models],
                    }
                    self._json(200, data)
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake.lock:
                    fake.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                if self.path == "/v1/embeddings" and fake.mode == "huge":
                    self._raw(200, _huge("embedding", fake.huge_bytes))
                    return
                if self.path == "/v1/embeddings" and fake.mode == "ok":
                    inputs = body.get("input") or []
                    data = [
                        {"object": "embedding", "index": i, "embedding": [3.0, 4.0]}
                        for i in range(len(inputs))
                    ]
                    usage = {"prompt_tokens": 2 * len(inputs), "total_tokens": 2 * len(inputs)}
                    self._json(200, {"object": "list", "data": data, "usage": usage})
                    return
                if fake.mode == "endless" and self.path in _ENDLESS:
                    self._endless(_ENDLESS[self.path])
                    return
                if self.path not in ("/v1/chat/completions", "/v1/completions"):
                    self._json(404, {"error": {"message": "this upstream speaks OpenAI only"}})
                    return
                mode = fake.mode
                if mode == "error500":
                    self._json(500, {"error": {"message": "the GPU caught fire"}})
                    return
                if mode == "error400":
                    self._json(400, {"error": {"message": "max_tokens is too large"}})
                    return
                if mode == "error_line":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    message = "the request exceeds the available context size"
                    error = {"code": 400, "type": "exceed_context_size_error", "message": message}
                    self.wfile.write(b"error: " + json.dumps(error).encode() + b"\n\n")
                    self.wfile.flush()
                    return
                if mode in ("huge_line", "gzip_bomb", "gzip"):
                    self._hostile(mode, fake.huge_bytes)
                    return
                if mode == "stall":
                    time.sleep(fake.stall_s)
                    self.close_connection = True
                    return
                if mode == "slow_first":
                    time.sleep(fake.stall_s)
                if mode == "tool":
                    self._tool_call()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                chat = self.path.endswith("chat/completions")
                words = ["tick "] * fake.pieces if mode == "slow" else WORDS
                try:
                    for i, word in enumerate(words):
                        if mode == "cut" and i == 2:
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        choice: dict[str, Any] = {"index": 0, "finish_reason": None}
                        if chat:
                            choice["delta"] = {"content": word}
                        else:
                            choice["text"] = word
                        self._event({"id": "x", "object": "chunk", "choices": [choice]})
                        if mode == "slow":
                            time.sleep(fake.interval_s)
                    last: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
                    last["delta" if chat else "text"] = {} if chat else ""
                    self._event({"id": "x", "choices": [last]})
                    usage = {
                        "prompt_tokens": 7,
                        "completion_tokens": len(words),
                        "total_tokens": 7 + len(words),
                    }
                    self._event({"id": "x", "choices": [], "usage": usage})
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    fake.disconnected.set()

            def _tool_call(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                call = {"index": 0, "id": "call_1", "type": "function"}
                parts = [
                    {**call, "function": {"name": "get_weather", "arguments": '{"city": '}},
                    {"index": 0, "function": {"arguments": '"Paris"}'}},
                ]
                for part in parts:
                    delta = {"role": "assistant", "tool_calls": [part]}
                    self._event({"id": "x", "choices": [{"index": 0, "delta": delta}]})
                done = {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
                self._event({"id": "x", "choices": [done]})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

            def _endless(self, shape: str) -> None:
                """An answer that never ends by itself, in the route's wire shape."""
                piece = fake.endless_piece
                one = {
                    "chat": {"id": "x", "choices": [{"index": 0, "delta": {"content": piece}}]},
                    "completions": {"id": "x", "choices": [{"index": 0, "text": piece}]},
                    "ollama_chat": {"message": {"role": "assistant", "content": piece},
                                    "done": False},
                    "ollama_generate": {"response": piece, "done": False},
                }[shape]  # fmt: skip
                line = json.dumps(one).encode()
                line = line + b"\n" if shape.startswith("ollama") else b"data: " + line + b"\n\n"
                ndjson = "application/x-ndjson"
                self.send_response(200)
                self.send_header("Content-Type", ndjson if shape[0] == "o" else "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                fake.sent_bytes = 0
                try:
                    while fake.sent_bytes < fake.huge_bytes:
                        self.wfile.write(line)
                        self.wfile.flush()
                        fake.sent_bytes += len(line)
                except (BrokenPipeError, ConnectionResetError):
                    fake.disconnected.set()

            def _hostile(self, mode: str, size: int) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.close_connection = True
                if mode == "huge_line":
                    self.end_headers()
                    body: bytes | Iterator[bytes] = _endless_line(size)
                elif mode == "gzip_bomb":
                    self.send_header("Content-Encoding", "gzip")
                    self.end_headers()
                    body = _bomb(size)
                else:
                    events = [{"id": "x", "choices": [{"index": 0, "delta": {"content": w}}]}
                              for w in WORDS]  # fmt: skip
                    events.append({"id": "x", "choices": [{"index": 0, "delta": {},
                                                           "finish_reason": "stop"}]})  # fmt: skip
                    text = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
                    self.send_header("Content-Encoding", "gzip")
                    self.end_headers()
                    body = gzip.compress(text + b"data: [DONE]\n\n")
                try:
                    for part in [body] if isinstance(body, bytes) else body:
                        self.wfile.write(part)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    fake.disconnected.set()

            def _event(self, obj: dict[str, Any]) -> None:
                self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
                self.wfile.flush()

            def _json(self, status: int, obj: Any) -> None:
                self._raw(status, json.dumps(obj).encode())

            def _raw(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # A client that stops reading (the gateway refusing a huge answer) is no news here.
        self.server.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def chat_requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] != "/v1/models"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The routes an endless answer is given on, and its wire shape there.
_ENDLESS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/api/chat": "ollama_chat",
    "/api/generate": "ollama_generate",
}


@functools.cache
def _huge(kind: str, size: int) -> bytes:
    """About `size` bytes of a model list or an embedding answer, made once: made for each
    request, it held this process's GIL for seconds (and its other threads with it)."""
    if kind == "models":
        names = [{"id": "m" * 100, "object": "model"}] * (size // 120)
        return json.dumps({"object": "list", "data": names}).encode()
    vector = [0.123456789] * (size // 13)
    return json.dumps({"object": "list", "data": [{"index": 0, "embedding": vector}]}).encode()


def huge_answers(*sizes: int) -> None:
    """Make the huge answers of these sizes now, before anything is timed."""
    for size in sizes:
        _huge("models", size)
        _huge("embedding", size)


def _endless_line(size: int) -> Iterator[bytes]:
    yield b'data: {"choices": [{"delta": {"content": "'
    piece = b"a" * 65536
    for _ in range(size // len(piece)):
        yield piece


@functools.cache
def _bomb_bytes(size: int) -> bytes:
    """`size` zero bytes, gzip-compressed (made once)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    parts = [packer.compress(zeros) for _ in range(size // len(zeros))]
    return b"".join(parts) + packer.flush()


def _bomb(size: int) -> Iterator[bytes]:
    yield _bomb_bytes(size)
