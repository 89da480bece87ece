"""scripts/fetch_corpora.py's npm corpora: the version's entry in npm's registry must list the
pinned integrity and tarball (read here from file:// entries: the unit tier opens no socket), and
an npm tarball's members are read below its `package/` folder as a source archive's are below its
own."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import fetch_corpora
import pytest

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
