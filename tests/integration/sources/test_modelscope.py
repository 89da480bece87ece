"""ModelScopeHub with the real `modelscope` client against a local server that speaks its API.

MODELSCOPE_ENDPOINT points the client at `FakeModelScope` (tests/support/mshub.py); MODELSCOPE_HOME
and MODELSCOPE_CACHE point into the test's folder, so nothing touches ~/.modelscope or ~/.cache.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localrun.errors import (
    DownloadError,
    HubAuthError,
    HubUnreachableError,
    ModelNotFoundError,
)
from localrun.sources.base import RemoteFile, Repo, pick
from localrun.sources.modelscope import ModelScopeHub
from localrun.store.local import Store

from support import free_port
from support.mshub import FakeModelScope

pytestmark = pytest.mark.server

MB = 1024 * 1024
BIG = 20 * MB
SMALL = b"GGUF" + bytes(range(256)) * 40


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mshub") / "big.gguf"
    path.write_bytes(os.urandom(BIG))
    return path


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeModelScope]:
    from modelscope_hub import set_default_config

    for name in ("MODELSCOPE_API_TOKEN", "MODELSCOPE_DOMAIN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "ms-home"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-cache"))
    set_default_config(None)  # the library's process-wide config, rebuilt from this env
    with FakeModelScope() as fake:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", fake.url)
        yield fake
    set_default_config(None)


@pytest.fixture
def repo(hub: FakeModelScope, big_file: Path) -> Repo:
    hub.add_repo(
        "org/m",
        {
            "README.md": b"# a model\n",
            "m.Q8_0.gguf": SMALL,
            "gguf/m.Q4_K_M.gguf": SMALL[::-1],
            "big.gguf": big_file,
        },
        license="apache-2.0",
    )
    return ModelScopeHub().repo("org/m")


class Progress:
    """Records every progress call; optionally stops the download part-way."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.stop_at = stop_at

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))
        if self.stop_at is not None and done >= self.stop_at:
            self.stop_at = None
            raise Interrupted


class Interrupted(BaseException):
    """What Ctrl-C looks like to the download: not an Exception, so nobody retries it."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_of(repo: Repo, path: str) -> RemoteFile:
    return next(f for f in repo.files if f.path == path)


def test_repo_lists_files_with_their_sha256_and_size(repo: Repo, big_file: Path) -> None:
    assert repo.hub == "modelscope"
    assert repo.repo_id == "org/m"
    assert repo.revision == "master"
    assert repo.license == "apache-2.0"
    big_sha = hashlib.sha256(big_file.read_bytes()).hexdigest()
    assert sorted(repo.files, key=lambda f: f.path) == [
        RemoteFile("README.md", 10, sha256(b"# a model\n")),
        RemoteFile("big.gguf", BIG, big_sha),
        RemoteFile("gguf/m.Q4_K_M.gguf", len(SMALL), sha256(SMALL[::-1])),
        RemoteFile("m.Q8_0.gguf", len(SMALL), sha256(SMALL)),
    ]  # the folder entry "gguf" is not a file


def test_pick_works_on_a_listed_repo(repo: Repo) -> None:
    choice = pick(repo, "Q8_0", "modelscope.cn/org/m:Q8_0")
    assert [f.path for f in choice.files] == ["m.Q8_0.gguf"]
    assert pick(repo, None, "modelscope.cn/org/m").quant == "Q4_K_M"
    with pytest.raises(ModelNotFoundError):
        pick(repo, "Q2_K", "modelscope.cn/org/m:Q2_K")


def test_download_writes_the_file_into_the_folder_once(
    repo: Repo, hub: FakeModelScope, tmp_path: Path, big_file: Path
) -> None:
    folder = tmp_path / "partial"
    small, digest = ModelScopeHub().download(repo, file_of(repo, "m.Q8_0.gguf"), folder, Progress())
    assert small == folder / "m.Q8_0.gguf"
    assert small.read_bytes() == SMALL
    assert digest == "sha256:" + sha256(SMALL)  # checked by the library as the bytes came

    progress = Progress()
    nested, _ = ModelScopeHub().download(
        repo, file_of(repo, "gguf/m.Q4_K_M.gguf"), folder, progress
    )
    assert nested == folder / "gguf" / "m.Q4_K_M.gguf"
    assert progress.calls[-1] == (len(SMALL), len(SMALL))

    progress = Progress()
    path, _ = ModelScopeHub().download(repo, file_of(repo, "big.gguf"), folder, progress)
    assert path == folder / "big.gguf"
    assert path.read_bytes() == big_file.read_bytes()
    assert len(progress.calls) > 1  # reported as the bytes arrived, not once at the end
    assert progress.calls[-1] == (BIG, BIG)
    done = [d for d, _ in progress.calls]
    assert done == sorted(done)
    # The bytes are in the folder once: no lock files, no .incomplete, no ModelScope cache.
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == [
        "big.gguf",
        "gguf",
        "gguf/m.Q4_K_M.gguf",
        "m.Q8_0.gguf",
    ]
    cache = tmp_path / "ms-cache"
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))
    assert all(r.range is None for r in hub.downloads("big.gguf"))


def test_a_cut_connection_is_resumed_with_a_range_request(
    repo: Repo, hub: FakeModelScope, tmp_path: Path, big_file: Path
) -> None:
    hub.cut_after("big.gguf", 7 * MB)
    path, _ = ModelScopeHub().download(repo, file_of(repo, "big.gguf"), tmp_path / "p", Progress())
    assert path.read_bytes() == big_file.read_bytes()
    requests = hub.downloads("big.gguf")
    assert len(requests) == 2
    assert requests[0].range is None
    assert requests[1].range is not None and requests[1].range.startswith("bytes=")
    resumed_from = int(requests[1].range.removeprefix("bytes=").split("-")[0])
    assert 0 < resumed_from <= 7 * MB
    assert hub.bytes_sent < 2 * BIG


def test_an_interrupted_download_resumes_on_the_next_call(
    repo: Repo,
    hub: FakeModelScope,
    tmp_path: Path,
    big_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Report every read, so that the interruption lands mid-file even on a fast loopback.
    monkeypatch.setattr("localrun.sources.modelscope.PROGRESS_INTERVAL", 0)
    folder = tmp_path / "p"
    big = file_of(repo, "big.gguf")
    with pytest.raises(Interrupted):
        ModelScopeHub().download(repo, big, folder, Progress(stop_at=8 * MB))
    partial = folder / "big.gguf.incomplete"
    assert partial.is_file() and partial.stat().st_size >= 8 * MB
    assert not (folder / "big.gguf").exists()

    kept = partial.stat().st_size

    progress = Progress()
    path, _ = ModelScopeHub().download(repo, big, folder, progress)
    assert path.read_bytes() == big_file.read_bytes()
    assert progress.calls[0][0] == kept  # the part already there counts as done
    first, second = hub.downloads("big.gguf")
    assert first.range is None
    assert second.range == f"bytes={kept}-"
    assert hub.bytes_sent < 2 * BIG
    assert not partial.exists()


def test_a_download_interrupted_after_the_last_byte_needs_no_request(
    repo: Repo, hub: FakeModelScope, tmp_path: Path, big_file: Path
) -> None:
    big = file_of(repo, "big.gguf")
    with pytest.raises(Interrupted):
        ModelScopeHub().download(repo, big, tmp_path, Progress(stop_at=BIG))
    assert (tmp_path / "big.gguf.incomplete").stat().st_size == BIG

    progress = Progress()
    path, digest = ModelScopeHub().download(repo, big, tmp_path, progress)
    assert path.read_bytes() == big_file.read_bytes()
    assert digest == f"sha256:{big.sha256}"  # the library hashed what was already there
    assert progress.calls[-1] == (BIG, BIG)
    assert len(hub.downloads("big.gguf")) == 1


def test_corrupt_bytes_are_fetched_again_by_the_library(
    repo: Repo, hub: FakeModelScope, tmp_path: Path
) -> None:
    hub.corrupt("m.Q8_0.gguf")
    path, _ = ModelScopeHub().download(repo, file_of(repo, "m.Q8_0.gguf"), tmp_path, Progress())
    assert path.read_bytes() == SMALL
    assert len(hub.downloads("m.Q8_0.gguf")) == 2


def test_a_server_error_during_a_download_is_retried(
    repo: Repo, hub: FakeModelScope, tmp_path: Path
) -> None:
    hub.fail_status("FilePath=m.Q8_0.gguf", 503)
    path, _ = ModelScopeHub().download(repo, file_of(repo, "m.Q8_0.gguf"), tmp_path, Progress())
    assert path.read_bytes() == SMALL
    assert [r.status for r in hub.downloads("m.Q8_0.gguf")] == [503, 200]


def test_without_a_listed_sha256_the_caller_hashes(repo: Repo, tmp_path: Path) -> None:
    unhashed = RemoteFile("m.Q8_0.gguf", len(SMALL), None)
    path, digest = ModelScopeHub().download(repo, unhashed, tmp_path, Progress())
    assert path.read_bytes() == SMALL
    assert digest is None


@pytest.mark.parametrize("bad", ["../evil.Q8_0.gguf", "/etc/evil.Q8_0.gguf", "a/../../e.gguf"])
def test_a_path_leaving_the_folder_is_refused(
    repo: Repo, hub: FakeModelScope, tmp_path: Path, bad: str
) -> None:
    with pytest.raises(DownloadError, match="outside the repository"):
        ModelScopeHub().download(repo, RemoteFile(bad, 10, None), tmp_path / "p", Progress())
    assert not hub.downloads(bad)


def test_a_file_gone_from_the_repo_is_a_download_error(repo: Repo, tmp_path: Path) -> None:
    gone = RemoteFile("gone.Q8_0.gguf", 10, "0" * 64)
    with pytest.raises(DownloadError, match="gone from the repository"):
        ModelScopeHub().download(repo, gone, tmp_path, Progress())


def test_a_missing_repo_is_model_not_found(hub: FakeModelScope) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        ModelScopeHub().repo("org/nothing")
    assert "modelscope.cn/org/nothing" in caught.value.message
    assert caught.value.hint is not None and "MODELSCOPE_API_TOKEN" in caught.value.hint


def test_a_missing_revision_is_model_not_found(repo: Repo) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        ModelScopeHub().repo("org/m", revision="v9")
    assert caught.value.hint is not None and "master" in caught.value.hint


def test_a_private_repo_needs_the_token(
    hub: FakeModelScope, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("org/secret", {"s.Q8_0.gguf": SMALL}, private=True, token="ms-sekrit")
    with pytest.raises(HubAuthError) as caught:
        ModelScopeHub().repo("org/secret")
    assert caught.value.hint is not None and "MODELSCOPE_API_TOKEN" in caught.value.hint

    monkeypatch.setenv("MODELSCOPE_API_TOKEN", "wrong")
    with pytest.raises(HubAuthError, match="403"):
        ModelScopeHub().repo("org/secret")

    monkeypatch.setenv("MODELSCOPE_API_TOKEN", "ms-sekrit")
    repo = ModelScopeHub().repo("org/secret")
    path, _ = ModelScopeHub().download(repo, repo.files[0], tmp_path, Progress())
    assert path.read_bytes() == SMALL
    assert hub.downloads("s.Q8_0.gguf")[-1].authorization == "Bearer ms-sekrit"


def test_an_unreachable_hub_fails_fast(
    hub: FakeModelScope, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", endpoint)
    started = time.monotonic()
    with pytest.raises(HubUnreachableError) as caught:
        ModelScopeHub().repo("org/m")
    assert time.monotonic() - started < 3
    assert caught.value.message == f"cannot reach ModelScope at {endpoint} (Connection refused)"
    assert caught.value.hint is not None and "MODELSCOPE_ENDPOINT" in caught.value.hint


def test_a_download_from_an_unreachable_hub_fails_fast(
    repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(HubUnreachableError, match="Connection refused"):
        ModelScopeHub().download(repo, file_of(repo, "m.Q8_0.gguf"), tmp_path, Progress())
    assert time.monotonic() - started < 3


def test_importing_the_module_does_not_import_modelscope() -> None:
    code = (
        "import sys, localrun.sources.modelscope\n"
        "print(sorted(m for m in sys.modules if m.startswith('modelscope')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_pull_from_modelscope_into_the_store(
    hub: FakeModelScope, store: Store, tiny_model: Path
) -> None:
    from localrun.sources.pull import pull
    from localrun.store.reference import parse_hub

    hub.add_repo("Org/Tiny-GGUF", {"tiny.Q8_0.gguf": tiny_model}, license="mit")
    ref = parse_hub("modelscope.cn/Org/Tiny-GGUF:Q8_0")
    assert ref is not None
    digest = pull(store, ref)
    assert digest.startswith("sha256:")
    blob = "sha256:" + hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert store.has_blob(blob)
    assert not (store.root / "partial").exists() or not any((store.root / "partial").iterdir())
