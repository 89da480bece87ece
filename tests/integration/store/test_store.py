"""The store under crashes, full disks and concurrent writers: real processes (multiprocessing
with spawn, or the `localrun` CLI) creating, killed mid-create, or writing to a disk that fills
up."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testmodels.text import write_tiny_model

from localrun.store import blobs as blobs_mod
from localrun.store.local import Store
from localrun.store.manifest import (
    check_digest,
)

from support.blobs import blob_files, build, file_digest, name, temp_files
from support.cli import CLI, assert_one_line_error
from support.workers import create_model


@pytest.mark.slow
def test_concurrent_creates(store: Store, tmp_path: Path) -> None:
    files = [
        write_tiny_model(tmp_path / f"m{seed}.gguf", seed=seed, n_layer=1, extra_bytes=1_000_000)
        for seed in range(4)
    ]
    jobs = [
        ("alpha", files[0]),
        ("beta", files[1]),
        ("same", files[2]),  # the same name from the same file, three times
        ("same", files[2]),
        ("same", files[2]),
        ("contested", files[0]),  # the same name from different files
        ("contested", files[3]),
        ("me/gamma:v1", files[3]),
    ]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(jobs))
    procs = [
        ctx.Process(target=create_model, args=(str(store.root), model, str(path), barrier))
        for model, path in jobs
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    assert [proc.exitcode for proc in procs] == [0] * len(jobs)

    digests = {path: file_digest(path) for path in files}
    expected = {
        "alpha": {digests[files[0]]},
        "beta": {digests[files[1]]},
        "same": {digests[files[2]]},
        "contested": {digests[files[0]], digests[files[3]]},
        "me/gamma:v1": {digests[files[3]]},
    }
    assert store.names() == sorted(name(m) for m in expected)
    for model, allowed in expected.items():
        manifest = store.read_manifest(name(model))
        [layer] = manifest.of_kind("model")
        assert layer.digest in allowed
        assert layer.size == store.blob_path(layer.digest).stat().st_size
    report = store.verify()
    assert report.ok, report
    assert temp_files(store.root) == []
    model_blobs = {d for d in digests.values()}
    assert model_blobs <= {check_digest(p.name) for p in blob_files(store)}
    pruned = store.prune()
    assert pruned is not None and pruned.orphan_blobs == 0  # nothing half-made was left


def _wait_for_growing_temp(blobs: Path, proc: subprocess.Popen[bytes], deadline: float) -> Path:
    """The blob temp file once it has been seen growing; fails if the copy ends first."""
    sizes: dict[Path, int] = {}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"create ended (exit {proc.returncode}) before it could be interrupted")
        for path in blobs.glob(blobs_mod.TMP_PREFIX + "*") if blobs.is_dir() else []:
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if 0 < sizes.get(path, size) < size:
                return path
            sizes[path] = size
        time.sleep(0.002)
    pytest.fail("no growing temporary file appeared")


@pytest.mark.slow
def test_killed_create_leaves_no_model_and_prune_cleans_up(
    store: Store, tmp_path: Path, home: Path, cli: CLI
) -> None:
    big = write_tiny_model(tmp_path / "big.gguf", extra_bytes=400_000_000)
    (tmp_path / "Modelfile").write_text("FROM ./big.gguf\n")
    store.write_manifest(name("bystander"), build(store, b"bystander weights"))

    env = {**os.environ, "LOCALRUN_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "localrun", "create", "big", "-f", str(tmp_path / "Modelfile")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        tmp = _wait_for_growing_temp(store.blobs, proc, time.monotonic() + 60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    assert not store.exists(name("big"))
    assert store.names() == [name("bystander")]
    assert tmp.exists() and 0 < tmp.stat().st_size < big.stat().st_size
    assert not store.has_blob(file_digest(big))
    report = store.verify()
    assert report.ok and not report.corrupt, report
    for blob in blob_files(store):
        assert file_digest(blob) == check_digest(blob.name)

    result = cli("prune")
    assert result.code == 0, result.stderr
    assert "removed 1 temporary file and 0 unused blobs" in result.stdout, result.stdout
    assert temp_files(store.root) == []
    assert store.names() == [name("bystander")] and store.verify().ok

    result = cli("create", "big", "-f", str(tmp_path / "Modelfile"), "-q")
    assert result.code == 0, result.stderr
    [layer] = store.read_manifest(name("big")).of_kind("model")
    assert layer.digest == file_digest(big)
    assert store.verify().ok and temp_files(store.root) == []


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs (root only); skipped where it cannot be mounted."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "tiny-disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


@pytest.mark.slow
def test_disk_full_create(full_disk: Path, tmp_path: Path, tiny_model: Path, cli: CLI) -> None:
    env = {"LOCALRUN_MODELS": str(full_disk / "models")}
    store = Store(full_disk / "models")
    (tmp_path / "Small").write_text(f"FROM {tiny_model}\nSYSTEM be brief\n")
    result = cli("create", "small", "-f", str(tmp_path / "Small"), "-q", env=env)
    assert result.code == 0, result.stderr
    assert store.verify().ok

    big = write_tiny_model(tmp_path / "big.gguf", extra_bytes=3_000_000)
    (tmp_path / "Big").write_text(f"FROM {big}\n")
    result = cli("create", "big", "-f", str(tmp_path / "Big"), env=env)
    assert_one_line_error(result, "no space left")
    assert "prune" in result.stderr  # the hint: what to do next
    assert not store.exists(name("big"))
    assert store.names() == [name("small")]
    assert temp_files(store.root) == []
    assert not store.has_blob(file_digest(big))
    report = store.verify()
    assert report.ok, report

    listed = cli("list", env=env)
    assert listed.code == 0 and "small" in listed.stdout and "big" not in listed.stdout
