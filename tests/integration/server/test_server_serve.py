"""`localrun serve` as a user runs it: a subprocess that prints its URL and stops cleanly."""

from __future__ import annotations

import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from localrun.store.local import Store

from support import PATIENCE_S
from support.cli import CLI, assert_one_line_error
from support.serve import Serve
from support.server import add_model

pytestmark = [pytest.mark.server, pytest.mark.model]

HEAVY = ("numpy", "llama_cpp", "libllama", "libggml", "/gguf/")


@pytest.fixture
def serve_home(home: Path, tiny_model: Path) -> Path:
    add_model(Store(home / "models"), "tiny", tiny_model)
    return home


@pytest.fixture
def server(serve_home: Path) -> Iterator[Serve]:
    serve = Serve(serve_home)
    yield serve
    serve.kill()


def test_serve_prints_its_url_and_stops_on_sigterm(server: Serve) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
    assert server.proc.stdout is not None
    assert server.proc.stdout.readline().strip() == f"chat in a browser: {server.url}/ui/"
    assert httpx.get(server.url + "/api/version").json()["version"]
    body = {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 4}}
    loaded = httpx.post(server.url + "/api/generate", json=body, timeout=PATIENCE_S)
    assert loaded.status_code == 200 and loaded.json()["done"]
    assert httpx.post(server.url + "/api/show", json={"model": "tiny"}).status_code == 200
    assert httpx.get(server.url + "/api/tags").status_code == 200
    made = httpx.post(server.url + "/api/create", json={"model": "mine", "from": "tiny",
                      "system": "Be brief.", "stream": False}, timeout=PATIENCE_S)  # fmt: skip
    assert made.json() == {"status": "success"}  # the GGUF reading happens in a job process
    me = psutil.Process(server.proc.pid)
    runners = me.children(recursive=True)
    assert runners, "a runner subprocess should be serving the loaded model"
    # The server process itself stays small: no numpy, gguf or llama.cpp in it.
    maps = Path(f"/proc/{me.pid}/maps").read_text() if sys.platform == "linux" else ""
    assert not [lib for lib in HEAVY if lib in maps]
    assert me.memory_info().rss < 120 * 1024 * 1024

    assert server.stop(signal.SIGTERM) == 0
    _, err = server.proc.communicate(timeout=PATIENCE_S)
    assert "Traceback" not in err
    _, alive = psutil.wait_procs(runners, timeout=PATIENCE_S)
    assert not alive, "runner processes were left behind"


def test_serve_stops_on_ctrl_c(server: Serve) -> None:
    assert httpx.get(server.url + "/").text == "localrun is running"
    assert server.stop(signal.SIGINT) == 0


def test_serve_refuses_an_open_port_without_a_key(cli: CLI, serve_home: Path) -> None:
    result = cli("serve", "--host", "0.0.0.0", "--port", "0", timeout=PATIENCE_S)
    assert_one_line_error(result, "LOCALRUN_API_KEY", "--insecure-no-auth")
    busy = Serve(serve_home)
    try:
        port = busy.url.rsplit(":", 1)[1]
        taken = cli("serve", "--port", port, timeout=PATIENCE_S)
        assert_one_line_error(taken, "already in use")
        started = time.monotonic()
        assert busy.stop() == 0
        assert time.monotonic() - started < 15
    finally:
        busy.kill()


def test_serve_on_an_open_address_with_a_key_or_the_explicit_flag(serve_home: Path) -> None:
    keyed = Serve(serve_home, "--host", "0.0.0.0", env={"LOCALRUN_API_KEY": "k3y"})
    try:
        port = keyed.url.rsplit(":", 1)[1]
        local = f"http://127.0.0.1:{port}/api/tags"
        assert httpx.get(local).status_code == 401
        ok = httpx.get(local, headers={"Authorization": "Bearer k3y"})
        assert ok.status_code == 200 and ok.json()["models"]
        assert keyed.stop() == 0
    finally:
        keyed.kill()
    open_ = Serve(serve_home, "--host", "0.0.0.0", "--insecure-no-auth")
    try:
        port = open_.url.rsplit(":", 1)[1]
        assert httpx.get(f"http://127.0.0.1:{port}/api/tags").status_code == 200
        assert open_.stop() == 0
    finally:
        open_.kill()


def test_sigterm_ends_open_streams_with_their_error_line(
    serve_home: Path, tiny_long_model: Path
) -> None:
    # Streams cut by SIGTERM once ended without a final line: each dialect's client then saw a
    # truncated answer instead of an error it can report.
    import json
    import threading

    # A context long enough that the answers are still streaming when the signal comes.
    # (num_ctx is held to the trained context: this model's header says 2**24.)
    add_model(Store(serve_home / "models"), "long", tiny_long_model, "PARAMETER num_ctx 65536\n")
    server = Serve(serve_home)

    requests = {
        "ollama": ("/api/generate", {"model": "long", "prompt": "Hi", "options": {}}),
        "openai": (
            "/v1/chat/completions",
            {"model": "long", "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
        ),
        "anthropic": (
            "/v1/messages",
            {
                "model": "long",
                "stream": True,
                "max_tokens": 100000,
                "messages": [{"role": "user", "content": "Hi"}],
            },
        ),
    }
    lines: dict[str, list[str]] = {name: [] for name in requests}
    started = {name: threading.Event() for name in requests}

    def read(name: str) -> None:
        path, body = requests[name]
        body = {**body, "options": {"num_predict": 100000, "temperature": 1.0}}
        if name != "ollama":
            body["max_tokens"] = 100000
        with httpx.stream("POST", server.url + path, json=body, timeout=PATIENCE_S) as r:
            for line in r.iter_lines():
                if line.strip():
                    lines[name].append(line)
                    started[name].set()

    threads = [threading.Thread(target=read, args=(name,)) for name in requests]
    try:
        for t in threads:
            t.start()
        for name, event in started.items():
            assert event.wait(120), f"{name} never started streaming"
        time.sleep(0.5)
        assert server.stop(signal.SIGTERM) == 0
        for t in threads:
            t.join(60)
    finally:
        server.kill()
    last = {name: got[-1] for name, got in lines.items()}
    assert "shutting down" in json.loads(last["ollama"])["error"], last
    assert last["openai"].startswith("data: "), last
    assert "shutting down" in json.loads(last["openai"][6:])["error"]["message"], last
    assert "shutting down" in last["anthropic"] and "error" in last["anthropic"], last


def test_a_clients_text_reaches_headers_and_the_log_escaped(server: Serve) -> None:
    # Hosted tools' types went into X-Localrun-Tools-Left-Out and the log as sent (issue 76):
    # CR/LF or NUL dropped the connection with no answer, a character outside Latin-1 was a
    # 500, and a line break forged a line of the log. So did a request's decoded path.
    forged = "2030-01-01 00:00:00,000 WARNING localrun.server: FORGED"
    kinds = [f"web_search\r\n{forged}", "a\x00b", "snow\u2603man\u202e", "x" * 5000, "c,d"]
    say = {"role": "user", "content": "hi"}
    for path, body in (
        ("/v1/responses", {"input": "hi", "max_output_tokens": 2,
                           "tools": [{"type": kind} for kind in kinds]}),
        ("/v1/messages", {"messages": [say], "max_tokens": 2,
                          "tools": [{"type": kind, "name": "n"} for kind in kinds]}),
    ):  # fmt: skip
        answer = httpx.post(server.url + path, json={"model": "tiny", **body}, timeout=PATIENCE_S)
        assert answer.status_code == 200, answer.text
        shown = answer.headers["x-localrun-tools-left-out"]
        assert shown.isascii() and shown.isprintable() and len(shown) < 1000, shown
        assert shown.startswith("web_search\\r\\n2030-01-01"), shown
        assert "a\\x00b" in shown and "snow\\u2603man\\u202e" in shown and "c\\x2cd" in shown
    # (starlette's URL drops CR and LF from a path; not an escape sequence or a line separator)
    refused = httpx.get(server.url + "/api/nothing%1b[2K%e2%80%a8%0b" + forged.replace(" ", "%20"))
    assert refused.status_code == 404
    assert server.stop() == 0
    _, err = server.proc.communicate(timeout=PATIENCE_S)
    lines = err.splitlines()
    assert not [line for line in lines if line.startswith(forged[:10])], err
    assert sum("left out of the tools offered: web_search\\r\\n2030" in line for line in lines) == 2
    assert any("refused GET /api/nothing\\x1b[2K\\u2028\\x0b2030" in line for line in lines)
    assert not [c for c in err if not c.isprintable() and c != "\n"], err


@pytest.mark.parametrize(
    ("name", "value"),
    [
        *(("LOCALRUN_CONTEXT_LENGTH", v) for v in ("-5", "0", "1.5", "abc", "1e6", "0x1000")),
        ("LOCALRUN_CONTEXT_LENGTH", "99999999999"),  # past a request's num_ctx bound, 2**24
        ("LOCALRUN_NUM_PARALLEL", "100000"),  # past llama.cpp's 256 sequences: no load works
        ("LOCALRUN_LOAD_TIMEOUT", "-1"),  # forever: an OverflowError where a process waits
        ("LOCALRUN_MAX_JSON_DEPTH", "5000"),  # past what the code walking a value survives
        ("LOCALRUN_UPSTREAM_CONNECT_TIMEOUT", "0"),
        ("LOCALRUN_DEBUG", "maybe"),
        ("LOCALRUN_WORKERS", "[::1]:50052"),  # llama.cpp's endpoints take no IPv6
    ],
)
def test_serve_refuses_a_bad_setting_before_it_listens(
    cli: CLI, serve_home: Path, name: str, value: str
) -> None:
    # Each was accepted at the start, then every chat that read it answered 500 (issue 76).
    result = cli("serve", "--port", "0", env={name: value}, timeout=PATIENCE_S)
    assert_one_line_error(result, name)
    assert "listening" not in result.stdout
    if name == "LOCALRUN_CONTEXT_LENGTH":  # what it takes
        assert "expected a whole number from 1 to 16777216" in result.stderr


@pytest.mark.parametrize("workers", ["nonsense", "a:1,b:99999", ":50052"])
def test_serve_names_its_bad_workers_flag(cli: CLI, serve_home: Path, workers: str) -> None:
    """--workers is said as the flag typed, not as the setting it stands for."""
    result = cli("serve", "--port", "0", "--workers", workers, timeout=PATIENCE_S)
    assert_one_line_error(result, "--workers: ", "comma-separated")
    assert "LOCALRUN_WORKERS" not in result.stderr and "listening" not in result.stdout


def test_forwarded_for_is_believed_only_from_trusted_proxies(serve_home: Path) -> None:
    """uvicorn believed X-Forwarded-For from loopback, and every per-client bound counted the
    address a client named (issue 90: 120 of 120 background runs past a cap of 3). The peer is
    the client unless LOCALRUN_TRUSTED_PROXIES names the proxy in front."""
    run = {"model": "tiny", "input": "Hi", "background": True, "max_output_tokens": 200}

    def launch(server: Serve, forwarded: str) -> int:
        answer = httpx.post(f"{server.url}/v1/responses", json=run, timeout=PATIENCE_S,
                            headers={"X-Forwarded-For": forwarded})  # fmt: skip
        return answer.status_code

    cap = {"LOCALRUN_RESPONSES_BACKGROUND_MAX_PER_CLIENT": "1"}
    direct = Serve(serve_home, env=cap)
    try:  # (the first run waits for its model's load: still unfinished when the next comes)
        assert [launch(direct, f"10.9.0.{n}") for n in range(3)] == [200, 429, 429]
    finally:
        direct.kill()
    behind = Serve(serve_home, env={**cap, "LOCALRUN_TRUSTED_PROXIES": "127.0.0.1"})
    try:
        assert [launch(behind, a) for a in ("10.0.0.1", "10.0.0.2", "10.0.0.1")] == [200, 200, 429]
    finally:
        behind.kill()
