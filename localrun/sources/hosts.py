"""Where a model name lives, and which addresses a registry may send us to.

`target(name)` says which registry a name is pulled from or pushed to. `is_private(host)` says
where a public registry's redirect may not lead. `Reach` says who asked for a pull or push, and
so where it may go and with what (docs/registries.md, "Who may pull and push through the
server").
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from localrun.errors import ForbiddenError, ModelNotFoundError
from localrun.settings import config
from localrun.store.names import DEFAULT_HOST, ModelName

OLLAMA_HOSTS = ("registry.ollama.ai", "ollama.com", "www.ollama.com")
DOCKER_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.docker.io")
DOCKER_API = "https://registry-1.docker.io"
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, cloud metadata services
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class Target:
    """A name's place: the host as shown, the registry's URL, the repository and the tag."""

    host: str  # registry.ollama.ai, docker.io, localhost:5000
    url: str  # https://registry.ollama.ai (no trailing slash)
    repository: str  # library/llama3.2
    tag: str

    @property
    def shown(self) -> str:
        return f"{self.host}/{self.repository}:{self.tag}"


def target(name: ModelName, *, insecure: bool = False) -> Target:
    """Return where `name` is pulled from or pushed to; `insecure` means plain HTTP for any host.

    The default host (a name with no host, `namespace/name:tag` included), `registry.ollama.ai`
    and `ollama.com` are Ollama's library at LOCALRUN_REGISTRY. When that is off, it raises
    ModelNotFoundError: the name is simply not known here. `docker.io` is Docker Hub's
    registry-1.docker.io. Any other host is a registry there, over HTTPS, or plain HTTP for a
    loopback address or a host in LOCALRUN_INSECURE_REGISTRIES.
    """
    repository = f"{name.namespace}/{name.name}"
    if name.host == DEFAULT_HOST or name.host in OLLAMA_HOSTS:
        url = config.registry()
        if not url:  # LOCALRUN_REGISTRY=off: the name is simply not known here
            raise ModelNotFoundError(str(name))
        return Target(urlsplit(url).netloc or url, url, repository, name.tag)
    if name.host in DOCKER_HOSTS:
        return Target("docker.io", DOCKER_API, repository, name.tag)
    scheme = "http" if insecure else _scheme(name.host)
    return Target(name.host, f"{scheme}://{name.host}", repository, name.tag)


def _scheme(host: str) -> str:
    bare = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    allowed = config.insecure_registries()
    return "http" if is_loopback(bare) or host in allowed or bare in allowed else "https"


def is_loopback(host: str) -> bool:
    """Whether a host means this machine only: localhost, a name under it, or a loopback address.

    The host may be an address to bind, a Host header's name or a registry's.
    """
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_private(host: str) -> bool:
    """Whether `host` is (or resolves to) a loopback, private or link-local address.

    Shared (100.64/10), reserved, unspecified and multicast addresses count too. An IPv4
    address inside IPv6, mapped or NAT64, is judged as itself.
    """
    addresses = _addresses(host)
    return addresses is not None and any(_private(a) for a in addresses)


def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address] | None:
    """The addresses `host` is or resolves to; None when it does not resolve."""
    host = host.strip("[]")
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except (OSError, UnicodeError):
            return None  # the request itself will say it cannot reach it
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def _private(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or (
            ipaddress.IPv4Address(int(address) & 0xFFFFFFFF) if address in _NAT64 else None
        )
        if inner is not None:
            return _private(inner)
    elif address in _SHARED:
        return True
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
        or address.is_multicast
    )


@dataclass(frozen=True)
class Reach:
    """Who asked for a pull or push, and so where it may go and with what.

    The user's own command (OWNER: `localrun pull`, `push`, `cp --push`) reaches any registry
    with the user's logins, over plain HTTP with `insecure`. An API client of `serve` (CLIENT)
    reaches the default registry and the hosts in LOCALRUN_API_REGISTRIES with the owner's
    logins, and pushes only to those listed. It may pull anonymously from any other public
    registry. A loopback or private address the owner did not list is refused before any
    connection, in the same words whatever answers there. Plain HTTP is used for a client only
    where the owner's settings say so.
    """

    client: bool = False
    insecure: bool = False

    @property
    def others(self) -> bool:
        """Whether a blob may be taken from another runner's store on this machine (Ollama's).

        For an API client it would tell what the server's user keeps there.
        """
        return not self.client

    def where(self, name: ModelName, *, push: bool = False) -> tuple[Target, bool]:
        """Return where `name` is pulled from or pushed to for this asker, and if it is trusted.

        A trusted registry is sent the logins and quoted in errors. Raises ForbiddenError where
        the asker may not go, before any connection.
        """
        if not self.client:
            return target(name, insecure=self.insecure), True
        where = target(name)  # a client's `insecure` never reaches here: the owner's settings
        if where.host.lower() in config.api_registries() or (
            not push and where.url == config.registry()
        ):
            return where, True
        if push:
            raise ForbiddenError(
                f"this server pushes to {where.host} only for its own user, not for API clients",
                hint="its owner lists the registries API clients may push to in "
                "LOCALRUN_API_REGISTRIES; or push with `localrun push` on the server's machine",
            )
        if where.url != DOCKER_API and not _public(urlsplit(where.url).hostname or ""):
            # The same words for a closed port, a web server and a registry behind a login: a
            # client learns nothing of what the server's network holds. (Docker Hub is public
            # whatever this machine's DNS says: offline, its pull says it cannot reach it.)
            raise ForbiddenError(
                f"this server does not pull from {where.host} for API clients: only from public "
                "registries and those its owner lists",
                hint="its owner lists the private and loopback registries API clients may reach "
                "in LOCALRUN_API_REGISTRIES; or pull with `localrun pull` on the server's machine",
            )
        return where, False

    def check(self, name: ModelName, push: bool = False) -> None:
        """Raise `where`'s ForbiddenError alone, for a server to answer before a job starts.

        The job asks `where` again as it connects, and says what else is wrong.
        """
        with contextlib.suppress(ModelNotFoundError):  # LOCALRUN_REGISTRY off: the job says so
            self.where(name, push=push)


OWNER = Reach()
CLIENT = Reach(client=True)


def _public(host: str) -> bool:
    """Whether `host` resolves, and only to public addresses.

    A name that does not resolve is refused as a private one is: which internal names exist is
    the server's to keep.
    """
    addresses = _addresses(host)
    return bool(addresses) and not any(_private(a) for a in addresses or ())


# -- the client -------------------------------------------------------------------------------
