"""ModelScope: list a repository's files (with their sha256) and fetch one, resumably.

Everything goes through the `modelscope` client; the comment above ModelScopeHub lists the
requests it makes. Settings, read by the library's own `HubConfig` when a pull starts:

    MODELSCOPE_ENDPOINT   the hub, default https://modelscope.cn (https://www.modelscope.ai is
                          the international site); MODELSCOPE_DOMAIN is its deprecated old name
    MODELSCOPE_API_TOKEN  an access token, for private repositories; without it the token that
                          `modelscope login` saved (under MODELSCOPE_HOME, ~/.modelscope) is used

The token travels as `Authorization: Bearer` and as the `m_session_id` cookie. A branch or tag
may be named; the default is `master`, the newest files. modelscope's exceptions are translated
into localrun's where the library is called (`_translated`).
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from localrun.errors import (
    DownloadError,
    HubAuthError,
    HubError,
    HubUnreachableError,
    LocalrunError,
    ModelNotFoundError,
)
from localrun.sources.base import Progress, RemoteFile, Repo, download_os_error, translated

if TYPE_CHECKING:
    from modelscope_hub import ProgressCallback

HOST = "modelscope.cn"
# The newest files; the library's own `model_file_download` would instead pick the newest tag
# older than its release.
DEFAULT_REVISION = "master"
SCRATCH = ".modelscope"  # the library's lock files, inside the download folder
TOKEN_PAGE = "https://modelscope.cn/my/myaccesstoken"
PROGRESS_INTERVAL = 0.1  # seconds between progress reports (the library reports every read)


# Since modelscope 1.38, `modelscope.hub` is a compatibility layer over `modelscope_hub`, which
# the `modelscope` package installs. `modelscope.hub.api.HubApi` is the facade (its
# `max_retries` bounds the first request, see `_client`). The settings reader (`HubConfig`), the
# exceptions and `ProgressCallback` are the typed originals that `modelscope.hub.*` re-exports.
# The requests, all on the legacy `/api/v1` surface:
#
#   GET /api/v1/models/{id}/revisions                branches and tags; fails fast if unreachable
#   GET /api/v1/models/{id}/repo/files?Revision=..   Path, Size and Sha256 of every file
#   GET /openapi/v1/models/{id}                      the license (falls back to /api/v1/models/{id})
#   GET /api/v1/repos/internalAccelerationInfo       the downloader's Alibaba Cloud probe (0.2 s)
#   GET /api/v1/models/{id}/repo?FilePath=..         the bytes; `Range: bytes=N-` resumes
class ModelScopeHub:
    """ModelScope (modelscope.cn, or the hub at MODELSCOPE_ENDPOINT)."""

    name = "modelscope"

    def repo(self, repo_id: str, revision: str | None = None) -> Repo:
        reference = f"{HOST}/{repo_id}"
        api, settings = _client()
        wanted = revision or DEFAULT_REVISION
        with _translated(reference, settings):
            branches, tags = api.get_model_branches_and_tags_details(repo_id)
            names = [str(d.get("Revision")) for d in [*(branches or []), *(tags or [])]]
            if names and wanted not in names:
                raise ModelNotFoundError(
                    f"{reference}@{wanted}",
                    hint=f"{repo_id} has no branch or tag '{wanted}'; it has: "
                    + (", ".join(names) or "none"),
                )
            listing = api.list_repo_files(repo_id, "model", revision=wanted, recursive=True)
        files = [
            RemoteFile(str(f.path), int(f.size or 0), str(f.sha256).lower() if f.sha256 else None)
            for f in listing
            if f.type != "tree" and f.path
        ]
        license_, gated = _license(api, repo_id)
        return Repo(
            hub=self.name,
            repo_id=repo_id,
            revision=wanted,
            files=files,
            license=license_,
            gated=gated,
        )

    def download(
        self, repo: Repo, file: RemoteFile, folder: Path, progress: Progress
    ) -> tuple[Path, str | None]:
        """Fetch `file` to `folder/<its path>`; return the path and the sha256 it was checked by.

        The sha256 is the listing's (None without one); the library checks the size and the
        sha256 as the bytes stream, and retries a mismatch itself. The file is written to
        `<path>.incomplete` and renamed when complete. An interrupted one is resumed with a
        Range request, by the library's own retries (a dropped connection) and by the next
        `download()` (a killed pull). The library's lock files go to `<folder>/.modelscope/` and
        are removed afterwards, so nothing is copied into ~/.cache/modelscope.
        """
        what = f"{HOST}/{repo.repo_id}/{file.path}"
        parts = PurePosixPath(file.path).parts
        if not parts or file.path.startswith("/") or ".." in parts or "\\" in file.path:
            # The library writes to local_dir / file_path as the hub spells it.
            raise DownloadError(f"{what}: the hub lists a path outside the repository")
        expected = file.sha256.lower() if file.sha256 else None
        api, settings = _client()
        folder.mkdir(parents=True, exist_ok=True)
        scratch = folder / SCRATCH
        reference = f"{HOST}/{repo.repo_id}"
        with _translated(reference, settings):
            # The downloader retries a refused connection with back-off for ~30 s; this small
            # request (one retry at most, see _client) makes a hub that is down fail at once.
            # A connection dropped mid-file is still retried and resumed by the downloader.
            api.get_model_branches_and_tags_details(repo.repo_id)
        try:
            with _translated(reference, settings, file=what):
                # `downloader.download_file` is what `HubApi.download_file` and
                # `model_file_download` call; only it takes progress callbacks.
                path = api.downloader.download_file(
                    repo_id=repo.repo_id,
                    repo_type="model",
                    file_path=file.path,
                    revision=repo.revision,
                    cache_dir=scratch,
                    local_dir=folder,
                    # Checked while streaming (a mismatch is fetched again, then raised),
                    # and also for a file found complete: no path returns unchecked bytes.
                    expected_sha256=expected,
                    # The listing says 0 both for empty files and unknown sizes.
                    file_size=file.size or None,
                    progress_callbacks=[_forwarder(progress, file.size)],
                )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        result = Path(str(path))
        try:
            with open(result, "rb+") as fh:
                size = fh.seek(0, 2)
                if expected:
                    # A digest tells the store the file is hashed and on disk: make it so.
                    os.fsync(fh.fileno())
        except OSError as exc:
            raise DownloadError(f"{what}: {exc}") from exc
        progress(size, size)  # a file found complete reported no progress yet
        return result, f"sha256:{expected}" if expected else None


@dataclass(frozen=True)
class _Settings:
    endpoint: str
    has_token: bool


def _quiet_library() -> None:
    """Silence the library's tqdm bars and retry warnings; localrun draws its own progress.

    They would interleave with it on stderr. TQDM_DISABLE is read when tqdm bars are created.
    """
    import logging

    os.environ.setdefault("TQDM_DISABLE", "1")
    for name in ("modelscope", "modelscope_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _client() -> tuple[Any, _Settings]:
    """A modelscope HubApi for the current settings."""
    _quiet_library()
    from modelscope.hub.api import HubApi  # type: ignore[import-untyped]
    from modelscope_hub import HubConfig
    from modelscope_hub.errors import HubError as MsHubError

    # A fresh HubConfig reads the environment (and a saved login) now; HubApi() alone would
    # use the process-wide config built the first time, freezing the settings of that moment.
    config = HubConfig()
    settings = _Settings(str(config.endpoint), bool(config.token))
    # max_retries bounds the transport retries of the plain API calls (the revisions request
    # comes first): an unreachable hub fails at once instead of after ~15 s of back-off. The
    # listing and the downloads keep their own retry loops. token="" means none: None would
    # fall back to the token of that process-wide config.
    try:
        api = HubApi(endpoint=settings.endpoint, token=config.token or "", max_retries=1)
    except (MsHubError, OSError) as exc:  # it writes a session id under MODELSCOPE_HOME
        raise HubError(
            f"cannot set up the ModelScope client: {exc}",
            hint="check that MODELSCOPE_HOME (default ~/.modelscope) is writable",
        ) from exc
    return api, settings


def _license(api: Any, repo_id: str) -> tuple[str | None, bool]:
    """The repository's license and gated flag, when the hub says; they never fail a pull."""
    from modelscope_hub.errors import HubError as MsHubError

    try:
        info = api.get_model(repo_id)
    except MsHubError:
        return None, False
    license_ = info.get("License")
    return (str(license_) if license_ else None), bool(info.get("gated"))


def _forwarder(progress: Progress, total: int) -> type[ProgressCallback]:
    """A ProgressCallback class (the library instantiates it per file) feeding `progress`."""
    from modelscope_hub import ProgressCallback

    class _Forward(ProgressCallback):
        def __init__(self, filename: str, file_size: int) -> None:
            super().__init__(filename, file_size)
            self.done = 0
            self.total = total or file_size
            self.last = 0.0

        def update(self, size: int) -> None:
            # Negative when the library restarts a download the server would not resume.
            self.done += size
            now = time.monotonic()
            if now - self.last >= PROGRESS_INTERVAL or self.done >= self.total:
                self.last = now
                progress(self.done, self.total)

    return _Forward


def _translated(
    reference: str, settings: _Settings, file: str | None = None
) -> AbstractContextManager[None]:
    """Turn modelscope's exceptions into localrun's; `file` names the file being fetched."""
    return translated(
        lambda exc: (
            _repo_error(exc, reference, settings, file)
            or _transfer_error(exc, reference, settings, file)
        )
    )


def _token_hint(settings: _Settings) -> str:
    if settings.has_token:
        return (
            "the token in MODELSCOPE_API_TOKEN (or the saved `modelscope login`) was refused; "
            f"check that it can read this repository ({TOKEN_PAGE})"
        )
    return f"set MODELSCOPE_API_TOKEN to an access token ({TOKEN_PAGE})"


def _repo_error(
    exc: Exception, reference: str, settings: _Settings, file: str | None
) -> LocalrunError | None:
    """What the hub says of the repository or the file: missing, or not for this token."""
    from modelscope_hub import errors as ms

    if isinstance(exc, ms.NotExistError):
        if file:
            return DownloadError(
                f"{file}: the file is gone from the repository",
                hint="pull again to see what exists",
            )
        private = (
            "" if settings.has_token else "; for a private repository " + _token_hint(settings)
        )
        return ModelNotFoundError(
            reference, hint=f"check the repository name on {settings.endpoint}{private}"
        )
    if isinstance(exc, ms.AuthenticationError | ms.PermissionDeniedError):
        return HubAuthError(
            f"{reference}: ModelScope refused access (HTTP {exc.status_code}): {_first(exc)}",
            hint=_token_hint(settings),
        )
    return None


def _transfer_error(
    exc: Exception, reference: str, settings: _Settings, file: str | None
) -> LocalrunError | None:
    """What went wrong on the way: damaged bytes, the hub failing, the network, the disk."""
    from modelscope_hub import errors as ms

    what = file or reference
    resume = "; run the pull again to resume the download" if file else ""
    if isinstance(exc, ms.FileIntegrityError):
        return DownloadError(
            f"{what}: the server sent different bytes than the hub lists ({_first(exc)})",
            hint="pull again; if it repeats, the hub or the mirror in MODELSCOPE_ENDPOINT is "
            "damaged",
        )
    if isinstance(exc, ms.ServerError):
        return HubUnreachableError(
            f"ModelScope at {settings.endpoint} is failing ({_first(exc)})",
            hint="try again later" + resume,
        )
    if isinstance(exc, ms.NetworkError):
        return HubUnreachableError(
            f"cannot reach ModelScope at {settings.endpoint} ({_reason(exc)})"
            if file is None
            else f"{file}: the connection to {settings.endpoint} failed ({_reason(exc)})",
            hint="check the network, a proxy (HTTPS_PROXY) or MODELSCOPE_ENDPOINT" + resume,
        )
    if isinstance(exc, ms.APIError):
        return HubError(f"{what}: ModelScope answered HTTP {exc.status_code}: {_first(exc)}")
    if isinstance(exc, ms.HubError):
        return DownloadError(f"{what}: {_first(exc)}")
    if isinstance(exc, OSError):
        return download_os_error(what, exc)
    return None


def _reason(exc: BaseException) -> str:
    """The root cause of a failed connection: "Connection refused", "Name or service not known"."""
    cause: BaseException | None = exc
    reason = ""
    for _ in range(16):  # the chain runs through requests and urllib3 down to the socket
        if cause is None:
            break
        if isinstance(cause, OSError) and cause.strerror:
            reason = cause.strerror
        cause = cause.__cause__ or cause.__context__
    return reason or _first(exc)


def _first(exc: BaseException) -> str:
    """The headline of a modelscope error (its str() appends request and response dumps)."""
    message = str(getattr(exc, "message", "") or exc)
    return message.strip().splitlines()[0] if message.strip() else type(exc).__name__
