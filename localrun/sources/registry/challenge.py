"""A registry's challenge (WWW-Authenticate), and what localrun will do with what it names.

`parse_challenge` reads the scheme and its parameters. The realm of a Bearer challenge is where
a registry sends the user's login. A public registry that named
`http://127.0.0.1:P/admin/delete-all?confirm=yes` had localrun send it a GET with the login in
clear (issue 76). So `token_service` holds a realm to the rules of a redirect
(sources/registry/oci.py). `check_token` checks what the service gives back, which goes into an
Authorization header.
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


# The registries people use stay whole. Docker Hub (registry-1.docker.io -> auth.docker.io) and
# GitLab (registry.gitlab.com -> gitlab.com; a self-hosted registry.example.com ->
# gitlab.example.com) pass by the site, and so does a self-hosted GitLab's (:5050 -> 443). GHCR,
# Quay, ACR, Artifact Registry, Harbor and the distribution server's token service are on their
# own host. A plain HTTP token service on another port (docker_auth's :5001 beside :5000) is
# asked anonymously, and so is Ollama's (registry.ollama.ai -> ollama.com), as its pulls are.
def token_service(where: Target, realm: str) -> bool:
    """Whether the login may go to the token service `realm` of the registry `where`.

    Raises HubAuthError where the service may not be asked at all. A realm must be HTTPS, or
    plain HTTP only from a plain HTTP registry to its own host or this machine. A public
    registry may not name a private address (hosts.is_private). The login goes only to the
    registry's own site (`same_site`) over HTTPS, or to its own origin, port included, over
    plain HTTP: another port is another service. Otherwise the token is asked for anonymously,
    which is what a public repository needs.
    """
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
    """Whether `host` is on the site of the registry host `home`; never for an address.

    Both must be under `home`'s parent domain, when that parent has two labels at least
    (registry-1.docker.io and auth.docker.io; registry.gitlab.com and gitlab.com). There is no
    public-suffix list here. Under a suffix of two labels (co.uk, azurecr.io) another tenant's
    host counts too, which the realm, the registry's own choice, would have to name.
    """
    if _address(home) or _address(host) or "." not in home:
        return False
    parent = home.split(".", 1)[1]
    return "." in parent and (host == parent or host.endswith("." + parent))


def check_token(where: Target, token: object) -> str:
    """Return the token a token service answered with, if it is one.

    It goes into an Authorization header, so it must be a token by RFC 6750 (letters, digits,
    -._~+/, = at the end) of at most MAX_TOKEN characters. One with a character outside ASCII
    ended a pull job as 'the pull job failed: UnicodeEncodeError'.
    """
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
