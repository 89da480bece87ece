"""Upstream servers that `localrun serve` routes model names to, declared in upstreams.toml.

They are OpenAI- or Ollama-speaking servers (vLLM, SGLang, llama-server, TGI, Ollama, other localrun
hosts), in `$LOCALRUN_HOME/upstreams.toml`:

    [upstreams.gpu-box]
    url = "http://10.0.0.5:8000"       # the server's root: /v1/... or /api/... are added to it
    dialect = "openai"                 # or "ollama"
    api_key_env = "GPU_BOX_KEY"        # the environment variable holding its API key, if any
    models = ["meta-llama/Llama-3.1-70B-Instruct"]   # empty: discovered from its model list

Upstreams come from this file alone, never from a request: a model name only ever selects one of
them. An API key is never written here, only the name of the variable that holds it, read when a
request is sent. `localrun upstream add / rm` edit the file (tomlkit keeps a person's comments and
layout) and write it atomically. No I/O beyond the file; no network.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from localrun.errors import ConfigError
from localrun.host import private
from localrun.settings import config, limits

DIALECTS = ("openai", "ollama")
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_MODEL_NAME = 256

# The keys of an [upstreams.NAME] table, each with what it holds (docs/reference/settings.md
# lists them from here); any other key is refused.
KEYS = {
    "url": "The server's root URL (http:// or https://, no user, query or fragment): /v1/... "
    "or /api/... are added to it. Required.",
    "dialect": f"The API it speaks: {' or '.join(DIALECTS)} (default openai).",
    "api_key_env": "The environment variable holding its API key, read when a request is "
    "sent; the key itself is never written here.",
    "models": "The model names it serves; empty or left out: read from its model list.",
}


@dataclass(frozen=True)
class Upstream:
    name: str
    url: str  # scheme://host[:port][/path], no trailing slash
    dialect: str = "openai"
    api_key_env: str | None = None
    models: tuple[str, ...] = field(default_factory=tuple)  # empty: discover them

    def api_key(self) -> str | None:
        """The key, read from its variable now; None when it has none or the variable is unset.

        A key with spaces or control characters inside (a file's CR LF) is refused, naming the
        variable, never the value.
        """
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env, "").strip()
        if any(not 33 <= ord(c) <= 126 for c in key):
            raise ConfigError(
                f"the API key in {self.api_key_env} (upstream {self.name}) has spaces or "
                "control characters in it",
                hint=f"set {self.api_key_env} to the key alone, on one line",
            )
        return key or None

    def to_dict(self) -> dict[str, Any]:
        """What `upstream list --json` and the server show: never the key itself."""
        return {
            "name": self.name,
            "url": self.url,
            "dialect": self.dialect,
            "api_key_env": self.api_key_env,
            "models": list(self.models),
        }


def path() -> Path:
    return config.home() / "upstreams.toml"


def _matching(pattern: re.Pattern[str], value: str, message: str, hint: str) -> str:
    """`value` if the whole of it matches `pattern`, else a ConfigError saying `message`."""
    if not pattern.fullmatch(value):
        raise ConfigError(message, hint=hint)
    return value


def check_name(name: str) -> str:
    hint = "use lower-case letters, digits, '.', '_' and '-' (at most 64)"
    return _matching(_NAME, name, f"invalid upstream name {name!r}", hint)


def check_url(url: str) -> str:
    """The URL normalised (no trailing slash), or ConfigError."""
    text = url.strip()
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ConfigError(
            f"invalid upstream URL {url!r}: it holds a space or a control character",
            hint="give http://HOST:PORT or https://HOST[/path]",
        )
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ConfigError(
            f"invalid upstream URL {url!r}: {exc}",
            hint="give http://HOST:PORT or https://HOST[/path]",
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"invalid upstream URL {url!r}", hint="give http://HOST:PORT or https://HOST[/path]"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(
            f"invalid upstream URL {url!r}: no user, query or fragment",
            hint="put the API key in an environment variable and pass --api-key-env VAR",
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")


def check_env_name(name: str) -> str:
    hint = "pass the variable's name (e.g. --api-key-env GPU_BOX_KEY), never the key"
    return _matching(_ENV_VAR, name, f"{name!r} is not an environment variable name", hint)


def check_model(model: str) -> str:
    if not model or len(model) > MAX_MODEL_NAME or any(c.isspace() or ord(c) < 32 for c in model):
        raise ConfigError(f"invalid model name {model!r} for an upstream")
    return model


def _parse(name: str, table: Any) -> Upstream:
    where = f"upstream {name!r} in {path()}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} is not a table", hint="see `localrun help upstreams`")
    url = table.get("url")
    if not isinstance(url, str):
        raise ConfigError(f"{where} has no url")
    dialect = table.get("dialect", "openai")
    if dialect not in DIALECTS:
        raise ConfigError(f"{where}: dialect must be one of {', '.join(DIALECTS)}")
    key_env = table.get("api_key_env")
    if key_env is not None and not isinstance(key_env, str):
        raise ConfigError(f"{where}: api_key_env must name an environment variable")
    if key_env is not None:
        check_env_name(key_env)
    models = table.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ConfigError(f"{where}: models must be a list of names")
    unknown = set(table) - set(KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    return Upstream(
        name=check_name(name),
        url=check_url(url),
        dialect=str(dialect),
        api_key_env=key_env,
        models=tuple(check_model(m) for m in models),
    )


def _read_document() -> Any:
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    file = path()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return tomlkit.document()
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from None
    try:
        return tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ConfigError(f"{file} is not valid TOML: {exc}", hint="fix or remove it") from None


def load() -> list[Upstream]:
    """The declared upstreams, in file order; [] without a file. ConfigError on a bad file."""
    document = _read_document()
    tables = document.get("upstreams", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"[upstreams] in {path()} is not a table")
    return [_parse(str(name), table) for name, table in tables.items()]


def add(upstream: Upstream, *, replace: bool = False) -> None:
    import tomlkit

    document = _read_document()
    tables = document.setdefault("upstreams", tomlkit.table(is_super_table=True))
    if upstream.name in tables and not replace:
        raise ConfigError(
            f"upstream {upstream.name!r} exists already",
            hint=f"`localrun upstream rm {upstream.name}` first, or add --replace",
        )
    table = tomlkit.table()
    table["url"] = upstream.url
    table["dialect"] = upstream.dialect
    if upstream.api_key_env:
        table["api_key_env"] = upstream.api_key_env
    table["models"] = list(upstream.models)
    tables[upstream.name] = table
    _write(tomlkit.dumps(document))


def remove(name: str) -> None:
    import tomlkit

    document = _read_document()
    tables = document.get("upstreams", {})
    if name not in tables:
        raise ConfigError(f"no upstream named {name!r}", hint="see `localrun upstream list`")
    del tables[name]
    _write(tomlkit.dumps(document))


def _write(text: str) -> None:
    file = path()
    config.make_dirs(file.parent)
    private.write(file, text.encode("utf-8"))  # whole, 0600, and never through a link


_HEALTH_TIMEOUT_S = 5.0  # a model list slower than this is a failed check


@dataclass(frozen=True)
class Settings:
    """The LOCALRUN_UPSTREAM_* settings, read once when the server starts."""

    connect_s: float
    read_s: float
    health_s: float
    eject_after: int
    cooldown_s: float
    max_bytes: int  # of one answer, decompressed
    max_tokens: int  # of one answer whose client set no limit (remote_limit)

    @classmethod
    def read(cls) -> Settings:
        settings = cls(
            config.upstream_connect_timeout(),
            config.upstream_read_timeout(),
            config.upstream_health_interval(),
            config.upstream_eject_after(),
            config.upstream_cooldown(),
            limits.upstream_max_bytes(),
            limits.upstream_max_tokens(),
        )
        for name, value, least in (
            ("LOCALRUN_UPSTREAM_CONNECT_TIMEOUT", settings.connect_s, 0.1),
            ("LOCALRUN_UPSTREAM_READ_TIMEOUT", settings.read_s, 0.1),
            ("LOCALRUN_UPSTREAM_HEALTH_INTERVAL", settings.health_s, 0.1),
        ):
            if not least <= value < math.inf:
                raise ConfigError(
                    f"{name} must be at least {least:g}s and finite", hint="e.g. 5s or 2m"
                )
        return settings

    def timeout(self) -> Any:
        import httpx

        return httpx.Timeout(self.read_s, connect=self.connect_s)

    def check_timeout(self) -> Any:
        import httpx

        return httpx.Timeout(min(self.read_s, _HEALTH_TIMEOUT_S), connect=self.connect_s)
