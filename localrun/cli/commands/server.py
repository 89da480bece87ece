"""`localrun ps` and `localrun stop`: list and unload the running server's models.

Both talk to the server through localrun.cli.client.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from typing import Any

import typer

from localrun.cli.output import columns, human_size
from localrun.errors import LocalrunError, ModelNotFoundError

# Ollama writes "Forever" for an expiry more than 20 years away (keep_alive -1).
FOREVER_S = 20 * 365 * 86_400


def ps(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the models the server has loaded: size, CPU/GPU split, context, until when.

    SIZE is what the model takes loaded: its weights with each slot's KV cache and llama.cpp's
    buffers, so more than its file. CONTEXT is what a request may hold: num_ctx, else
    LOCALRUN_CONTEXT_LENGTH. It is at most the context the model was trained on, which `show`
    prints as its context length.
    """
    from localrun.cli.client import Client

    models = Client().ps()
    if as_json:
        print(json.dumps(models, indent=2))
        return
    now = time.time()
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL", "CACHE"]]
    # Ollama's columns, and the GPU runtime's last when a model runs on one (localrun runtime).
    runtimes = any(_runtime(m) not in ("", "built-in") for m in models)
    if runtimes:
        rows[0].append("RUNTIME")
    for m in models:
        digest = str(m.get("digest") or "").removeprefix("sha256:")
        context = m.get("context_length")
        if m.get("remote_host"):  # served by an upstream: its name and health
            rows.append([str(m.get("name")), "", "", str(m.get("processor") or ""), "", "", ""])
            rows[-1] += [""] if runtimes else []
            continue
        rows.append(
            [
                str(m.get("name") or m.get("model") or "?"),
                digest[:12],
                human_size(int(m.get("size") or 0)),
                processor(m),
                str(context) if context else "",
                until(m.get("expires_at"), now),
                str(m.get("prompt_cache") or ""),
                *([_runtime(m)] if runtimes else []),
            ]
        )
    print(columns(rows, gap=4))


def stop(model: str = typer.Argument(..., help="The model to unload, e.g. smollm2:135m.")) -> None:
    """Unload a model from the server now."""
    from localrun.cli.client import Client

    client = Client()
    loaded = client.ps()
    if not any(_same_model(model, m) for m in loaded):
        try:
            client.show(model)  # an unknown model: the server's ModelNotFoundError says so
        except ModelNotFoundError as exc:
            from localrun.cli.run.remote import (
                answered_by,  # the engine's types: not for --help
            )

            raise answered_by(client, model, exc) from None
        raise LocalrunError(
            f"model '{model}' is not loaded", hint="`localrun ps` lists the loaded models"
        )
    client.unload(model)


def _same_model(text: str, entry: dict[str, Any]) -> bool:
    """Whether what the user typed names this /api/ps entry (aliases and default tag followed)."""
    from localrun.store import names, reference

    try:
        wanted = reference.parse(text).name
    except LocalrunError:
        return text in (entry.get("name"), entry.get("model"))
    for key in ("name", "model"):
        value = entry.get(key)
        if isinstance(value, str) and names.is_valid(value) and names.parse(value) == wanted:
            return True
    return False


def _runtime(entry: dict[str, Any]) -> str:
    """RUNTIME: the runtime and its GPU devices ("vulkan-0.3.36 on Vulkan0 (...)")."""
    name = entry.get("runtime")
    if not isinstance(name, str) or not name:
        return ""
    devices = [d for d in entry.get("devices") or [] if isinstance(d, str)]
    return f"{name} on {', '.join(devices)}" if devices else name


def processor(entry: dict[str, Any]) -> str:
    """Where a model runs, by share of its memory, as `ollama ps` says it."""
    given = entry.get("processor")
    if isinstance(given, str) and given:
        return given
    size, vram = int(entry.get("size") or 0), int(entry.get("size_vram") or 0)
    if vram <= 0:
        return "100% CPU"
    if vram == size:
        return "100% GPU"
    if vram > size or size == 0:
        return "Unknown"
    cpu = round(100 * (size - vram) / size)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def until(expires_at: Any, now: float) -> str:
    """UNTIL: "4 minutes from now", "Forever", or "Stopping..." once the time has passed."""
    when = _epoch(expires_at)
    if when is None:
        return "Forever" if expires_at is None else ""
    if math.isinf(when) or when - now > FOREVER_S:
        return "Forever"
    if when <= now:
        return "Stopping..."
    return f"{_human_duration(when - now)} from now"


def _epoch(value: Any) -> float | None:
    """Seconds since the epoch from an RFC 3339 time (Go's or Python's) or a number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    # Go writes up to 9 fractional digits; fromisoformat takes at most 6.
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def _human_duration(seconds: float) -> str:
    """Ollama's format.HumanDuration wording."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"
