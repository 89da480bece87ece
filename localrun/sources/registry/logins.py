"""The login a registry host takes, as `docker login` and LOCALRUN_REGISTRY_AUTH leave them.

`credentials(host)` looks, in order, at:

1. LOCALRUN_REGISTRY_AUTH: `host=USER:PASSWORD` (Basic, or the login a token service takes) or
   `host=TOKEN` (no colon: the registry's bearer token itself);
2. Docker's credential file (DOCKER_CONFIG, else ~/.docker/config.json), as Docker's client
   reads it: `credHelpers[host]`, else `credsStore` (`docker-credential-<helper> get`, the host
   on its stdin, `{"Username", "Secret"}` on its stdout; a Username of `<token>` means the
   Secret is an identity token), then `auths[host]` (`auth` as base64 of USER:PASSWORD, else
   `username` and `password`, else `identitytoken`). Docker Hub's is `https://index.docker.io/v1/`.

A file or helper that is missing, unreadable or says nothing is no login, never an error: the
registry's challenge then says whether one was needed. Files are read with a bound; a helper
runs at most CRED_HELPER_TIMEOUT seconds.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localrun.settings import config

DOCKER_HUB_KEY = "https://index.docker.io/v1/"  # Docker Hub's key in config.json
IDENTITY = "<token>"  # a helper's Username for an identity (refresh) token
CRED_HELPER_TIMEOUT = 20.0
MAX_FILE = 1 << 20  # bytes of config.json read
MAX_ANSWER = 64 << 10  # bytes of a helper's answer read


@dataclass(frozen=True)
class Secret:
    """A login for a host: a user and password, or a token alone (user None)."""

    user: str | None
    password: str

    @property
    def identity(self) -> bool:
        """An identity token: exchanged at the token service by OAuth2's refresh grant."""
        return self.user == IDENTITY

    def basic(self) -> str:
        raw = f"{self.user or ''}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def credentials(host: str) -> Secret | None:
    """The login for `host` (see the module docstring), or None."""
    for entry_host, secret in config.registry_auth():
        if entry_host == host:
            user, sep, password = secret.partition(":")
            return Secret(user, password) if sep else Secret(None, secret)
    return _docker(host)


def _docker_file() -> dict[str, Any]:
    folder = os.environ.get("DOCKER_CONFIG")
    path = Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"
    try:
        with path.open("rb") as handle:
            data = json.loads(handle.read(MAX_FILE))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _docker(host: str) -> Secret | None:
    data = _docker_file()
    key = DOCKER_HUB_KEY if host == "docker.io" else host
    helpers = data.get("credHelpers")
    helper = helpers.get(host) if isinstance(helpers, dict) else None
    helper = helper or data.get("credsStore")
    if isinstance(helper, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", helper):
        found = _helper(helper, key)
        if found is not None:
            return found
    auths = data.get("auths")
    if not isinstance(auths, dict):
        return None
    for spelled in (key, f"https://{host}", f"http://{host}", f"https://{host}/v1/"):
        entry = auths.get(spelled)
        if isinstance(entry, dict) and (found := _entry(entry)) is not None:
            return found
    return None


def _entry(entry: dict[str, Any]) -> Secret | None:
    """An `auths` entry's login."""
    try:
        raw = base64.b64decode(str(entry.get("auth") or ""), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raw = ""
    user, _, password = raw.partition(":")
    if password:
        return Secret(user, password)
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Secret(entry["username"], entry["password"])
    if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
        return Secret(IDENTITY, entry["identitytoken"])
    return None


def _helper(helper: str, key: str) -> Secret | None:
    """`docker-credential-<helper> get` for `key`, as Docker's client calls it."""
    try:
        done = subprocess.run(
            [f"docker-credential-{helper}", "get"],
            input=key.encode(),
            capture_output=True,
            timeout=CRED_HELPER_TIMEOUT,
            check=False,
        )
        data = json.loads(done.stdout[:MAX_ANSWER]) if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("Secret"), str):
        return None
    user = data.get("Username")
    return Secret(user if isinstance(user, str) else None, data["Secret"])
