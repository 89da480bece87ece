#!/usr/bin/env python3
"""The real coding agents end to end against `localrun serve` (issue 56).

    python scripts/measure/agents_e2e.py [--only claude,codex] [--cases answer,tool] [--keep]

Installs Claude Code, Codex, OpenCode (npm) and Aider (PyPI, a venv of its own) at pinned
versions into --dir (default ~/.cache/localrun/agents), and runs each through `localrun launch
AGENT --model M -- <headless arguments>` against a `localrun serve` of its own (a case at most
--timeout S), on a scripted model (testmodels.scripted: any prompt gets one fixed answer) for each
case: `answer` (a sentence the agent must print, then exit 0), `tool` (a call of its file-writing
tool, Codex's shell or Aider's whole-file edit, writing hello.txt; the agent must run it and send
the result back), `thinking` (the same call after a <think> section), Codex's `patch` (its
free-form apply_patch adds hello.txt). With the same call on every turn, Claude Code is held to
two turns; Codex and OpenCode stop once the file is there and the tool's result is answered.

A reverse proxy between agent and server (streams pass through piece by piece) counts requests
and statuses and, with --record DIR, writes DIR/<agent>-<case>.json: each distinct request
(method, path, query, the headers a replay needs, keys masked, the JSON body, the server's
status; retries and repeated turns left out), the run's paths and user name replaced.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))  # scripts/: what they share
from testmodels.scripted import write_scripted_model

TEMPLATES = REPO / "tests" / "data" / "templates"
TOOL_TEMPLATE = TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja"  # Hermes <tool_call>, renders tools
THINKING_TEMPLATE = TEMPLATES / "Qwen-Qwen3-0.6B.jinja"  # the same calls after <think>
N_CTX = 30030  # the most a scripted model may declare; Claude Code's first prompt is ~19k tokens
ANSWER = "The answer is 42."
CONTENT = "hello from localrun\n"
THOUGHT = "The user wants hello.txt written; I will write it."
CASES = ("answer", "tool", "thinking", "patch")
PATCH = f"*** Begin Patch\n*** Add File: hello.txt\n+{CONTENT}*** End Patch\n"  # apply_patch's
# Headers a replay needs; the others (host, lengths, connection) are the transport's.
KEPT_HEADERS = ("content-type", "anthropic-version", "anthropic-beta", "user-agent", "openai-beta")
SECRET_HEADERS = ("authorization", "x-api-key")
HOP_HEADERS = frozenset(("connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "te", "trailer", "transfer-encoding", "upgrade", "host",
                         "content-length"))  # fmt: skip
LAUNCH_USER_AGENT = "localrun-cli"  # `localrun launch` asking the server before the agent runs
TOOL_RESULT = re.compile(
    r'"type": "(function_call_output|custom_tool_call_output|tool_result)"|"role": "tool"'
)
# The user's settings for the agents would steer them past the case's own (XDG_*: the home's).
AGENT_PREFIXES = ("ANTHROPIC_", "CLAUDE_", "OPENAI_", "CODEX_", "OPENCODE_", "AIDER_", "OLLAMA_",
                  "XDG_")  # fmt: skip


@dataclass(frozen=True)
class Agent:
    """A pinned agent: its npm packages (NAME@VERSION, or NAME@npm:OTHER@VERSION), its program
    under --dir, its headless arguments and environment ({v}, {a}, {prompt}, {home} filled in)."""

    name: str  # what `localrun launch` takes
    title: str
    version: str
    cases: tuple[str, ...]
    npm: tuple[str, ...]
    program: str
    args: tuple[str, ...]
    env: dict[str, str]

    def fill(self, text: str, arch: str) -> str:
        return text.replace("{v}", self.version).replace("{a}", arch)


AGENTS = {
    a.name: a
    for a in (
        Agent(
            "claude", "Claude Code", "2.1.197", CASES[:3],
            ("@anthropic-ai/claude-code@{v}", "@anthropic-ai/claude-code-linux-{a}@{v}"),
            "npm/node_modules/@anthropic-ai/claude-code-linux-{a}/claude",
            # acceptEdits: its Write runs unasked (bypassPermissions is refused to root).
            ("-p", "{prompt}", "--max-turns", "2", "--output-format", "json",
             "--permission-mode", "acceptEdits"),
            {"CLAUDE_CONFIG_DIR": "{home}/.claude", "DISABLE_AUTOUPDATER": "1",
             "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
             "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"},
        ),
        Agent(
            "codex", "Codex", "0.169.0", CASES,
            ("@openai/codex@{v}", "@openai/codex-linux-{a}@npm:@openai/codex@{v}-linux-{a}"),
            "npm/node_modules/.bin/codex",  # a node script that finds its platform package
            # No sandbox: a container has none to offer.
            ("exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
             "--ephemeral", "-c", "check_for_update_on_startup=false", "-c",
             "analytics.enabled=false", "{prompt}"),
            {"CODEX_HOME": "{home}/.codex"},
        ),
        Agent(
            "opencode", "OpenCode", "1.18.33", CASES[:2],
            ("opencode-ai@{v}", "opencode-linux-{a}@{v}"),
            "npm/node_modules/opencode-linux-{a}/bin/opencode",
            ("run", "--auto", "{prompt}"),
            {"XDG_CONFIG_HOME": "{home}/.config", "XDG_DATA_HOME": "{home}/.local/share",
             "XDG_STATE_HOME": "{home}/.local/state",
             "OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_MODELS_FETCH": "1",
             "OPENCODE_DISABLE_SHARE": "1", "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
             "OPENCODE_DISABLE_LSP_DOWNLOAD": "1", "OPENCODE_DISABLE_CLAUDE_CODE": "1"},
        ),
        Agent(
            "aider", "Aider", "0.86.2", CASES[:2], (), "aider/bin/aider",
            ("--message", "{prompt}", "--yes-always", "--no-git", "--no-auto-commits",
             "--edit-format", "whole", "--no-pretty", "--no-fancy-input", "--map-tokens", "0",
             "--no-check-update", "--analytics-disable", "--no-show-model-warnings"),
            {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "AIDER_ANALYTICS_DISABLE": "true"},
        ),
    )
}  # fmt: skip


def install(root: Path, agents: list[Agent]) -> dict[str, Path]:
    """Install the pinned agents under `root` where they are missing; each one's program."""
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}.get(machine, machine)
    npm, log = root / "npm", root / "install.log"
    npm.mkdir(parents=True, exist_ok=True)
    specs = [(a.title, a.fill(spec, arch)) for a in agents for spec in a.npm]
    missing = [(title, spec) for title, spec in specs if not _installed(npm / "node_modules", spec)]
    if missing:
        print(f"installing {', '.join(sorted({t for t, _ in missing}))} into {npm} ...")
        start = time.monotonic()
        cmd = ["npm", "install", "--prefix", str(npm), "--save-exact", "--no-audit", "--no-fund"]
        _check_call([*cmd, "--include=optional", *[spec for _, spec in missing]], log)
        print(f"  npm install took {time.monotonic() - start:.0f} s")
    aider, venv = AGENTS["aider"], root / "aider"
    dist_info = f"lib/*/site-packages/aider_chat-{aider.version}.dist-info"
    if aider in agents and not any(venv.glob(dist_info)):
        print(f"installing Aider {aider.version} into {venv} ...")
        start = time.monotonic()
        if not (venv / "bin" / "python").exists():  # Aider 0.86 wants Python 3.10-3.12
            fits = (3, 10) <= sys.version_info[:2] <= (3, 12)
            _check_call([sys.executable if fits else "python3.11", "-m", "venv", str(venv)], log)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
        _check_call([*pip, f"aider-chat=={aider.version}"], log)
        print(f"  pip install took {time.monotonic() - start:.0f} s")
    programs = {a.name: root / a.fill(a.program, arch) for a in agents}
    if absent := [str(p) for p in programs.values() if not p.exists()]:
        raise SystemExit(f"installed, but missing: {', '.join(absent)}")
    print(f"agents: {', '.join(f'{a.title} {a.version}' for a in agents)} (in {root})")
    return programs


def _installed(modules: Path, spec: str) -> bool:
    """Whether npm `spec` is installed there at its version."""
    name, _, version = spec.rpartition("@")
    with contextlib.suppress(OSError, ValueError):
        folder = modules / name.split("@npm:")[0]
        return bool(json.loads((folder / "package.json").read_text())["version"] == version)
    return False


def _check_call(cmd: list[str], log: Path) -> None:
    with open(log, "ab") as out:
        out.write(f"$ {shlex.join(cmd)}\n".encode())
        out.flush()
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"{cmd[0]} failed with exit status {code}; from {log}:\n{tail}")


@dataclass
class Exchange:
    """One request through the proxy, and what the server answered."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    data: Any  # the body's JSON, or None
    status: int = 0  # 0: no answer yet (the agent was stopped first)
    response: bytearray = field(default_factory=bytearray)
    done: bool = False


class Proxy(ThreadingHTTPServer):
    """A reverse proxy to `upstream` that keeps every exchange. An answer without a length (a
    stream, SSE) is passed on chunk by chunk as it comes, never read whole first."""

    daemon_threads = True

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(("127.0.0.1", 0), _Relay)
        self.upstream = upstream
        self.exchanges: list[Exchange] = []
        self.lock = threading.Lock()

    def since(self, start: int) -> list[Exchange]:
        with self.lock:
            return self.exchanges[start:]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # an agent stopped mid-answer
            super().handle_error(request, client_address)


class _Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Proxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        path, _, query = self.path.partition("?")
        headers = {k.lower(): v for k, v in self.headers.items()}
        data = None
        with contextlib.suppress(ValueError):
            data = json.loads(body) if body else None
        exchange = Exchange(self.command, path, query, headers, body, data)
        with self.server.lock:  # the agent's (not launch's own)
            if not headers.get("user-agent", "").startswith(LAUNCH_USER_AGENT):
                self.server.exchanges.append(exchange)
        forward = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=900)
        try:
            upstream.request(self.command, self.path, body=body or None, headers=forward)
            answer = upstream.getresponse()
            exchange.status = answer.status
            self.send_response_only(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in HOP_HEADERS:
                    self.send_header(name, value)
            length = answer.getheader("content-length")
            bodiless = self.command == "HEAD" or answer.status in (204, 304)
            chunked = length is None and not bodiless
            if length is not None:
                self.send_header("Content-Length", length)
            elif chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while not bodiless and (piece := answer.read1(65536)):
                if len(exchange.response) < 1 << 20:  # to name the error a stream ended with
                    exchange.response += piece
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                self.wfile.flush()
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
            exchange.done = True
        except (OSError, http.client.HTTPException) as exc:
            if not exchange.status:
                exchange.status = 502
                with contextlib.suppress(OSError):
                    self.send_error(502, f"proxy: {exc}")
            self.close_connection = True
        finally:
            upstream.close()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = do_GET


def _carries_tool_result(body: Any) -> bool:
    """Whether a request body hands a tool's result back: a Responses item or Anthropic block
    of a result's type, or a chat message of the tool's role (a key, never a string's text)."""
    return TOOL_RESULT.search(json.dumps(body)) is not None


def _answered_tool_result(exchanges: list[Exchange]) -> bool:
    return any(e.done and e.status < 400 and _carries_tool_result(e.data) for e in exchanges)


def _hermes(name: str, arguments: dict[str, Any]) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


class Case:
    """One agent on one case, in a folder of its own: work/ (its cwd), home/, its output."""

    def __init__(self, agent: Agent, name: str, root: Path) -> None:
        self.agent, self.name, self.root = agent, name, root
        self.id, self.work, self.home = f"{agent.name}-{name}", root / "work", root / "home"
        self.model, self.target = f"e2e-{self.id}", self.work / "hello.txt"

    def says(self) -> str:
        """The scripted model's whole answer."""
        path = str(self.target)
        if self.name == "answer":
            return ANSWER
        if self.agent.name == "aider":  # --edit-format whole: the file's name, then all of it
            return f"hello.txt\n```\n{CONTENT}```\n"
        if self.name == "patch":  # a free-form tool: a function of one string, `input`
            return _hermes("apply_patch", {"input": PATCH})
        if self.agent.name == "claude":
            call = _hermes("Write", {"file_path": path, "content": CONTENT})
        elif self.agent.name == "codex":  # its shell: it has no file-writing tool of its own
            command = f"printf '%s\\n' {shlex.quote(CONTENT.strip())} > {shlex.quote(path)}"
            call = _hermes("exec_command", {"cmd": command})
        else:
            call = _hermes("write", {"filePath": path, "content": CONTENT})
        return f"<think>\n{THOUGHT}\n</think>\n\n{call}" if self.name == "thinking" else call

    def wrote(self) -> bool:
        return self.target.is_file() and self.target.read_text() == CONTENT

    def command(self) -> list[str]:
        """`localrun launch` with the agent's headless arguments."""
        if self.name == "answer":
            prompt = "What is the answer? Reply in one sentence."
        else:
            prompt = f"Create the file hello.txt here containing the line: {CONTENT.strip()}"
        launch = _localrun("launch", self.agent.name, "--model", self.model)
        if self.agent.name == "claude":  # it asks for 40960; a scripted model holds less
            launch += ["--context", str(N_CTX)]
        args = [a.replace("{prompt}", prompt) for a in self.agent.args]
        extra = ["hello.txt"] if self.agent.name == "aider" and self.name == "tool" else []
        return [*launch, "--", *args, *extra]

    def env(self, base: dict[str, str], bin_dir: Path, proxy_port: int) -> dict[str, str]:
        """The environment `localrun launch` runs in: a fresh home and config folders, the
        agents first on PATH, the server at the proxy, update checks and telemetry off."""
        home = str(self.home)
        env = {k: v for k, v in base.items() if not k.startswith(AGENT_PREFIXES)}
        env.update(HOME=home, LOCALRUN_HOST=f"127.0.0.1:{proxy_port}", NO_COLOR="1", TERM="dumb")
        env["PATH"] = f"{bin_dir}{os.pathsep}{base.get('PATH', '')}"
        env.update({k: v.replace("{home}", home) for k, v in self.agent.env.items()})
        return env

    def prepare(self, env: dict[str, str]) -> None:
        """Its folders, and its scripted model in the run's store (`localrun launch` gives it
        the context the agent asks for)."""
        self.work.mkdir(parents=True)
        for value in ("{home}", *self.agent.env.values()):  # its config folders (Codex's must be)
            if value.startswith("{home}"):
                Path(value.replace("{home}", str(self.home))).mkdir(parents=True, exist_ok=True)
        template = THINKING_TEMPLATE if self.name == "thinking" else TOOL_TEMPLATE
        gguf = self.root / f"{self.id}.gguf"
        write_scripted_model(gguf, self.says(), template=template.read_text(), n_ctx=N_CTX)
        forcing = "PARAMETER grammar_forcing false\n"  # forced text spelled as its script has it
        (self.root / "Modelfile").write_text(f"FROM ./{gguf.name}\n{forcing}")
        create = _localrun("create", self.model, "-f", str(self.root / "Modelfile"))
        if (done := subprocess.run(create, env=env, capture_output=True)).returncode != 0:
            raise SystemExit(f"localrun create {self.model}: {done.stderr.decode().strip()}")
        if self.agent.name == "aider":  # a fresh price list: not fetched from GitHub at start
            (self.home / ".aider" / "caches").mkdir(parents=True)
            (self.home / ".aider/caches/model_prices_and_context_window.json").write_text("{}")


@dataclass
class Result:
    case: Case
    ok: bool
    seconds: float
    exchanges: list[Exchange]
    why: str = ""


def run_case(case: Case, env: dict[str, str], proxy: Proxy, timeout: float) -> Result:
    """Run one agent on one case until it ends, has shown what it had to, or times out."""
    first = len(proxy.since(0))
    stops = case.name != "answer" and case.agent.name in ("codex", "opencode")
    start, why = time.monotonic(), ""
    with open(case.root / "stdout.txt", "wb") as out, open(case.root / "stderr.txt", "wb") as err:
        child = subprocess.Popen(
            case.command(), cwd=case.work, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=err, start_new_session=True,  # one group: launch and the agent it starts
        )  # fmt: skip
        while child.poll() is None:
            if time.monotonic() - start > timeout:
                why = f"timed out after {timeout:.0f} s"
                break
            if stops and case.wrote() and _answered_tool_result(proxy.since(first)):
                break  # it would call the tool again, and again
            time.sleep(0.25)
        _stop(child)
    seconds, exchanges = time.monotonic() - start, proxy.since(first)
    with open(case.root / "requests.jsonl", "w") as log:  # every one, for --keep
        for e in exchanges:
            line = {"method": e.method, "path": e.path, "query": e.query, "status": e.status}
            log.write(json.dumps({**line, "headers": e.headers, "body": e.data}) + "\n")
    code, answer = child.returncode, case.name == "answer"
    stdout = (case.root / "stdout.txt").read_text(errors="replace")
    checks = (
        (answer and ANSWER not in stdout, "the answer is not on stdout"),
        (answer and code != 0, "it printed the answer, then failed"),  # it must end by itself
        (not answer and not case.wrote(), "hello.txt was not written"),
        (not answer and case.agent.name != "aider" and not _answered_tool_result(exchanges),
         "no request carrying the tool result was answered"),
    )  # fmt: skip
    why = why or next((problem for failed, problem in checks if failed), "")
    why += f"; exit status {code}" if why and code else ""
    return Result(case, not why, seconds, exchanges, why)


def _stop(child: subprocess.Popen[bytes]) -> None:
    """End the process group started for a case: launch, and the agent under it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=10)
        os.killpg(child.pid, signal.SIGKILL)  # what is left in the group, launch's wait or not
    child.wait()


def _localrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "localrun", *args]


@contextlib.contextmanager
def serve(env: dict[str, str], log: Path) -> Iterator[int]:
    """`localrun serve` on a port of its own, until the block ends; its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {**env, "LOCALRUN_HOST": f"127.0.0.1:{port}"}
    with open(log, "ab") as out:
        server = subprocess.Popen(
            _localrun("serve"), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/api/version")
                if conn.getresponse().status == 200:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
                raise SystemExit(f"localrun serve did not start:\n{tail}")
            time.sleep(0.2)
        yield port
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=20)
        server.kill()  # nothing, once it has ended
        server.wait()


def _kind(exchange: Exchange) -> tuple[Any, ...]:
    """What makes a request worth a fixture of its own: a retry, a repeated turn or another
    title probe is of a kind already kept."""
    body = exchange.data
    kind: tuple[Any, ...] = (exchange.method, exchange.path, exchange.status)
    if not isinstance(body, dict):
        return kind
    # Chat's first message is its system message (OpenCode's title prompt, or its own).
    system = body.get("system") or body.get("instructions") or (body.get("messages") or [""])[0]
    shape = (len(body.get("tools") or ()), _carries_tool_result(body), body.get("max_tokens"))
    return (*kind, *shape, json.dumps(system)[:300])


def fixture(result: Result) -> dict[str, Any]:
    """The case's distinct requests, as the replay tests read them."""
    seen: set[tuple[Any, ...]] = set()
    requests = []
    for e in result.exchanges:
        if not e.status or _kind(e) in seen:  # no status: cut off when the agent was stopped
            continue
        seen.add(_kind(e))
        headers = {
            k: "<key>" if k in SECRET_HEADERS else v
            for k, v in sorted(e.headers.items())
            if k in SECRET_HEADERS or k in KEPT_HEADERS or k.startswith("x-stainless-")
        }
        body = e.data if e.data is not None else e.body.decode(errors="replace") or None
        request = {"method": e.method, "path": e.path, "query": e.query, "headers": headers}
        requests.append({**request, "body": body, "status": e.status})
    case = result.case
    return {"agent": case.agent.name, "version": case.agent.version, "case": case.name,
            "model_answer": case.says(), "requests": requests}  # fmt: skip


def _statuses(exchanges: list[Exchange]) -> str:
    counts = Counter(str(e.status or "cut") for e in exchanges)  # cut: stopped before answered
    return " ".join(f"{s}x{n}" if n > 1 else s for s, n in sorted(counts.items()))


def report(results: list[Result]) -> str:
    """The table, then what went wrong in each case that failed or met refused requests."""
    rows = [("agent", "version", "case", "result", "seconds", "requests", "statuses")]
    rows += [
        (r.case.agent.name, r.case.agent.version, r.case.name, "ok" if r.ok else "FAIL",
         f"{r.seconds:.1f}", str(len(r.exchanges)), _statuses(r.exchanges))
        for r in results
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    for r in results:
        problems = []
        for e in r.exchanges:
            text = e.response.decode(errors="replace")
            if e.status >= 400 or re.search(r'"type":\s*"(error|response\.failed)"', text):
                said = re.search(r'"message":\s*"((?:[^"\\]|\\.){0,400})', text)
                message = said[1] if said else text[:300]
                problems.append(f"  {e.method} {e.path} -> {e.status}: {message}")
        if r.ok and not problems:
            continue
        lines += [f"\n{r.case.id}: {r.why or 'passed, past refused requests'}", *problems[:6]]
        for stream in ("stderr", "stdout") if not r.ok else ():
            text = (r.case.root / f"{stream}.txt").read_text(errors="replace").strip()
            lines += [f"  {stream}: {line[:300]}" for line in text.splitlines()[-6:]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated agents (default: {','.join(AGENTS)})")
    parser.add_argument("--cases", help=f"comma-separated cases (default: {','.join(CASES)})")
    default_dir = Path.home() / ".cache" / "localrun" / "agents"
    parser.add_argument("--dir", type=Path, default=default_dir, help="the agents' folder")
    parser.add_argument("--record", type=Path, metavar="DIR", help="write the fixtures here")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a case may take")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(AGENTS)
    if unknown := [n for n in names if n not in AGENTS]:
        parser.error(f"unknown agent {', '.join(unknown)}: choose from {', '.join(AGENTS)}")
    agents = [AGENTS[n] for n in names]
    root: Path = args.dir.expanduser().resolve()
    programs = install(root, agents)

    # Under the agents' folder, not /tmp: Codex puts no helpers in a temporary folder.
    run = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    (run / "bin").mkdir()
    for name, program in programs.items():
        (run / "bin" / name).symlink_to(program)
    wanted = args.cases.split(",") if args.cases else CASES
    cases = [Case(a, n, run / f"{a.name}-{n}") for a in agents for n in a.cases if n in wanted]
    base = {**os.environ, "LOCALRUN_HOME": str(run / "localrun")}
    for name in ("LOCALRUN_HOST", "LOCALRUN_API_KEY"):  # the run's server is its own
        base.pop(name, None)
    print(f"run folder {run}; writing {len(cases)} scripted models ...", flush=True)
    for case in cases:
        case.prepare(base)
    # Stable placeholders for the run's paths, also as Claude Code names a project's folder (the
    # path with every other character a dash), and the home with its slash (Codex calls its
    # main agent "/root", root's home or not).
    paths = [(str(c.work), "/work/project") for c in cases] + [(str(run), "/work/run")]
    paths += [(str(c.home), "/work/home") for c in cases]
    paths += [(re.sub("[^A-Za-z0-9]", "-", a), re.sub("[^A-Za-z0-9]", "-", b)) for a, b in paths]
    paths += [(str(root), "/work/agents"), (str(REPO), "/work/localrun")]
    paths += [(f"{Path.home()}/", "/home/user/"), (f"/home/{getpass.getuser()}", "/home/user")]
    paths.sort(key=lambda p: -len(p[0]))
    results: list[Result] = []
    try:
        with serve(base, run / "serve.log") as port:
            proxy = Proxy(("127.0.0.1", port))
            threading.Thread(target=proxy.serve_forever, daemon=True).start()
            try:
                for case in cases:
                    print(f"{case.id} ...", flush=True)
                    env = case.env(base, run / "bin", int(proxy.server_address[1]))
                    result = run_case(case, env, proxy, args.timeout)
                    results.append(result)
                    state = "ok" if result.ok else f"FAIL ({result.why})"
                    print(f"  {state} in {result.seconds:.1f} s", flush=True)
                    if args.record:
                        args.record.mkdir(parents=True, exist_ok=True)
                        text = json.dumps(fixture(result), indent=1) + "\n"
                        for real, placeholder in paths:  # JSON writes a path as it is
                            text = text.replace(real, placeholder)
                        (args.record / f"{case.id}.json").write_text(text)
            finally:
                proxy.shutdown()
                proxy.server_close()
    finally:
        print(f"\n{report(results)}")
        if args.keep:
            print(f"\nkept {run}")
        else:
            shutil.rmtree(run, ignore_errors=True)
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
