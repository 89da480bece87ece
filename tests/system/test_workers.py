"""A model split across llama.cpp's RPC workers (issue 96): `localrun worker` twice on loopback,
serving this machine's CPU with the rpc runtime built for real (`localrun runtime install rpc`,
about 20 s), and the main process holding the first layers.
- the split answers as the model alone does (greedy), on a transformer, a sliding window, a
  recurrent and a hybrid memory, and through every dialect of `serve --workers` (Ollama, OpenAI
  chat and Responses, Anthropic), with the same log-probabilities bit for bit under the exact
  runtime; ps shows it;
- a worker killed mid-answer, or stopped (SIGSTOP) past LOCALRUN_WORKER_TIMEOUT, ends the stream
  with one line in the dialect in bounded time, and the next request loads without it;
- a "worker" that sends garbage is left out with a warning; one that answers the handshake and
  then garbage fails the request with 502, and the server lives on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from localrun.hardware import workers as workers_mod
from localrun.store.local import Store

from support import PATIENCE_S
from support.cli import localrun_env
from support.rpc import garbage, listening, worker_like
from support.runtimes import builds_folder, install
from support.serve import Serve
from support.server import add_model

pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.server]
PROMPT = "Why is the sky blue?"
HERE = "this machine"
STORY = [{"role": "user", "content": "Write a very long story about a dragon and a king."}]


def _env(home: Path, **extra: str) -> dict[str, str]:
    return localrun_env(
        LOCALRUN_HOME=str(home), LOCALRUN_RUNTIME_BUILDS=str(builds_folder()), **extra
    )


@pytest.fixture(scope="session")
def rpc_home(
    tmp_path_factory: pytest.TempPathFactory,
    rpc_runtime: Path,
    smollm2_path: str,
    tiny_swa: Path,
    tiny_mamba: Path,
    tiny_lfm2: Path,
) -> Path:
    """A home with the rpc and exact runtimes installed and the models the tests split."""
    home = tmp_path_factory.mktemp("rpc-home")
    shutil.copytree(rpc_runtime / "runtimes", home / "runtimes", symlinks=True)
    # The exact runtime too, in every process of the home (workers, servers, runs): a split is
    # held to the same answer bit for bit (its build is test_exact's, kept: nothing compiles).
    install(home, "exact")
    shown = subprocess.run(
        [sys.executable, "-m", "localrun", "--version"],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )
    assert "exact runtime exact-" in shown.stdout, shown.stdout  # every process here loads it
    store = Store(home / "models")
    add_model(store, "smol", Path(smollm2_path))
    for name, path in (("swa", tiny_swa), ("mamba", tiny_mamba), ("lfm2", tiny_lfm2)):
        add_model(store, name, path)
    return home


class Worker:
    """`localrun worker` on a free loopback port, once it answers a probe."""

    def __init__(self, home: Path) -> None:
        with socket.create_server(("127.0.0.1", 0)) as probe:
            port = probe.getsockname()[1]
        self.endpoint = f"127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localrun", "worker", "--port", str(port)],
            env=_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        said = self.proc.stdout.readline()
        assert f"localrun worker on {self.endpoint} offers CPU" in said, said
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # never blocks it
        deadline = time.monotonic() + 60
        while True:
            try:
                workers_mod.probe(self.endpoint, timeout_s=2)
                return
            except Exception:
                assert time.monotonic() < deadline and self.proc.poll() is None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def pair(rpc_home: Path) -> Iterator[list[Worker]]:
    started = [Worker(rpc_home), Worker(rpc_home)]
    yield started
    for worker in started:
        worker.stop()


def _run(home: Path, model: str, **extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "localrun", "run", model, PROMPT, "--verbose"]
    argv += ["-p", "temperature=0", "-p", "num_predict=24"]
    done = subprocess.run(
        argv, env=_env(home, **extra), capture_output=True, text=True, timeout=PATIENCE_S
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


class Split:
    """`serve --workers` over the pair, its first lines, and the pair's memory before it loaded."""

    def __init__(self, home: Path, pair: list[Worker]) -> None:
        self.endpoints = [w.endpoint for w in pair]
        self.rss = [psutil.Process(w.proc.pid).memory_info().rss for w in pair]
        env = _env(home, LOCALRUN_MAX_LOADED_MODELS="1")
        self.serve = Serve(home, "--workers", ",".join(self.endpoints), env=env)
        assert self.serve.proc.stdout is not None
        self.said = [self.serve.proc.stdout.readline() for _ in range(3)][1:]

    def unload(self) -> None:
        """Every model unloaded and its runner gone, so that the workers serve the next one."""
        for model in httpx.get(f"{self.serve.url}/api/ps", timeout=PATIENCE_S).json()["models"]:
            body = {"model": model["name"], "keep_alive": 0}
            httpx.post(f"{self.serve.url}/api/generate", json=body, timeout=PATIENCE_S)
        for endpoint in self.endpoints:  # a worker answers once its last client has gone
            workers_mod.probe(endpoint, timeout_s=PATIENCE_S)


@pytest.fixture(scope="module")
def split_server(rpc_home: Path, pair: list[Worker]) -> Iterator[Split]:
    split = Split(rpc_home, pair)
    yield split
    split.serve.kill()


@pytest.fixture
def split(split_server: Split) -> Iterator[Split]:
    """The module's split server, its models unloaded after the test: the pair is free again."""
    yield split_server
    split_server.unload()


@pytest.mark.parametrize("model", ["smol", "swa", "mamba", "lfm2"])
def test_a_model_split_across_two_workers_answers_as_it_does_alone(
    rpc_home: Path, split: Split, model: str
) -> None:
    """`localrun run` alone (here, in its process), then through the split server."""
    alone = _run(rpc_home, model, LOCALRUN_WORKERS=",".join(split.endpoints))
    assert "LOCALRUN_WORKERS is for `localrun serve`: this model loads here alone" in alone.stderr
    through = _run(rpc_home, model, LOCALRUN_HOST=split.serve.address)
    assert through.stdout == alone.stdout and alone.stdout.strip()
    assert [s.split(": ")[0] for s in _split_of(split.serve)] == [*split.endpoints, HERE]


def _split_of(serve: Serve) -> list[str]:
    models = httpx.get(f"{serve.url}/api/ps", timeout=PATIENCE_S).json()["models"]
    return list(models[0]["split"])


def _logprobs(url: str) -> list[tuple[str, float]]:
    """A greedy OpenAI answer's tokens and their log-probabilities."""
    import openai

    answer = openai.OpenAI(base_url=f"{url}/v1", api_key="x").chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": PROMPT}],
        temperature=0,
        max_tokens=32,
        logprobs=True,
    )
    content = answer.choices[0].logprobs.content  # type: ignore[union-attr]
    return [(t.token, t.logprob) for t in content or []]


def test_every_dialect_answers_through_the_split_and_ps_shows_it(
    rpc_home: Path, pair: list[Worker], split: Split
) -> None:
    """The same text in each dialect, and the same log-probabilities bit for bit: each layer runs
    the exact runtime's CPU kernels on a worker as here (neither repacks SmolLM2's Q4_1), and
    llama.cpp's RPC moves the tensors unchanged. The workers' memory grew by their share."""
    import anthropic
    import ollama
    import openai

    assert all(line.startswith("worker 127.0.0.1:") and "free" in line for line in split.said)
    alone = _run(rpc_home, "smol").stdout.strip()
    local = Serve(rpc_home, env=_env(rpc_home))
    try:
        expected = _logprobs(local.url)
    finally:
        local.kill()
    serve = split.serve
    question = [{"role": "user", "content": PROMPT}]
    texts = [
        ollama.Client(host=serve.url)
        .chat(model="smol", messages=question, options={"temperature": 0, "num_predict": 24})
        .message.content,
        openai.OpenAI(base_url=f"{serve.url}/v1", api_key="x")
        .chat.completions.create(
            model="smol",
            messages=question,  # type: ignore[arg-type]
            temperature=0,
            max_tokens=24,
        )
        .choices[0]
        .message.content,
        anthropic.Anthropic(base_url=serve.url, api_key="x")
        .messages.create(
            model="smol",
            messages=question,  # type: ignore[arg-type]
            max_tokens=24,
            extra_body={"temperature": 0},
        )
        .content[0]
        .text,  # type: ignore[union-attr]
        openai.OpenAI(base_url=f"{serve.url}/v1", api_key="x")
        .responses.create(model="smol", input=PROMPT, temperature=0, max_output_tokens=24)
        .output_text,
    ]
    assert texts == [alone] * 4
    assert _logprobs(serve.url) == expected and len(expected) == 32
    assert [s.split(": ")[0] for s in _split_of(serve)] == [*split.endpoints, HERE]
    grown = [
        psutil.Process(w.proc.pid).memory_info().rss - before
        for w, before in zip(pair, split.rss, strict=True)
    ]
    assert min(grown) > 32 * 2**20, grown  # ~10 layers of weights and their KV cache each
    shown = subprocess.run(
        [sys.executable, "-m", "localrun", "ps"],
        env=_env(rpc_home, LOCALRUN_HOST=serve.address),
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )
    assert "CPU/2 workers" in shown.stdout, shown.stdout


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_worker_lost_mid_answer_ends_it_in_one_line_and_the_model_reloads_without_it(
    rpc_home: Path, pair: list[Worker], how: str
) -> None:
    import openai

    victim = Worker(rpc_home)
    endpoints = f"{pair[0].endpoint},{victim.endpoint}"
    env = _env(rpc_home, LOCALRUN_WORKER_TIMEOUT="2s")
    serve = Serve(rpc_home, "--workers", endpoints, env=env)
    client = openai.OpenAI(base_url=f"{serve.url}/v1", api_key="x", max_retries=0)
    try:
        stream = client.chat.completions.create(
            model="smol",
            messages=STORY,
            max_tokens=3000,
            stream=True,  # type: ignore[arg-type]
        )
        chunks, started = 0, None
        with pytest.raises(openai.APIError) as caught:
            for _ in stream:
                chunks += 1
                if chunks == 5:
                    started = time.monotonic()
                    os.kill(victim.proc.pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        assert started is not None, f"the stream ended after {chunks} chunks"
        assert time.monotonic() - started < 30
        assert "a worker holding part of smol:latest stopped answering" in caught.value.message
        again = client.chat.completions.create(
            model="smol",
            messages=STORY,
            max_tokens=8,  # type: ignore[arg-type]
        )
        assert again.choices[0].message.content
        assert [s.split(": ")[0] for s in _split_of(serve)] == [pair[0].endpoint, "this machine"]
    finally:
        serve.kill()
        victim.stop()


def test_a_worker_that_sends_garbage_is_left_out_or_fails_the_request_in_one_line(
    rpc_home: Path, pair: list[Worker]
) -> None:
    with listening(garbage) as noise, listening(worker_like(devices=1, then_garbage=True)) as liar:
        serve = Serve(rpc_home, "--workers", f"{pair[0].endpoint},{noise}", env=_env(rpc_home))
        try:
            said = [serve.proc.stdout.readline() for _ in range(3)][1:]  # type: ignore[union-attr]
            assert any("does not speak llama.cpp's RPC protocol" in line for line in said), said
            answer = httpx.post(
                f"{serve.url}/api/generate",
                json={"model": "smol", "prompt": PROMPT, "stream": False},
                timeout=PATIENCE_S,
            )
            assert answer.status_code == 200 and answer.json()["response"]
            assert [s.split(": ")[0] for s in _split_of(serve)] == [pair[0].endpoint, HERE]
        finally:
            serve.kill()
        serve = Serve(rpc_home, "--workers", liar, env=_env(rpc_home))
        try:
            started = time.monotonic()
            failed = httpx.post(
                f"{serve.url}/v1/chat/completions",
                json={"model": "smol", "messages": STORY, "max_tokens": 8},
                timeout=PATIENCE_S,
            )
            assert time.monotonic() - started < 60
            assert failed.status_code == 502, failed.text
            error = failed.json()["error"]
            assert error["code"] == "worker_failed" and "\n" not in error["message"]
            assert httpx.get(f"{serve.url}/api/ps", timeout=PATIENCE_S).status_code == 200
        finally:
            serve.kill()


def test_a_worker_listens_beyond_loopback_only_when_told_and_says_a_taken_port(
    rpc_home: Path, pair: list[Worker]
) -> None:
    def worker(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "localrun", "worker", *args],
            env=_env(rpc_home),
            capture_output=True,
            text=True,
            timeout=PATIENCE_S,
        )

    refused = worker("--host", "0.0.0.0")
    assert refused.returncode == 1 and "--allow-network" in refused.stderr
    assert refused.stderr.startswith("Error: refusing to listen on 0.0.0.0")
    taken = worker("--port", pair[0].endpoint.split(":")[1])
    assert taken.returncode == 1 and "Address already in use; pick another --port" in taken.stderr
    assert len(taken.stderr.strip().splitlines()) == 1
    unnamed = worker("--host", "a..b", "--allow-network")  # a lookup's UnicodeError, once
    assert unnamed.returncode == 1 and unnamed.stderr.startswith("Error: cannot find the address")
    elsewhere = worker("--host", "192.0.2.1", "--allow-network")  # TEST-NET-1: nobody's
    assert elsewhere.returncode == 1 and "an address of this machine" in elsewhere.stderr
    assert len(elsewhere.stderr.strip().splitlines()) == 1, elsewhere.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "localrun", "info", "--json"],
        env=_env(rpc_home, LOCALRUN_WORKERS=pair[1].endpoint),
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )
    found = json.loads(listed.stdout)["workers"]
    assert found[0]["endpoint"] == pair[1].endpoint and "RPC 7." in found[0]["offers"]
    endpoints = [w.endpoint for w in pair]
    fitted = subprocess.run(
        [sys.executable, "-m", "localrun", "show", "smol", "--fit", "--json"],
        env=_env(rpc_home, LOCALRUN_WORKERS=",".join(endpoints)),
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )
    planned = json.loads(fitted.stdout)["split"]  # planned as a load would, without loading
    assert planned["workers"] == endpoints and len(planned["tensor_split"]) == 2
    assert [s.split(": ")[0] for s in planned["shares"]] == [*endpoints, HERE]
