"""Hugging Face Hub: list a repository's files (with their LFS sha256) and fetch one, resumably.

All transfer goes through huggingface_hub: `HfApi.model_info(files_metadata=True)` for the file
list (with each LFS file's sha256), and its metadata and `http_get` functions for the bytes, into
a `.partial` file inside the store that a later pull resumes with a Range request (see
`download`). Nothing goes through the hub cache, so moving a finished file into the blob folder
is a rename: the bytes are stored once.

Settings are read when a pull starts: HF_ENDPOINT (a mirror), HF_TOKEN, HF_HUB_OFFLINE, and the
usual proxy variables (honoured by the HTTP client). huggingface_hub's exceptions are
translated here into localrun's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from localrun.errors import (
    DownloadError,
    HubAuthError,
    HubError,
    HubUnreachableError,
    LocalrunError,
    ModelNotFoundError,
)
from localrun.sources.base import HashingWriter, Progress, RemoteFile, Repo

DEFAULT_ENDPOINT = "https://huggingface.co"
RETRIES = 3  # with 0.5, 1, 2 s pauses; on top of huggingface_hub's own resumes of a stream


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


def _progress_class(progress: Progress) -> type:
    """A stand-in for tqdm that forwards huggingface_hub's progress to `progress`."""

    class _Bar:
        def __init__(self, *_: Any, total: int | None = None, initial: int = 0, **__: Any) -> None:
            self.total = total or 0
            self.n = initial
            self._last = 0.0
            progress(self.n, self.total)

        def update(self, n: int = 1) -> None:
            self.n += n
            now = time.monotonic()
            if now - self._last > 0.1 or self.n >= self.total:
                self._last = now
                progress(self.n, self.total)

        def __enter__(self) -> _Bar:
            return self

        def __exit__(self, *_: object) -> None:
            return None

        def close(self) -> None:
            return None

    return _Bar


@contextmanager
def _translated(reference: str, what: str) -> Iterator[None]:
    """Turn huggingface_hub's and the HTTP client's exceptions into localrun's."""
    from huggingface_hub import errors as hf

    try:
        yield
    except LocalrunError:
        raise
    except hf.GatedRepoError as exc:
        raise HubAuthError(
            f"{reference} is gated: it needs an access token of an account that accepted its terms",
            hint="accept the terms on the model's page, then `export HF_TOKEN=hf_...`",
        ) from exc
    except hf.RepositoryNotFoundError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise ModelNotFoundError(
            reference,
            hint="check the repository name"
            + ("; for a private repository set HF_TOKEN" if status == 401 else ""),
        ) from exc
    except hf.RevisionNotFoundError as exc:
        raise ModelNotFoundError(reference, hint="the repository has no such revision") from exc
    except hf.EntryNotFoundError as exc:
        raise DownloadError(
            f"{what}: the file is gone from the repository", hint="pull again to see what exists"
        ) from exc
    except hf.OfflineModeIsEnabled as exc:
        raise _offline_error(reference) from exc
    except hf.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubAuthError(
                f"{reference}: the hub refused access (HTTP {status})",
                hint="set HF_TOKEN to a token that can read this repository",
            ) from exc
        raise DownloadError(f"{what}: the hub answered HTTP {status}") from exc
    except OSError as exc:
        raise DownloadError(f"{what}: {exc}") from exc
    except Exception as exc:
        if _is_transport_error(exc):
            raise HubUnreachableError(
                f"cannot reach {endpoint()} ({type(exc).__name__}: {exc})",
                hint="check the network, a proxy (HTTPS_PROXY) or HF_ENDPOINT; models already "
                "pulled work offline",
            ) from exc
        raise


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc.lower()


def _is_transport_error(exc: BaseException) -> bool:
    import httpx2

    return isinstance(exc, httpx2.TransportError | ConnectionError | TimeoutError)


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
        to the call and deleted on failure), so this uses the library's own pieces, which it
        uses too: the resolve URL, the file metadata (the final location, e.g. on the CDN) and
        `http_get` with `resume_size`, which sends the Range request and resumes dropped
        streams itself.
        """
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.file_download import http_get
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
            fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
            with os.fdopen(fd, "r+b") as fh:
                have = fh.seek(0, os.SEEK_END)
                if expected is not None and have > expected:  # not the file we expect: restart
                    fh.seek(0)
                    fh.truncate()
                    have = 0
                sink = HashingWriter(fh)
                try:
                    http_get(
                        meta.location,
                        sink,  # type: ignore[arg-type]
                        resume_size=have,
                        headers=headers,
                        expected_size=expected,
                        tqdm_class=_progress_class(progress),
                    )
                finally:
                    fh.flush()
                    hashed = sink.digest()
                os.fsync(fh.fileno())
                digest.append(hashed)

        with _translated(f"hf.co/{repo.repo_id}", what):
            self._retrying(fetch)
        return partial, digest[-1]

    def _retrying(self, call: Callable[[], Any]) -> Any:
        """Retry transient failures (connection, timeouts, 5xx) with exponential backoff."""
        from huggingface_hub import errors as hf

        delay = 0.5
        for attempt in range(RETRIES + 1):
            try:
                return call()
            except (hf.RepositoryNotFoundError, hf.EntryNotFoundError, hf.RevisionNotFoundError):
                raise
            except hf.HfHubHTTPError as exc:
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if attempt == RETRIES or status is None or status < 500:
                    raise
            except Exception as exc:
                transient = _is_transport_error(exc) or (
                    isinstance(exc, OSError) and "Consistency check failed" in str(exc)
                )
                if attempt == RETRIES or not transient:
                    raise
            self._sleep(delay)
            delay = min(delay * 2, 16.0)
        raise HubError("unreachable")  # pragma: no cover - the loop returns or raises
