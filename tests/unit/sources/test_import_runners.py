"""Other runners' stores read without a server or a model: `localrun import`'s hostile layouts
refused or skipped in one line (a manifest too large, an unreadable LM Studio folder, a hub
snapshot's links), LM Studio's folder left as it was, the setting that names the runners, and
the listing cached and never broken by a folder. Imports that run, and `serve` with
LOCALRUN_OTHER_RUNNERS: tests/integration/sources/test_import_runners.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localrun.errors import ConfigError
from localrun.recipes.modelfile import Modelfile
from localrun.settings import config, parse
from localrun.sources.runners import importing as runners
from localrun.sources.runners.found import Found

from support.cli import CLI, assert_one_line_error
from support.stores import (
    listing,
    lm_studio,
)

# -- llama.cpp's cache ------------------------------------------------------------------------


def test_a_manifest_too_large_or_not_json_is_one_line(cli: CLI, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest=big=Big-GGUF=latest.json").write_text(" " * (2 << 20) + "{}")
    (cache / "manifest=bad=Bad-GGUF=latest.json").write_text("{not json")
    (cache / "manifest=none=None-GGUF=latest.json").write_text('{"layers": []}')
    listed = cli("import", "llama.cpp", "--dry-run", env={"LLAMA_CACHE": str(cache)})
    assert listed.code == 0, listed.stderr
    rows = listing(listed.stdout)
    assert "larger than" in rows["hf.co/big/big-gguf"]
    assert "not JSON" in rows["hf.co/bad/bad-gguf"]
    assert "names no GGUF" in rows["hf.co/none/none-gguf"]


# -- LM Studio --------------------------------------------------------------------------------


@pytest.fixture
def studio(tmp_path: Path, tiny_model: Path, tiny_fim_model: Path) -> dict[str, Path]:
    return lm_studio(tmp_path, tiny_model, tiny_fim_model)


TINY = "hf.co/bartowski/tiny-gguf:q4_k_m"


# -- updates: Ollama and the hub cache ----------------------------------------------------------


# -- serve: other runners' models by name -----------------------------------------------------


def test_the_listing_is_cached_and_survives_a_hostile_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scans: list[str] = []
    now = [0.0]

    def find(source: str) -> list[Found]:
        scans.append(source)
        if source == "hf":
            raise OSError(13, "Permission denied")
        return [Found("m:latest", 1, tmp_path, source, Modelfile("x"))]

    monkeypatch.setattr(runners, "find", find)
    monkeypatch.setenv("LOCALRUN_OTHER_RUNNERS", "ollama,hf")
    index = runners.Index(clock=lambda: now[0])
    assert [m.name for m in index.models()] == ["m:latest"]
    assert index.models() and index.named("m:latest") is not None and scans == ["ollama", "hf"]
    now[0] += runners.RETRY_S + 0.1  # a name not listed rescans after RETRY_S, no sooner
    assert index.named("other:latest") is None and len(scans) == 4
    assert index.named("other:latest") is None and len(scans) == 4
    now[0] += runners.TTL_S
    index.models()
    assert len(scans) == 6
    monkeypatch.setenv("LOCALRUN_OTHER_RUNNERS", "ollama")  # another setting: scanned anew
    index.models()
    assert scans[-1] == "ollama" and len(scans) == 7
    monkeypatch.setenv("LOCALRUN_OTHER_RUNNERS", "nosuch")
    assert index.models() == []  # a bad setting lists nothing; the route still answers


def test_the_setting_names_the_runners_import_knows(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (*parse.RUNNERS, "all") == runners.SOURCES
    assert config.other_runners() == ()  # off unless set
    assert parse.parse_runners("1") == parse.RUNNERS == parse.parse_runners("all")
    assert parse.parse_runners("") == () == parse.parse_runners("off")
    assert parse.parse_runners(" LMStudio, llama.cpp,lmstudio") == ("lmstudio", "llama.cpp")
    monkeypatch.setenv("LOCALRUN_OTHER_RUNNERS", "ollama,vllm")
    with pytest.raises(ConfigError, match="unknown runner 'vllm'"):
        config.other_runners()


@pytest.mark.parametrize(
    ("setting", "value", "said"),
    [
        ("LOCALRUN_OTHER_RUNNERS", "ollama,vllm", "unknown runner 'vllm'"),
        ("LOCALRUN_ANSWER_MEMORY", "maybe", "expected a boolean"),
        ("LOCALRUN_EXACT", "maybe", "expected one of auto, on, off"),
    ],
)
def test_serve_refuses_a_bad_setting(cli: CLI, setting: str, value: str, said: str) -> None:
    """The routes read these at each request and only log a bad value there: `serve` checks
    them first, so a typo is one line and an exit, not a server that quietly ignores it."""
    result = cli("serve", "--port", "0", env={setting: value}, timeout=60)
    assert_one_line_error(result, setting, said)


# -- hostile folders (issue 57) ----------------------------------------------------------------


@pytest.mark.parametrize("downloads", ["/", "/usr", "HOME_PARENT"])
def test_lm_studio_is_read_only_where_it_keeps_models(
    cli: CLI, studio: dict[str, Path], downloads: str
) -> None:
    """A downloadsFolder of the system's files, or one above the home, would make every GGUF
    two levels down importable (and listed to the server's clients): one row says why."""
    from localrun.sources.runners import lmstudio

    user = studio["user"]
    folder = str(user.parent) if downloads == "HOME_PARENT" else downloads
    lm_home = Path((user / ".lmstudio-home-pointer").read_text().strip())
    (lm_home / "settings.json").write_text(json.dumps({"downloadsFolder": folder}))
    listed = cli("import", "lmstudio", "--dry-run", env={"HOME": str(user)})
    assert listed.code == 0, listed.stderr
    assert "LM Studio's models are not read: its downloadsFolder is" in listed.stdout
    assert "tiny-gguf" not in listed.stdout
    (lm_home / "settings.json").write_text(json.dumps({"downloadsFolder": str(studio["models"])}))
    assert lmstudio.unfit_folder(studio["models"]) is None


def test_an_unreadable_lm_studio_folder_hides_only_itself(
    studio: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from localrun.sources.runners import lmstudio

    monkeypatch.setenv("HOME", str(studio["user"]))
    real = lmstudio.dirs

    def dirs(path: Path) -> list[Path]:
        if path.name == "linked":  # as root the tests cannot make a folder unreadable
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(lmstudio, "dirs", dirs)
    found = {f.name: f for f in lmstudio.models()}
    assert not found[TINY].problem and found[TINY].modelfile is not None
    assert found["hf.co/linked"].problem and "Permission denied" in found["hf.co/linked"].problem


def test_a_hub_snapshot_is_walked_without_following_links(tmp_path: Path) -> None:
    """A snapshot linking to a large tree (/usr) is not walked into, nor one nested past a
    repository's depth; one of too many entries is one row."""
    import time

    from localrun.sources.runners import folders

    repo = tmp_path / "hub" / "models--org--repo"
    snapshot = repo / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "usr").symlink_to("/usr")
    deep = snapshot.joinpath(*["d"] * (folders.MAX_DEPTH + 2))
    deep.mkdir(parents=True)
    (deep / "lost-Q4_0.gguf").write_bytes(b"GGUF")
    started = time.perf_counter()
    assert folders.snapshot_ggufs(snapshot) == []
    assert folders.hub_models(tmp_path / "hub") == []
    assert time.perf_counter() - started < 0.5
    for n in range(folders.MAX_ENTRIES + 1):
        (snapshot / f"f{n}").touch()
    (row,) = folders.hub_models(tmp_path / "hub")
    assert row.problem and "more than" in row.problem


def test_a_slow_scan_holds_up_no_request(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """While a scan is under way, a caller gets the last listing at once."""
    import threading
    import time

    now = [0.0]
    release = threading.Event()
    slow = [False]

    def find(source: str) -> list[Found]:
        if slow[0]:
            release.wait(10)
        return [Found("m:latest", 1, tmp_path, source, Modelfile("x"))]

    monkeypatch.setattr(runners, "find", find)
    monkeypatch.setenv("LOCALRUN_OTHER_RUNNERS", "ollama")
    index = runners.Index(clock=lambda: now[0])
    assert [m.name for m in index.models()] == ["m:latest"]
    now[0] += runners.TTL_S + 1
    slow[0] = True
    scanning = threading.Thread(target=index.models)
    scanning.start()
    while index._scanning is None:
        pass
    started = time.monotonic()
    assert [m.name for m in index.models()] == ["m:latest"]
    assert time.monotonic() - started < 1  # not waiting for the scan
    release.set()
    scanning.join(10)
    assert not scanning.is_alive()
