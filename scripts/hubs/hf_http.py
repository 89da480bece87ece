"""The fake Hugging Face Hub's HTTP side (hubs.hfhub): its routes as huggingface_hub reads
them, ranges, errors with the hub's headers, and the CDN's redirects."""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import time
import traceback
from collections.abc import Iterable
from contextlib import suppress
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

from hubs.hf_repos import (
    _FLIP,
    CHUNK,
    RECORDED_HEADERS,
    HubFile,
    _Commit,
    _Faults,
    _git_sha1,
    _Repo,
)


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

    # `hub`: the FakeHub (hubs.hfhub) that starts this server and holds its repositories.
    def __init__(self, hub: Any, role: Literal["hub", "cdn"]) -> None:
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
