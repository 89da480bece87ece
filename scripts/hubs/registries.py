"""Registries for the tests of `pull`, `push` and `cp` (tests/integration/sources/test_registry.py).

`DockerRegistry`: the real thing, the distribution project's registry server as Debian packages
it (`docker-registry`; scripts/system-deps installs it), on a loopback port with its files in a
temporary folder; with `users`, behind htpasswd's Basic auth.

`FakeOllamaRegistry`: a server that answers as registry.ollama.ai does where it differs from
the distribution server (read from Ollama's server/download.go and images.go, whose client it
must satisfy): a blob's GET is a 307 to object storage on another host (`localhost` here, the
registry being `127.0.0.1`), whose signed URL carries no Authorization; manifests want a
bearer token from the registry's token service when `token` is set (which wants the Basic
`login` when that is set); errors are OCI's `{"errors": [...]}`; a 429 with Retry-After when
`rate_limited` is set; `requests` records each one the registry got. It takes pushes as the
distribution server does (HEAD, POST for an upload's location, PUT of the blob with its
digest, PUT of the manifest), into `blobs` and `models`. The storage serves
Range requests (206), records every range it sent and how many connections were open at once,
and does what a test asks to go wrong: `cut_after` bytes, an `endless` body, `loop` redirects.

Hostile modes (issue 76): a `bomb` (an answer, the manifest, its 404 or the token, whose few KB
inflate through `encoding`, say `gzip, gzip`, to that many bytes), a `realm` elsewhere than its
own token service, what a 429 says in `retry_after` (the registry's and, `storage_limited`
times, the storage's), and a `stall` that holds manifest requests until it is set.

`Listener`: a TCP port that answers every connection with the same bytes (a service that is
not HTTP) and records what each sent first.

`artifact` builds the manifests both formats push: Ollama's (as `ollama push` writes) and
Docker Model Runner's (`application/vnd.docker.ai.*`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
import warnings
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from hubs import free_port

OLLAMA = "application/vnd.ollama.image."
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MILLION = b"a manifest of a million layers"  # FakeOllamaRegistry.models: streamed as such


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- the real registry ---------------------------------------------------------------------------


def docker_registry_binary() -> str | None:
    return shutil.which("docker-registry") or shutil.which("registry")


class DockerRegistry:
    """`docker-registry serve` on 127.0.0.1 (see the module docstring)."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None) -> None:
        binary = docker_registry_binary()
        assert binary is not None
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        auth = ""
        if users:
            lines = [f"{user}:{_bcrypt(password)}" for user, password in users.items()]
            (folder / "htpasswd").write_text("\n".join(lines) + "\n")
            auth = f"auth: {{htpasswd: {{realm: tests, path: {folder / 'htpasswd'}}}}}\n"
        config = folder / "config.yml"
        config.write_text(
            "version: 0.1\nlog: {level: error}\n"
            f"storage:\n  filesystem: {{rootdirectory: {folder / 'data'}}}\n"
            "  delete: {enabled: true}\n"
            f"http: {{addr: {self.host}}}\n{auth}"
        )
        self.log = (folder / "registry.log").open("wb")
        self.proc = subprocess.Popen([binary, "serve", str(config)], stdout=self.log,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/v2/", timeout=2)
                return
            except urllib.error.HTTPError:
                return  # 401: up, behind its login
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.close()
        said = (folder / "registry.log").read_text()
        raise RuntimeError(f"docker-registry did not start: {said}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def upload(
        self,
        repository: str,
        tag: str,
        config: tuple[str, bytes],
        layers: list[tuple[str, bytes]],
        media_type: str = OCI_MANIFEST,
    ) -> None:
        """Put blobs and a manifest into the registry with plain HTTP, as a pusher would."""
        manifest = artifact(config, layers, media_type)
        for _, data in [config, *layers]:
            request = urllib.request.Request(
                f"{self.url}/v2/{repository}/blobs/uploads/", method="POST", data=b""
            )
            with urllib.request.urlopen(request) as response:
                location = response.headers["Location"]
            sep = "&" if "?" in location else "?"
            put = urllib.request.Request(
                f"{location}{sep}digest={digest_of(data)}", method="PUT", data=data,
                headers={"Content-Type": "application/octet-stream"},
            )  # fmt: skip
            urllib.request.urlopen(put).close()
        put = urllib.request.Request(
            f"{self.url}/v2/{repository}/manifests/{tag}", method="PUT", data=manifest,
            headers={"Content-Type": media_type},
        )  # fmt: skip
        urllib.request.urlopen(put).close()

    def manifest(self, repository: str, tag: str) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}/v2/{repository}/manifests/{tag}",
            headers={"Accept": f"{DOCKER_MANIFEST}, {OCI_MANIFEST}"},
        )
        with urllib.request.urlopen(request) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def blob(self, repository: str, digest: str) -> bytes:
        with urllib.request.urlopen(f"{self.url}/v2/{repository}/blobs/{digest}") as response:
            return response.read()  # type: ignore[no-any-return]


def _bcrypt(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # Python 3.11's; the registry takes bcrypt only

        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


def artifact(config: tuple[str, bytes], layers: list[tuple[str, bytes]], media_type: str) -> bytes:
    """A manifest naming `config` and `layers` ((media type, bytes) each)."""
    body = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config[0], "digest": digest_of(config[1]), "size": len(config[1])},
        "layers": [
            {"mediaType": media, "digest": digest_of(data), "size": len(data)}
            for media, data in layers
        ],
    }
    return json.dumps(body, indent=2).encode()


def docker_config(gguf: bytes, context_size: int) -> bytes:
    """Docker Model Runner's model config (application/vnd.docker.ai.model.config.v0.1+json)."""
    return json.dumps({
        "config": {"format": "gguf", "quantization": "F32", "parameters": "0.13M",
                   "architecture": "llama", "size": "499KiB", "context_size": context_size},
        "descriptor": {"created": "2026-11-27T00:00:00Z"},
        "rootfs": {"type": "rootfs", "diff_ids": [digest_of(gguf)]},
    }).encode()  # fmt: skip


# -- a registry as Ollama's behaves ---------------------------------------------------------------


@dataclass
class FakeOllamaRegistry:
    """See the module docstring. `models[(repository, tag)]` = manifest bytes; `blobs`."""

    token: str | None = None
    login: tuple[str, str] | None = None  # what the token service wants (Basic), if anything
    models: dict[tuple[str, str], bytes] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    rate_limited: int = 0  # manifest requests answered 429 before one is served
    cut_after: int | None = None  # the storage drops each connection after this many bytes
    endless: bool = False  # the storage sends bytes for ever (no Content-Length)
    loop: bool = False  # a blob's GET redirects to itself
    redirect_to: str | None = None  # a blob's GET redirects there instead of the storage
    ranges: list[tuple[str, int, int]] = field(default_factory=list)  # what the storage sent
    storage_auth: list[str] = field(default_factory=list)  # Authorization headers it saw
    blob_bytes: int = 0
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, auth
    open_now: int = 0
    most_open: int = 0
    errors: list[str] = field(default_factory=list)
    bomb: int = 0  # the answer `bomb_in` names inflates to this many bytes ...
    bomb_in: str = "manifest"  # "manifest", "error" (the manifest's 404) or "token"
    encoding: str = "gzip, gzip"  # ... through these codings, applied in this order
    realm: str | None = None  # the token service its challenge names (else its own /token)
    retry_after: str = "1"  # what a 429 says (the registry's and the storage's)
    storage_limited: int = 0  # blob requests the storage answers 429 before it serves one
    stall: threading.Event | None = None  # manifest requests wait for it (60 s at most)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.registry = _Server(self, "registry", "127.0.0.1")
        self.storage = _Server(self, "storage", "localhost")
        self.url = f"http://127.0.0.1:{self.registry.server_address[1]}"
        self.storage_url = f"http://localhost:{self.storage.server_address[1]}"
        for server in (self.registry, self.storage):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self) -> None:
        for server in (self.registry, self.storage):
            server.shutdown()
            server.server_close()

    def sent(self, data: bytes) -> list[tuple[int, int]]:
        """The ranges of `data`'s blob the storage sent, past the one-byte probes."""
        return [(s, e) for d, s, e in self.ranges if d == digest_of(data) and e > s]

    def add(
        self,
        repository: str,
        tag: str,
        config: tuple[str, bytes],
        layers: list[tuple[str, bytes]],
        media_type: str = DOCKER_MANIFEST,
    ) -> bytes:
        for _, data in [config, *layers]:
            self.blobs[digest_of(data)] = data
        manifest = artifact(config, layers, media_type)
        self.models[(repository, tag)] = manifest
        return manifest


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeOllamaRegistry, role: str, host: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake, self.role, self.host = fake, role, host

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError):
            self.fake.errors.append(traceback.format_exc())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        if self.server.role == "storage":
            self._storage()
        else:
            self._registry()

    do_HEAD = do_GET

    def do_POST(self) -> None:
        self._registry()

    def do_PUT(self) -> None:
        self._registry()

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, **headers: str) -> None:
        body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
        self._send(status, body, {"Content-Type": "application/json", **headers})

    def _registry(self) -> None:
        fake = self.server.fake
        split = urlsplit(self.path)
        path = split.path
        auth = self.headers.get("Authorization", "")
        with fake.lock:
            fake.requests.append((self.command, path, auth))
        if path == "/token":
            if fake.login and auth != "Basic " + basic(*fake.login):
                self._error(401, "UNAUTHORIZED", "wrong login")
                return
            if fake.bomb and fake.bomb_in == "token":
                self._bomb(200)
                return
            self._send(200, json.dumps({"token": fake.token}).encode())
            return
        parts = path.split("/")
        if len(parts) < 5 or parts[1] != "v2":
            self._error(404, "NOT_FOUND", "no route")
            return
        repository, kind, ref = "/".join(parts[2:-2]), parts[-2], parts[-1]
        if fake.token and auth != f"Bearer {fake.token}":
            realm = fake.realm or f"{fake.url}/token"
            challenge = (f'Bearer realm="{realm}",service="ollama.com",'
                         f'scope="repository:{repository}:pull"')  # fmt: skip
            self._error(401, "UNAUTHORIZED", "authentication required",
                        **{"WWW-Authenticate": challenge})  # fmt: skip
            return
        if self.command in ("POST", "PUT"):
            self._take_push(path, repository, kind, ref, split.query)
            return
        if kind == "manifests":
            if fake.stall is not None:
                fake.stall.wait(60)
            with fake.lock:
                limited = fake.rate_limited > 0
                fake.rate_limited -= 1 if limited else 0
            if limited:
                self._error(429, "TOOMANYREQUESTS", "slow down",
                            **{"Retry-After": fake.retry_after})  # fmt: skip
                return
            if fake.bomb and fake.bomb_in in ("manifest", "error"):
                self._bomb(200 if fake.bomb_in == "manifest" else 404)
                return
            manifest = fake.models.get((repository, ref))
            if manifest == MILLION:
                self._million_layers()
                return
            if manifest is None:
                self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
                return
            try:
                media = json.loads(manifest).get("mediaType", DOCKER_MANIFEST)
            except ValueError:  # a hostile registry's "manifest"
                media = DOCKER_MANIFEST
            self._send(200, manifest, {"Content-Type": media})
        elif kind == "blobs":
            if ref not in fake.blobs:
                self._error(404, "BLOB_UNKNOWN", "blob unknown")
                return
            if fake.loop:
                self._send(307, headers={"Location": self.path})
            elif fake.redirect_to:
                self._send(307, headers={"Location": fake.redirect_to})
            else:
                signed = f"{fake.storage_url}/blobs/{ref}?sig=abc"
                self._send(307, headers={"Location": signed})
        else:
            self._error(404, "NOT_FOUND", "no route")

    def _take_push(self, path: str, repository: str, kind: str, ref: str, query: str) -> None:
        """A push's requests, as the distribution server answers them."""
        fake = self.server.fake
        size = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(size) if size else b""
        if self.command == "POST" and path.endswith("/blobs/uploads/"):
            self._send(202, headers={"Location": f"{path}{len(fake.requests)}"})
        elif self.command == "PUT" and "/blobs/uploads/" in path:
            if [digest_of(data)] != parse_qs(query).get("digest"):
                self._error(400, "DIGEST_INVALID", "digest did not match")
                return
            fake.blobs[digest_of(data)] = data
            self._send(201)
        elif self.command == "PUT" and kind == "manifests":
            fake.models[(repository, ref)] = data
            self._send(201)
        else:
            self._error(404, "NOT_FOUND", "no route")

    def _bomb(self, status: int) -> None:
        """The hostile answer: `fake.bomb` spaces, encoded as `fake.encoding` says."""
        fake = self.server.fake
        body = encoded(fake.bomb, tuple(c.strip() for c in fake.encoding.split(",")))
        self._send(status, body, {"Content-Type": "application/json",
                                  "Content-Encoding": fake.encoding})  # fmt: skip

    def _million_layers(self) -> None:
        """A manifest of a million layers (about 130 MB), streamed with no Content-Length."""
        self.send_response(200)
        self.send_header("Content-Type", DOCKER_MANIFEST)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        layer = {"mediaType": OLLAMA + "license", "digest": "sha256:" + "0" * 64, "size": 1}
        head = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST})[:-1] + ', "layers": ['

        with suppress_disconnect():
            self.wfile.write(head.encode())
            chunk = (",".join([json.dumps(layer)] * 1000) + ",").encode()
            for _ in range(1000):
                self.wfile.write(chunk)
            self.wfile.write(b"{}]}")

    def _storage(self) -> None:
        fake = self.server.fake
        digest = urlsplit(self.path).path.rsplit("/", 1)[-1]
        data = fake.blobs.get(digest)
        if data is None:
            self._send(404, b"<Error>NoSuchKey</Error>")
            return
        with fake.lock:
            limited = fake.storage_limited > 0 and self.headers.get("Range") != "bytes=0-0"
            fake.storage_limited -= 1 if limited else 0
        if limited:
            self._send(429, b"<Error>SlowDown</Error>", {"Retry-After": fake.retry_after})
            return
        with fake.lock:
            fake.open_now += 1
            fake.most_open = max(fake.most_open, fake.open_now)
            if self.headers.get("Authorization"):
                fake.storage_auth.append(self.headers["Authorization"])
        try:
            self._serve_bytes(fake, digest, data)
        finally:
            with fake.lock:
                fake.open_now -= 1

    def _serve_bytes(self, fake: FakeOllamaRegistry, digest: str, data: bytes) -> None:
        start, end = 0, len(data) - 1
        wanted = self.headers.get("Range", "")
        ranged = wanted.startswith("bytes=")
        if ranged:
            first, _, last = wanted.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        body = data[start : end + 1]
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        if fake.endless:
            self.send_header("Connection", "close")
            self.end_headers()
            with suppress_disconnect():
                while True:
                    self.wfile.write(b"\0" * 65536)
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fake.cut_after is not None:
            body = body[: fake.cut_after]
            self.close_connection = True
        time.sleep(0.01)  # a piece takes a moment: the connections overlap
        with suppress_disconnect():
            self.wfile.write(body)
            with fake.lock:
                fake.ranges.append((digest, start, start + len(body) - 1))
                fake.blob_bytes += len(body)


class suppress_disconnect:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        return kind is not None and issubclass(kind, ConnectionError | TimeoutError)


@functools.lru_cache(maxsize=8)
def encoded(size: int, codings: tuple[str, ...]) -> bytes:
    """`size` spaces compressed by each of `codings` in turn (gzip or deflate), made a MB at a
    time: 256 MB through `gzip, gzip` is 590 bytes."""
    layers = [zlib.compressobj(9, zlib.DEFLATED, 31 if c in ("gzip", "x-gzip") else 15)
              for c in codings]  # fmt: skip
    out: list[bytes] = []

    def feed(depth: int, data: bytes) -> None:
        if depth == len(layers):
            out.append(data)
        elif data:
            feed(depth + 1, layers[depth].compress(data))

    block = b" " * (1 << 20)
    for start in range(0, size, len(block)):
        feed(0, block[: size - start])
    for depth, layer in enumerate(layers):
        feed(depth + 1, layer.flush())
    return b"".join(out)


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


class Listener:
    """A TCP port on `host` that answers each connection with `reply` and closes it (a service
    that is not HTTP); `received` holds what each connection sent first."""

    def __init__(self, host: str = "127.0.0.1", reply: bytes = b"SSH-2.0-OpenSSH_9.6\r\n") -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.host = f"{host}:{self.sock.getsockname()[1]}"
        self.reply = reply
        self.received: list[bytes] = []
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:  # the timeout: look at `closed` again
                continue
            with conn:
                conn.settimeout(2)
                try:
                    self.received.append(conn.recv(65536))
                    conn.sendall(self.reply)
                except OSError:
                    self.received.append(b"")

    def close(self) -> None:
        self.closed.set()
        self.thread.join(5)
        self.sock.close()
