"""Where a model name lives, and which addresses a registry may send us to.

`target(name)`: the default host (a name with no host, `namespace/name:tag` included) and
`registry.ollama.ai` / `ollama.com` are Ollama's library at LOCALRUN_REGISTRY (ModelNotFoundError
when it is off: the name is simply not known here); `docker.io` is Docker Hub's
registry-1.docker.io; any other host is a registry there, over HTTPS, or plain HTTP for a
loopback address, a host in LOCALRUN_INSECURE_REGISTRIES or with `insecure`.

`is_private(host)`: a loopback, private, shared (100.64/10), link-local, reserved or multicast
address, or a name that resolves to one (an IPv4 address inside IPv6, mapped or NAT64, is
judged as itself): where a public registry's redirect may not lead.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from localrun.errors import ModelNotFoundError
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
    """Where `name` is pulled from or pushed to (see the module docstring); `insecure`: over
    plain HTTP whatever the host."""
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
    """Whether a host (an address to bind, a Host header's name, a registry's) means this
    machine only: localhost, a name under it, or a loopback address."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_private(host: str) -> bool:
    """Whether `host` is (or resolves to) a loopback, private or link-local address."""
    host = host.strip("[]")
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False  # the request itself will say it cannot reach it
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    return any(_private(a) for a in addresses)


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


# -- the client -------------------------------------------------------------------------------
