"""A registry's challenge (WWW-Authenticate), and what localrun will do with what it names.

`parse_challenge`: the scheme and its parameters. `token_service(where, realm)`: whether the
token service a Bearer challenge names (its realm) may be asked at all, and whether the user's
login may go with the asking. The realm is where a registry sends the user's login: a public
registry that named `http://127.0.0.1:P/admin/delete-all?confirm=yes` had localrun send it a
GET with the login in clear (issue 76). So a realm is held to the rules of a redirect
(sources/registry/oci.py): HTTPS, or plain HTTP only from a plain HTTP registry to its own host or
this machine; no private address from a public registry (hosts.is_private); and the login only to
the registry's own site (`same_site`) over HTTPS, or to the registry's own origin (its port
too: another port is another service) over plain HTTP, else the token is asked for
anonymously, which is what a public repository needs.

The registries people use stay whole: Docker Hub (registry-1.docker.io -> auth.docker.io) and
GitLab (registry.gitlab.com -> gitlab.com; a self-hosted registry.example.com ->
gitlab.example.com) by the site; GHCR, Quay, ACR, Artifact Registry, Harbor and the
distribution server's token service on their own host; a self-hosted GitLab's (:5050 -> 443)
by the site; a plain HTTP token service on another port (docker_auth's :5001 beside :5000) is
asked anonymously; Ollama's (registry.ollama.ai -> ollama.com) anonymously, as its pulls
are.

`check_token`: what the service gives back goes into an Authorization header, so it must be a
token by RFC 6750 (letters, digits, -._~+/, = at the end), of a bounded length: one with a
character outside ASCII ended a pull job as 'the pull job failed: UnicodeEncodeError'.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

from localrun.errors import HubAuthError
from localrun.sources.hosts import Target, is_loopback, is_private

MAX_TOKEN = 16 << 10  # characters of a registry's token (a JWT is 1-4 KB)
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*\Z")  # RFC 6750's b64token
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]*))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """WWW-Authenticate's scheme (lower case) and parameters."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) or m.group(3) or "" for m in _PARAM.finditer(rest)}
    return scheme.lower(), params


def token_service(where: Target, realm: str) -> bool:
    """Whether the login may go to the token service `realm` of the registry `where` (the
    module docstring); HubAuthError where the service may not be asked at all."""
    registry = urlsplit(where.url)
    home = (registry.hostname or "").lower()
    try:
        parts = urlsplit(realm)
        host = (parts.hostname or "").lower()
    except ValueError:
        parts, host = urlsplit(""), ""
    if not host or parts.scheme not in ("http", "https"):
        raise HubAuthError(
            f"{where.host}: its token service is not an http(s) URL ({realm[:80]!r})",
            hint="the registry is misconfigured or hostile; nothing was sent",
        )
    same = host == home
    if parts.scheme == "http" and not (registry.scheme == "http" and (same or is_loopback(host))):
        raise HubAuthError(
            f"{where.host}: its token service {realm[:80]!r} is not HTTPS",
            hint="credentials are only sent over HTTPS (or to a plain HTTP registry's own "
            "host); nothing was sent",
        )
    if not same and is_private(host) and not is_private(home):
        raise HubAuthError(
            f"{where.host}: its token service is on a private address ({host[:80]})",
            hint="a public registry's token service is never on this machine's network; "
            "nothing was sent",
        )
    # Over HTTPS the registry's site is the registry's, whatever the port (GitLab serves its
    # registry on :5050 and its token service on 443). Plain HTTP is allowed only on this
    # machine or the registry's own host, where another port is another service (an admin API
    # beside the registry, issue 76): there the login stays with the registry's origin.
    if parts.scheme == "https":
        return same or same_site(home, host)
    return same and _port(registry) == _port(parts)


def same_site(home: str, host: str) -> bool:
    """Whether `host` is on the site of the registry host `home`: both under `home`'s parent
    domain, when that parent has two labels at least (registry-1.docker.io and auth.docker.io;
    registry.gitlab.com and gitlab.com); never for an address. There is no public-suffix list
    here: under a suffix of two labels (co.uk, azurecr.io) another tenant's host counts too,
    which the realm, the registry's own choice, would have to name."""
    if _address(home) or _address(host) or "." not in home:
        return False
    parent = home.split(".", 1)[1]
    return "." in parent and (host == parent or host.endswith("." + parent))


def check_token(where: Target, token: object) -> str:
    """The token a token service answered with, if it is one (the module docstring)."""
    if not isinstance(token, str) or not token:
        raise HubAuthError(f"{where.host}: its token service gave no token")
    if len(token) > MAX_TOKEN or not _TOKEN68.match(token):
        raise HubAuthError(
            f"{where.host}: its token service gave a token that is not one (RFC 6750 allows "
            f"letters, digits and -._~+/ in at most {MAX_TOKEN} characters)",
            hint="the registry's token service is misbehaving; nothing was sent with it",
        )
    return token


def _port(url: SplitResult) -> int | None:
    try:
        return url.port or {"https": 443, "http": 80}.get(url.scheme)
    except ValueError:  # a port that is not one
        return None


def _address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
