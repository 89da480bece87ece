"""Native failures while loading: `run` and the server fail with one line and stay up.

Every file known to make llama.cpp abort, hang or grow is refused by the header checks first
(tests/unit/gguf/test_gguf_rules.py), so the defence behind them is exercised by making llama.cpp's
load call itself abort, hang or grow: a `sitecustomize` on PYTHONPATH wraps
`llama_cpp.llama_model_load_from_file` in runner processes (`python -m localrun.worker`) only.
Everything else (the CLI, the probe, the runner, the watchdog, the server) is the real code.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from localrun.store import names
from localrun.store.local import Store

from support import PATIENCE_S
from support.cli import CLI, assert_one_line_error
from support.serve import Serve
from support.server import add_model

pytestmark = [pytest.mark.model, pytest.mark.slow]

_HOOK = """
import os, sys
_mode = os.environ.get("LOCALRUN_TEST_LOAD_HOOK")
if _mode:
    import llama_cpp
    _real = llama_cpp.llama_model_load_from_file

    def _load(*args):
        if "worker" in (sys.argv[0] if sys.argv else ""):
            if _mode == "abort":
                os.abort()
            if _mode == "hang":
                import time
                time.sleep(3600)
            if _mode == "grow":
                hog = []
                while True:
                    hog.append(b"x" * (32 << 20))
        return _real(*args)

    llama_cpp.llama_model_load_from_file = _load

# A pause point: a runner process (the probe's child) starts, says so, and waits to be let go
# before it reads the load message.
_pause = os.environ.get("LOCALRUN_TEST_PAUSE_DIR")
if _pause and "localrun.worker" in getattr(sys, "orig_argv", []):
    import pathlib, time
    _folder = pathlib.Path(_pause)
    (_folder / "paused").touch()
    _deadline = time.monotonic() + 600
    while not (_folder / "go").exists() and time.monotonic() < _deadline:
        time.sleep(0.02)
"""


@pytest.fixture
def hooked(home: Path, tmp_path: Path, tiny_model: Path) -> Iterator[dict[str, str]]:
    """The tiny model in the store as "tiny", and the env that puts the hook on PYTHONPATH."""
    add_model(Store(home / "models"), "tiny", tiny_model)
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(_HOOK)
    path = os.pathsep.join(p for p in (str(hook_dir), os.environ.get("PYTHONPATH", "")) if p)
    yield {"PYTHONPATH": path, "LOCALRUN_HOST": "127.0.0.1:9"}


def test_an_abort_while_loading_is_one_line(cli: CLI, hooked: dict[str, str]) -> None:
    result = cli("run", "tiny", "Hello", env={**hooked, "LOCALRUN_TEST_LOAD_HOOK": "abort"})
    assert_one_line_error(result, "llama.cpp failed while loading tiny", "SIGABRT")
    assert "Traceback" not in result.stderr and "#0" not in result.stderr


def test_a_hang_past_the_load_timeout_is_one_line(cli: CLI, hooked: dict[str, str]) -> None:
    env = {**hooked, "LOCALRUN_TEST_LOAD_HOOK": "hang", "LOCALRUN_LOAD_TIMEOUT": "2s"}
    started = time.monotonic()
    result = cli("run", "tiny", "Hello", env=env, timeout=PATIENCE_S)
    assert_one_line_error(result, "tiny:latest did not finish loading in 2 s")
    assert time.monotonic() - started < 30


def test_a_load_that_grows_without_end_is_stopped(cli: CLI, hooked: dict[str, str]) -> None:
    result = cli("run", "tiny", "Hello", env={**hooked, "LOCALRUN_TEST_LOAD_HOOK": "grow"})
    assert_one_line_error(result, "tiny:latest used over", "GiB of memory while loading")


def test_a_clean_load_is_probed_once(cli: CLI, hooked: dict[str, str], home: Path) -> None:
    first = cli("run", "tiny", "Hello", "-p", "num_predict=4", env=hooked)
    assert first.code == 0, first.stderr
    assert len(list((home / "loaded").iterdir())) == 1
    # Known to load: no probe runs, so a runner that would abort is never started.
    again = cli(
        "run", "tiny", "Hello", "-p", "num_predict=4",
        env={**hooked, "LOCALRUN_TEST_LOAD_HOOK": "abort"},
    )  # fmt: skip
    assert again.code == 0, again.stderr


def test_the_server_reports_a_crashed_load_without_internals(
    hooked: dict[str, str], home: Path
) -> None:
    serve = Serve(home, env={**hooked, "LOCALRUN_TEST_LOAD_HOOK": "abort"})
    try:
        with httpx.Client(base_url=serve.url, timeout=PATIENCE_S) as http:
            answer = http.post("/api/generate", json={"model": "tiny", "prompt": "Hi"})
            assert answer.status_code == 500, answer.text
            message = answer.json()["error"]
            assert "llama.cpp failed while loading tiny" in message, message
            for leak in ("/blobs/", "sha256-", "ggml", "#0", str(home)):
                assert leak not in message, (leak, message)
            # OpenAI's shape for the same failure; and the server is still up.
            chat = http.post(
                "/v1/chat/completions",
                json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]},
            )
            assert chat.status_code == 500 and "error" in chat.json(), chat.text
            assert http.get("/api/tags").status_code == 200
    finally:
        serve.kill()


def test_run_refuses_a_context_that_cannot_fit(
    cli: CLI, hooked: dict[str, str], home: Path, tiny_long_model: Path
) -> None:
    # Trained (so its header says) on 2**24 tokens: num_ctx is not held below that.
    add_model(Store(home / "models"), "long", tiny_long_model)
    result = cli("run", "long", "Hello", "-p", "num_ctx=16777216", env=hooked)
    assert_one_line_error(result, "num_ctx 16777216 needs about", "available")


def test_run_loads_the_model_it_resolved_though_the_name_changed_meanwhile(
    cli: CLI,
    hooked: dict[str, str],
    home: Path,
    tmp_path: Path,
    tiny_long_model: Path,
    smollm2_path: str,
) -> None:
    """`localrun run m` resolves `m` once: the probe's child is handed the model resolved (it
    is paused as it starts, while `m` is created anew as a model whose context cannot fit, and
    a prune runs), and so is the load in the command's own process; its lease keeps the blobs
    until it ends."""
    store = Store(home / "models")
    add_model(store, "m", Path(smollm2_path))
    manifest = store.read_manifest(names.parse("m"))
    blob = store.blob_path(manifest.of_kind("model")[0].digest)
    pause = tmp_path / "pause"
    pause.mkdir()
    env = {**hooked, "LOCALRUN_TEST_PAUSE_DIR": str(pause)}
    question = "What is the capital of France? Answer with one word."
    args = ("run", "m", question, "-p", "temperature=0", "-p", "num_predict=12")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(cli, *args, env=env)
        try:
            deadline = time.monotonic() + PATIENCE_S
            while not (pause / "paused").exists():
                assert not running.done(), running.result()
                assert time.monotonic() < deadline, "the probe's runner never started"
                time.sleep(0.02)
            # `m` is now a model no runner loads: a probe that looked it up would fail.
            add_model(store, "m", tiny_long_model, "PARAMETER num_ctx 16777216\n")
            store.prune()
            assert blob.is_file()  # held by the command for the model it resolved
        finally:
            (pause / "go").touch()
        result = running.result()
    assert result.code == 0, result.stderr
    assert "Paris" in result.stdout  # SmolLM2's answer
    store.prune()
    assert not blob.exists()  # the command ended, and its lease with it
