"""http(s) image URLs: refused unless LOCALRUN_IMAGE_URL_HOSTS names the host; then fetched by
the real server from a real HTTP server started here, and answered as the same image inline."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hubs.registries import encoded

from localrun.server import image_urls

from support.media import GREEDY, RED, b64, data_url
from support.server import LiveServer, post, vision_server

pytestmark = [pytest.mark.server, pytest.mark.model]


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, tiny_vision: tuple[Path, Path], tiny_model: Path
) -> Iterator[LiveServer]:
    server = vision_server(tmp_path_factory.mktemp("vision"), tiny_vision, tiny_model)
    yield server
    server.close()


PAGES: dict[str, tuple[int, dict[str, str], bytes]] = {
    "/red.png": (200, {"Content-Type": "image/png"}, RED),
    "/gone.png": (404, {}, b"not found"),
    "/page.html": (200, {"Content-Type": "text/html"}, b"<html>not a picture</html>"),
    "/hop.png": (302, {"Location": "/red.png"}, b""),
    "/away.png": (302, {"Location": "http://elsewhere.invalid/red.png"}, b""),
    "/loop.png": (302, {"Location": "/loop.png"}, b""),
    # A few hundred bytes that inflate to 256 MB (issue 76: httpx inflated a chunk whole).
    "/chain.png": (200, {"Content-Type": "image/png", "Content-Encoding": "gzip, gzip"},
                   encoded(256 << 20, ("gzip", "gzip"))),
    "/bomb.png": (200, {"Content-Type": "image/png", "Content-Encoding": "gzip"},
                  encoded(256 << 20, ("gzip",))),
}  # fmt: skip


class _Pages(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow.png":
            time.sleep(2)
        status, headers, body = PAGES.get(self.path, (404, {}, b""))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a reader gave up
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _openai(live: Any, url: str) -> Any:
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "the a"}]
    messages = [{"role": "user", "content": parts}]
    body = {"model": "vis", "max_tokens": 8, "seed": 1, "messages": messages}
    return post(live, "/v1/chat/completions", body)


def _anthropic(live: Any, source: dict[str, Any]) -> Any:
    blocks = [{"type": "image", "source": source}, {"type": "text", "text": "the a"}]
    body = {"model": "vis", "max_tokens": 8, "messages": [{"role": "user", "content": blocks}]}
    return post(live, "/v1/messages", body)


def _responses(live: Any, url: str) -> Any:
    parts = [{"type": "input_image", "image_url": url}, {"type": "input_text", "text": "the a"}]
    body = {"model": "vis", "max_output_tokens": 8, "temperature": 0,
            "input": [{"role": "user", "content": parts}]}  # fmt: skip
    return post(live, "/v1/responses", body)


def test_urls_are_refused_unless_the_host_is_named(
    live: Any, site: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = _openai(live, f"{site}/red.png")
    assert refused.status_code == 400
    assert "LOCALRUN_IMAGE_URL_HOSTS" in refused.json()["error"]["message"]
    monkeypatch.setenv("LOCALRUN_IMAGE_URL_HOSTS", "example.com")
    other = _anthropic(live, {"type": "url", "url": f"{site}/red.png"})
    assert other.status_code == 400 and other.json()["type"] == "error"
    assert "fetches nothing" in other.json()["error"]["message"]


def test_an_allowed_url_is_the_same_image_inline_in_every_dialect(
    live: Any, site: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    inline = _openai(live, data_url(RED)).json()["choices"][0]["message"]["content"]
    monkeypatch.setenv("LOCALRUN_IMAGE_URL_HOSTS", "localhost, 127.0.0.1")
    fetched = _openai(live, f"{site}/red.png")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["choices"][0]["message"]["content"] == inline
    hopped = _openai(live, f"{site}/hop.png").json()  # a redirect on the same host
    assert hopped["choices"][0]["message"]["content"] == inline
    anthropic = _anthropic(live, {"type": "url", "url": f"{site}/red.png"})
    assert anthropic.json()["content"][0]["text"] == inline
    responses = _responses(live, f"{site}/red.png")
    assert responses.json()["output"][-1]["content"][0]["text"] == inline
    # Ollama's own dialect takes base64 only, as Ollama does.
    generate = post(live, "/api/generate", {"model": "vis", "prompt": "the a", "stream": False,
                     "images": [b64(RED)], "options": GREEDY})  # fmt: skip
    assert generate.status_code == 200


@pytest.mark.parametrize(
    ("path", "status", "fragment"),
    [
        ("/gone.png", 400, "answered HTTP 404"),
        ("/page.html", 400, "is not an image"),
        ("/away.png", 400, "redirects to elsewhere.invalid"),
        ("/loop.png", 400, "redirects more than 3 times"),
        ("/slow.png", 400, "did not send the image within"),
        ("/red.png", 413, "is larger than 100 bytes"),
        ("/bomb.png", 413, "is larger than 100 bytes"),
        ("/chain.png", 400, "an encoding that cannot be read"),
    ],
)
def test_a_failed_fetch_is_a_clear_error_naming_the_part(
    live: Any, site: str, monkeypatch: pytest.MonkeyPatch, path: str, status: int, fragment: str
) -> None:
    monkeypatch.setenv("LOCALRUN_IMAGE_URL_HOSTS", "127.0.0.1")
    monkeypatch.setattr(image_urls, "TIMEOUT_S", 0.5)
    if status == 413:
        monkeypatch.setenv("LOCALRUN_MAX_MEDIA_BYTES", "100")
    answer = _openai(live, f"{site}{path}")
    assert answer.status_code == status, answer.text
    message = answer.json()["error"]["message"]
    assert "messages[0].content[0].image_url" in message and fragment in message
    # The server goes on answering.
    text = {"model": "vis", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    assert post(live, "/v1/chat/completions", text).status_code == 200
