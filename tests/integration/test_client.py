"""localrun.cli.client and the CLI over the server: `localrun ps`, `stop` and `run`.

The error paths run against a tiny stdlib HTTP server that answers what each test scripts; the
real commands run against a real `localrun serve` subprocess on an ephemeral port.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from localrun.cli.client import Client
from localrun.errors import (
    BadRequestError,
    BusyError,
    ContextOverflowError,
    LocalrunError,
    ModelNotFoundError,
    ServerError,
    UnauthorizedError,
)

from support import PATIENCE_S, free_port
from support.cli import CLI, assert_one_line_error, localrun_env

HEAVY = ("llama_cpp", "fastapi", "uvicorn", "huggingface_hub", "modelscope", "gguf", "numpy")


def _probe_imports(
    args: list[str], env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the CLI in a subprocess; also returns which heavy packages it imported."""
    code = (
        "import json, sys\nfrom localrun.cli.main import main\ntry:\n    main(sys.argv[1:])\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})),"
        " file=sys.stderr)\nsys.exit(code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=PATIENCE_S,
        stdin=subprocess.DEVNULL,
    )
    return proc, json.loads(proc.stderr.strip().splitlines()[-1])


# -- a scripted HTTP server ------------------------------------------------------------------

Reply = tuple[int, dict[str, str], list[bytes]]  # status, headers, body chunks


class Scripted:
    """A stdlib HTTP server on an ephemeral port: routes[path] -> reply; requests are kept."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[dict[str, Any]], Reply]] = {}
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                scripted.requests.append((self.command, self.path, dict(self.headers), body))
                route = scripted.routes.get(self.path)
                status, headers, chunks = (
                    route(body or {}) if route else (404, {}, [b"404 page not found"])
                )
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in chunks:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            do_GET = do_POST = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def json(self, path: str, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self.routes[path] = lambda _: (status, headers or {}, [json.dumps(obj).encode()])

    def ndjson(self, path: str, objects: list[Any]) -> None:
        self.routes[path] = lambda _: (200, {}, [json.dumps(o).encode() + b"\n" for o in objects])


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def _client(server: Scripted, api_key: str = "") -> Client:
    return Client(("127.0.0.1", server.port), api_key=api_key)


# -- the client's error paths ------------------------------------------------------------------


@pytest.mark.server
def test_wire_errors_come_back_typed(scripted: Scripted) -> None:
    client = _client(scripted)
    scripted.json(
        "/api/show",
        404,
        {"error": "model 'x:latest' not found", "code": "model_not_found", "hint": "pull it"},
    )
    with pytest.raises(ModelNotFoundError) as not_found:
        client.show("x")
    assert not_found.value.message == "model 'x:latest' not found"
    assert not_found.value.hint == "pull it"

    # 503 from the queue: BusyError with the server's Retry-After.
    scripted.json("/api/ps", 503, {"error": "queue full", "code": "busy"}, {"Retry-After": "7"})
    with pytest.raises(BusyError) as busy:
        client.ps()
    assert busy.value.retry_after == 7

    # The OpenAI dialect is understood too.
    scripted.json("/api/version", 400, {"error": {"message": "bad", "code": "bad_request"}})
    with pytest.raises(BadRequestError):
        client.version()

    # No code (a proxy, an older server): typed by the status, with a hint for 401.
    scripted.json("/api/ps", 401, {"error": "unauthorized"})
    with pytest.raises(UnauthorizedError) as unauthorized:
        client.ps()
    assert "LOCALRUN_API_KEY" in (unauthorized.value.hint or "")
    scripted.routes["/api/ps"] = lambda _: (502, {}, [b"<html>Bad Gateway</html>"])
    with pytest.raises(ServerError, match="HTTP 502"):
        client.ps()


@pytest.mark.server
def test_stream_errors_and_early_end(scripted: Scripted) -> None:
    from localrun.cli.run.remote import RemoteAnswer

    client = _client(scripted)
    scripted.ndjson(
        "/api/chat",
        [
            {"message": {"role": "assistant", "content": "Hel"}, "done": False},
            {"error": "the prompt is too long", "code": "context_length_exceeded", "hint": "x"},
        ],
    )
    answer = RemoteAnswer(client.chat("m", [{"role": "user", "content": "hi"}]))
    pieces = []
    with pytest.raises(ContextOverflowError, match="too long"):
        for piece in answer:
            pieces.append(piece)
    assert pieces == ["Hel"]
    # A localrun 0.1 server's code for the same error.
    old = LocalrunError.from_dict({"code": "context_overflow", "message": "too long"})
    assert isinstance(old, ContextOverflowError) and old.code == "context_length_exceeded"

    scripted.ndjson("/api/chat", [{"message": {"content": "cut"}, "done": False}])
    with pytest.raises(ServerError, match="before it was done"):
        list(RemoteAnswer(client.chat("m", [])))


@pytest.mark.server
def test_bearer_token_and_probe(scripted: Scripted, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not _client(scripted).is_up()  # 404: not a localrun server
    scripted.json("/api/version", 200, {"version": "0.1.0"})
    monkeypatch.setenv("LOCALRUN_API_KEY", "s3cret")
    monkeypatch.setenv("LOCALRUN_HOST", scripted.host)
    client = Client()
    assert client.is_up()
    assert client.version() == "0.1.0"  # an Ollama server: its version
    assert scripted.requests[-1][2]["Authorization"] == "Bearer s3cret"
    scripted.json("/api/version", 200, {"version": "0.12.0", "localrun_version": "0.2.0"})
    assert client.version() == "0.2.0"  # a localrun server: its own, not the API's
    monkeypatch.delenv("LOCALRUN_API_KEY")
    Client().version()
    assert "Authorization" not in scripted.requests[-1][2]
    scripted.json("/api/version", 401, {"error": "missing API key", "code": "unauthorized"})
    assert client.is_up()  # up; the next request reports the key problem


@pytest.mark.server
def test_ps_table_and_stop_against_a_scripted_server(cli: CLI, scripted: Scripted) -> None:
    now = time.time()
    scripted.json(
        "/api/ps",
        200,
        {
            "models": [
                {
                    "name": "smollm2:135m",
                    "model": "smollm2:135m",
                    "digest": "sha256:" + "ab12" * 16,
                    "size": 180_000_000,
                    "size_vram": 0,
                    "context_length": 2048,
                    "expires_at": time.strftime(
                        "%Y-%m-%dT%H:%M:%S.123456789Z", time.gmtime(now + 270)
                    ),
                },
                {
                    "name": "big:latest",
                    "digest": "sha256:" + "cd34" * 16,
                    "size": 4_000_000_000,
                    "size_vram": 2_000_000_000,
                    "context_length": 8192,
                    "expires_at": "2318-01-01T00:00:00Z",
                },
            ]
        },
    )
    proc, heavy = _probe_imports(["ps"], {"LOCALRUN_HOST": scripted.host})
    assert heavy == []  # ps starts fast
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL", "CACHE"]
    assert lines[1].split() == [
        "smollm2:135m", "ab12ab12ab12", "180", "MB", "100%", "CPU", "2048", "4", "minutes",
        "from", "now",
    ]  # fmt: skip
    assert lines[2].split()[3:] == ["GB", "50%/50%", "CPU/GPU", "8192", "Forever"]

    # stop: an unloaded model is one line; a loaded one is unloaded with keep_alive 0.
    scripted.json("/api/show", 200, {"template": ""})
    scripted.json("/api/generate", 200, {"model": "smollm2:135m", "done": True})
    env = {"LOCALRUN_HOST": scripted.host}
    assert_one_line_error(cli("stop", "other", env=env), "model 'other' is not loaded", "ps")
    assert cli("stop", "smollm2", env=env).code == 0  # the catalog alias names the same model
    method, path, _, body = scripted.requests[-1]
    assert (method, path) == ("POST", "/api/generate")
    assert body == {"model": "smollm2", "prompt": "", "keep_alive": 0, "stream": False}
    scripted.json(
        "/api/show", 404, {"error": "model 'nope:latest' not found", "code": "model_not_found"}
    )
    assert_one_line_error(cli("stop", "nope", env=env), "model 'nope:latest' not found")


# -- `localrun run` without a server ------------------------------------------------------------


@pytest.mark.model
def test_run_falls_back_to_in_process(cli: CLI, tmp_path: Path, tiny_model: Path) -> None:
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {tiny_model}\n")
    assert cli("create", "tiny", "-f", str(mf)).code == 0
    env = {"LOCALRUN_HOST": f"127.0.0.1:{free_port()}"}
    result = cli("run", "tiny", "hello", "--verbose", "--param", "num_predict=4", env=env)
    assert result.code == 0, result.stderr
    assert "eval count:" in result.stderr
    assert "offload:" in result.stderr  # the in-process runner's offload note
    assert re.search(r"^runtime:\s+built-in", result.stderr, re.M), result.stderr  # as info says


# -- against a real `localrun serve` -----------------------------------------------------------

SMOL = "smollm2:135m"
GREEDY = ["--param", "temperature=0", "--param", "num_predict=24"]


class Served:
    """`localrun serve --port 0` in a subprocess with its own LOCALRUN_HOME."""

    def __init__(self, home: Path) -> None:
        env = localrun_env(LOCALRUN_HOME=str(home))
        self.home = home
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localrun", "serve", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        first = lines.get(timeout=PATIENCE_S)  # "localrun 0.1.0 listening on http://127.0.0.1:PORT"
        assert "listening on http://" in first, first
        self.host = first.rsplit("http://", 1)[1].strip()
        self.env = {"LOCALRUN_HOST": self.host}

    def client(self) -> Client:
        host, port = self.host.rsplit(":", 1)
        return Client((host, int(port)))

    def close(self) -> None:
        self.proc.terminate()
        try:
            assert self.proc.wait(timeout=PATIENCE_S) == 0  # Ctrl-C / SIGTERM: a clean exit
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("served-home")
    env = localrun_env(LOCALRUN_HOME=str(home))
    mf = home / "Modelfile"
    mf.write_text(f"FROM {tiny_model}\n")
    for args in (["create", "tiny", "-f", str(mf)], ["show", SMOL]):  # SmolLM2 imported once
        subprocess.run(
            [sys.executable, "-m", "localrun", *args], env=env, check=True, capture_output=True
        )
    server = Served(home)
    yield server
    server.close()


@pytest.mark.server
@pytest.mark.model
def test_run_uses_the_server_and_the_model_stays_warm(cli: CLI, served: Served) -> None:
    served.client().unload("tiny")
    proc, heavy = _probe_imports(
        ["run", "tiny", "hello", "--verbose", "--param", "num_predict=8"], served.env
    )
    assert proc.returncode == 0, proc.stderr
    assert heavy == [], "the remote path imported " + ", ".join(heavy)
    assert "eval count:" in proc.stderr and "offload:" not in proc.stderr  # answered remotely
    listed = cli("ps", env=served.env)
    assert listed.code == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows[0] == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL", "CACHE"]
    assert rows[1][0] == "tiny:latest" and rows[1][-5:] == [
        "minutes",
        "from",
        "now",
        "per",
        "position",
    ]
    # Warm: the second command waits for no load.
    again = cli("run", "tiny", "hello", "--verbose", "--param", "num_predict=8", env=served.env)
    assert again.code == 0, again.stderr
    load = re.search(r"load duration:\s+([\d.]+)(ms|s)", again.stderr)
    assert load is not None and load.group(2) == "ms" and float(load.group(1)) < 100

    assert cli("stop", "tiny", env=served.env).code == 0
    assert "tiny" not in cli("ps", env=served.env).stdout
    assert_one_line_error(cli("stop", "tiny", env=served.env), "is not loaded")
    assert_one_line_error(cli("stop", "ghost", env=served.env), "model 'ghost", "not found")
    assert_one_line_error(cli("run", "ghost", "hi", env=served.env), "'ghost:latest' not found")


@pytest.mark.server
@pytest.mark.model
def test_a_model_the_server_lacks_names_the_server_and_store_that_answered(
    cli: CLI, served: Served, home: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """A model in this command's store that the running server (another store) does not have:
    the error says which server answered, from which store, and that this store has it."""
    (tmp_path / "Modelfile").write_text(f"FROM {tiny_model}\n")
    assert cli("create", "mine", "-f", str(tmp_path / "Modelfile")).code == 0
    assert "localrun_store" in served.client().request("GET", "/api/version")
    for args in (("run", "mine", "hi"), ("stop", "mine")):
        told = cli(*args, env=served.env)
        assert_one_line_error(
            told,
            "Error: model 'mine:latest' not found (answered by the server at "
            f"{served.host}, store {served.home / 'models'}); the store of this command "
            f"({home / 'models'}) has it, the server's does not",
        )
    ghost = cli("run", "ghost", "hi", env=served.env)
    assert_one_line_error(
        ghost, f"'ghost:latest' not found (answered by the server at {served.host}"
    )
    assert "the store of this command" not in ghost.stderr


@pytest.mark.server
@pytest.mark.model
@pytest.mark.slow
def test_remote_answers_match_in_process_ones(cli: CLI, served: Served) -> None:
    """Greedy SmolLM2 through the server and in this process: the same text, same options."""
    local = {"LOCALRUN_HOME": str(served.home), "LOCALRUN_HOST": f"127.0.0.1:{free_port()}"}
    cases = [
        ["What is the capital of France?", *GREEDY],
        ["Who are you?", "--system", "You are a pirate named Bob.", "--seed", "3",
         "--param", "temperature=0.7", "--param", "num_predict=16"],
    ]  # fmt: skip
    for args in cases:
        remote = cli("run", SMOL, *args, env=served.env)
        here = cli("run", SMOL, *args, env=local)
        assert remote.code == 0 and here.code == 0, (remote.stderr, here.stderr)
        assert remote.stdout == here.stdout, args
        assert "Paris" in remote.stdout or args is not cases[0]
    asked = "Reply with a JSON object with the keys name and age for a cat named Tom aged 3."
    json_answer = cli("run", SMOL, asked, "--format", "json", *GREEDY[:2], env=served.env)
    assert json_answer.code == 0 and isinstance(json.loads(json_answer.stdout), dict)
    piped = cli("run", SMOL, *GREEDY, input="What is the capital of France?\n", env=served.env)
    assert piped.code == 0 and "Paris" in piped.stdout
    stats = cli("run", SMOL, "Say hi.", "--verbose", *GREEDY, env=served.env)
    for key in ("total duration:", "load duration:", "prompt eval count:", "eval rate:"):
        assert key in stats.stderr
    assert re.search(r"done reason:\s+(stop|length)", stats.stderr)
    assert_one_line_error(
        cli("run", SMOL, "word " * 400, "--param", "num_ctx=256", env=served.env), "num_ctx"
    )


@pytest.mark.server
@pytest.mark.model
def test_batch_over_the_server(cli: CLI, served: Served, tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        json.dumps("Say yes.")
        + "\n{not json\n"
        + json.dumps({"id": "x", "prompt": "Say no.", "options": {"num_predict": 4}})
        + "\n"
    )
    result = cli("run", "tiny", "--batch", str(prompts), "--param", "num_predict=6", env=served.env)
    assert result.code == 1  # the bad line
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2]
    assert records[0]["model"] == "tiny" and records[0]["eval_count"] <= 6
    assert records[1]["error"]["code"] == "invalid_parameter"
    assert records[2]["id"] == "x" and records[2]["eval_count"] <= 4
    assert records[2]["total_duration"] > 0


@pytest.mark.server
@pytest.mark.model
@pytest.mark.slow
def test_chat_repl_over_the_server(served: Served) -> None:
    import pexpect

    env = {**os.environ, **served.env, "TERM": "dumb", "PYTHONUNBUFFERED": "1"}
    # SmolLM2 writing 500 numbers takes about 20 s (greedy, it does not stop early): the tiny
    # model fills its 256-token context in a moment, and on a busy machine its answer ended
    # before the Ctrl-C arrived.
    args = ["--verbose", "--param", "num_predict=4000", "--param", "temperature=0"]
    child = pexpect.spawn(
        sys.executable,
        ["-m", "localrun", "run", SMOL, *args],
        env=env,
        encoding="utf-8",
        timeout=PATIENCE_S,
        dimensions=(40, 200),
    )
    child.expect_exact(">>> ")
    child.sendline("Write the numbers from 1 to 500 separated by commas.")
    child.expect_exact("by commas.\r\n")
    # The answer streams: ten numbers of it, which no echo of the prompt holds (readline on a
    # dumb terminal redraws the line it is given, on a busy machine several times: counting
    # words let the Ctrl-C arrive before the answer, with no "done reason" to print).
    child.expect(r"(?:\d+,\s*){10}")
    child.sendintr()  # closes the HTTP stream: the server stops the generation
    child.expect(r"done reason:\s+cancelled")
    child.expect_exact(">>> ")
    child.sendline("/set parameter num_predict 3")
    child.expect_exact("Set parameter 'num_predict' to '3'")
    child.expect_exact(">>> ")
    child.sendline("Hello!")
    child.expect(r"(?<!prompt )eval count:\s+(\d+)")
    assert int(child.match.group(1)) <= 3
    child.expect_exact(">>> ")
    child.sendline("/show info")
    child.expect_exact("architecture")
    child.expect_exact(">>> ")
    child.sendline("/set system Be brief.")
    child.expect_exact(">>> ")
    child.sendline("/save tiny-chat")
    child.expect_exact("Created new model 'tiny-chat:latest'")
    child.expect_exact(">>> ")
    child.sendline("/load ghost")
    child.expect(r"Error: model 'ghost(:latest)?' not found")
    child.expect_exact(">>> ")
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    saved = served.client().show("tiny-chat")
    assert saved.get("system") == "Be brief."
    assert [m["role"] for m in saved.get("messages", [])] == ["user", "assistant"] * 2
