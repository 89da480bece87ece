"""Safe defaults of the server: Host and Origin checks, the API key, body limits, error shapes.

Ollama's CVE history is the list: DNS rebinding (CVE-2024-28224) is refused by the Host check
when bound to loopback, browsers from other origins by CORS, oversized bodies with 413, and no
error ever carries a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from localrun.scheduler import RunningModel, Scheduler
from localrun.server.http.security import host_allowed, origin_allowed
from localrun.store.local import Store

from support.cli import CLI, assert_one_line_error
from support.server import LiveServer, add_model

pytestmark = pytest.mark.server

KEY = "s3cret-key"
LIMIT = 64 * 1024
AUTH = {"Authorization": f"Bearer {KEY}"}


class Broken(Scheduler):
    """A scheduler with a bug in it: the server must answer 500 and stay up."""

    def running(self) -> list[RunningModel]:
        raise RuntimeError("boom")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Store:
    store = Store(tmp_path_factory.mktemp("secure") / "models")
    add_model(store, "a", tiny_model)
    return store


@pytest.fixture(scope="module")
def locked(store: Store) -> Iterator[LiveServer]:
    """Bound to loopback, with an API key and a small body limit."""
    scheduler = Scheduler(store, backend="fake", backend_options={"replies": ["ok"]})
    server = LiveServer(store, scheduler, api_key=KEY, max_request_bytes=LIMIT)
    yield server
    server.close()


@pytest.fixture(scope="module")
def open_server(store: Store) -> Iterator[LiveServer]:
    """As if bound to every interface (no Host check), with no key, and a bug in /api/ps."""
    server = LiveServer(store, Broken(store, backend="fake"), host="0.0.0.0")
    yield server
    server.close()


def test_host_and_origin_rules() -> None:
    for ok in ("localhost", "localhost:11435", "127.0.0.1:80", "127.9.9.9", "[::1]:8080",
               "app.localhost", "LOCALHOST.", ""):  # fmt: skip
        assert host_allowed(ok, "127.0.0.1"), ok
    for bad in ("evil.example", "evil.example:11435", "127.0.0.1.evil.example", "10.0.0.1",
                "[::2]", "localhost.evil.example", "[::1]evil.example", "[::1]:80evil",
                "[[::1]", "[[::1]]", "localhost:evil", "127.0.0.1]"):  # fmt: skip
        assert not host_allowed(bad, "127.0.0.1"), bad
    assert host_allowed("myhost:11435", "myhost")
    origins = ("http://localhost:*", "https://app.example")
    assert origin_allowed("http://localhost:5173", origins)
    assert origin_allowed("http://localhost", origins)
    assert origin_allowed("https://app.example", origins)
    assert not origin_allowed("http://localhost.evil.example", origins)
    assert not origin_allowed("http://localhost:80@evil", origins)
    assert not origin_allowed("https://app.example.evil", origins)
    assert not origin_allowed("null", origins)


def test_dns_rebinding_is_refused(locked: LiveServer) -> None:
    for path, dialect in (("/api/tags", "ollama"), ("/v1/models", "openai")):
        r = httpx.get(locked.url + path, headers={**AUTH, "Host": "attacker.example"})
        assert r.status_code == 403
        error = r.json()["error"]
        assert isinstance(error, str if dialect == "ollama" else dict)
    for host in ("localhost:1234", "127.0.0.1", "[::1]:99"):
        assert httpx.get(locked.url + "/api/tags", headers={**AUTH, "Host": host}).is_success


def test_text_after_a_bracketed_host_is_refused(locked: LiveServer) -> None:
    # `[::1]evil.example` once passed as ::1: the text after `]` was ignored.
    for host in ("[::1]evil.example", "[::1]evil.example:11435", "[::1]:1234evil"):
        r = httpx.get(locked.url + "/api/tags", headers={**AUTH, "Host": host})
        assert r.status_code == 403 and r.json()["code"] == "forbidden", host


def test_bound_beyond_loopback_skips_the_host_check(open_server: LiveServer) -> None:
    r = httpx.get(open_server.url + "/api/tags", headers={"Host": "server.lan:11435"})
    assert r.status_code == 200


def test_only_a_loopback_server_says_where_its_store_is(
    locked: LiveServer, open_server: LiveServer, store: Store
) -> None:
    """/api/version names the store a loopback-only server answers from (a `localrun` told
    "not found" says which store answered); one others can reach keeps its paths to itself."""
    mine = httpx.get(locked.url + "/api/version", headers=AUTH).json()
    assert mine["localrun_store"] == str(store.root)
    theirs = httpx.get(open_server.url + "/api/version").json()
    assert "localrun_store" not in theirs and theirs["localrun_version"]


def test_cors(locked: LiveServer) -> None:
    page = {"Origin": "http://localhost:5173"}
    r = httpx.get(locked.url + "/api/tags", headers={**AUTH, **page})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == page["Origin"]
    preflight = httpx.options(
        locked.url + "/v1/chat/completions",
        headers={
            **page,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    assert "POST" in preflight.headers["access-control-allow-methods"]
    evil = {"Origin": "https://evil.example"}
    assert httpx.get(locked.url + "/api/tags", headers={**AUTH, **evil}).status_code == 403
    refused = httpx.options(
        locked.url + "/api/chat", headers={**evil, "Access-Control-Request-Method": "POST"}
    )
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers


def test_api_key(locked: LiveServer) -> None:
    assert httpx.get(locked.url + "/").status_code == 200  # the health check stays open
    missing = httpx.get(locked.url + "/api/tags")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["code"] == "unauthorized"
    wrong = httpx.get(locked.url + "/api/tags", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert httpx.get(locked.url + "/api/tags", headers=AUTH).status_code == 200

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=locked.url + "/v1", api_key="nope", max_retries=0).models.list()
    ai = openai.OpenAI(base_url=locked.url + "/v1", api_key=KEY, max_retries=0)
    reply = ai.chat.completions.create(model="a", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "ok"
    oc = ollama.Client(host=locked.url, headers=AUTH)
    assert oc.chat("a", [{"role": "user", "content": "hi"}]).message.content == "ok"
    with pytest.raises(ollama.ResponseError) as denied:
        ollama.Client(host=locked.url).list()
    assert denied.value.status_code == 401


def test_body_limit(locked: LiveServer) -> None:
    big: dict[str, Any] = {"model": "a", "messages": [{"role": "user", "content": "x" * LIMIT}]}
    r = httpx.post(locked.url + "/api/chat", json=big, headers=AUTH)
    assert r.status_code == 413 and r.json()["code"] == "request_too_large"
    r = httpx.post(locked.url + "/v1/chat/completions", json=big, headers=AUTH)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"model": "a", "prompt": "'
        for _ in range(LIMIT // 1024 + 1):
            yield b"y" * 1024
        yield b'"}'

    r = httpx.post(locked.url + "/api/generate", content=chunks(), headers=AUTH)
    assert r.status_code == 413
    # Blob uploads are exempt: they stream to disk.
    import hashlib

    data = b"z" * (LIMIT * 3)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = httpx.post(f"{locked.url}/api/blobs/{digest}", content=data, headers=AUTH)
    assert r.status_code == 201
    assert httpx.get(locked.url + "/api/version", headers=AUTH).status_code == 200


def test_bad_requests_get_json_errors(locked: LiveServer) -> None:
    def post(path: str, content: bytes) -> httpx.Response:
        return httpx.post(locked.url + path, content=content, headers=AUTH)

    for path in ("/api/chat", "/api/generate", "/api/show", "/v1/chat/completions"):
        r = post(path, b"{not json")
        assert r.status_code == 400, path
        assert "Traceback" not in r.text
        r = post(path, b"[1, 2]")
        assert r.status_code == 400, path
    r = post("/api/chat", b'{"model": "a", "messages": "hi"}')
    assert r.status_code == 400 and "messages" in r.json()["error"]
    r = post("/api/generate", b'{"model": 7, "prompt": "hi"}')
    assert r.status_code == 400
    r = post("/api/generate", b'{"model": "a", "prompt": "hi", "stream": "yes"}')
    assert r.status_code == 400 and "stream" in r.json()["error"]
    r = post("/api/generate", b'{"model": "a", "prompt": "hi", "format": "xml"}')
    assert r.status_code == 400
    r = post("/api/chat", b'{"model": "a", "messages": [{"role": "wizard", "content": "x"}]}')
    assert r.status_code == 400
    r = post("/v1/chat/completions", b'{"model": "a", "messages": [{"role": "user"}], "n": 99}')
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(locked.url + "/api/nothing", headers=AUTH).status_code == 404
    assert httpx.get(locked.url + "/api/chat", headers=AUTH).status_code == 405
    r = httpx.request("DELETE", locked.url + "/api/delete", json={"model": "../x"}, headers=AUTH)
    assert r.status_code == 400
    r = httpx.post(locked.url + "/api/pull", json={"model": "hf.co/../../etc"}, headers=AUTH)
    assert r.status_code == 400


def test_a_bug_is_a_500_and_the_server_stays_up(open_server: LiveServer) -> None:
    r = httpx.get(open_server.url + "/api/ps")
    assert r.status_code == 500
    assert r.json()["error"] == "internal error (RuntimeError)" and "boom" not in r.text
    assert "Traceback" not in r.text
    assert httpx.get(open_server.url + "/api/version").status_code == 200


@pytest.mark.parametrize("blank", [" ", "\t", " \t "])
def test_serve_refuses_a_blank_api_key(cli: CLI, blank: str) -> None:
    # A key of spaces looked set, so `serve --host 0.0.0.0` started; no client can send it.
    for host in ("0.0.0.0", "127.0.0.1"):
        result = cli("serve", "--host", host, "--port", "0", env={"LOCALRUN_API_KEY": blank})
        assert_one_line_error(result, "LOCALRUN_API_KEY", "whitespace")
        assert "localrun env" in result.stderr  # the hint
