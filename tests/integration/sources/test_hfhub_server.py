"""The fake hub in hfhub.py, proven with the real huggingface_hub client.

These tests also pin down what the installed client does when things go wrong, because
localrun's Hugging Face source relies on it:

- A connection dropped mid-body is retried inside the same hf_hub_download call, after a 1 s
  sleep, with `Range: bytes=N-` where N is what the client had written: it writes in
  DOWNLOAD_CHUNK_SIZE (10 MiB) pieces, so a drop before the first 10 MiB restarts from 0.
  After 5 retries without progress it raises httpx2.RemoteProtocolError.
- Nothing survives a failed call: the client downloads into a process-unique
  `<hash>.<etag>.<uuid>.incomplete` file and deletes it on failure, so the next call starts
  from byte 0 (no Range). Resuming across calls is not something the client does.
- The client checks only the size: wrong bytes of the right length are delivered as the file.
- HTTP 5xx on the metadata HEAD is retried; on the content GET and on model_info it is raised
  at once as HfHubHTTPError.
"""

from __future__ import annotations

import hashlib
import os
import time
import types
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hubs.hfhub import FakeHub
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

pytestmark = pytest.mark.server

REPO = "Org/Tiny-Model"
CONFIG = b'{"architectures": ["LlamaForCausalLM"]}\n'
BIG_SIZE = 30 * 1024 * 1024


@dataclass(frozen=True)
class Big:
    path: Path
    sha256: str

    def matches(self, path: str | Path) -> bool:
        return _sha256(Path(path)) == self.sha256


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="session")
def big(tmp_path_factory: pytest.TempPathFactory) -> Big:
    """30 MiB of random bytes, written once per session: bigger than 2 client chunks of 10 MiB."""
    path = tmp_path_factory.mktemp("hfhub") / "model.gguf"
    path.write_bytes(os.urandom(BIG_SIZE))
    return Big(path, _sha256(path))


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def client_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the client's retry sleeps instead of sleeping (the fake's own throttle is kept)."""
    import huggingface_hub.file_download as file_download
    import huggingface_hub.utils._http as http

    sleeps: list[float] = []
    for module in (file_download, http):
        fake_time = types.SimpleNamespace(**vars(time))
        fake_time.sleep = sleeps.append
        monkeypatch.setattr(module, "time", fake_time)
    return sleeps


@pytest.fixture
def hub(big: Big) -> Iterator[FakeHub]:
    with FakeHub() as hub:
        hub.add_repo(
            REPO,
            {"config.json": CONFIG, "model.gguf": big.path, "docs/README.md": b"# tiny\n"},
            license="apache-2.0",
        )
        yield hub
    assert hub.errors == []


@pytest.fixture
def download(hub: FakeHub, tmp_path: Path) -> Callable[..., str]:
    """download(filename, folder="out", **kwargs) -> str: hf_hub_download into tmp_path/folder."""

    def _download(filename: str, folder: str = "out", **kwargs: Any) -> str:
        kwargs.setdefault("token", False)
        kwargs.setdefault("repo_id", REPO)
        return str(
            hf_hub_download(
                filename=filename,
                local_dir=tmp_path / folder,
                cache_dir=tmp_path / "hf-cache",
                endpoint=hub.url,
                **kwargs,
            )
        )

    return _download


def _incomplete(folder: Path) -> list[Path]:
    return list((folder / ".cache" / "huggingface" / "download").glob("*.incomplete"))


def test_model_info_lists_files_with_lfs_sha256(hub: FakeHub, big: Big) -> None:
    api = HfApi(endpoint=hub.url, token=False)
    info = api.model_info(REPO.lower(), files_metadata=True)

    assert info.id == REPO
    assert info.sha is not None and len(info.sha) == 40
    assert info.gated is False
    assert info.card_data is not None and info.card_data.license == "apache-2.0"
    siblings = {sibling.rfilename: sibling for sibling in info.siblings or []}
    assert set(siblings) == {"config.json", "model.gguf", "docs/README.md"}
    assert siblings["config.json"].size == len(CONFIG)
    assert siblings["config.json"].lfs is None
    assert (
        siblings["config.json"].blob_id
        == hashlib.sha1(b"blob %d\0" % len(CONFIG) + CONFIG).hexdigest()
    )
    lfs = siblings["model.gguf"].lfs
    assert lfs is not None
    assert (lfs.sha256, lfs.size, siblings["model.gguf"].size) == (big.sha256, BIG_SIZE, BIG_SIZE)
    assert 100 < lfs.pointer_size < 200

    pinned = api.model_info(REPO, revision=info.sha, files_metadata=True)
    assert pinned.sha == info.sha
    assert api.model_info(REPO, revision="main").sha == info.sha
    paths = [request[1] for request in hub.requests]
    assert paths[0] == "/api/models/org/tiny-model?blobs=true"
    assert paths[1] == f"/api/models/Org/Tiny-Model/revision/{info.sha}?blobs=true"

    assert sorted(api.list_repo_files(REPO)) == ["config.json", "docs/README.md", "model.gguf"]
    top = {entry.path: entry for entry in api.list_repo_tree(REPO)}
    assert isinstance(top["docs"], RepoFolder)
    model = top["model.gguf"]
    assert isinstance(model, RepoFile) and model.lfs is not None
    assert model.lfs.sha256 == big.sha256


def test_download_small_and_large_files_into_local_dir(
    hub: FakeHub, big: Big, download: Callable[..., str], tmp_path: Path
) -> None:
    config = download("config.json")
    model = download("model.gguf")

    out = tmp_path / "out"
    assert Path(config) == out / "config.json"
    assert Path(config).read_bytes() == CONFIG
    assert Path(model) == out / "model.gguf"
    assert big.matches(model)
    assert hub.bytes_sent == len(CONFIG) + BIG_SIZE
    # The plain file comes from /resolve; the LFS file's HEAD answers 302 to the CDN origin,
    # which the client then GETs directly.
    methods = [(method, path.split("?")[0]) for method, path, _ in hub.requests]
    assert methods[:2] == [
        ("HEAD", "/Org/Tiny-Model/resolve/main/config.json"),
        ("GET", "/Org/Tiny-Model/resolve/main/config.json"),
    ]
    assert methods[2] == ("HEAD", "/Org/Tiny-Model/resolve/main/model.gguf")
    assert methods[3] == ("GET", f"/lfs-files/{big.sha256}/model.gguf")

    # local_dir bookkeeping: <local_dir>/.cache/huggingface/download/<filename>.{metadata,lock}
    meta = out / ".cache" / "huggingface" / "download" / "model.gguf.metadata"
    commit, etag, timestamp = meta.read_text().splitlines()
    assert (commit, etag) == (HfApi(endpoint=hub.url, token=False).model_info(REPO).sha, big.sha256)
    assert float(timestamp) > 0
    assert (meta.parent / "model.gguf.lock").exists()
    assert _incomplete(out) == []

    # Asking again costs one HEAD per file: the etag matches the metadata, no bytes move.
    before, count = hub.bytes_sent, len(hub.requests)
    assert download("model.gguf") == model
    assert hub.bytes_sent == before
    assert [method for method, _, _ in hub.requests[count:]] == ["HEAD"]


@pytest.mark.parametrize(
    ("cut", "resumed_from"),
    [(15_000_000, constants.DOWNLOAD_CHUNK_SIZE), (5_000_000, None)],
    ids=["after-first-chunk", "inside-first-chunk"],
)
def test_dropped_connection_is_retried_inside_the_call(
    hub: FakeHub,
    big: Big,
    download: Callable[..., str],
    client_sleeps: list[float],
    cut: int,
    resumed_from: int | None,
) -> None:
    hub.cut_after("model.gguf", cut)

    assert big.matches(download("model.gguf"))

    first, second = hub.content_requests("model.gguf")
    assert "Range" not in first[2]
    if resumed_from is None:  # nothing was written yet: the retry starts over
        assert "Range" not in second[2]
        assert hub.bytes_sent == cut + BIG_SIZE
    else:
        assert second[2]["Range"] == f"bytes={resumed_from}-"
        assert hub.bytes_sent == cut + BIG_SIZE - resumed_from < 2 * BIG_SIZE
    assert client_sleeps == [1]


def test_client_gives_up_after_five_retries_and_keeps_nothing(
    hub: FakeHub, big: Big, download: Callable[..., str], client_sleeps: list[float], tmp_path: Path
) -> None:
    hub.cut_after("model.gguf", 1000, times=6)

    with pytest.raises(httpx2.RemoteProtocolError):
        download("model.gguf")

    assert len(hub.content_requests("model.gguf")) == 6
    assert client_sleeps == [1] * 5
    out = tmp_path / "out"
    assert not (out / "model.gguf").exists()
    assert _incomplete(out) == []

    # So the next call starts from byte 0: huggingface_hub does not resume across calls.
    assert big.matches(download("model.gguf"))
    assert "Range" not in hub.content_requests("model.gguf")[-1][2]


def test_missing_repository(hub: FakeHub, download: Callable[..., str]) -> None:
    with pytest.raises(RepositoryNotFoundError) as anonymous:
        HfApi(endpoint=hub.url, token=False).model_info("org/missing")
    assert anonymous.value.response.status_code == 401  # as the hub: existence is not revealed
    with pytest.raises(RepositoryNotFoundError) as signed_in:
        HfApi(endpoint=hub.url, token="hf_someone").model_info("org/missing")
    assert signed_in.value.response.status_code == 404
    with pytest.raises(RepositoryNotFoundError):
        download("config.json", repo_id="org/missing")


def test_missing_file_and_revision(hub: FakeHub, download: Callable[..., str]) -> None:
    with pytest.raises(EntryNotFoundError):
        download("nope.gguf")
    with pytest.raises(RevisionNotFoundError):
        download("config.json", revision="v2")
    with pytest.raises(RevisionNotFoundError):
        HfApi(endpoint=hub.url, token=False).model_info(REPO, revision="v2")


def test_gated_repository_needs_its_token(
    hub: FakeHub, download: Callable[..., str], tmp_path: Path
) -> None:
    hub.add_repo("org/gated", {"model.gguf": b"GGUF" * 100}, gated=True, token="hf_granted")

    # The metadata is public, as on the hub; the files are not.
    info = HfApi(endpoint=hub.url, token=False).model_info("org/gated", files_metadata=True)
    assert info.gated == "auto"
    with pytest.raises(GatedRepoError) as anonymous:
        download("model.gguf", repo_id="org/gated")
    assert anonymous.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as refused:
        download("model.gguf", repo_id="org/gated", token="hf_other")
    assert refused.value.response.status_code == 403

    path = download("model.gguf", repo_id="org/gated", token="hf_granted")
    assert Path(path).read_bytes() == b"GGUF" * 100
    head, get = hub.requests[-2:]
    assert head[2]["Authorization"] == "Bearer hf_granted"
    assert get[1].startswith("/lfs-files/")
    assert "Authorization" not in get[2]  # never sent to the CDN origin


def test_private_repository_is_not_found_without_its_token(
    hub: FakeHub, download: Callable[..., str]
) -> None:
    hub.add_repo("org/private", {"config.json": CONFIG}, private=True, token="hf_mine")

    with pytest.raises(RepositoryNotFoundError) as anonymous:
        HfApi(endpoint=hub.url, token=False).model_info("org/private")
    assert anonymous.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        download("config.json", repo_id="org/private")

    assert HfApi(endpoint=hub.url, token="hf_mine").model_info("org/private").private is True
    assert Path(download("config.json", repo_id="org/private", token="hf_mine")).read_bytes() == (
        CONFIG
    )


def test_client_delivers_corrupt_bytes_of_the_right_size(
    hub: FakeHub, big: Big, download: Callable[..., str]
) -> None:
    """Why localrun hashes every download itself: huggingface_hub only compares sizes."""
    hub.corrupt("model.gguf")

    path = Path(download("model.gguf"))

    assert path.stat().st_size == BIG_SIZE
    assert not big.matches(path)


def test_server_errors(
    hub: FakeHub, download: Callable[..., str], client_sleeps: list[float]
) -> None:
    # A 5xx on the metadata HEAD: the client asks again (at once) and succeeds.
    hub.fail_status("/resolve/main/config.json", 500, method="HEAD")
    assert Path(download("config.json", folder="a")).read_bytes() == CONFIG
    heads = [r for r in hub.requests if r[0] == "HEAD"]
    assert len(heads) == 2 and client_sleeps == []

    # A 5xx on the content GET (the CDN here) is raised at once, without a retry.
    hub.fail_status("/lfs-files/", 503)
    before = len(hub.content_requests("model.gguf"))
    with pytest.raises(HfHubHTTPError) as unavailable:
        download("model.gguf", folder="b")
    assert unavailable.value.response.status_code == 503
    assert len(hub.content_requests("model.gguf")) == before + 1

    # model_info does not retry either.
    hub.fail_status("/api/models/", 500)
    with pytest.raises(HfHubHTTPError) as failed:
        HfApi(endpoint=hub.url, token=False).model_info(REPO)
    assert failed.value.response.status_code == 500


def test_slow_throttles_the_body(hub: FakeHub, download: Callable[..., str]) -> None:
    hub.add_repo("org/slow", {"notes.txt": b"x" * 50_000})
    hub.slow("notes.txt", 200_000)

    began = time.monotonic()
    download("notes.txt", repo_id="org/slow")

    assert time.monotonic() - began >= 0.2


def test_ranges_on_the_wire(hub: FakeHub) -> None:
    url = f"{hub.url}/{REPO}/resolve/main/config.json"

    def get(range_: str) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(url, headers={"Range": range_})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    status, headers, body = get("bytes=2-5")
    assert (status, body, headers["Content-Range"]) == (
        206,
        CONFIG[2:6],
        f"bytes 2-5/{len(CONFIG)}",
    )
    status, headers, body = get("bytes=10-")
    assert (status, body) == (206, CONFIG[10:])
    assert headers["Accept-Ranges"] == "bytes"
    status, headers, _ = get(f"bytes={len(CONFIG)}-")
    assert (status, headers["Content-Range"]) == (416, f"bytes */{len(CONFIG)}")
