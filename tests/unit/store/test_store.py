"""localrun.store.local: digests, blobs, manifests, locking, garbage collection, crashes, full
disks.

Everything runs against a real store in the test's LOCALRUN_HOME; the concurrency, crash and
disk-full tests use real processes (multiprocessing with spawn, or the `localrun` CLI).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from testmodels.text import write_tiny_model

from localrun.errors import (
    CorruptBlobError,
    DiskFullError,
    InvalidDigestError,
    MissingBlobError,
    ModelNotFoundError,
    StoreError,
)
from localrun.recipes import create, modelfile
from localrun.store import blobs as blobs_mod
from localrun.store import leases
from localrun.store.local import Store
from localrun.store.manifest import (
    MEDIA_CONFIG,
    MEDIA_MANIFEST,
    MEDIA_TYPES,
    Layer,
    Manifest,
    check_digest,
)
from localrun.store.names import ModelName

from support import PATIENCE_S
from support.blobs import blob_files, build, file_digest, name, temp_files
from support.cli import CLI

HEX = hashlib.sha256(b"localrun").hexdigest()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_files(store: Store) -> list[Path]:
    if not store.manifests.is_dir():
        return []
    return sorted(p for p in store.manifests.rglob("*") if p.is_file())


def add_path(store: Store, path: Path, **kwargs: Any) -> tuple[str, int, bool]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return store.add_file(fd, **kwargs)
    finally:
        os.close(fd)


def flip_byte(path: Path, offset: int = 0) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def create_from(store: Store, model: str, path: Path) -> str:
    return create.create(store, name(model), modelfile.parse(f"FROM {path}"), path.parent)


@pytest.fixture
def small_model(tmp_path: Path) -> Path:
    return write_tiny_model(tmp_path / "small.gguf", n_layer=1)


def test_default_store_follows_the_settings(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Store.default().root == home / "models"
    monkeypatch.setenv("LOCALRUN_MODELS", str(home / "elsewhere"))
    assert Store.default().root == home / "elsewhere"  # read at call time


# -- digests ----------------------------------------------------------------------------------


def test_check_digest_accepts_both_separators() -> None:
    assert check_digest(f"sha256:{HEX}") == f"sha256:{HEX}"
    assert check_digest(f"sha256-{HEX}") == f"sha256:{HEX}"


HOSTILE_DIGESTS = [
    f"sha256:{HEX.upper()}",
    f"SHA256:{HEX}",
    f"sha256:{HEX[:-1]}",
    f"sha256:{HEX}0",
    f"sha512:{hashlib.sha512(b'x').hexdigest()}",
    f"md5:{hashlib.md5(b'x').hexdigest()}",
    HEX,
    f"sha256_{HEX}",
    "sha256:../../etc/passwd",
    "sha256-../../../../etc/passwd",
    f"sha256:{HEX[:-3]}/..",
    "../x",
    "..",
    "/etc/passwd",
    f"/tmp/sha256-{HEX}",
    f"sha256:{HEX[:-1]}\x00",
    f"sha256:{HEX}\x00",
    f"sha256:{HEX}\n",
    f"sha256:{HEX}\r\n",
    f" sha256:{HEX}",
    f"sha256: {HEX[1:]}",
    f"sha256:{HEX[:32]}/{HEX[33:]}",
    "",
]


@pytest.mark.parametrize("digest", HOSTILE_DIGESTS)
def test_check_digest_rejects(digest: str) -> None:
    with pytest.raises(InvalidDigestError) as caught:
        check_digest(digest)
    assert "\n" not in caught.value.message and "\x00" not in caught.value.message


@pytest.mark.parametrize("value", [None, 42, b"sha256:" + HEX.encode(), ["sha256:" + HEX]])
def test_check_digest_rejects_non_strings(value: Any) -> None:
    with pytest.raises(InvalidDigestError):
        check_digest(value)


@pytest.mark.parametrize("digest", HOSTILE_DIGESTS)
def test_no_path_is_built_from_a_hostile_digest(
    store: Store, digest: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    joined: list[str] = []
    real_truediv = Path.__truediv__

    def spy(self: Path, other: Any) -> Path:
        joined.append(str(other))
        return real_truediv(self, other)

    monkeypatch.setattr(Path, "__truediv__", spy)
    for call in (store.blob_path, store.has_blob, store.read_blob):
        with pytest.raises(InvalidDigestError):
            call(digest)
    assert joined == []  # refused before any path was joined


def test_add_file_checks_the_expected_digest_form(store: Store, small_model: Path) -> None:
    with pytest.raises(InvalidDigestError):
        add_path(store, small_model, expected="sha256:../../etc/passwd")
    assert blob_files(store) == [] and temp_files(store.root) == []


@pytest.mark.parametrize("digest", ["sha256:../../etc/passwd", "../x", "/etc/passwd", None, 7])
def test_layer_from_json_rejects_hostile_digests(digest: Any) -> None:
    with pytest.raises(InvalidDigestError):
        Layer.from_json({"mediaType": MEDIA_TYPES["model"], "digest": digest, "size": 1})


@pytest.mark.parametrize(
    "layer",
    [
        None,
        [],
        "sha256:" + HEX,
        {"digest": "sha256:" + HEX, "size": 1},
        {"mediaType": MEDIA_TYPES["model"], "digest": "sha256:" + HEX},
        {"mediaType": MEDIA_TYPES["model"], "digest": "sha256:" + HEX, "size": -1},
        {"mediaType": MEDIA_TYPES["model"], "digest": "sha256:" + HEX, "size": "1"},
        {"mediaType": 3, "digest": "sha256:" + HEX, "size": 1},
    ],
)
def test_layer_from_json_rejects_malformed_layers(layer: Any) -> None:
    with pytest.raises((ValueError, StoreError)):
        Layer.from_json(layer)


def test_layer_from_json_canonicalises_the_digest() -> None:
    layer = Layer.from_json(
        {"mediaType": MEDIA_TYPES["params"], "digest": f"sha256-{HEX}", "size": 3}
    )
    assert layer == Layer(MEDIA_TYPES["params"], f"sha256:{HEX}", 3)
    assert layer.kind == "params"
    assert Layer("application/x-unknown", f"sha256:{HEX}", 3).kind == "unknown"


def _manifest_json(config_digest: Any, layer_digest: Any) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": 2},
            "layers": [{"mediaType": MEDIA_TYPES["model"], "digest": layer_digest, "size": 5}],
        }
    ).encode()


@pytest.mark.parametrize("where", ["config", "layer"])
@pytest.mark.parametrize("digest", ["sha256:../../etc/passwd", "../x", "/etc/passwd"])
def test_manifest_from_bytes_rejects_hostile_digests(where: str, digest: str) -> None:
    good = f"sha256:{HEX}"
    raw = _manifest_json(digest, good) if where == "config" else _manifest_json(good, digest)
    with pytest.raises(InvalidDigestError):
        Manifest.from_bytes(raw)


def test_manifest_round_trip(store: Store) -> None:
    manifest = build(store, b"model", b'{"temperature": 0.5}')
    again = Manifest.from_bytes(manifest.to_bytes())
    assert again == manifest
    assert (
        again.size == sum(len(x) for x in (b"model", b'{"temperature": 0.5}')) + again.config.size
    )
    assert again.digests() == {manifest.config.digest, sha(b"model"), sha(b'{"temperature": 0.5}')}
    assert [layer.kind for layer in again.layers] == ["model", "adapter"]
    assert again.of_kind("model") == [manifest.layers[0]]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe garbage",
        b"[]",
        b'{"schemaVersion": 1, "layers": []}',
        b'{"schemaVersion": 2, "config": null, "layers": []}',
        b'{"schemaVersion": 2, "layers": {}}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    ],
    ids=["empty", "binary", "list", "v1", "no-config", "layers-object", "deep-list", "deep-dict"],
)
def test_manifest_from_bytes_raises_value_or_store_errors(raw: bytes) -> None:
    # The only errors a caller has to expect: anything else would crash `list` or `verify`.
    with pytest.raises((ValueError, StoreError)):
        Manifest.from_bytes(raw)


# -- adding blobs -----------------------------------------------------------------------------


def test_add_bytes_is_content_addressed_and_deduplicated(store: Store) -> None:
    digest, size = store.add_bytes(b"hello")
    assert (digest, size) == (sha(b"hello"), 5)
    path = store.blob_path(digest)
    assert path == store.blobs / f"sha256-{digest[7:]}"
    assert path.read_bytes() == b"hello"
    inode = path.stat().st_ino
    assert store.add_bytes(b"hello") == (digest, 5)
    assert blob_files(store) == [path]
    assert path.stat().st_ino == inode  # not written again
    assert store.has_blob(digest) and store.has_blob(digest.replace(":", "-"))
    assert store.read_blob(digest) == b"hello"
    assert temp_files(store.root) == []


def test_add_bytes_empty(store: Store) -> None:
    digest, size = store.add_bytes(b"")
    assert size == 0 and store.read_blob(digest) == b""


def test_add_file_stores_and_deduplicates(store: Store, small_model: Path) -> None:
    statuses: list[tuple[str, str]] = []
    phases: list[tuple[str, int, int]] = []
    digest, size, present = add_path(
        store,
        small_model,
        on_status=lambda status, d: statuses.append((status, d)),
        progress=lambda phase, done, total: phases.append((phase, done, total)),
    )
    data = small_model.read_bytes()
    assert (digest, size, present) == (sha(data), len(data), False)
    assert store.blob_path(digest).read_bytes() == data
    assert statuses == [("creating new layer", digest)]
    assert ("hashing", size, size) in phases and ("copying", size, size) in phases
    assert phases.index(("hashing", size, size)) < phases.index(("copying", size, size))

    statuses.clear()
    phases.clear()
    again = add_path(
        store,
        small_model,
        on_status=lambda status, d: statuses.append((status, d)),
        progress=lambda phase, done, total: phases.append((phase, done, total)),
    )
    assert again == (digest, size, True)
    assert statuses == [("using existing layer", digest)]
    assert all(phase == "hashing" for phase, _, _ in phases)  # nothing copied the second time
    assert blob_files(store) == [store.blob_path(digest)]
    assert temp_files(store.root) == []


def test_add_file_of_a_copy_uses_the_existing_blob(
    store: Store, small_model: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(small_model, copy)
    first = add_path(store, small_model)
    assert add_path(store, copy) == (first[0], first[1], True)
    assert len(blob_files(store)) == 1


def test_add_file_hashes_from_the_start_of_the_descriptor(store: Store, small_model: Path) -> None:
    fd = os.open(small_model, os.O_RDONLY)
    try:
        os.lseek(fd, 1000, os.SEEK_SET)
        digest, size, _ = store.add_file(fd)
    finally:
        os.close(fd)
    assert digest == file_digest(small_model) and size == small_model.stat().st_size


def test_add_file_with_expected_digest(store: Store, small_model: Path) -> None:
    digest = file_digest(small_model)
    assert add_path(store, small_model, expected=digest)[0] == digest
    # the dash form is accepted as well
    assert add_path(store, small_model, expected=digest.replace(":", "-"))[2] is True


def test_add_file_expected_mismatch_stores_nothing(store: Store, small_model: Path) -> None:
    with pytest.raises(CorruptBlobError) as caught:
        add_path(store, small_model, expected=f"sha256:{HEX}")
    assert file_digest(small_model) in caught.value.message
    assert caught.value.hint
    assert blob_files(store) == [] and temp_files(store.root) == []


def test_add_file_expected_mismatch_even_if_blob_present(store: Store, small_model: Path) -> None:
    add_path(store, small_model)
    with pytest.raises(CorruptBlobError):
        add_path(store, small_model, expected=f"sha256:{HEX}")
    assert len(blob_files(store)) == 1


def test_add_file_refuses_content_that_changes_while_copied(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobs_mod, "CHUNK", 1024)
    path = tmp_path / "growing.bin"
    path.write_bytes(os.urandom(64 * 1024))

    def change(phase: str, done: int, total: int) -> None:
        if phase == "copying" and done < total:
            with path.open("r+b") as fh:
                fh.seek(total - 10)
                fh.write(b"X" * 10)

    with pytest.raises(StoreError, match="changed while it was being copied"):
        add_path(store, path, progress=change)
    assert blob_files(store) == [] and temp_files(store.root) == []


def test_add_file_interrupted_leaves_nothing(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobs_mod, "CHUNK", 1024)
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(16 * 1024))

    def interrupt(phase: str, done: int, total: int) -> None:
        if phase == "copying":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        add_path(store, path, progress=interrupt)
    assert blob_files(store) == [] and temp_files(store.root) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_add_file_disk_full_is_reported_and_cleaned_up(
    store: Store, small_model: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    real_write = os.write
    calls = 0

    def write(fd: int, data: Any) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(code, os.strerror(code))
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(blobs_mod, "CHUNK", 4096)
    monkeypatch.setattr(os, "write", write)
    with pytest.raises(DiskFullError) as caught:
        add_path(store, small_model)
    assert "no space left" in caught.value.message
    assert "prune" in (caught.value.hint or "")
    monkeypatch.undo()
    assert blob_files(store) == [] and temp_files(store.root) == []


def test_add_bytes_disk_full(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.add_bytes(b"first")  # the folders exist

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DiskFullError):
        store.add_bytes(b"second")
    monkeypatch.undo()
    assert [p.read_bytes() for p in blob_files(store)] == [b"first"]
    assert temp_files(store.root) == []


def test_permission_error_is_a_store_error(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.add_bytes(b"first")
    real_open = os.open

    def deny(path: Any, flags: int, *args: Any) -> int:
        if os.path.basename(path).startswith(blobs_mod.TMP_PREFIX):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(StoreError, match="permission denied") as caught:
        store.add_bytes(b"second")
    assert not isinstance(caught.value, DiskFullError)
    assert caught.value.hint and "LOCALRUN_MODELS" in caught.value.hint


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("how", ["add_file", "add_bytes", "write_manifest"])
def test_writes_are_fsynced_then_renamed(
    store: Store, small_model: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The content is fsynced under a temporary name, renamed, then the folder is fsynced."""
    manifest = build(store, b"layer") if how == "write_manifest" else None
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", _fd_path(fd)))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", f"{src} -> {dst}"))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    if how == "add_file":
        target = store.blob_path(add_path(store, small_model)[0])
    elif how == "add_bytes":
        target = store.blob_path(store.add_bytes(b"some bytes")[0])
    else:
        assert manifest is not None
        store.write_manifest(name("m"), manifest)
        target = store.manifest_path(name("m"))
    monkeypatch.undo()

    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    tmp = events[0][1]
    assert os.path.basename(tmp).startswith(f"{blobs_mod.TMP_PREFIX}{os.getpid()}-")
    assert os.path.dirname(tmp) == str(target.parent)  # same folder: the rename is atomic
    assert events[1][1] == f"{tmp} -> {target}"
    assert events[2][1] == str(target.parent)
    assert temp_files(store.root) == []


def test_temporary_names_are_process_unique(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        seen.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    for i in range(20):
        store.add_bytes(str(i).encode())
    assert len(set(seen)) == 20
    assert all(s.startswith(f".tmp-{os.getpid()}-") for s in seen)


# -- manifests --------------------------------------------------------------------------------


def test_write_and_read_manifest(store: Store) -> None:
    manifest = build(store, b"weights", b"{}")
    digest = store.write_manifest(name("me/model:v1"), manifest)
    path = store.manifest_path(name("me/model:v1"))
    assert path == store.manifests / "localrun" / "me" / "model" / "v1"
    assert digest == sha(path.read_bytes())
    assert store.read_manifest(name("me/model:v1")) == manifest
    assert store.exists(name("me/model:v1")) and not store.exists(name("me/model:v2"))
    assert store.names() == [name("me/model:v1")]
    [entry] = store.entries()
    assert entry.name == name("me/model:v1") and entry.digest == digest
    assert entry.size == manifest.size and entry.manifest == manifest
    assert abs(entry.modified - path.stat().st_mtime) < 1e-6
    assert temp_files(store.root) == []


def test_write_manifest_replaces_atomically(store: Store) -> None:
    store.write_manifest(name("m"), build(store, b"one"))
    second = build(store, b"two")
    store.write_manifest(name("m"), second)
    assert store.read_manifest(name("m")) == second
    assert len(manifest_files(store)) == 1


def test_write_manifest_refuses_missing_blobs(store: Store) -> None:
    manifest = build(store, b"present")
    missing = Manifest(
        manifest.config, [*manifest.layers, Layer(MEDIA_TYPES["model"], sha(b"x"), 1)]
    )
    with pytest.raises(MissingBlobError) as caught:
        store.write_manifest(name("ns/broken:tag"), missing)
    assert sha(b"x") in caught.value.message
    assert manifest_files(store) == []
    assert not (store.manifests / "localrun" / "ns").exists()  # not even its folders
    assert not store.exists(name("ns/broken:tag"))

    config_missing = Manifest(Layer(MEDIA_CONFIG, sha(b"config"), 6), manifest.layers)
    with pytest.raises(MissingBlobError):
        store.write_manifest(name("broken"), config_missing)
    assert manifest_files(store) == []


def test_read_unknown_manifest(store: Store) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        store.read_manifest(name("nope:v9"))
    assert "nope:v9" in caught.value.message
    store.write_manifest(name("model"), build(store, b"x"))
    with pytest.raises(ModelNotFoundError):
        store.read_manifest(name("model:other"))
    with pytest.raises(ModelNotFoundError):
        store.read_manifest(ModelName("localrun", "library", "model", "x"))


def test_read_manifest_where_a_folder_is_a_file(store: Store) -> None:
    (store.manifests / "localrun").mkdir(parents=True)
    (store.manifests / "localrun" / "library").write_text("not a folder")
    with pytest.raises(ModelNotFoundError):
        store.read_manifest(name("model"))


DAMAGED = {
    "garbage": b"\x00\x01garbage{",
    "truncated": b'{"schemaVersion": 2, "config": {"mediaType": "x", "dig',
    "wrong-schema": b'{"schemaVersion": 1}',
    "hostile-digest": _manifest_json("sha256:../../etc/passwd", f"sha256:{HEX}"),
    "deep": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.fixture(params=sorted(DAMAGED))
def damaged(request: pytest.FixtureRequest, store: Store) -> Iterator[tuple[Store, ModelName]]:
    """A store with a good model `good`, an orphan blob, and a damaged manifest `bad`."""
    store.write_manifest(name("good"), build(store, b"good weights"))
    store.add_bytes(b"orphan")
    path = store.manifest_path(name("bad"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(DAMAGED[request.param])
    yield store, name("bad")


def test_damaged_manifest_is_a_store_error_with_hint(damaged: tuple[Store, ModelName]) -> None:
    store, bad = damaged
    with pytest.raises(StoreError) as caught:
        store.read_manifest(bad)
    err = caught.value
    assert not isinstance(err, ModelNotFoundError)
    assert "bad:latest" in err.message and "damaged" in err.message
    assert err.hint and "localrun rm bad:latest" in err.hint


def test_list_skips_damaged_manifest_and_verify_reports_it(
    damaged: tuple[Store, ModelName],
) -> None:
    store, bad = damaged
    assert [e.name for e in store.entries()] == [name("good")]
    report = store.verify()
    assert report.bad_manifests == [str(bad)]
    assert not report.ok
    assert not report.corrupt and not report.missing


def test_prune_keeps_blobs_while_a_manifest_is_unreadable(
    damaged: tuple[Store, ModelName],
) -> None:
    store, _ = damaged
    before = blob_files(store)
    assert store.has_blob(sha(b"orphan"))
    report = store.prune()
    assert report is not None and report.orphan_blobs == 0
    assert blob_files(store) == before
    # removing the good model must not collect blobs either (the damaged one may need them)
    store.remove(name("good"))
    assert blob_files(store) == before


def test_a_damaged_manifest_can_be_removed(damaged: tuple[Store, ModelName]) -> None:
    # The damage message tells the user to `localrun rm` the model: that has to work.
    store, bad = damaged
    store.remove(bad)
    assert not store.exists(bad)
    assert store.verify().ok
    assert not store.has_blob(sha(b"orphan"))  # garbage collection runs again
    assert store.read_blob(store.read_manifest(name("good")).layers[0].digest) == b"good weights"


def test_names_ignores_stray_files(store: Store) -> None:
    store.write_manifest(name("model"), build(store, b"x"))
    library = store.manifests / "localrun" / "library"
    (library / "UPPER").mkdir()
    (library / "UPPER" / "latest").write_text("{}")
    (library / ".hidden").mkdir()
    (library / ".hidden" / "latest").write_text("{}")
    (library / "model" / ".tmp-1-abc").write_text("{}")
    (store.manifests / "README").write_text("hello")
    (library / "folder-tag").mkdir()
    (library / "folder-tag" / "tag").mkdir()
    assert store.names() == [name("model")]
    assert [e.name for e in store.entries()] == [name("model")]
    assert store.verify().ok


def test_names_sorted_across_namespaces(store: Store) -> None:
    manifest = build(store, b"x")
    refs = ["zeta", "alpha:2", "me/beta", "example.com/team/gamma:v1", "alpha:1"]
    for ref in refs:
        store.write_manifest(name(ref), manifest)
    assert store.names() == sorted(name(r) for r in refs)


def test_empty_store_has_no_models(store: Store) -> None:
    assert store.names() == [] and store.entries() == []
    report = store.verify()
    assert report.ok and report.checked == 0
    assert not store.root.exists()  # reading never creates the store


# -- copy and remove --------------------------------------------------------------------------


def test_copy_shares_blobs(store: Store) -> None:
    manifest = build(store, b"weights", b"{}")
    store.write_manifest(name("src"), manifest)
    blobs = blob_files(store)
    store.copy(name("src"), name("other/dst:v2"))
    assert blob_files(store) == blobs
    assert store.read_manifest(name("other/dst:v2")) == manifest
    assert store.names() == sorted([name("src"), name("other/dst:v2")])


def test_copy_unknown_writes_nothing(store: Store) -> None:
    with pytest.raises(ModelNotFoundError):
        store.copy(name("missing"), name("dst"))
    assert manifest_files(store) == []


def test_remove_keeps_shared_blobs(store: Store) -> None:
    shared_weights = b"shared weights" * 100
    a = build(store, shared_weights, b'{"a": 1}', config=b'{"name": "a"}')
    b = build(store, shared_weights, b'{"b": 2}', config=b'{"name": "b"}')
    store.write_manifest(name("a"), a)
    store.write_manifest(name("team/b:v1"), b)
    store.copy(name("a"), name("a-copy"))

    assert store.remove(name("a")) == 0  # everything of a is still used by a-copy
    assert store.verify().ok and len(blob_files(store)) == 5

    freed = store.remove(name("a-copy"))
    assert freed == len(b'{"a": 1}') + len(b'{"name": "a"}')
    assert sorted(blob_files(store)) == sorted(store.blob_path(d) for d in b.digests())
    assert store.read_blob(b.layers[0].digest) == shared_weights
    assert store.names() == [name("team/b:v1")]

    freed = store.remove(name("team/b:v1"))
    assert freed == sum(len(x) for x in (shared_weights, b'{"b": 2}', b'{"name": "b"}'))
    assert blob_files(store) == []
    # empty manifest folders are removed, the manifests root stays
    assert store.manifests.is_dir() and list(store.manifests.iterdir()) == []
    assert temp_files(store.root) == []


def test_remove_leaves_other_models_folders(store: Store) -> None:
    manifest = build(store, b"x")
    store.write_manifest(name("ns/one:a"), manifest)
    store.write_manifest(name("ns/one:b"), manifest)
    store.write_manifest(name("ns/two"), manifest)
    store.remove(name("ns/one:a"))
    assert (store.manifests / "localrun" / "ns" / "one").is_dir()
    store.remove(name("ns/one:b"))
    assert not (store.manifests / "localrun" / "ns" / "one").exists()
    assert (store.manifests / "localrun" / "ns" / "two").is_dir()
    assert store.names() == [name("ns/two")]


def test_remove_unknown(store: Store) -> None:
    with pytest.raises(ModelNotFoundError):
        store.remove(name("nothing"))
    store.write_manifest(name("model"), build(store, b"x"))
    with pytest.raises(ModelNotFoundError):
        store.remove(name("model:v2"))
    assert store.names() == [name("model")]


# -- verify and read_blob ---------------------------------------------------------------------


def test_verify_reports_corrupt_blobs_with_their_models(store: Store) -> None:
    shared = build(store, b"weights" * 1000)
    store.write_manifest(name("one"), shared)
    store.copy(name("one"), name("two"))
    store.write_manifest(name("three"), build(store, b"other"))
    store.add_bytes(b"unused")
    assert store.verify().ok

    weights = shared.layers[0].digest
    flip_byte(store.blob_path(weights), 3000)
    flip_byte(store.blob_path(sha(b"unused")))
    progress: list[str] = []
    report = store.verify(lambda digest, done, total: progress.append(digest))
    assert not report.ok
    assert report.corrupt == {weights: ["one:latest", "two:latest"], sha(b"unused"): []}
    assert report.missing == {} and report.bad_manifests == []
    assert report.checked == len(blob_files(store))
    assert weights in progress


def test_verify_reports_missing_blobs(store: Store) -> None:
    manifest = build(store, b"weights")
    store.write_manifest(name("one"), manifest)
    store.copy(name("one"), name("me/two"))
    store.blob_path(sha(b"weights")).unlink()
    report = store.verify()
    assert {d: sorted(m) for d, m in report.missing.items()} == {
        sha(b"weights"): ["me/two:latest", "one:latest"]
    }
    assert report.corrupt == {} and not report.ok


def test_verify_ignores_temporary_files(store: Store) -> None:
    store.write_manifest(name("one"), build(store, b"weights"))
    (store.blobs / ".tmp-123-abcd").write_bytes(b"half a blob")
    assert store.verify().ok


def test_read_blob_detects_corruption(store: Store) -> None:
    digest, _ = store.add_bytes(b'{"temperature": 0.7}')
    flip_byte(store.blob_path(digest), 5)
    with pytest.raises(CorruptBlobError) as caught:
        store.read_blob(digest)
    assert digest in caught.value.message and caught.value.hint


def test_read_blob_missing_and_too_large(store: Store) -> None:
    with pytest.raises(MissingBlobError):
        store.read_blob(sha(b"never stored"))
    digest, _ = store.add_bytes(b"x" * 100)
    with pytest.raises(StoreError, match="larger than expected"):
        store.read_blob(digest, limit=99)
    assert store.read_blob(digest, limit=100) == b"x" * 100


def test_read_blob_truncated(store: Store) -> None:
    digest, _ = store.add_bytes(b"0123456789")
    with store.blob_path(digest).open("r+b") as fh:
        fh.truncate(5)
    with pytest.raises(CorruptBlobError):
        store.read_blob(digest)


# -- prune ------------------------------------------------------------------------------------


def test_prune_removes_orphans_and_temporary_files(store: Store) -> None:
    manifest = build(store, b"kept weights")
    store.write_manifest(name("model"), manifest)
    store.add_bytes(b"orphan one")
    store.add_bytes(b"orphan two!")
    (store.blobs / ".tmp-999-dead").write_bytes(b"x" * 1000)
    model_dir = store.manifest_path(name("model")).parent
    (model_dir / ".tmp-999-beef").write_bytes(b"y" * 10)
    (store.blobs / "README").write_text("not a blob, not ours")

    report = store.prune()
    assert report is not None
    assert report.orphan_blobs == 2
    assert report.temp_files == 2
    assert report.bytes_freed == len(b"orphan one") + len(b"orphan two!") + 1000 + 10
    assert temp_files(store.root) == []
    assert sorted(blob_files(store)) == sorted(store.blob_path(d) for d in manifest.digests())
    assert (store.blobs / "README").exists()
    assert store.verify().ok

    again = store.prune()
    assert again is not None
    assert (again.orphan_blobs, again.temp_files, again.bytes_freed) == (0, 0, 0)


def test_prune_counts_each_temporary_file_once(store: Store) -> None:
    manifest = build(store, b"x")
    for tag in ("a", "b", "c"):
        store.write_manifest(name(f"model:{tag}"), manifest)
    model_dir = store.manifest_path(name("model:a")).parent
    (model_dir / ".tmp-1-stale").write_bytes(b"12345")
    # a crash during the first write of a new model leaves a folder holding only a temp file
    lonely = store.manifests / "localrun" / "library" / "new-model"
    lonely.mkdir()
    (lonely / ".tmp-2-stale").write_bytes(b"123")
    report = store.prune()
    assert report is not None
    assert (report.temp_files, report.bytes_freed, report.orphan_blobs) == (2, 8, 0)
    assert temp_files(store.root) == []
    assert store.names() == [name(f"model:{tag}") for tag in ("a", "b", "c")]


def test_a_lease_keeps_a_replaced_models_blobs_until_it_is_released(store: Store) -> None:
    """A runner holds the blobs of the manifest it was admitted by (store.leases): a `create`
    that gives the name other blobs, then rm and prune, leave them until it lets go."""
    first = build(store, b"first weights")
    store.write_manifest(name("model"), first)
    lease = leases.take(store, first.digests(), "model")
    store.write_manifest(name("model"), build(store, b"second weights"))  # the name replaced
    report = store.prune()
    assert report is not None and report.orphan_blobs == 0
    store.remove(name("model"))
    assert all(store.blob_path(d).is_file() for d in first.digests())
    lease.release()
    lease.release()  # once is enough
    report = store.prune()
    assert report is not None and report.orphan_blobs == len(first.digests())
    assert blob_files(store) == [] and list((store.root / leases.FOLDER).iterdir()) == []


def test_a_lease_of_blobs_gone_already_is_refused(store: Store) -> None:
    manifest = build(store, b"weights")
    store.write_manifest(name("model"), manifest)
    store.remove(name("model"))
    with pytest.raises(MissingBlobError, match="model:latest were removed"):
        leases.take(store, manifest.digests(), "model:latest")


def test_a_lease_ends_with_the_process_that_held_it(store: Store) -> None:
    """A runner that dies (SIGKILL) holds nothing: its lock went with it, and prune removes
    its record and the blobs no manifest uses."""
    manifest = build(store, b"weights")
    code = (
        "import sys; from pathlib import Path; from localrun.store import leases;"
        "from localrun.store.local import Store;"
        f"root, digests = Path({str(store.root)!r}), {sorted(manifest.digests())!r};"
        "held = leases.take(Store(root), digests, 'm');"
        "print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        report = store.prune()
        assert report is not None and report.orphan_blobs == 0
    finally:
        holder.kill()
        holder.wait()
    report = store.prune()
    assert report is not None and report.orphan_blobs == len(manifest.digests())
    assert list((store.root / leases.FOLDER).iterdir()) == []


def test_prune_of_a_store_that_does_not_exist(store: Store) -> None:
    report = store.prune()
    assert report is not None and report.bytes_freed == 0
    assert not store.root.exists()


_HOLD = """
import sys
from pathlib import Path
from localrun.store.local import Store
store = Store(Path(sys.argv[1]))
with {how}:
    print("held", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


class Holder:
    """A child process holding the store's lock until release()."""

    def __init__(self, store: Store, how: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD.format(how=how), str(store.root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        if not ready:
            self.proc.kill()
            pytest.fail("the child did not take the lock within 30 s")
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.wait(timeout=PATIENCE_S) == 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def holder(store: Store) -> Iterator[Callable[[str], Holder]]:
    started: list[Holder] = []

    def start(how: str) -> Holder:
        started.append(Holder(store, how))
        return started[-1]

    yield start
    for h in started:
        h.kill()


def test_prune_does_not_wait_for_a_writer(store: Store, holder: Callable[[str], Holder]) -> None:
    store.add_bytes(b"orphan")
    (store.blobs / ".tmp-1-inflight").write_bytes(b"being written")
    writer = holder("store.writing()")

    start = time.monotonic()
    assert store.prune(blocking=False) is None
    assert time.monotonic() - start < 5
    assert store.has_blob(sha(b"orphan")) and (store.blobs / ".tmp-1-inflight").exists()
    with store.exclusive(blocking=False) as held:
        assert held is False

    writer.release()
    report = store.prune(blocking=False)
    assert report is not None and report.orphan_blobs == 1 and report.temp_files == 1
    assert temp_files(store.root) == [] and blob_files(store) == []


def test_prune_does_not_wait_for_another_prune(
    store: Store, holder: Callable[[str], Holder]
) -> None:
    other = holder("store.exclusive()")
    assert store.prune(blocking=False) is None
    other.release()
    assert store.prune(blocking=False) is not None


def test_writers_share_the_lock(store: Store, holder: Callable[[str], Holder]) -> None:
    writer = holder("store.writing()")
    done = threading.Event()

    def write() -> None:
        with store.writing():
            store.write_manifest(name("m"), build(store, b"x"))
        done.set()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    assert done.wait(20), "a second writer waited for the first"
    writer.release()


def test_remove_waits_for_writers(store: Store, holder: Callable[[str], Holder]) -> None:
    store.write_manifest(name("m"), build(store, b"x"))
    writer = holder("store.writing()")
    removed = threading.Event()

    def remove() -> None:
        store.remove(name("m"))
        removed.set()

    thread = threading.Thread(target=remove, daemon=True)
    thread.start()
    assert not removed.wait(1.0), "rm ran while a writer held the store"
    assert store.exists(name("m"))
    writer.release()
    assert removed.wait(20)
    assert not store.exists(name("m")) and blob_files(store) == []


def test_verify_waits_for_rm_and_prune(store: Store, holder: Callable[[str], Holder]) -> None:
    store.write_manifest(name("m"), build(store, b"x"))
    gc = holder("store.exclusive()")
    reports: list[Any] = []
    thread = threading.Thread(target=lambda: reports.append(store.verify()), daemon=True)
    thread.start()
    thread.join(1.0)
    assert reports == [], "verify ran while rm or prune held the store"
    gc.release()
    thread.join(20)
    assert len(reports) == 1 and reports[0].ok


_REMOVER = """
import sys
from pathlib import Path
from localrun.store import names
from localrun.store.local import Store
store = Store(Path(sys.argv[1]))
for i in range(int(sys.argv[2])):
    store.remove(names.parse(f"m{i}"))
"""


def test_verify_during_concurrent_removals(store: Store) -> None:
    # Without the lock, verify listed blobs that rm then deleted: FileNotFoundError, or blobs
    # reported missing.
    count = 60
    for i in range(count):
        store.write_manifest(name(f"m{i}"), build(store, os.urandom(20_000), config=b"%d" % i))
    child = subprocess.Popen([sys.executable, "-c", _REMOVER, str(store.root), str(count)])
    try:
        runs = 0
        while child.poll() is None or runs == 0:
            report = store.verify()
            assert report.ok, report
            runs += 1
        assert child.wait(60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert store.names() == [] and blob_files(store) == []


# -- concurrent creates -----------------------------------------------------------------------


# -- crashes and full disks (real processes) --------------------------------------------------


def test_killed_create_is_cleaned_by_the_next_create(
    store: Store, small_model: Path, tmp_path: Path
) -> None:
    # A crashed writer's leftovers (simulated) go at the next writing command once the store is
    # idle; a running writer's temp files are never touched (see the lock tests above).
    store.blobs.mkdir(parents=True)
    (store.blobs / ".tmp-4242-deadbeef").write_bytes(b"stale")
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {small_model}\n")
    result = CLI(tmp_path)("create", "model", "-f", str(mf), "-q")
    assert result.code == 0, result.stderr
    assert temp_files(store.root) == []
    assert store.verify().ok
