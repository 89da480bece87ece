"""A local server that speaks the part of ModelScope's HTTP API its Python client uses for reads.

The real `modelscope` client is pointed at it with MODELSCOPE_ENDPOINT=`FakeModelScope.url`.
Routes (legacy `/api/v1` surface, `{"Code", "Data", "Message", "Success"}` envelope, and the
OpenAPI `/openapi/v1` surface, `{"success", "data"}` envelope):

    GET /api/v1/models/{owner}/{name}/revisions        branches and tags (RevisionMap)
    GET /api/v1/models/{owner}/{name}/repo/files       the file tree: Path, Size, Sha256, Type
    GET /api/v1/models/{owner}/{name}/repo?FilePath=   a file's bytes; honours Range (206 / 416)
    GET /api/v1/models/{owner}/{name}                  legacy model info (License, Visibility)
    GET /openapi/v1/models/{owner}/{name}              OpenAPI model info (license, private)
    GET /api/v1/repos/internalAccelerationInfo         404: not inside Alibaba Cloud

A private repository answers 401 without credentials and 403 with the wrong ones; the client
sends its token both as `Authorization: Bearer` and as the `m_session_id` cookie. Files given as
paths are streamed from disk, so large files cost no memory. Faults: `cut_after` closes the
connection mid-body, `corrupt` flips bytes, `fail_status` answers an HTTP error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

CHUNK = 256 * 1024
COMMIT = "c0ffee" * 6 + "beef"  # one 40-hex commit id for every file of every repo


@dataclass
class FakeFile:
    path: str
    size: int
    sha256: str
    data: bytes | None = None  # in memory, or
    source: Path | None = None  # streamed from disk

    def read(self, start: int, end: int) -> Any:
        """Yield the bytes [start, end) in chunks."""
        if self.data is not None:
            for pos in range(start, end, CHUNK):
                yield self.data[pos : min(pos + CHUNK, end)]
            return
        assert self.source is not None
        with open(self.source, "rb") as fh:
            fh.seek(start)
            left = end - start
            while left > 0:
                block = fh.read(min(CHUNK, left))
                if not block:
                    return
                left -= len(block)
                yield block


@dataclass
class FakeRepo:
    model_id: str
    files: dict[str, FakeFile]
    license: str | None = None
    private: bool = False
    token: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class Request:
    """One request as the server saw it (logged on arrival; `status` set once answered)."""

    method: str
    path: str
    query: dict[str, str]
    range: str | None
    authorization: str | None
    cookie_token: str | None
    status: int = 0


@dataclass
class _Fault:
    kind: str  # "cut", "corrupt", "status"
    match: str
    times: int
    value: int = 0  # bytes before the cut, or the HTTP status


class FakeModelScope:
    """A ModelScope look-alike on 127.0.0.1 (ephemeral port) in a background thread."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[Request] = []
        self.bytes_sent = 0  # file body bytes written to clients
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> FakeModelScope:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- content ---------------------------------------------------------------------------

    def add_repo(
        self,
        model_id: str,
        files: dict[str, bytes | Path],
        *,
        license: str | None = None,
        private: bool = False,
        token: str | None = None,
    ) -> None:
        """Serve `model_id` with `files` (path in the repo -> bytes, or a file to stream)."""
        entries = {}
        for path, content in files.items():
            if isinstance(content, bytes):
                sha = hashlib.sha256(content).hexdigest()
                entries[path] = FakeFile(path, len(content), sha, data=content)
            else:
                hasher = hashlib.sha256()
                with open(content, "rb") as fh:
                    while block := fh.read(4 * 1024 * 1024):
                        hasher.update(block)
                size = content.stat().st_size
                entries[path] = FakeFile(path, size, hasher.hexdigest(), source=content)
        self.repos[model_id] = FakeRepo(model_id, entries, license, private, token)

    # -- faults ----------------------------------------------------------------------------

    def cut_after(self, filename: str, n_bytes: int, times: int = 1) -> None:
        """The next `times` downloads of `filename` close the connection after `n_bytes`."""
        self._faults.append(_Fault("cut", filename, times, n_bytes))

    def corrupt(self, filename: str, times: int = 1) -> None:
        """The next `times` downloads of `filename` send bytes that differ from the file."""
        self._faults.append(_Fault("corrupt", filename, times))

    def fail_status(self, path_fragment: str, status: int, times: int = 1) -> None:
        """The next `times` requests whose path or query contains `path_fragment` get `status`."""
        self._faults.append(_Fault("status", path_fragment, times, status))

    def _take(self, kind: str, matches: Any) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind == kind and fault.times > 0 and matches(fault.match):
                    fault.times -= 1
                    return fault
        return None

    # -- queries for tests -----------------------------------------------------------------

    def downloads(self, filename: str) -> list[Request]:
        """The file requests for `filename` (its path in the repo or its base name)."""
        return [
            r
            for r in self.requests
            if r.path.endswith("/repo") and _same_file(r.query.get("FilePath", ""), filename)
        ]

    def _log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _sent(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n


def _same_file(path: str, filename: str) -> bool:
    return path == filename or path.rsplit("/", 1)[-1] == filename


class _Handler(BaseHTTPRequestHandler):
    hub: FakeModelScope
    _request: Request
    protocol_version = "HTTP/1.1"
    timeout = 10

    def log_message(self, *_: Any) -> None:  # keep pytest output quiet
        return None

    # -- plumbing --------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def _dispatch(self, head: bool) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        morsel = cookie.get("m_session_id")
        request = Request(
            self.command,
            path,
            query,
            self.headers.get("Range"),
            self.headers.get("Authorization"),
            morsel.value if morsel is not None else None,
        )
        self._request = request
        self.hub._log(request)
        self._route(path, query, request, head)

    def send_response(self, code: int, message: str | None = None) -> None:
        self._request.status = code
        super().send_response(code, message)

    def _json(self, status: int, body: dict[str, Any]) -> int:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return status

    def _legacy(self, data: Any) -> int:
        return self._json(200, {"Code": 200, "Data": data, "Message": "success", "Success": True})

    def _error(self, status: int, message: str) -> int:
        body = {"Code": status, "Message": message, "Success": False, "RequestId": "fake"}
        return self._json(status, body)

    # -- routes ----------------------------------------------------------------------------

    def _route(self, path: str, query: dict[str, str], request: Request, head: bool) -> int:
        fault = self.hub._take("status", lambda m: m in self.path or m in path)
        if fault is not None:
            return self._error(fault.value, f"injected HTTP {fault.value}")
        if path == "/api/v1/repos/internalAccelerationInfo":
            return self._error(404, "not inside Alibaba Cloud")
        openapi = path.startswith("/openapi/v1/models/")
        prefix = "/openapi/v1/models/" if openapi else "/api/v1/models/"
        if not path.startswith(prefix):
            return self._error(404, f"no route for {path}")
        parts = path[len(prefix) :].strip("/").split("/")
        if len(parts) < 2:
            return self._error(404, f"no route for {path}")
        repo = self.hub.repos.get(f"{parts[0]}/{parts[1]}")
        if repo is None:
            return self._error(404, "模型不存在")
        denied = self._denied(repo, request)
        if denied:
            return denied
        rest = parts[2:]
        if openapi:
            if rest:
                return self._error(404, f"no route for {path}")
            return self._json(200, {"success": True, "data": self._openapi_info(repo)})
        if not rest:
            return self._legacy(self._legacy_info(repo))
        if rest == ["revisions"]:
            return self._legacy(self._revisions(repo))
        revision = query.get("Revision", "master")
        if revision not in ("master", COMMIT, *repo.tags):
            return self._error(404, f"revision {revision} does not exist")
        if rest == ["repo", "files"]:
            return self._legacy({"Files": self._tree(repo)})
        if rest == ["repo"]:
            return self._file(repo, query.get("FilePath", ""), request, head)
        return self._error(404, f"no route for {path}")

    def _denied(self, repo: FakeRepo, request: Request) -> int:
        if not repo.private:
            return 0
        given = request.cookie_token
        if request.authorization and request.authorization.startswith("Bearer "):
            given = request.authorization.removeprefix("Bearer ")
        if not given:
            return self._error(401, "user not logged in")
        if given != repo.token:
            return self._error(403, "access denied")
        return 0

    def _openapi_info(self, repo: FakeRepo) -> dict[str, Any]:
        owner, name = repo.model_id.split("/")
        return {
            "id": repo.model_id,
            "owner": owner,
            "name": name,
            "license": repo.license,
            "private": repo.private,
            "gated": False,
            "downloads": 0,
            "likes": 0,
        }

    def _legacy_info(self, repo: FakeRepo) -> dict[str, Any]:
        owner, name = repo.model_id.split("/")
        return {
            "Id": 1,
            "Path": owner,
            "Name": name,
            "License": repo.license,
            "Visibility": 1 if repo.private else 5,
            "Downloads": 0,
            "Likes": 0,
        }

    def _revisions(self, repo: FakeRepo) -> dict[str, Any]:
        created = int(time.time()) - 3600
        return {
            "RevisionMap": {
                "Branches": [{"Revision": "master", "CreatedAt": created, "CommitId": COMMIT}],
                "Tags": [{"Revision": t, "CreatedAt": created} for t in repo.tags],
            }
        }

    def _tree(self, repo: FakeRepo) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for f in repo.files.values():
            parts = f.path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                folders.add("/".join(parts[:i]))
            entries.append(
                {
                    "Name": f.path.rsplit("/", 1)[-1],
                    "Path": f.path,
                    "Revision": COMMIT,
                    "Sha256": f.sha256,
                    "Size": f.size,
                    "Type": "blob",
                    "IsLFS": f.size > 1024 * 1024,
                    "Mode": "100644",
                    "CommittedDate": int(time.time()) - 3600,
                }
            )
        for folder in sorted(folders):
            entries.append(
                {
                    "Name": folder.rsplit("/", 1)[-1],
                    "Path": folder,
                    "Revision": COMMIT,
                    "Sha256": "",
                    "Size": 0,
                    "Type": "tree",
                }
            )
        return sorted(entries, key=lambda e: str(e["Path"]))

    def _file(self, repo: FakeRepo, file_path: str, request: Request, head: bool) -> int:
        f = repo.files.get(file_path)
        if f is None:
            return self._error(404, f"file {file_path} does not exist")
        start, end = 0, f.size
        status = 200
        if request.range:
            spec = request.range.removeprefix("bytes=").split(",")[0]
            first, _, last = spec.partition("-")
            start = int(first) if first else 0
            end = min(int(last) + 1, f.size) if last else f.size
            if start >= f.size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{f.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return 416
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{f.size}")
        self.end_headers()
        if head:
            return status
        matches = lambda m: _same_file(file_path, m)  # noqa: E731
        cut = self.hub._take("cut", matches)
        corrupt = self.hub._take("corrupt", matches)
        budget = cut.value if cut is not None else None
        for block in f.read(start, end):
            if corrupt is not None:
                block = bytes(b ^ 0xFF for b in block[:64]) + block[64:]
                corrupt = None
            if budget is not None and len(block) >= budget:
                block = block[:budget]
                self._write(block)
                self._cut()
                return status
            self._write(block)
            if budget is not None:
                budget -= len(block)
        return status

    def _write(self, block: bytes) -> None:
        self.wfile.write(block)
        self.hub._sent(len(block))

    def _cut(self) -> None:
        """Drop the connection mid-body, as a network failure would."""
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
