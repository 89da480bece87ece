"""A fake Hugging Face Hub on a loopback port that the real `huggingface_hub` client talks to.

Point the client at `FakeHub.url` and it works unchanged for the calls below. huggingface_hub
reads HF_ENDPOINT once, when it is imported: in-process tests pass `endpoint=`, a subprocess
(the CLI) can be given HF_ENDPOINT.

    GET  /api/models/{org}/{name}[/revision/{rev}][?blobs=true]    model_info(files_metadata=True)
    GET  /api/models/{org}/{name}/tree/{rev}[/{path}][?recursive=]  list_repo_tree, list_repo_files
    HEAD/GET /{org}/{name}/resolve/{rev}/{filename}                 hf_hub_download
    HEAD/GET {cdn_url}/lfs-files/{sha256}/{filename}                LFS content, as the real CDN

It answers as the real hub does, as far as huggingface_hub looks (read from its file_download.py
and utils/_http.py):

- resolve of a plain file: 200 with the bytes, `ETag` (git blob sha1), `X-Repo-Commit`,
  `Accept-Ranges: bytes`; a single `Range` gives 206 with `Content-Range`.
- resolve of an LFS file: 302 to a second server on another port (the "CDN"), with
  `X-Linked-Etag` (the quoted sha256), `X-Linked-Size` and `X-Repo-Commit`. Because the origin
  differs, the client reads the metadata from the 302 itself and sends its GET to the CDN
  without the Authorization header, as it does with the real hub's signed CDN URLs.
- errors carry `X-Error-Code` / `X-Error-Message` and a `{"error": ...}` body, so the client
  raises its typed errors. A missing repository and a private one without the token answer
  alike (the hub does not reveal which): 401 RepoNotFound without an Authorization header, 404
  with one. A gated repository's metadata and file list are public (`gated: "auto"`), its files
  are not: 401 GatedRepo without a token, 403 with a wrong one. Unknown revision: 404
  RevisionNotFound; unknown file: 404 EntryNotFound (with `X-Repo-Commit`).
- no Xet headers or links are ever sent, so the client never tries Xet.

A file is LFS when its suffix is one the hub's default .gitattributes tracks (plus .gguf), or
when it is over 10 MiB, which the hub refuses to store outside LFS.

Faults for tests: `cut_after`, `corrupt` and `slow` apply to the next `times` GETs of a file's
bytes (resolve or CDN, matched by the path in the repo), `fail_status` to the next `times`
requests whose path contains a fragment. `requests` and `bytes_sent` record what happened.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from contextlib import suppress
from pathlib import Path
from types import TracebackType

from hubs.hf_http import _content_name, _now, _Server
from hubs.hf_repos import (
    HubFile,
    Request,
    _Commit,
    _Failure,
    _Fault,
    _Faults,
    _Repo,
    hash_file,
)


class FakeHub:
    """A Hugging Face Hub on 127.0.0.1 (and its LFS CDN on a second port) for the real client."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.bytes_sent = 0
        self.errors: list[str] = []  # tracebacks of unexpected exceptions in the fake itself
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._blobs: dict[str, HubFile] = {}  # sha256 -> an LFS file with that content
        self._faults: list[_Fault] = []
        self._failures: list[_Failure] = []
        self._connections: set[socket.socket] = set()
        self._servers = [_Server(self, "hub"), _Server(self, "cdn")]
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        self._threads = [
            threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fakehub-{server.role}",
                daemon=True,
            )
            for server in self._servers
        ]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop both servers and drop open keep-alive connections."""
        for server in self._servers:
            server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        for server in self._servers:
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    # Content.

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes | Path],
        *,
        license: str | None = None,
        gated: bool = False,
        private: bool = False,
        token: str | None = None,
        revision: str = "main",
    ) -> str:
        """Create or update `org/name` and point `revision` at a new commit; return its sha.

        Only `Authorization: Bearer <token>` opens a gated or private repository (none does
        when token is None). Path files are hashed now and streamed from disk when served.
        """
        org, _, name = repo_id.partition("/")
        if not org or not name or "/" in name:
            raise ValueError(f"repo_id must be 'org/name', got {repo_id!r}")
        for path in files:
            parts = path.split("/")
            if path.startswith("/") or any(part in ("", ".", "..") for part in parts):
                raise ValueError(f"not a relative path in a repo: {path!r}")
        hashed = {path: hash_file(path, source) for path, source in sorted(files.items())}
        digest = hashlib.sha1(repo_id.lower().encode())
        for path, file in hashed.items():
            digest.update(f"\0{path}\0{file.sha256}".encode())
        commit = _Commit(sha=digest.hexdigest(), date=_now(), files=hashed)
        with self._lock:
            repo = self._repos.setdefault(repo_id.lower(), _Repo(repo_id, created=commit.date))
            repo.license, repo.gated, repo.private, repo.token = license, gated, private, token
            repo.commits[commit.sha] = commit
            repo.branches[revision] = commit.sha
            self._blobs.update((file.sha256, file) for file in hashed.values() if file.lfs)
        return commit.sha

    # Fault injection.

    def cut_after(self, filename: str, n_bytes: int, times: int = 1) -> None:
        """Drop the connection after n_bytes of the body of the next `times` GETs of filename."""
        self._add_fault(_Fault("cut", filename, n_bytes, times))

    def corrupt(self, filename: str, times: int = 1) -> None:
        """Serve wrong bytes (the right length, the advertised sha256) for the next GETs."""
        self._add_fault(_Fault("corrupt", filename, 0, times))

    def slow(self, filename: str, bytes_per_s: int, times: int = 1) -> None:
        """Throttle the next `times` GETs of filename to bytes_per_s."""
        if bytes_per_s <= 0:
            raise ValueError("bytes_per_s must be positive")
        self._add_fault(_Fault("slow", filename, bytes_per_s, times))

    def ignore_range(self, filename: str, times: int = 1) -> None:
        """Answer the next `times` GETs of filename that ask for a Range with 200 and the
        whole file (as some CDNs do)."""
        self._add_fault(_Fault("whole", filename, 0, times))

    def fail_status(
        self, path_fragment: str, status: int, times: int = 1, *, method: str | None = None
    ) -> None:
        """Answer `status` to the next `times` requests (of `method`, if given) whose path
        contains path_fragment; any endpoint, HEAD or GET, hub or CDN."""
        with self._lock:
            self._failures.append(_Failure(path_fragment, status, times, method))

    # Inspection.

    def content_requests(self, filename: str) -> list[Request]:
        """The GETs of a file's bytes (on the resolve endpoint or the CDN), oldest first."""
        with self._lock:
            return [r for r in self.requests if r[0] == "GET" and _content_name(r[1]) == filename]

    # Used by the request handlers.

    def _add_fault(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_faults(self, filename: str, ranged: bool = False) -> _Faults:
        active = _Faults()
        with self._lock:
            for fault in self._faults:
                if fault.filename != filename or (fault.kind == "whole" and not ranged):
                    continue
                fault.times -= 1
                if fault.kind == "cut":
                    active.cut = fault.value
                elif fault.kind == "corrupt":
                    active.corrupt = True
                elif fault.kind == "whole":
                    active.whole = True
                else:
                    active.rate = fault.value
            self._faults = [fault for fault in self._faults if fault.times > 0]
        return active

    def _take_failure(self, method: str, path: str) -> int | None:
        with self._lock:
            for failure in self._failures:
                if failure.fragment in path and failure.method in (None, method):
                    failure.times -= 1
                    if failure.times <= 0:
                        self._failures.remove(failure)
                    return failure.status
        return None

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def wait_idle(self, timeout: float) -> None:
        """Wait until no connection is open: every response has ended (a client that died
        ends its own once the hub's next write fails), so `bytes_sent` is final."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._connections:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("the fake hub still has connections open")
            time.sleep(0.02)
