"""How the fuzzers judge a server: send a request and read its answer (streamed or not), check
the answer's status and shape against its dialect, and watch the server's memory.
"""

from __future__ import annotations

import json
from typing import Any

from fuzzlib.hostile import DETOKENIZE_MOST, Request

__all__ = ["problem", "send", "tree_rss"]


def problem(request: Request, status: int, text: str) -> str | None:
    """What is wrong with an answer (None when it is a 2xx, or a 4xx in its dialect's shape)."""
    if status >= 500:
        return f"{status}: {text[:300]}"
    tokens = request.body.get("tokens") if isinstance(request.body, dict) else None
    many = isinstance(tokens, list) and len(tokens) > DETOKENIZE_MOST
    if request.path == "/detokenize" and many and status != 400:
        return f"{len(tokens)} token ids answered {status}, past the server's bound"
    if status < 400:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return f"{status} without a JSON body: {text[:200]!r}"
    error = data.get("error") if isinstance(data, dict) else None
    if request.path.startswith("/v1/messages"):
        ok = data.get("type") == "error" and isinstance(error, dict) and "message" in error
    elif request.path == "/v1/systemone":  # Ollama's route under /v1: Ollama's shape
        ok = isinstance(error, str)
    elif request.path.startswith("/v1/"):
        ok = isinstance(error, dict) and isinstance(error.get("message"), str)
    elif request.path.startswith("/api/"):
        ok = isinstance(error, str)
    else:  # llama-server's routes (/health, /tokenize, ...) answer in OpenAI's shape, / Ollama's
        ok = isinstance(error, str) or (
            isinstance(error, dict) and isinstance(error.get("message"), str)
        )
    return None if ok else f"{status} not in the dialect's shape: {text[:200]}"


def send(client: Any, request: Request, timeout: float = 120) -> tuple[int, str]:
    """The status and (streamed or not) body of one request; (-1, why) if the connection failed."""
    import httpx

    content = (
        request.body
        if isinstance(request.body, bytes) or request.body is None
        else json.dumps(request.body).encode()
    )
    try:
        with client.stream(
            request.method,
            request.path,
            content=content,
            headers={"content-type": "application/json"},
            timeout=timeout,
        ) as answer:
            chunks = []
            size = 0
            for chunk in answer.iter_text():
                size += len(chunk)
                if size < 1 << 20:
                    chunks.append(chunk)
            return answer.status_code, "".join(chunks)
    except httpx.HTTPError as exc:
        return -1, f"{type(exc).__name__}: {exc}"


def tree_rss(pid: int | None) -> int:
    """The RSS of process `pid` and its children (0 if it is gone)."""
    if not pid:
        return 0
    import psutil

    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return 0
