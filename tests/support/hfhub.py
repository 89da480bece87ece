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
import json
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

CHUNK = 256 * 1024
LFS_MIN_SIZE = 10 * 1024 * 1024
LFS_SUFFIXES = frozenset(
    {
        *(".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gguf", ".gz", ".h5", ".joblib"),
        *(".lfs", ".mlmodel", ".model", ".msgpack", ".npy", ".npz", ".onnx", ".ot", ".parquet"),
        *(".pb", ".pickle", ".pkl", ".pt", ".pth", ".rar", ".safetensors", ".tar", ".tflite"),
        *(".tgz", ".wasm", ".xz", ".zip", ".zst"),
    }
)
RECORDED_HEADERS = ("Range", "Authorization", "Accept-Encoding", "If-None-Match")
_FLIP = bytes(range(255, -1, -1))  # maps every byte to a different one: same length, wrong bytes

Request = tuple[str, str, dict[str, str]]


@dataclass(frozen=True)
class HubFile:
    """One file of a commit, hashed once when it is added."""

    path: str
    source: bytes | Path
    size: int
    sha256: str
    blob_id: str  # git blob sha1 of the content, or of the LFS pointer for an LFS file
    lfs: bool
    pointer_size: int

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        """The bytes in [start, end), streamed from disk for a Path source."""
        if isinstance(self.source, bytes):
            for pos in range(start, end, CHUNK):
                yield self.source[pos : min(pos + CHUNK, end)]
            return
        with self.source.open("rb") as f:
            f.seek(start)
            left = end - start
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise OSError(f"{self.source} shrank while being served")
                left -= len(chunk)
                yield chunk


def _read_all(source: bytes | Path) -> Iterator[bytes]:
    if isinstance(source, bytes):
        yield source
        return
    with source.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            yield chunk


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def hash_file(path: str, source: bytes | Path) -> HubFile:
    """Hash a file's content in one pass, as the hub does when it is pushed."""
    size = len(source) if isinstance(source, bytes) else source.stat().st_size
    sha256 = hashlib.sha256()
    git = hashlib.sha1(b"blob %d\0" % size)
    for chunk in _read_all(source):
        sha256.update(chunk)
        git.update(chunk)
    lfs = PurePosixPath(path).suffix.lower() in LFS_SUFFIXES or size > LFS_MIN_SIZE
    pointer = (
        "version https://git-lfs.github.com/spec/v1\n"
        f"oid sha256:{sha256.hexdigest()}\nsize {size}\n"
    ).encode()
    return HubFile(
        path=path,
        source=source,
        size=size,
        sha256=sha256.hexdigest(),
        blob_id=_git_sha1(pointer) if lfs else git.hexdigest(),
        lfs=lfs,
        pointer_size=len(pointer) if lfs else 0,
    )


@dataclass(frozen=True)
class _Commit:
    sha: str
    date: str
    files: dict[str, HubFile]


@dataclass
class _Repo:
    repo_id: str
    created: str
    license: str | None = None
    gated: bool = False
    private: bool = False
    token: str | None = None
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    commits: dict[str, _Commit] = field(default_factory=dict)

    def commit(self, revision: str) -> _Commit | None:
        revision = revision.removeprefix("refs/heads/")
        return self.commits.get(self.branches.get(revision, revision))


@dataclass
class _Fault:
    kind: Literal["cut", "corrupt", "slow", "whole"]
    filename: str
    value: int
    times: int


@dataclass
class _Failure:
    fragment: str
    status: int
    times: int
    method: str | None


@dataclass
class _Faults:
    """The faults that apply to one response."""

    cut: int | None = None
    corrupt: bool = False
    rate: int | None = None
    whole: bool = False  # ignore a Range request: 200 and the whole file


class _HttpError(Exception):
    def __init__(
        self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One `bytes=` range as [start, end), or None to send everything (no, several or bad ranges).

    Raises _HttpError(416) when the range starts past the end, as RFC 9110 asks.
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, dash, last = header[len("bytes=") :].strip().partition("-")
    try:
        if first:
            start = int(first)
            end = int(last) + 1 if last else size
        else:  # a suffix range: the last N bytes
            start, end = max(size - int(last), 0), size
    except ValueError:
        return None  # not a range: ignored, as RFC 9110 says
    if not dash or start < 0 or end <= start < size:
        return None
    if start >= size:
        raise _HttpError(416, None, "Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
    return start, min(end, size)


def _content_name(path: str) -> str | None:
    """The file a resolve or CDN path asks for, or None for other paths."""
    parts = urlsplit(path).path.split("/")[1:]
    if len(parts) >= 5 and parts[2] == "resolve" and parts[0] != "api":
        return unquote("/".join(parts[4:]))
    if len(parts) >= 3 and parts[0] == "lfs-files":
        return unquote("/".join(parts[2:]))
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: FakeHub, role: Literal["hub", "cdn"]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub
        self.role = role

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # a client hanging up is routine here, not a bug in the fake
        self.hub.errors.append(traceback.format_exc())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries a Content-Length
    timeout = 60  # an idle keep-alive connection does not hold a thread forever
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def setup(self) -> None:
        super().setup()
        self.server.hub._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.hub._closed(self.connection)

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def _handle(self) -> None:
        hub = self.server.hub
        recorded = {name: self.headers[name] for name in RECORDED_HEADERS if name in self.headers}
        hub._record((self.command, self.path, recorded))
        try:
            status = hub._take_failure(self.command, self.path)
            if status is not None:
                raise _HttpError(status, None, f"Injected failure (HTTP {status})")
            split = urlsplit(self.path)
            parts = split.path.split("/")[1:]
            if self.server.role == "cdn":
                self._cdn(parts)
            else:
                self._hub(parts, parse_qs(split.query))
        except _HttpError as err:
            self._error(err)

    # Routing.

    def _hub(self, parts: list[str], query: dict[str, list[str]]) -> None:
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id = f"{unquote(parts[2])}/{unquote(parts[3])}"
            rest = parts[4:]
            if not rest:
                return self._model_info(repo_id, "main", query)
            if rest[0] == "revision" and len(rest) >= 2:
                return self._model_info(repo_id, unquote("/".join(rest[1:])), query)
            if rest[0] == "tree" and len(rest) >= 2:
                inside = unquote("/".join(rest[2:])).strip("/")
                return self._tree(repo_id, unquote(rest[1]), inside, query)
        elif len(parts) >= 5 and parts[2] == "resolve":
            repo_id = f"{unquote(parts[0])}/{unquote(parts[1])}"
            return self._resolve(repo_id, unquote(parts[3]), unquote("/".join(parts[4:])))
        raise _HttpError(404, None, "Not Found")

    def _cdn(self, parts: list[str]) -> None:
        hub = self.server.hub
        if len(parts) < 3 or parts[0] != "lfs-files":
            raise _HttpError(404, None, "Not Found")
        file = hub._blobs.get(parts[1])
        if file is None:
            raise _HttpError(404, None, "Not Found")
        self._file(file, unquote("/".join(parts[2:])), {"ETag": f'"{file.sha256}"'}, "attachment")

    # Endpoints.

    def _open(self, repo_id: str, revision: str, *, content: bool) -> tuple[_Repo, _Commit]:
        """The repository and commit, or the error the hub gives this caller."""
        hub = self.server.hub
        repo = hub._repos.get(repo_id.lower())
        sent = self.headers.get("Authorization")
        allowed = repo is not None and repo.token is not None and sent == f"Bearer {repo.token}"
        if repo is None or (repo.private and not allowed):
            raise _HttpError(404 if sent else 401, "RepoNotFound", "Repository not found")
        if content and repo.gated and not allowed:
            if sent:
                message = (
                    f"Access to model {repo.repo_id} is restricted and you are not in the"
                    " authorized list."
                )
                raise _HttpError(403, "GatedRepo", message)
            message = (
                f"Access to model {repo.repo_id} is restricted. You must have access to it and"
                " be authenticated to access it. Please log in."
            )
            raise _HttpError(401, "GatedRepo", message)
        commit = repo.commit(revision)
        if commit is None:
            raise _HttpError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo, commit

    def _model_info(self, repo_id: str, revision: str, query: dict[str, list[str]]) -> None:
        repo, commit = self._open(repo_id, revision, content=False)
        blobs = query.get("blobs", ["false"])[-1].lower() == "true"
        siblings: list[dict[str, Any]] = []
        for file in commit.files.values():
            sibling: dict[str, Any] = {"rfilename": file.path}
            if blobs:
                sibling.update(size=file.size, blobId=file.blob_id)
                if file.lfs:
                    sibling["lfs"] = {
                        "sha256": file.sha256,
                        "size": file.size,
                        "pointerSize": file.pointer_size,
                    }
            siblings.append(sibling)
        tags = [] if repo.license is None else [f"license:{repo.license}"]
        if any(path.endswith(".gguf") for path in commit.files):
            tags.insert(0, "gguf")
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": repo.created,
            "private": repo.private,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": tags,
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(file.size for file in commit.files.values()),
        }
        if repo.license is not None:
            info["cardData"] = {"license": repo.license}
        self._json(info)

    def _tree(self, repo_id: str, revision: str, inside: str, query: dict[str, list[str]]) -> None:
        _, commit = self._open(repo_id, revision, content=False)
        recursive = query.get("recursive", ["false"])[-1].lower() == "true"
        prefix = f"{inside}/" if inside else ""
        folders: set[str] = set()
        entries: list[dict[str, Any]] = []
        for file in commit.files.values():
            if not file.path.startswith(prefix):
                continue
            below = file.path[len(prefix) :].split("/")
            for depth in range(1, len(below) if recursive else min(len(below), 2)):
                folders.add(prefix + "/".join(below[:depth]))
            if recursive or len(below) == 1:
                entry: dict[str, Any] = {
                    "type": "file",
                    "oid": file.blob_id,
                    "size": file.size,
                    "path": file.path,
                }
                if file.lfs:
                    entry["lfs"] = {
                        "oid": file.sha256,
                        "size": file.size,
                        "pointerSize": file.pointer_size,
                    }
                entries.append(entry)
        if inside and not entries and not folders:
            raise _HttpError(404, "EntryNotFound", f"{inside} does not exist on {revision}")
        entries += [
            {"type": "directory", "oid": _git_sha1(path.encode()), "size": 0, "path": path}
            for path in folders
        ]
        self._json(sorted(entries, key=lambda entry: str(entry["path"])))

    def _resolve(self, repo_id: str, revision: str, filename: str) -> None:
        hub = self.server.hub
        _, commit = self._open(repo_id, revision, content=True)
        file = commit.files.get(filename)
        if file is None:
            raise _HttpError(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit.sha})
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{file.blob_id}"'}
        if not file.lfs:
            return self._file(file, filename, headers, "inline")
        headers |= {
            "Location": f"{hub.cdn_url}/lfs-files/{file.sha256}/{quote(file.path)}",
            "X-Linked-Etag": f'"{file.sha256}"',
            "X-Linked-Size": str(file.size),
            "Content-Length": "0",
        }
        self._start(302, headers)

    # Responses.

    def _start(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _json(
        self, payload: object, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(payload).encode()
        self._start(
            status,
            {
                **(headers or {}),
                "Content-Type": "application/json; charset=utf-8",
                "Content-Length": str(len(body)),
            },
        )
        if self.command != "HEAD":
            self._write(body)

    def _error(self, err: _HttpError) -> None:
        # Header values must be latin-1; the body keeps the message as it is.
        header = err.message.encode("ascii", "replace").decode()
        headers = {**err.headers, "X-Error-Message": header}
        if err.code is not None:
            headers["X-Error-Code"] = err.code
        self._json({"error": err.message}, err.status, headers)

    def _file(self, file: HubFile, name: str, headers: dict[str, str], disposition: str) -> None:
        ranged = bool(self.headers.get("Range"))
        faults = self.server.hub._take_faults(name, ranged) if self.command != "HEAD" else _Faults()
        span = None if faults.whole else _parse_range(self.headers.get("Range"), file.size)
        start, end = span or (0, file.size)
        filename = quote(PurePosixPath(name).name)
        headers = {
            **headers,
            "Content-Type": "application/octet-stream",
            "Content-Length": str(end - start),
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"{disposition}; filename*=UTF-8''{filename}; "
            f'filename="{filename}";',
        }
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{file.size}"
        self._start(206 if span else 200, headers)
        if self.command == "HEAD":
            return
        if isinstance(file.source, Path) and faults in (_Faults(), _Faults(whole=True)):
            # Zero-copy, as real file servers and CDNs send: a Python loop here would take a
            # whole core and make client-side benchmarks measure this server instead.
            return self._sendfile(file.source, start, end)
        self._stream(file.chunks(start, end), faults)

    def _sendfile(self, source: Path, start: int, end: int) -> None:
        self.wfile.flush()
        sent = 0
        try:
            with source.open("rb") as f:
                sent = self.connection.sendfile(f, offset=start, count=end - start)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        finally:
            self.server.hub._count(sent)

    def _stream(self, chunks: Iterable[bytes], faults: _Faults) -> None:
        hub = self.server.hub
        piece = CHUNK if faults.rate is None else max(1, min(CHUNK, faults.rate // 20))
        began = time.monotonic()
        sent = 0
        for chunk in chunks:
            for at in range(0, len(chunk), piece):
                part = chunk[at : at + piece]
                if faults.corrupt:
                    part = part.translate(_FLIP)
                if faults.cut is not None and sent + len(part) > faults.cut:
                    part = part[: faults.cut - sent]
                    if part and self._write(part):
                        hub._count(len(part))
                    return self._abort()
                if not self._write(part):
                    return
                sent += len(part)
                hub._count(len(part))
                if faults.rate is not None:
                    delay = began + sent / faults.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)

    def _write(self, data: bytes) -> bool:
        """Send bytes; False (and close) if the client has gone."""
        try:
            self.wfile.write(data)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
            return False
        return True

    def _abort(self) -> None:
        """Drop the connection mid-body, as a network failure would."""
        self.close_connection = True
        with suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


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
