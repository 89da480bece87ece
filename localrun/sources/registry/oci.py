"""An OCI distribution client: what `pull`, `push` and `cp` say to a registry, and nothing more.

    GET  /v2/<repository>/manifests/<tag>       a manifest (Ollama's: Docker's schema 2; Docker
                                                Model Runner's: OCI's image manifest)
    GET  /v2/<repository>/blobs/<digest>        a layer, often a redirect to object storage
    HEAD /v2/<repository>/blobs/<digest>        whether the registry has it (push skips it)
    POST /v2/<repository>/blobs/uploads/        an upload, then PUT <location>?digest=...
    PUT  /v2/<repository>/manifests/<tag>       the manifest, last

Where a name lives is sources/hosts.py's `target`; logins come from sources/registry/logins.py.
A registry cannot be trusted: the rules that follow are in the comment above Registry. Not
guarded here: a host name that resolves to a public address when checked and to a private one
when connected (DNS rebinding); a proxy in HTTPS_PROXY sees what the user sends through it.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from localrun.errors import (
    DownloadError,
    HubAuthError,
    HubError,
    HubUnreachableError,
    LocalrunError,
    ModelNotFoundError,
)
from localrun.sources import ranges
from localrun.sources.base import reason
from localrun.sources.bodies import json_or_none, read_bounded
from localrun.sources.hosts import Target, is_private
from localrun.sources.registry.challenge import check_token, parse_challenge, token_service
from localrun.sources.registry.logins import Secret, credentials

MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MAX_MANIFEST = 4 << 20  # bytes: what OCI's spec lets a registry refuse beyond
MAX_SMALL = 64 << 10  # bytes of an error body or a token answer
MAX_REDIRECTS = 5
RETRIES = 3  # a GET after a dropped connection or a 5xx, with 0.5, 1, 2 s pauses
MAX_RETRY_AFTER = ranges.MAX_RETRY_AFTER  # seconds a 429 may ask to wait (past it: fail, say when)
RETRY_AFTER_BUDGET = ranges.RETRY_AFTER_BUDGET  # seconds a request waits on Retry-After in all
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0  # seconds without a byte: a stalled transfer is dropped and retried

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
_REDIRECTS = (301, 302, 303, 307, 308)
Body = bytes | Callable[[], Iterator[bytes]] | None  # a request's content; a callable: per try


@dataclass
class Manifest:
    """A manifest as the registry sent it: its bytes, digest and media type, and the JSON."""

    raw: bytes
    digest: str
    media_type: str
    data: dict[str, Any] = field(default_factory=dict)


# The rules for a registry that cannot be trusted:
# - a small body (a manifest, an error, a token answer) is read up to a bound in bytes and in
#   time, never whole, and raw: its encoding is undone within the bound (sources/bodies.py),
#   never by httpx, which inflates a whole chunk of a gzip chain at once;
# - redirects are followed by hand, at most MAX_REDIRECTS, never to plain HTTP from HTTPS, never
#   from a public registry to a private address (hosts.is_private); the registry's
#   authorization goes to its own origin only, never with a redirect;
# - the token service the registry names (its realm) is held to the rules of a redirect, and
#   the token it gives must be a token (sources/registry/challenge.py);
# - nothing a registry sends (a Location, a realm, a token) reaches httpx unchecked: what httpx
#   cannot send is one line (`_send`), never an exception of its own;
# - a 429 (or 503) waits as Retry-After says only up to MAX_RETRY_AFTER, RETRY_AFTER_BUDGET in
#   all for a request; asked for longer, it fails at once saying when to try again. 5xx and
#   dropped connections are retried a few times, a refused connection is said at once; every
#   other answer is one line naming the host.
# A registry's challenge (WWW-Authenticate) says how to use the logins: Basic, or a Bearer token
# from its token service, anonymous where there is none (Docker Hub gives those for public
# repositories).
class Registry:
    """One registry, for one repository: a session with its tokens (thread-safe).

    `trusted` (hosts.Reach.where): the user's login is sent and the registry's own words are
    quoted in errors; an API client's pull from a registry the server's owner did not list is
    not, and its errors say only what failed (status, not found, a login, no connection).
    """

    def __init__(self, where: Target, *, push: bool = False, trusted: bool = True) -> None:
        self.target = where
        self.push = push
        self.trusted = trusted
        self._secret: Secret | None = credentials(where.host) if trusted else None
        # A token alone (LOCALRUN_REGISTRY_AUTH's host=TOKEN) is the registry's bearer token.
        secret = self._secret
        alone = secret is not None and secret.user is None
        self._auth: str | None = f"Bearer {secret.password}" if secret and alone else None
        self._lock = threading.Lock()
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
        self.client = httpx.Client(
            follow_redirects=False,
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
            limits=limits,
            headers={"User-Agent": "localrun", "Accept-Encoding": "identity"},
            trust_env=True,
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, path: str) -> str:
        return f"{self.target.url}/v2/{self.target.repository}/{path}"

    # -- manifests

    def manifest(self, reference: str | None = None) -> Manifest:
        """The manifest of the tag (or digest `reference`); an index is followed once."""
        found = self._manifest(reference or self.target.tag)
        if found.media_type in INDEX_TYPES or "manifests" in found.data:
            entries = found.data.get("manifests")
            chosen = next(
                (
                    m["digest"]
                    for m in entries or []
                    if isinstance(m, dict)
                    and m.get("mediaType") in MANIFEST_TYPES
                    and isinstance(m.get("digest"), str)
                    and _DIGEST.match(m["digest"])
                ),
                None,
            )
            if chosen is None:
                raise DownloadError(
                    f"{self.target.shown}: the registry's index names no model manifest"
                )
            found = self._manifest(chosen)
            if "manifests" in found.data:
                raise DownloadError(f"{self.target.shown}: an index inside an index")
        return found

    def _manifest(self, reference: str) -> Manifest:
        accept = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
        with self.stream("GET", self.url(f"manifests/{reference}"), {"Accept": accept}) as resp:
            raw = read_bounded(resp, MAX_MANIFEST, f"{self.target.shown}: the manifest")
            media = resp.headers.get("Content-Type", "").split(";")[0].strip()
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise DownloadError(
                f"{self.target.shown}: the registry sent a manifest that is not {reference}"
            )
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise DownloadError(f"{self.target.shown}: the manifest is not JSON") from None
        if not isinstance(data, dict):
            raise DownloadError(f"{self.target.shown}: the manifest is not a JSON object")
        media = str(data.get("mediaType") or media)
        return Manifest(raw, digest, media, data)

    def put_manifest(self, raw: bytes, media_type: str) -> None:
        with self.stream(
            "PUT", self.url(f"manifests/{self.target.tag}"), {"Content-Type": media_type}, body=raw
        ):
            pass

    # -- blobs

    def has_blob(self, digest: str) -> bool:
        try:
            with self.stream("HEAD", self.url(f"blobs/{digest}"), redirects=False):
                return True  # a redirect to its storage says so too
        except ModelNotFoundError:
            return False

    def blob_location(self, digest: str) -> tuple[str, dict[str, str]]:
        """Return where the blob's bytes are served, and the headers a request there takes.

        The place is the end of the registry's redirects. The headers carry the registry's
        authorization on its own host only.
        """
        url = self.url(f"blobs/{digest}")
        for _ in range(MAX_REDIRECTS + 1):
            with self.stream("GET", url, {"Range": "bytes=0-0"}, redirects=False) as resp:
                if resp.status_code in _REDIRECTS:
                    url = self._redirect(url, resp.headers.get("Location", ""))
                    continue
            return url, self._headers_for(url)
        raise DownloadError(f"{self.target.host}: more than {MAX_REDIRECTS} redirects for a blob")

    def opener(self, digest: str) -> ranges.Opener:
        """Return an opener of ranges of the blob, where the registry serves it.

        The place is resolved once, and again when a signed URL expired (401/403). 429 and 5xx
        are the download's to retry.
        """
        where = [self.blob_location(digest)]

        @contextmanager
        def open_range(start: int, end: int) -> Iterator[ranges.Body]:
            for attempt in range(2):
                url, headers = where[0]
                try:
                    response = self._send(
                        "GET", url, headers={**headers, "Range": f"bytes={start}-{end}"}
                    )
                except httpx.TransportError as exc:
                    raise ConnectionError(reason(exc)) from None
                try:
                    status = response.status_code
                    if status in (401, 403) and attempt == 0:
                        where[0] = self.blob_location(digest)
                        continue
                    if status == 429 or status >= 500:
                        after = retry_after(response)  # ranges.py holds it to its bounds
                        raise ranges.Retry(f"{urlsplit(url).netloc} answered {status}", after)
                    ranged = status == 206 and response.headers.get("Content-Range", "").startswith(
                        f"bytes {start}-"
                    )
                    if status not in (200, 206) or (status == 206 and not ranged):
                        raise self._storage_error(url, status)
                    yield ranges.Body(ranged, _chunks(response))
                    return
                finally:
                    response.close()

        return open_range

    def _storage_error(self, url: str, status: int) -> DownloadError:
        where = urlsplit(url).netloc
        said = "another range than the one asked" if status == 206 else f"{status}"
        return DownloadError(
            f"{self.target.shown}: the blob's storage ({where}) answered {said}",
            hint="run the pull again; if it repeats, the registry's storage is misbehaving",
        )

    def _headers_for(self, url: str) -> dict[str, str]:
        if self._auth and _origin(url) == _origin(self.target.url):
            return {"Authorization": self._auth}
        return {}

    def _redirect(self, current: str, location: str) -> str:
        """The next URL of a redirect, if the rules allow it (the comment above Registry)."""
        if not location:
            raise DownloadError(f"{self.target.host}: a redirect without a Location")
        refused = f"{self.target.host}: a redirect to {location[:120]!r}"
        try:
            url = urljoin(current, location)
            parts = urlsplit(url)
            hostname = parts.hostname
        except ValueError:
            raise DownloadError(refused) from None
        if hostname is None or parts.scheme not in ("http", "https"):
            raise DownloadError(refused)
        if urlsplit(current).scheme == "https" and parts.scheme == "http":
            raise DownloadError(
                f"{self.target.host}: a redirect from HTTPS to plain HTTP ({parts.netloc})",
                hint="the registry or something between us is misbehaving; nothing was saved",
            )
        source = urlsplit(self.target.url).hostname or ""
        if not is_private(source) and is_private(hostname):
            raise DownloadError(
                f"{self.target.host}: a redirect to a private address ({hostname})",
                hint="a public registry never stores blobs on this machine's network; "
                "nothing was saved",
            )
        return url

    def upload_blob(self, digest: str, size: int, chunks: Callable[[], Iterator[bytes]]) -> None:
        """Upload one blob: POST for a location, then one PUT of the bytes with the digest."""
        with self.stream("POST", self.url("blobs/uploads/"), {"Content-Length": "0"}) as resp:
            location = resp.headers.get("Location", "")
        try:
            url = urljoin(self.url("blobs/uploads/"), location)
        except ValueError:
            url = ""
        if not location or _origin(url) != _origin(self.target.url):
            raise HubError(
                f"{self.target.host}: the registry gave no upload location on its own host "
                f"({location[:80]!r})"
            )
        sep = "&" if "?" in url else "?"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        put = f"{url}{sep}{urlencode({'digest': digest})}"
        with self.stream("PUT", put, headers, body=chunks, redirects=False):
            pass

    # -- requests

    @contextmanager
    def stream(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        *,
        body: Body = None,
        redirects: bool = True,
    ) -> Iterator[httpx.Response]:
        """Send one request to the registry, and yield a 2xx (or 3xx) response.

        The request is authorized as the challenge asks, and retried where that is safe. Its
        redirects are followed by the rules, or with `redirects` False, handed back. Any other
        answer raises a LocalrunError.
        """
        retryable = method in ("GET", "HEAD")
        attempt = hops = 0
        waited = 0.0  # seconds spent as Retry-After asked
        challenged = False
        while True:
            sent = {**(headers or {}), **self._headers_for(url)}
            try:
                content = body() if callable(body) else body  # a body is sent whole each try
                response = self._send(method, url, headers=sent, content=content)
            except httpx.TransportError as exc:
                # No connection at all (offline, a wrong host) is said at once; a dropped one
                # is tried again.
                connect = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if retryable and attempt < RETRIES and not connect:
                    time.sleep(0.5 * 2**attempt)
                    attempt += 1
                    continue
                raise unreachable(urlsplit(url).netloc or self.target.host, exc) from None
            try:
                status = response.status_code
                if status == 401 and not challenged and _origin(url) == _origin(self.target.url):
                    challenged = True
                    self._authorize(response)
                    continue
                if status in _REDIRECTS and redirects:
                    hops += 1
                    if hops > MAX_REDIRECTS:
                        raise DownloadError(
                            f"{self.target.host}: more than {MAX_REDIRECTS} redirects",
                            hint="the registry is misconfigured or hostile; nothing was saved",
                        )
                    url = self._redirect(url, response.headers.get("Location", ""))
                    continue
                if status == 429 or status >= 500:
                    after = retry_after(response)
                    if after is not None and (
                        after > MAX_RETRY_AFTER or waited + after > RETRY_AFTER_BUDGET
                    ):  # never a turn held for as long as a registry likes: said at once
                        raise ranges.wait_refused(
                            f"{self.target.host} answered {status}", after, waited
                        )
                    if retryable and attempt < RETRIES:
                        waited += after or 0.0
                        time.sleep(0.5 * 2.0**attempt if after is None else after)
                        attempt += 1
                        continue
                if status >= 400:
                    raise self._error(response)
                yield response
                return
            finally:
                response.close()

    def _send(self, method: str, url: str, **details: Any) -> httpx.Response:
        """Send one request, its answer streamed.

        What httpx cannot send is one line, never httpx's exception: a URL a registry gave that
        IDNA refuses or with a control character, or a header outside ASCII. httpx's exception
        ended a pull job as 'the pull job failed: UnicodeError'. An httpx.TransportError is the
        caller's to judge.
        """
        try:
            request = self.client.build_request(method, url, **details)
            return self.client.send(request, stream=True)
        except (httpx.InvalidURL, ValueError) as exc:  # UnicodeError and IDNAError among them
            raise DownloadError(
                f"{self.target.host}: a request it leads to cannot be sent ({type(exc).__name__})",
                hint="the registry gave an address or a value that is not one; nothing was saved",
            ) from None

    def _authorize(self, response: httpx.Response) -> None:
        """Answer a 401's challenge: Basic with the login, or a token from the service."""
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if self._secret is not None and self._secret.user is None:  # the token was refused
            raise self._login_error(denied=True)
        if scheme == "basic":
            if self._secret is None:
                raise self._login_error()
            self._auth = self._secret.basic()
            return
        if scheme != "bearer" or not params.get("realm"):
            raise self._login_error()
        with self._lock:
            self._auth = "Bearer " + self._token(params)

    def _token(self, params: dict[str, str]) -> str:
        """Return a token from the registry's token service (its challenge's realm).

        It is asked with the login where sources/registry/challenge.py allows it, anonymously
        elsewhere.
        """
        realm = params["realm"]
        with_login = token_service(self.target, realm)
        actions = "pull,push" if self.push else "pull"
        query = {"scope": params.get("scope") or f"repository:{self.target.repository}:{actions}"}
        if params.get("service"):
            query["service"] = params["service"]
        secret = self._secret if with_login else None
        if secret is not None and secret.identity:
            # Docker's identity token (`docker login` with a browser): OAuth2's refresh grant.
            form = {"grant_type": "refresh_token", "refresh_token": secret.password,
                    "client_id": "localrun", **query}  # fmt: skip
            send: dict[str, Any] = {"data": form}
            method, url = "POST", realm
        else:
            send = {"headers": {"Authorization": secret.basic()} if secret else {}}
            method, url = "GET", realm + ("&" if "?" in realm else "?") + urlencode(query)
        try:
            resp = self._send(method, url, **send)
        except httpx.TransportError as exc:
            raise unreachable(urlsplit(realm).netloc or self.target.host, exc) from None
        with closing(resp):
            if resp.status_code in (401, 403):
                raise self._login_error(denied=True)
            body = read_bounded(resp, MAX_SMALL, f"{self.target.host}: the token answer")
        data = json_or_none(body)
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        return check_token(self.target, token)

    def _login_error(self, *, denied: bool = False) -> HubAuthError:
        if not self.trusted:  # no login was sent: the server keeps its logins for its own
            return HubAuthError(
                f"{self.target.host} asks for a login for {self.target.repository}",
                hint="the server sends its logins only to the registries its owner lists in "
                "LOCALRUN_API_REGISTRIES",
            )
        what = "refused the login" if denied or self._secret else "asks for a login"
        return HubAuthError(
            f"{self.target.host} {what} for {self.target.repository}",
            hint=f"set LOCALRUN_REGISTRY_AUTH='{self.target.host}=USER:PASSWORD' (or a token), "
            f"or `docker login {self.target.host}`",
        )

    def _error(self, response: httpx.Response) -> LocalrunError:
        """Return the registry's error (OCI's {"errors": [{"code", "message"}]}) as one line.

        Its own code and message are quoted only from a trusted registry, since anything at a
        port can answer in OCI's shape.
        """
        status = response.status_code
        try:
            data = json_or_none(read_bounded(response, MAX_SMALL, "an error"))
        except LocalrunError:  # a body too large or too slow: the status says enough
            data = None
        errors = data.get("errors") if isinstance(data, dict) else None
        first = errors[0] if isinstance(errors, list) and errors else None
        first = first if isinstance(first, dict) else {}
        code = str(first.get("code", ""))[:60]
        message = str(first.get("message", ""))[:200]
        said = f" ({code}: {message})" if (code or message) and self.trusted else ""
        said = said.replace("\n", " ")
        if status == 404 or code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"):
            return ModelNotFoundError(
                self.target.shown,
                hint=f"{self.target.host} has no such model{said}",
            )
        if status in (401, 403):
            return self._login_error(denied=True)
        if status == 429:
            return HubError(
                f"{self.target.host} is limiting the rate of requests{said}",
                hint="wait a minute and run it again; a pull resumes where it stopped",
            )
        return HubError(f"{self.target.host} answered {status}{said}")


def _chunks(response: httpx.Response) -> Iterator[bytes]:
    """A blob's bytes as the socket gives them (re-chunking them cost half the rate)."""
    try:
        yield from response.iter_raw()
    except httpx.HTTPError as exc:
        raise ConnectionError(reason(exc)) from None


def retry_after(response: httpx.Response) -> float | None:
    """Return the seconds an answer's Retry-After asks for, or None where none can be read.

    Retry-After is a number of seconds, or an HTTP date.
    """
    value = response.headers.get("Retry-After", "").strip()
    if value.isascii() and value.isdigit():
        return float(value)  # float(), not int(): no limit on digits, inf past a double
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def unreachable(host: str, exc: BaseException) -> HubUnreachableError:
    """A registry that cannot be reached: the host, and why, in one line."""
    return HubUnreachableError(
        f"cannot reach {host} ({reason(exc)})",
        hint="check the network (models already in the store work offline)",
    )
