"""Hugging Face Hub: list a repository's files (with their LFS sha256) and fetch one, resumably.

All transfer goes through huggingface_hub: `HfApi.model_info(files_metadata=True)` for the file
list (with each LFS file's sha256), its file metadata, and its HTTP session for the bytes. They
go into a `.partial` file inside the store that a later pull resumes with a Range request (see
`download`). Nothing goes through the hub cache, so moving a finished file into the blob folder
is a rename: the bytes are stored once.

Settings are read when a pull starts: HF_ENDPOINT (a mirror), HF_TOKEN, HF_HUB_OFFLINE, and the
usual proxy variables (honoured by the HTTP client). huggingface_hub's exceptions are
translated here into localrun's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from localrun.errors import (
    DownloadError,
    HubAuthError,
    HubUnreachableError,
    LocalrunError,
    ModelNotFoundError,
)
from localrun.sources import bodies
from localrun.sources.base import Progress, RemoteFile, Repo, download_os_error, translated
from localrun.sources.partial import PartialFile

DEFAULT_ENDPOINT = "https://huggingface.co"
RETRIES = 3  # with 0.5, 1, 2 s pauses; a download that gets further starts the count again
MAX_FILE = 1 << 44  # bytes (16 TiB) of a file whose size the hub does not say


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _offline_error(reference: str) -> HubUnreachableError:
    return HubUnreachableError(
        f"{reference}: HF_HUB_OFFLINE is set, so the hub is not contacted",
        hint="unset HF_HUB_OFFLINE to download; models already pulled work offline",
    )


def _translated(reference: str, what: str) -> AbstractContextManager[None]:
    """Turn huggingface_hub's and the HTTP client's exceptions into localrun's."""
    return translated(
        lambda exc: _repo_error(exc, reference, what) or _transfer_error(exc, reference, what)
    )


def _repo_error(exc: Exception, reference: str, what: str) -> LocalrunError | None:
    """What the hub says of the repository or the file: gated, missing."""
    from huggingface_hub import errors as hf

    if isinstance(exc, hf.GatedRepoError):
        return HubAuthError(
            f"{reference} is gated: it needs an access token of an account that accepted its terms",
            hint="accept the terms on the model's page, then `export HF_TOKEN=hf_...`",
        )
    if isinstance(exc, hf.RepositoryNotFoundError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return ModelNotFoundError(
            reference,
            hint="check the repository name"
            + ("; for a private repository set HF_TOKEN" if status == 401 else ""),
        )
    if isinstance(exc, hf.RevisionNotFoundError):
        return ModelNotFoundError(reference, hint="the repository has no such revision")
    if isinstance(exc, hf.EntryNotFoundError):
        return DownloadError(
            f"{what}: the file is gone from the repository", hint="pull again to see what exists"
        )
    return None


def _transfer_error(exc: Exception, reference: str, what: str) -> LocalrunError | None:
    """Translate what went wrong on the way: a short body, offline mode, an HTTP status, the disk.

    The network's errors are translated too.
    """
    from huggingface_hub import errors as hf

    if isinstance(exc, _Incomplete):
        return DownloadError(
            f"the download did not complete: {exc}",
            hint="pull again: it continues where it stopped",
        )
    if isinstance(exc, hf.OfflineModeIsEnabled):
        return _offline_error(reference)
    if isinstance(exc, hf.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return HubAuthError(
                f"{reference}: the hub refused access (HTTP {status})",
                hint="set HF_TOKEN to a token that can read this repository",
            )
        return DownloadError(f"{what}: the hub answered HTTP {status}")
    if isinstance(exc, OSError):
        return download_os_error(what, exc)
    if _is_broken_transfer(exc):
        return DownloadError(
            f"{what}: the connection broke off again and again ({type(exc).__name__}: {exc})",
            hint="pull again: it continues where it stopped; if it repeats, check the "
            "network or the mirror (HF_ENDPOINT)",
        )
    if _is_transport_error(exc):
        return HubUnreachableError(
            f"cannot reach {endpoint()} ({type(exc).__name__}: {exc})",
            hint="check the network, a proxy (HTTPS_PROXY) or HF_ENDPOINT; models already "
            "pulled work offline",
        )
    return None


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc.lower()


def _is_transport_error(exc: BaseException) -> bool:
    import httpx2

    return isinstance(exc, httpx2.TransportError | ConnectionError | TimeoutError)


def _is_broken_transfer(exc: BaseException) -> bool:
    """The server answered, then the connection failed mid-response (not: cannot connect)."""
    import httpx2

    return isinstance(exc, httpx2.ReadError | httpx2.ReadTimeout | httpx2.RemoteProtocolError)


class HuggingFaceHub:
    """The Hugging Face Hub (or a mirror at HF_ENDPOINT)."""

    name = "hf"

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self._sleep = sleep

    def repo(self, repo_id: str, revision: str | None = None) -> Repo:
        reference = f"hf.co/{repo_id}"
        if _offline():
            raise _offline_error(reference)
        from huggingface_hub import HfApi

        api = HfApi(endpoint=endpoint(), token=_token())
        with _translated(reference, reference):
            info = self._retrying(
                lambda: api.model_info(repo_id, revision=revision, files_metadata=True)
            )
        files = []
        for sibling in info.siblings or []:
            lfs = sibling.lfs
            sha = lfs.sha256 if lfs is not None else None
            size = lfs.size if lfs is not None else (sibling.size or 0)
            files.append(RemoteFile(sibling.rfilename, int(size or 0), sha))
        card = info.card_data.to_dict() if info.card_data is not None else {}
        license_ = card.get("license")
        return Repo(
            hub=self.name,
            repo_id=info.id or repo_id,
            revision=info.sha or revision or "main",
            files=files,
            license=license_ if isinstance(license_, str) else None,
            gated=bool(info.gated),
        )

    def download(
        self, repo: Repo, file: RemoteFile, folder: Path, progress: Progress
    ) -> tuple[Path, str | None]:
        """Fetch one file into `folder/<name>.partial`, continuing what is already there.

        hf_hub_download would restart from zero in a new process (its temporary file is unique
        to the call and deleted on failure). So this takes the library's own pieces, the ones
        it uses itself: the resolve URL, the file metadata (the final location, e.g. on the CDN)
        and its HTTP session with back-off (`http_stream_backoff`), with a Range request from
        the end of the partial file. The body goes into a PartialFile rather than through
        `http_get`, whose 10 MB re-chunking cost more than the transfer (see partial.py).
        """
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.utils._headers import build_hf_headers

        what = f"hf.co/{repo.repo_id}/{file.path}"
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / (file.path.rsplit("/", 1)[-1] + ".partial")
        token = _token()
        digest: list[str] = []

        def fetch() -> None:
            url = hf_hub_url(repo.repo_id, file.path, revision=repo.revision, endpoint=endpoint())
            meta = get_hf_file_metadata(url, token=token, endpoint=endpoint())
            headers = build_hf_headers(token=token)
            if _host(meta.location) != _host(url):
                # A signed CDN URL: the token is for the hub only (as hf_hub_download does).
                headers.pop("authorization", None)
            expected = file.size or meta.size
            with PartialFile(partial) as out:
                if expected is not None and out.size > expected:  # not the file we expect
                    out.restart()
                if expected is None or out.size < expected:
                    _stream(what, meta.location, headers, out, progress, expected or MAX_FILE)
                if expected is not None and out.size != expected:
                    raise _Incomplete(f"{what}: {out.size} bytes arrived, the hub lists {expected}")
                progress(out.size, out.size)
                digest.append(out.finish())

        def have() -> int:
            try:
                return partial.stat().st_size
            except OSError:
                return 0

        with _translated(f"hf.co/{repo.repo_id}", what):
            self._retrying(fetch, progressed=have)
        return partial, digest[-1]

    def _retrying(
        self, call: Callable[[], Any], progressed: Callable[[], int] | None = None
    ) -> Any:
        """Retry transient failures (connection, timeouts, 5xx) with exponential backoff.

        With `progressed` (bytes on disk), a try that got further than the one before starts
        the count again: a flaky connection that keeps delivering is followed to the end.
        """
        from huggingface_hub import errors as hf

        delay, attempt = 0.5, 0
        reached = progressed() if progressed else 0
        while True:
            try:
                return call()
            except (hf.RepositoryNotFoundError, hf.EntryNotFoundError, hf.RevisionNotFoundError):
                raise
            except hf.HfHubHTTPError as exc:
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if attempt == RETRIES or status is None or status < 500:
                    raise
            except Exception as exc:
                transient = _is_transport_error(exc) or isinstance(exc, _Incomplete)
                if attempt == RETRIES or not transient:
                    raise
            now = progressed() if progressed else 0
            if now > reached:
                reached, delay, attempt = now, 0.5, 0
            self._sleep(delay)
            delay = min(delay * 2, 16.0)
            attempt += 1


class _Incomplete(Exception):
    """The body did not add up to the file (retried: the next try resumes or starts over)."""


def _stream(
    what: str, url: str, headers: dict[str, str], out: PartialFile, progress: Progress, limit: int
) -> None:
    """GET `url` from `out.size` on into `out`, through huggingface_hub's session.

    At most `limit` bytes, the file's size, are read.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils._http import hf_raise_for_status, http_stream_backoff

    start = out.size
    headers = {**headers, "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    with http_stream_backoff(
        "GET",
        url,
        headers=headers,
        timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
        retry_on_exceptions=(),
        retry_on_status_codes=(408, 429),
    ) as response:
        hf_raise_for_status(response)
        if start and not response.headers.get("Content-Range", "").startswith(f"bytes {start}-"):
            out.restart()  # the server ignored the Range request and sends the whole file
            if response.status_code != 200:
                raise _Incomplete(f"{what}: the server sent another range than bytes={start}-")
        total = _total(response, out.size)
        progress(out.size, total)
        last = 0.0
        # Raw, and decoded here within the file's size (sources/bodies.py): a few hundred bytes
        # in `gzip, gzip` otherwise wrote 256 MB into the partial file before its size was
        # looked at (httpx2 inflates a step at a time, but with no end).
        applied = bodies.codings(response.headers, what)
        for chunk in bodies.decoded(response.iter_raw(), applied, limit, what):
            out.write(chunk)
            now = time.monotonic()
            if now - last > 0.1:
                last = now
                progress(out.size, total)
    progress(out.size, total)


def _total(response: Any, done: int) -> int:
    """The file's size as the response states it (0 when it does not)."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length", "")
    return done + int(length) if length.isdigit() else 0
