"""Native failures while loading: `run` and the server fail with one line and stay up.

Every file known to make llama.cpp abort, hang or grow is refused by the header checks first
(tests/unit/gguf/test_gguf_rules.py), so the defence behind them is exercised by making llama.cpp's
load call itself abort, hang or grow: a `sitecustomize` on PYTHONPATH wraps
`llama_cpp.llama_model_load_from_file` in runner processes (`python -m localrun.worker`) only.
Everything else (the CLI, the probe, the runner, the watchdog, the server) is the real code.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from localrun.store.models import Store

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
