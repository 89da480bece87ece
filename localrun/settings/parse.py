"""How LOCALRUN_* settings are read: each parser takes the variable's text and returns its value.

A parser raises ValueError saying what was expected, and localrun.settings.config words it as a
ConfigError naming the variable. `parse_duration` and `parse_host` are also used for requests and
`serve --host`. Pure: imports nothing of localrun.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11435


def parse_bool(text: str) -> bool:
    """A boolean: 1/0, true/false, yes/no, on/off."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {text!r}")


# The other runners whose models `serve` may list (sources.runners.importing.SOURCES, less "all").
RUNNERS = ("ollama", "hf", "lmstudio", "llama.cpp")


def parse_runners(text: str) -> tuple[str, ...]:
    """Runners: none (0, off, unset), all (1, on, all) or names, comma-separated."""
    value = text.strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return ()
    if value in ("1", "true", "yes", "on", "all"):
        return RUNNERS
    chosen = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [part for part in chosen if part not in RUNNERS]
    if unknown:
        raise ValueError(
            f"unknown runner {unknown[0]!r}: expected 1, 0, or some of {', '.join(RUNNERS)}"
        )
    return chosen


DEFAULT_REGISTRY = "https://registry.ollama.ai"


def parse_registry(text: str) -> str:
    """An http(s) URL without a path, or off (returned as '')."""
    value = text.strip().rstrip("/")
    if value.lower() in ("off", "0", "none", ""):
        return ""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest or "/" in rest:
        raise ValueError(f"expected a URL such as {DEFAULT_REGISTRY}, or off; got {text!r}")
    return f"{scheme.lower()}://{rest}"


def parse_registry_auth(text: str) -> tuple[tuple[str, str], ...]:
    """Logins, space-separated: host=USER:PASSWORD or host=TOKEN."""
    entries = []
    for item in text.split():
        host, sep, secret = item.partition("=")
        host = host.strip().lower()
        if not sep or not host or not secret or "/" in host:
            raise ValueError("expected entries such as registry.example.com=USER:PASSWORD")
        entries.append((host, secret))
    return tuple(entries)


def parse_path(text: str) -> Path:
    """A path (~ expanded); not empty."""
    if not text.strip():
        raise ValueError("expected a path, got an empty value")
    return Path(text).expanduser()


def parse_host(text: str) -> tuple[str, int]:
    """host[:port], [v6]:port or http(s)://host[:port], as (host, port)."""
    value = text.strip()
    for scheme in ("http://", "https://"):
        if value.lower().startswith(scheme):
            value = value[len(scheme) :]
    value = value.rstrip("/")
    if not value:
        raise ValueError("expected host[:port], got an empty value")
    host, port = value, DEFAULT_PORT
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f"unterminated IPv6 address in {text!r}")
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"expected [address]:port, got {text!r}")
            port = parse_port(rest[1:], text)
    elif value.count(":") == 1:
        host, port_text = value.split(":")
        port = parse_port(port_text, text)
        host = host or DEFAULT_HOST
    return host, port


def parse_port(port_text: str, whole: str) -> int:
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port must be a number from 1 to 65535 in {whole!r}")
    return int(port_text)


def parse_duration(value: str | float | int | None) -> float:
    """A duration: seconds, or Go's 5m, 1h30m, 250ms; a negative one is forever.

    Ollama's keep_alive too. Returns seconds; a negative value means "forever" (math.inf); 0
    means "now".
    """
    import math
    import re

    if value is None:
        raise ValueError("expected a duration such as 5m, 30s or -1")
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 5m, 30s or -1, got {value!r}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer with hundreds of digits: as good as forever
            seconds = math.inf if value > 0 else -math.inf
    elif not isinstance(value, str):
        raise ValueError(f"expected a duration such as 5m, 30s or -1, got {type(value).__name__}")
    else:
        text = value.strip().lower()
        if re.fullmatch(r"[+-]?\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text.lstrip("+-"))
            joined = "".join(n + u for n, u in parts)
            if not parts or joined != text.lstrip("+-"):
                raise ValueError(f"expected a duration such as 5m, 30s or -1, got {value!r}")
            units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
            seconds = sum(float(n) * units[u] for n, u in parts)
            if text.startswith("-"):
                seconds = -seconds
    if math.isnan(seconds):
        raise ValueError("a duration cannot be NaN")
    return math.inf if seconds < 0 else seconds


def parse_positive_int(text: str) -> int:
    """A whole number, 1 or more."""
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


# The largest context a model may be loaded with: a request's num_ctx is held to it (the
# num_ctx parameter's bound, recipes.params), and so is LOCALRUN_CONTEXT_LENGTH, which stands in
# for num_ctx where neither the model nor the request sets one.
MAX_CONTEXT_LENGTH = 2**24
# llama.cpp refuses a context of more sequences (llama_max_parallel_sequences(), LLAMA_MAX_SEQ):
# every load of a server with more slots would fail.
MAX_PARALLEL = 256


# The deepest JSON a request may be allowed: what is parsed is walked later by recursive code
# (a chat template rendering a tool's parameters), which a value of 600 levels took past
# Python's recursion limit (a RecursionError, a 500) where 400 still rendered.
MAX_JSON_DEPTH = 256


def parse_json_depth(text: str) -> int:
    """A whole number from 1 to 256."""
    return _whole_number(text, 1, MAX_JSON_DEPTH)


def parse_context_length(text: str) -> int:
    """A whole number from 1 to 16777216."""
    return _whole_number(text, 1, MAX_CONTEXT_LENGTH)


def parse_num_parallel(text: str) -> int:
    """A whole number from 1 to 256."""
    return _whole_number(text, 1, MAX_PARALLEL)


def _whole_number(text: str, least: int, most: int) -> int:
    value = text.strip()
    # ASCII digits only: str.isdigit() also takes "²" and other scripts' digits; and few of
    # them (int() refuses past 4300 digits, in words of its own).
    digits = value.isascii() and value.isdigit() and len(value) <= len(str(most))
    if not digits or not least <= int(value) <= most:
        raise ValueError(f"expected a whole number from {least} to {most}, got {text!r}")
    return int(value)


def parse_count(text: str) -> int:
    """A whole number, 0 or more."""
    if not text.strip().isdigit():
        raise ValueError(f"expected a whole number (0 or more), got {text!r}")
    return int(text)


# The longest timeout a setting may give. Python's waits on a thread or a process overflow past
# about 292 years (OverflowError: timestamp out of range) and take no infinity: a timeout of
# 1e300s or of forever failed every wait that used it.
MAX_TIMEOUT_S = 30 * 86400.0


def parse_timeout(text: str) -> float:
    """A duration above 0 and at most 720h: 10s, 1m, 500ms."""
    seconds = parse_duration(text)
    if not 0 < seconds <= MAX_TIMEOUT_S:
        raise ValueError(
            f"expected a duration above 0 and at most 720h, such as 10s or 1m, got {text!r}"
        )
    return seconds


def parse_api_key(text: str) -> str:
    """A key: text, surrounding blanks dropped; not only blanks."""
    # A key of spaces would look set (serve would listen beyond loopback) yet no client can
    # send it: Bearer tokens are read without surrounding whitespace.
    key = text.strip()
    if text and not key:
        raise ValueError("the key is only whitespace; set a real key or unset it")
    return key


def parse_origins(text: str) -> tuple[str, ...]:
    """A comma-separated list."""
    return tuple(o.strip() for o in text.split(",") if o.strip())


def parse_endpoints(text: str) -> tuple[str, ...]:
    """`host:port` endpoints, comma-separated (llama.cpp's RPC workers; no IPv6 literal)."""
    found: list[str] = []
    for item in text.split(","):
        endpoint = item.strip()
        if not endpoint:
            continue
        host, colon, port = endpoint.rpartition(":")
        if not colon or not host or ":" in host or any(c in host for c in "/@ []"):
            raise ValueError(f"{endpoint!r} is not host:port (an IPv6 address is not supported)")
        if not _host_name(host):
            raise ValueError(f"{host!r} in {endpoint!r} is not a host name or an IPv4 address")
        number = parse_port(port, endpoint)
        if f"{host}:{number}" not in found:
            found.append(f"{host}:{number}")
    return tuple(found)


def _host_name(host: str) -> bool:
    """Whether `host` can be looked up: dot-separated labels of 1 to 63 letters, digits, - or _.

    An empty or overlong label is what the lookup would fail on with a UnicodeError.
    """
    labels = host.removesuffix(".").split(".")
    return len(host) <= 253 and all(
        0 < len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label) for label in labels
    )


def parse_hosts(text: str) -> tuple[str, ...]:
    """Host names or addresses, comma-separated (* for any; no scheme, port or path).

    Lowercased; an IPv6 address with or without its brackets."""
    hosts = []
    for item in text.split(","):
        host = item.strip().lower().rstrip(".")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if any(c in host for c in "/@ ") or host.count(":") == 1:
            raise ValueError(f"{item.strip()!r} is not a host name (give no scheme, port or path)")
        if host:
            hosts.append(host)
    return tuple(hosts)


def parse_networks(text: str) -> tuple[str, ...]:
    """IP addresses or networks (`10.0.0.0/8`), comma-separated.

    Each is checked, and kept in its normal form.
    """
    import ipaddress

    out = []
    for item in text.split(","):
        value = item.strip()
        if not value:
            continue
        try:
            network = ipaddress.ip_network(value.strip("[]"), strict=False)
        except ValueError:
            raise ValueError(
                f"{value!r} is not an IP address or network (such as 10.0.0.2 or 10.0.0.0/8)"
            ) from None
        out.append(str(network) if "/" in value else str(network.network_address))
    return tuple(out)


DEFAULT_ORIGINS = (
    "http://localhost",
    "https://localhost",
    "http://localhost:*",
    "https://localhost:*",
    "http://127.0.0.1",
    "https://127.0.0.1",
    "http://127.0.0.1:*",
    "https://127.0.0.1:*",
    "http://[::1]",
    "https://[::1]",
    "http://[::1]:*",
    "https://[::1]:*",
)


# Speculative decoding's modes (the speculate PARAMETER, LOCALRUN_SPECULATE): auto drafts by
# prompt lookup where it is expected to pay (and with the model's DRAFT model, if it has one),
# ngram drafts wherever the text repeats, draft with the DRAFT model only.
SPECULATE_MODES = ("auto", "ngram", "draft", "off")


def parse_speculate(text: str) -> str:
    """One of auto, ngram, draft, off."""
    mode = text.strip().lower()
    if mode not in SPECULATE_MODES:
        raise ValueError(f"expected one of {', '.join(SPECULATE_MODES)}, got {text!r}")
    return mode


# A setting that is on, off, or decided by localrun (LOCALRUN_CPU_REPACK, LOCALRUN_MASKS_AHEAD,
# LOCALRUN_EXACT).
AUTO_MODES = ("auto", "on", "off")


def parse_auto(text: str) -> str:
    """One of auto, on, off."""
    mode = text.strip().lower()
    if mode not in AUTO_MODES:
        raise ValueError(f"expected one of {', '.join(AUTO_MODES)}, got {text!r}")
    return mode


def parse_optional_path(text: str) -> Path | None:
    """A path (~ expanded), or empty for none."""
    return Path(text).expanduser() if text.strip() else None


RUNTIME_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_+")


def parse_runtime(text: str) -> str:
    """A runtime's name (vulkan-0.3.36), auto or cpu; empty for the saved selection."""
    value = text.strip().lower()
    if len(value) > 100 or not set(value) <= RUNTIME_NAME_CHARS or value.startswith("."):
        raise ValueError(f"expected a runtime's name, auto or cpu, got {text!r}")
    return value
