"""`localrun serve` in front of upstream servers, on loopback only: real `localrun serve`
processes as upstreams behind a fourth, and a scripted OpenAI-only upstream that fails on cue
(scripts/fuzzlib/upstream.py). The official clients talk to the gateway.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fuzzlib.upstream import WORDS, FakeUpstream
from testmodels.text import write_tiny_model

from localrun.store.local import Store

from support import PATIENCE_S
from support.cli import CLI, assert_one_line_error
from support.serve import Serve, gateway
from support.server import add_model
from support.tools import WEATHER

pytestmark = [pytest.mark.server, pytest.mark.model]

KEY = "sk-upstream-secret-123456"
HI = {"model": "big-model", "messages": [{"role": "user", "content": "hi"}]}


def _metric(url: str, name: str, upstream: str) -> float:
    text = httpx.get(url + "/metrics", timeout=PATIENCE_S).text
    found = re.search(rf'^{name}{{upstream="{upstream}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def _settles(url: str, name: str, upstream: str, value: float, seconds: float) -> None:
    """Wait until the gateway's metric `name` for `upstream` reads `value`."""
    _until(url, name, upstream, lambda got: got == value, seconds)


def _until(
    url: str, name: str, upstream: str, holds: Callable[[float], bool], seconds: float
) -> float:
    """Wait until the gateway's metric `name` for `upstream` satisfies `holds`; its value."""
    deadline = time.monotonic() + seconds
    while not holds(got := _metric(url, name, upstream)):
        assert time.monotonic() < deadline, (name, upstream, got)
        time.sleep(0.1)
    return got


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def fake_gw(tmp_path: Path, fake: FakeUpstream) -> Iterator[Serve]:
    """A gateway in front of the scripted upstream `fake`."""
    gw = gateway(tmp_path / "gw", {"fake": {"url": fake.url}})
    yield gw
    gw.kill()


@pytest.fixture
def two_fakes(tmp_path: Path) -> Iterator[tuple[FakeUpstream, FakeUpstream, Serve]]:
    """Two scripted upstreams serving the same model, behind a gateway."""
    with FakeUpstream() as one, FakeUpstream() as two:
        gw = gateway(tmp_path / "gw", {"one": {"url": one.url}, "two": {"url": two.url}})
        yield one, two, gw
        gw.kill()


@pytest.fixture
def upstream_home(tmp_path: Path, tiny_model: Path) -> Path:
    home = tmp_path / "upstream-home"
    # A 4096-token context: an answer of thousands of tokens lasts seconds, not a blink.
    long_tiny = write_tiny_model(tmp_path / "tiny-4k.gguf", n_ctx=4096)
    add_model(Store(home / "models"), "tiny", long_tiny)
    return home


@pytest.fixture
def real_upstreams(upstream_home: Path) -> Iterator[list[Serve]]:
    """Two `localrun serve` processes sharing one store, each serving `tiny`."""
    servers = [Serve(upstream_home), Serve(upstream_home)]
    yield servers
    for server in servers:
        server.kill()


# -- upstreams.toml and the commands ----------------------------------------------------------


def test_upstream_commands(cli: CLI, home: Path) -> None:
    (home / "upstreams.toml").parent.mkdir(parents=True, exist_ok=True)
    (home / "upstreams.toml").write_text("# my cluster\n")
    added = cli("upstream", "add", "gpu-box", "http://10.0.0.5:8000/", "--model", "Big/Model-70B",
                "--api-key-env", "GPU_BOX_KEY")  # fmt: skip
    assert added.code == 0, added.stderr
    cli("upstream", "add", "ollama-box", "http://10.0.0.6:11434", "--dialect", "ollama")
    text = (home / "upstreams.toml").read_text()
    assert text.startswith("# my cluster") and "GPU_BOX_KEY" in text
    listed = json.loads(cli("upstream", "list", "--json").stdout)
    assert listed == [
        {"name": "gpu-box", "url": "http://10.0.0.5:8000", "dialect": "openai",
         "api_key_env": "GPU_BOX_KEY", "models": ["Big/Model-70B"]},
        {"name": "ollama-box", "url": "http://10.0.0.6:11434", "dialect": "ollama",
         "api_key_env": None, "models": []},
    ]  # fmt: skip
    shown = cli("list", "--json", env={"GPU_BOX_KEY": KEY})
    assert {"name": "Big/Model-70B", "model": "Big/Model-70B", "remote_host": "gpu-box"} in (
        json.loads(shown.stdout)
    )
    assert KEY not in shown.stdout and KEY not in cli("env", env={"GPU_BOX_KEY": KEY}).stdout
    assert_one_line_error(cli("upstream", "add", "gpu-box", "http://x:1"), "exists", "--replace")
    assert_one_line_error(cli("upstream", "add", "x", "ftp://host"), "URL", "http://")
    assert_one_line_error(cli("upstream", "add", "x", "http://u:p@host"), "URL", "--api-key-env")
    for hostile in ("http://[::1\n]:80", "http://host\n[x]", "http://[not-ip6]/", "http://h:99999"):
        assert_one_line_error(cli("upstream", "add", "x", hostile), "URL")
    assert_one_line_error(
        cli("upstream", "add", "Bad Name", "http://h"), "upstream name", "letters"
    )
    assert_one_line_error(
        cli("upstream", "add", "y", "http://h", "--api-key-env", KEY + "-x"), "variable", "name"
    )
    assert cli("upstream", "rm", "ollama-box").code == 0
    assert_one_line_error(cli("upstream", "rm", "ollama-box"), "no upstream", "upstream list")
    (home / "upstreams.toml").write_text("[upstreams.z]\nurl = 5\n")
    assert_one_line_error(cli("upstream", "list"), "has no url")


# -- dialects ---------------------------------------------------------------------------------


def test_ollama_dialect_through_an_openai_only_upstream(tmp_path: Path, fake: FakeUpstream) -> None:
    import ollama
    import openai

    gw = gateway(
        tmp_path / "gw",
        {"fake": {"url": fake.url, "api_key_env": "FAKE_KEY"}},
        FAKE_KEY=KEY,
    )
    try:
        oc = ollama.Client(host=gw.url, timeout=PATIENCE_S)
        assert "big-model" in [m.model for m in oc.list().models]  # discovered
        pieces = [
            part.message.content
            for part in oc.chat(
                model="big-model",
                messages=[{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "hi"}],
                options={"temperature": 0.2, "num_predict": 50, "top_k": 5, "stop": ["\n\n"],
                         "repeat_penalty": 1.2},
                stream=True,
            )
        ]  # fmt: skip
        assert "".join(pieces) == "Hello from the fake upstream."
        sent = fake.chat_requests()[-1]
        assert sent["path"] == "/v1/chat/completions"
        assert sent["headers"]["Authorization"] == f"Bearer {KEY}"
        body = sent["body"]
        assert body["model"] == "big-model" and body["stream"] is True
        assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "hi"}]  # fmt: skip
        assert (body["temperature"], body["max_tokens"], body["top_k"], body["stop"]) == (
            0.2, 50, 5, ["\n\n"]
        )  # fmt: skip
        assert body["repetition_penalty"] == body["repeat_penalty"] == 1.2  # each server's name
        final = oc.generate(model="big-model", prompt="raw text", raw=True)
        assert final.response == "Hello from the fake upstream." and final.eval_count == 6
        assert fake.chat_requests()[-1]["path"] == "/v1/completions"
        # The OpenAI and Anthropic dialects in front of the same upstream.
        ai = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
        reply = ai.chat.completions.create(
            model="big-model", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content == "Hello from the fake upstream."
        assert reply.usage is not None and reply.usage.completion_tokens == 6
        import anthropic

        ant = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
        said = ant.messages.create(
            model="big-model", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
        )
        assert said.content[0].text == "Hello from the fake upstream."  # type: ignore[union-attr]
        answered = ai.responses.create(model="big-model", input="hi")
        assert answered.output_text == "Hello from the fake upstream."
        # `localrun run` through the server, and `localrun list` marking the model remote.
        host = {"LOCALRUN_HOST": gw.url.removeprefix("http://")}
        ran = subprocess.run([sys.executable, "-m", "localrun", "run", "big-model", "hi"],
                             env={**os.environ, **host}, capture_output=True, text=True,
                             timeout=PATIENCE_S)  # fmt: skip
        assert ran.returncode == 0 and ran.stdout.strip() == "Hello from the fake upstream."
        listed = subprocess.run([sys.executable, "-m", "localrun", "list"], env={
            **os.environ, **host, "LOCALRUN_HOME": str(tmp_path / "gw")}, capture_output=True,
            text=True, timeout=PATIENCE_S)  # fmt: skip
        assert re.search(r"^big-model\s+remote\s+via fake$", listed.stdout, re.M), listed.stdout
        # `localrun ps` shows the model the upstream serves, with the host serving it.
        shown = subprocess.run([sys.executable, "-m", "localrun", "ps"], env={**os.environ, **host},
                               capture_output=True, text=True, timeout=PATIENCE_S)  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        assert re.search(r"^big-model\s+remote: fake\s*$", shown.stdout, re.M), shown.stdout
        # Embeddings, normalized as local ones are.
        vectors = ai.embeddings.create(model="big-model", input=["a", "b"])
        assert [v.embedding for v in vectors.data] == [pytest.approx([0.6, 0.8])] * 2
        assert vectors.usage.prompt_tokens == 4
        # The key goes to the upstream and nowhere else.
        for path in ("/api/tags", "/api/ps", "/v1/models", "/metrics"):
            assert KEY not in httpx.get(gw.url + path).text
        shown_ = httpx.post(gw.url + "/api/show", json={"model": "big-model"})
        assert KEY not in shown_.text
        # ShowResponse's fields Go always writes (a struct is never omitted): the time unknown
        assert shown_.json()["modified_at"] == "1970-01-01T00:00:00Z"
        assert shown_.json()["remote_host"] == "fake"
    finally:
        gw.stop()
    _, err = gw.proc.communicate(timeout=PATIENCE_S)
    assert KEY not in err


def test_tool_calls_and_a_slow_first_byte_through_an_upstream(
    fake: FakeUpstream, fake_gw: Serve
) -> None:
    import ollama

    oc = ollama.Client(host=fake_gw.url, timeout=PATIENCE_S)
    fake.mode = "tool"
    tools = [WEATHER]
    reply = oc.chat(model="big-model", tools=tools, messages=[
        {"role": "user", "content": "Weather in Paris?"}])  # fmt: skip
    calls = reply.message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert fake.chat_requests()[-1]["body"]["tools"] == tools
    # A first byte slower than usual, within the read timeout: waited for, not retried.
    fake.mode = "slow_first"
    fake.stall_s = 1.0
    before = len(fake.chat_requests())
    started = time.monotonic()
    reply = oc.chat(model="big-model", messages=[{"role": "user", "content": "hi"}])
    assert reply.message.content == "Hello from the fake upstream."
    assert time.monotonic() - started >= 1.0
    assert len(fake.chat_requests()) == before + 1


def test_model_names_never_choose_where_requests_go(fake: FakeUpstream, fake_gw: Serve) -> None:
    before = len(fake.chat_requests())
    for name in (fake.url + "/v1", "http://169.254.169.254/latest", "../../etc", "big-model@x"):
        answer = httpx.post(fake_gw.url + "/api/chat", json={"model": name, "messages": []})
        assert answer.status_code in (400, 404), (name, answer.text)
    assert len(fake.chat_requests()) == before


# -- faults -----------------------------------------------------------------------------------


def test_a_failure_before_the_first_byte_is_retried_elsewhere(
    tmp_path: Path, fake: FakeUpstream, real_upstreams: list[Serve]
) -> None:
    fake.models = ["tiny:latest"]
    fake.mode = "error500"
    gw = gateway(
        tmp_path / "gw",
        {"fake": {"url": fake.url}, "real": {"url": real_upstreams[0].url, "dialect": "ollama"}},
    )
    try:
        for i in range(4):  # other prompts each time: no affinity to one upstream
            body = {"model": "tiny", "prompt": f"the {i}", "stream": False}
            body["options"] = {"num_predict": 4}
            answer = httpx.post(gw.url + "/api/generate", timeout=PATIENCE_S, json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["eval_count"] > 0
        assert fake.chat_requests(), "the fake was tried"
        assert _metric(gw.url, "localrun_upstream_errors_total", "fake") >= 1
        # Two failed requests in a row ejected it (its model list kept answering).
        assert _metric(gw.url, "localrun_upstream_ejections_total", "fake") >= 1
        # Back after its cool-down, once its health check answers: it gets requests again.
        fake.mode = "ok"
        tried = len(fake.chat_requests())
        deadline = time.monotonic() + 15
        while len(fake.chat_requests()) == tried:
            assert time.monotonic() < deadline, "the upstream never came back"
            body["prompt"] = f"again {time.monotonic()}"
            answer = httpx.post(gw.url + "/api/generate", timeout=PATIENCE_S, json=body)
            assert answer.status_code == 200, answer.text
            time.sleep(0.2)
        assert _metric(gw.url, "localrun_upstream_healthy", "fake") == 1
    finally:
        gw.kill()


def test_a_cut_mid_answer_ends_with_the_dialects_error(fake: FakeUpstream, fake_gw: Serve) -> None:
    import openai

    fake.mode = "cut"
    with httpx.stream("POST", fake_gw.url + "/api/chat", timeout=30, json=HI) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert "".join(x.get("message", {}).get("content", "") for x in lines) == "Hello from"
    assert "error" in lines[-1] and "upstream fake" in lines[-1]["error"]
    assert not any(x.get("done") for x in lines), "never a silently truncated answer"
    ai = openai.OpenAI(base_url=f"{fake_gw.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in ai.chat.completions.create(
            model="big-model", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pass
    # Nothing was sent yet when it stalls: a 502 in the dialect's shape, in bounded time.
    fake.mode = "stall"
    started = time.monotonic()
    answer = httpx.post(fake_gw.url + "/v1/chat/completions", timeout=30, json={
        "model": "big-model", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "upstream_error"
    assert time.monotonic() - started < 10


def test_a_client_that_goes_away_cancels_the_upstream_request(
    fake: FakeUpstream, fake_gw: Serve
) -> None:
    fake.mode = "slow"
    with httpx.stream("POST", fake_gw.url + "/api/chat", timeout=30, json=HI) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n == 3:
                break
    assert fake.disconnected.wait(PATIENCE_S), "the upstream request was not cancelled"
    _settles(fake_gw.url, "localrun_upstream_in_flight", "fake", 0, PATIENCE_S)


# -- routing ----------------------------------------------------------------------------------


def _chat(url: str, messages: list[dict[str, str]]) -> None:
    body = {"model": "big-model", "messages": messages, "stream": False}
    answer = httpx.post(url + "/api/chat", timeout=30, json=body)
    assert answer.status_code == 200, answer.text


def test_conversations_stick_to_the_upstream_holding_their_prefix(
    two_fakes: tuple[FakeUpstream, FakeUpstream, Serve],
) -> None:
    one, two, gw = two_fakes
    first = [{"role": "system", "content": "You are terse."},
             {"role": "user", "content": "Name a colour."}]  # fmt: skip
    more = [{"role": "assistant", "content": "Red."}, {"role": "user", "content": "?"}]
    for turn in range(4):
        _chat(gw.url, first + more * turn)
    counts = sorted([len(one.chat_requests()), len(two.chat_requests())])
    assert counts == [0, 4], "every turn went where the first one went"


def test_streams_spread_over_upstreams_and_survive_one_dying(
    tmp_path: Path, real_upstreams: list[Serve], tiny_model: Path
) -> None:
    import ollama
    import openai

    a, b = real_upstreams
    # A third localrun host, with a model of its own, found from its model list.
    add_model(Store(tmp_path / "third" / "models"), "other", tiny_model)
    c = Serve(tmp_path / "third")
    gw = gateway(
        tmp_path / "gw",
        {"a": {"url": a.url, "models": ["tiny:latest"]},
         "b": {"url": b.url, "dialect": "ollama", "models": ["tiny:latest"]},
         "c": {"url": c.url, "dialect": "ollama"}},
        LOCALRUN_UPSTREAM_READ_TIMEOUT="120s",  # 32 requests queue for 4 slots on each
        # No health checks: on a busy machine a slow answer to one may count against a live
        # upstream; what this test routes by is what requests do.
        LOCALRUN_UPSTREAM_HEALTH_INTERVAL="1h",
    )  # fmt: skip
    ai = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=PATIENCE_S)

    def stream(i: int, tokens: int = 12, started: threading.Semaphore | None = None) -> str:
        chunks = ai.chat.completions.create(
            model="tiny", max_tokens=tokens, stream=True,
            messages=[{"role": "user", "content": f"conversation {i}: the a"}],
        )  # fmt: skip
        text = ""
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                if not text and started is not None:
                    started.release()
                text += chunk.choices[0].delta.content
        return text

    try:
        oc = ollama.Client(host=gw.url, timeout=PATIENCE_S)
        assert "other:latest" in [m.model for m in oc.list().models]
        assert oc.generate(model="other", prompt="the", options={"num_predict": 3}).done
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(stream, range(64)))
        assert len(answers) == 64 and all(answers)
        served = [_metric(gw.url, "localrun_upstream_requests_total", n) for n in ("a", "b")]
        assert sum(served) == 64
        assert all(abs(n - 32) <= 8 for n in served), served  # within 25% of even

        # Kill one upstream mid-run: what it was answering ends with an error; what starts
        # afterwards goes to the other. Killed once a stream has text and a is answering one
        # that has sent its first piece: waited for, whatever the machine's speed (a's streams
        # may start before or after b's, and a fast upstream may finish before a slow one
        # starts: a count of started streams says nothing of a).
        first_a = _metric(gw.url, "localrun_upstream_first_piece_seconds_total", "a")
        streaming = threading.Semaphore(0)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            running = [pool.submit(stream, 100 + i, 1500, streaming) for i in range(8)]
            assert streaming.acquire(timeout=PATIENCE_S), "no stream started"
            first = "localrun_upstream_first_piece_seconds_total"
            _until(gw.url, first, "a", lambda got: got > first_a, PATIENCE_S)
            _until(gw.url, "localrun_upstream_in_flight", "a", lambda got: got >= 1, PATIENCE_S)
            os.kill(a.proc.pid, signal.SIGKILL)
            outcomes = []
            for future in running:
                try:
                    outcomes.append(future.result(timeout=PATIENCE_S))
                except openai.APIError as exc:
                    outcomes.append(exc)
        failed = [o for o in outcomes if isinstance(o, Exception)]
        assert failed, "the streams the dead upstream was answering end with an error"
        assert all("upstream a" in str(exc) for exc in failed)
        assert len(failed) < len(outcomes), "b's streams finished"
        after = [stream(200 + i) for i in range(6)]
        assert all(after), "new requests go to the upstream still alive"
    finally:
        gw.kill()
        c.kill()


def _peak_rss(pid: int) -> int:
    """A process's peak resident memory in bytes (Linux's VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    assert found, status
    return int(found.group(1)) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc for peak memory")
def test_a_hostile_upstream_cannot_take_the_gateway_down(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    """Seen before the bounds: an endless line grew the gateway to 4 GB, a 3 MB gzip bomb too
    (and held its event loop), a 400 MB embedding answer and a 1.5 GB model list were read
    whole. Each is now an error in the dialect's shape, and the gateway stays small."""
    limit = 16 * 1024 * 1024
    gw = gateway(tmp_path / "gw", {"fake": {"url": fake.url}},
                 LOCALRUN_UPSTREAM_MAX_BYTES=str(limit))  # fmt: skip
    try:
        fake.mode = "gzip"  # a compressed answer is read (the gateway asks for gzip)
        whole = httpx.post(gw.url + "/api/chat", json={**HI, "stream": False}, timeout=PATIENCE_S)
        assert whole.status_code == 200, whole.text
        assert whole.json()["message"]["content"] == "".join(WORDS)
        fake.huge_bytes = 256 * 1024 * 1024
        for mode in ("huge_line", "gzip_bomb"):
            fake.mode = mode
            answer = httpx.post(gw.url + "/v1/chat/completions", json=HI, timeout=PATIENCE_S)
            assert answer.status_code == 502, (mode, answer.text)
            assert answer.json()["error"]["message"], mode
            assert httpx.get(gw.url + "/api/version", timeout=PATIENCE_S).status_code == 200
        fake.mode, fake.huge_bytes = "huge", 2 * limit
        embed = httpx.post(gw.url + "/v1/embeddings", json={"model": "big-model", "input": "x"},
                           timeout=PATIENCE_S)  # fmt: skip
        assert embed.status_code == 502, embed.text
        # The model list is read within its own bound: the health check fails, the upstream
        # is taken out of routing.
        _settles(gw.url, "localrun_upstream_healthy", "fake", 0, PATIENCE_S)
        peak = _peak_rss(gw.proc.pid)
        assert peak < 400 * 1024 * 1024, f"the gateway grew to {peak / 2**20:.0f} MiB"
        fake.mode = "ok"
        _settles(gw.url, "localrun_upstream_healthy", "fake", 1, PATIENCE_S)
        again = httpx.post(gw.url + "/api/chat", json={**HI, "stream": False}, timeout=PATIENCE_S)
        assert again.status_code == 200
    finally:
        gw.kill()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc for peak memory")
def test_an_upstream_that_ignores_the_limit_is_held_to_it(tmp_path: Path) -> None:
    """Seen before: an upstream streaming forever, whatever max_tokens said, had 51 MB forwarded
    through /api/chat before the client gave up. Now every dialect gets the client's limit and
    no more, ends the way it ends a length-limited answer, and the upstream request is closed;
    with no limit from the client, LOCALRUN_UPSTREAM_MAX_TOKENS holds it."""
    import anthropic
    import ollama
    import openai

    with FakeUpstream() as fake, FakeUpstream(models=("ollama-model",)) as ofake:
        gw = gateway(
            tmp_path / "gw",
            {"fake": {"url": fake.url}, "ofake": {"url": ofake.url, "dialect": "ollama"}},
            LOCALRUN_UPSTREAM_MAX_TOKENS="300",
        )
        fake.mode = ofake.mode = "endless"
        oc = ollama.Client(host=gw.url, timeout=PATIENCE_S)
        ai = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
        an = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
        user = [{"role": "user", "content": "hi"}]

        def held(upstream: FakeUpstream, ask: Callable[[], tuple[str, str]], text: str,
                 ending: str) -> None:  # fmt: skip
            upstream.disconnected.clear()
            started = time.monotonic()
            got, reason = ask()
            assert (got, reason) == (text, ending)
            assert time.monotonic() - started < 20
            assert upstream.disconnected.wait(10), "the upstream request was not closed"

        def ollama_chat(model: str, limit: int | None) -> tuple[str, str]:
            options = {"num_predict": limit} if limit else {}
            parts = list(oc.chat(model=model, messages=user, options=options, stream=True))
            return "".join(p.message.content or "" for p in parts), str(parts[-1].done_reason)

        def openai_chat(model: str) -> tuple[str, str]:
            stream = ai.chat.completions.create(
                model=model,
                messages=user,
                max_completion_tokens=20,
                stream=True,  # type: ignore[arg-type]
            )
            chunks = [c for c in stream if c.choices]
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            return text, str(chunks[-1].choices[0].finish_reason)

        def completions() -> tuple[str, str]:
            done = ai.completions.create(model="big-model", prompt="hi", max_tokens=20)
            return done.choices[0].text, done.choices[0].finish_reason

        def generate() -> tuple[str, str]:
            done = oc.generate(model="ollama-model", prompt="hi", options={"num_predict": 20})
            return done.response, str(done.done_reason)

        def messages() -> tuple[str, str]:
            with an.messages.stream(model="big-model", max_tokens=20, messages=user) as stream:
                text = "".join(stream.text_stream)
                return text, str(stream.get_final_message().stop_reason)

        def responses() -> tuple[str, str]:
            done = ai.responses.create(model="big-model", input="hi", max_output_tokens=20)
            return done.output_text, f"{done.status}: {done.incomplete_details.reason}"  # type: ignore[union-attr]

        twenty = "tick " * 20
        try:
            held(fake, lambda: ollama_chat("big-model", 20), twenty, "length")
            held(ofake, lambda: ollama_chat("ollama-model", 20), twenty, "length")
            held(fake, lambda: openai_chat("big-model"), twenty, "length")
            held(ofake, lambda: openai_chat("ollama-model"), twenty, "length")
            held(fake, completions, twenty, "length")
            held(ofake, generate, twenty, "length")
            held(fake, messages, twenty, "max_tokens")
            held(fake, responses, twenty, "incomplete: max_output_tokens")
            # No limit from the client: the server's own ceiling.
            held(fake, lambda: ollama_chat("big-model", None), "tick " * 300, "length")
            # Characters count too: 1000-character pieces fit 100 tokens' bound three times.
            fake.endless_piece = "x" * 1000
            held(fake, lambda: ollama_chat("big-model", 100), "x" * 3000, "length")
            assert httpx.get(gw.url + "/api/version", timeout=PATIENCE_S).status_code == 200
            peak = _peak_rss(gw.proc.pid)
            assert peak < 400 * 1024 * 1024, f"the gateway grew to {peak / 2**20:.0f} MiB"
        finally:
            gw.kill()


def test_a_clients_own_mistakes_are_not_the_upstreams(fake: FakeUpstream, fake_gw: Serve) -> None:
    for mode, text in (("error400", "max_tokens is too large"),
                       ("error_line", "exceeds the available context size")):  # fmt: skip
        fake.mode = mode
        before = len(fake.chat_requests())
        answer = httpx.post(fake_gw.url + "/v1/chat/completions", timeout=30, json=HI)
        assert answer.status_code == 400, answer.text
        assert text in answer.json()["error"]["message"]
        assert len(fake.chat_requests()) == before + 1  # not retried
    assert _metric(fake_gw.url, "localrun_upstream_errors_total", "fake") == 0
    assert _metric(fake_gw.url, "localrun_upstream_healthy", "fake") == 1
    # A message the upstream's API cannot carry: a 400 at once, nothing left in flight.
    bad = {"model": "big-model", "stream": False,
           "messages": [{"role": "assistant", "content": "", "tool_calls": [1]},
                        {"role": "user", "content": "hi"}]}  # fmt: skip
    answer = httpx.post(fake_gw.url + "/api/chat", timeout=10, json=bad)
    assert answer.status_code == 400, answer.text
    # A client that gives up before the first piece: its upstream request is cancelled.
    fake.mode, fake.stall_s = "slow_first", 2.0
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(fake_gw.url + "/api/chat", timeout=0.5, json=HI)
    _settles(fake_gw.url, "localrun_upstream_in_flight", "fake", 0, PATIENCE_S)


def test_a_long_shared_system_prompt_does_not_pin_conversations(
    two_fakes: tuple[FakeUpstream, FakeUpstream, Serve],
) -> None:
    one, two, gw = two_fakes
    system = {"role": "system", "content": "You are a careful agent. " * 400}
    for i in range(6):
        _chat(gw.url, [system, {"role": "user", "content": f"task {i}"}])
    assert len(one.chat_requests()) >= 2 and len(two.chat_requests()) >= 2


def test_an_answers_limit_counts_pieces_reported_tokens_and_characters() -> None:
    from localrun.scheduler.remote import wire as remote_wire
    from localrun.scheduler.remote.limit import AnswerLimit

    def chunk(content: str = "", usage: int | None = None, **delta: object) -> dict[str, object]:
        out: dict[str, object] = {"choices": [{"index": 0, "delta": {"content": content, **delta}}]}
        if usage is not None:
            out["usage"] = {"prompt_tokens": 3, "completion_tokens": usage}
        return out

    def reader(limit: int) -> remote_wire.Reader:
        return remote_wire.Reader("openai", 1, time.perf_counter(), AnswerLimit(limit, True))

    # Pieces: the third of a two-token answer is not forwarded, and the answer is cut there.
    two = reader(2)
    assert [len(two.feed(chunk("a"))) for _ in range(3)] == [1, 1, 0]
    assert two.cut and two.done()["reason"] == "length"
    # Tokens the upstream reports as it goes (vLLM's continuous usage): past the limit, cut.
    reported = reader(5)
    assert reported.feed(chunk("abc", usage=4)) and not reported.cut
    assert reported.feed(chunk("def", usage=9)) == [] and reported.cut
    # Characters: one 1000-character piece is more than 10 tokens can hold (32 a token + 256).
    wide = reader(10)
    assert wide.feed(chunk("x" * 500)) and wide.feed(chunk("x" * 500)) == [] and wide.cut
    # A tool call's arguments count as characters; one cut off mid-way is no call at all.
    calls = reader(10)
    call = {"index": 0, "function": {"name": "f", "arguments": '{"a": "'}}
    calls.feed(chunk(tool_calls=[call]))
    calls.feed(chunk(tool_calls=[{"index": 0, "function": {"arguments": "y" * 1000}}]))
    assert calls.cut and calls.done()["tool_calls"] is None
    # The upstream's own finish within the limit is kept; the server's ceiling when none asked.
    honest = reader(3)
    honest.feed(chunk("a"))
    honest.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    assert not honest.cut and honest.done()["reason"] == "stop"
    assert AnswerLimit.of({"num_predict": 50}, 1000) == AnswerLimit(50, client=True)
    assert AnswerLimit.of({"num_predict": -1}, 1000) == AnswerLimit(1000, client=False)
    assert AnswerLimit.of({}, 1000).tokens == 1000


def test_wire_translation_details() -> None:
    from localrun.request.genrequest import GenRequest
    from localrun.scheduler.remote import wire as remote_wire

    history = [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "a1", "function": {"name": "w", "arguments": '{"city": "Paris"}'}},
            {"id": "b2", "function": {"name": "w", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "rainy"},
    ]  # fmt: skip
    chat = GenRequest("m", messages=history, options={"seed": -1, "num_predict": -1})
    openai_body = remote_wire.body("openai", "m", chat)
    assert [m.get("tool_call_id") for m in openai_body["messages"][2:]] == ["a1", "b2"]
    assert "seed" not in openai_body and "max_tokens" not in openai_body
    ollama_body = remote_wire.body("ollama", "m", chat)
    calls = ollama_body["messages"][1]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    assert [c["function"]["index"] for c in calls] == [0, 1]  # as Ollama's clients write them
    assert "seed" not in ollama_body["options"]
    thinking = remote_wire.body("openai", "m", GenRequest("m", messages=history[:1], think="high"))
    assert thinking["chat_template_kwargs"] == {"enable_thinking": True}
    assert thinking["reasoning_effort"] == "high"
    quiet = remote_wire.body("openai", "m", GenRequest("m", messages=history[:1], think=False))
    assert quiet["chat_template_kwargs"] == {"enable_thinking": False}
    reader = remote_wire.Reader("openai", 5, 0.0)
    pieces = reader.feed({"choices": [{"index": 0, "delta": {"reasoning_content": "hmm"}}]})
    assert pieces[0]["thinking"] == "hmm"
    fim = GenRequest("m", prompt="def f(", suffix="    return x")
    assert remote_wire.body("ollama", "m", fim)["raw"] is False  # Ollama's template fills in
    reader = remote_wire.Reader("openai", 1, 0.0)
    with pytest.raises(ValueError, match="abort"):
        reader.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "abort"}]})
    with pytest.raises(remote_wire.RequestRefused):
        reader.feed({"object": "error", "type": "BadRequestError", "message": "too long"})
    with pytest.raises(ValueError, match="reported an error"):
        reader.feed({"error": {"message": "CUDA out of memory", "type": "server_error"}})
    assert reader.feed({"error": None, "choices": []}) == []


def test_sigterm_ends_upstream_streams_with_the_error_line(
    fake: FakeUpstream, fake_gw: Serve
) -> None:
    fake.mode = "slow"
    with httpx.stream("POST", fake_gw.url + "/api/chat", timeout=30, json=HI) as r:
        lines = []
        for line in r.iter_lines():
            if line:
                lines.append(json.loads(line))
            if len(lines) == 3:
                fake_gw.proc.send_signal(signal.SIGTERM)
    assert "shutting down" in lines[-1].get("error", ""), lines[-3:]
    assert fake_gw.proc.wait(30) == 0
    assert fake.disconnected.wait(10), "the upstream request was cancelled"
