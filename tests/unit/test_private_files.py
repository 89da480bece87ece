"""Every file a conversation leaves behind is its owner's alone: 0600 in a 0700 folder, whatever
the umask; `localrun info` names a folder of them that others can read.

(The chat history's mode after a real terminal session is checked in
tests/integration/cli/test_chat.py.)
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from localrun.engine.prompts import disk_cache as prompt_cache
from localrun.engine.prompts.disk_cache import PromptCache
from localrun.host import private

from support.cli import CLI


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    """The usual umask, under which files are written readable to everyone."""
    before = os.umask(0o022)
    yield
    os.umask(before)


def test_a_prompt_cache_entry_is_private(home: Path) -> None:
    cache = PromptCache({"model": ["sha256:" + "0" * 64]}, prompt_cache.folder(), 10**9)
    cache.save(list(range(100)), bytearray(b"state" * 100))
    cache.flush()
    (entry,) = prompt_cache.folder().iterdir()
    assert mode(entry) == 0o600
    assert mode(prompt_cache.folder()) == 0o700 and mode(prompt_cache.folder().parent) == 0o700
    # A folder of localrun's own made open by hand is closed again at the next write.
    os.chmod(prompt_cache.folder(), 0o755)
    cache.save(list(range(200)), bytearray(b"state" * 100))
    cache.flush()
    assert mode(prompt_cache.folder()) == 0o700


def test_helpers_create_private_files_and_folders(tmp_path: Path) -> None:
    logs = private.private_dir(tmp_path / "home" / "logs")
    assert mode(logs) == 0o700 and mode(logs.parent) == 0o700
    log = logs / "launch-serve.log"
    private.touch(log)
    assert mode(log) == 0o600
    log.chmod(0o644)  # written by another program, or before this version
    private.restrict(log)
    assert mode(log) == 0o600
    # A folder that is not only localrun's (LOCALRUN_HOME) is left as its owner made it.
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    os.chmod(mine, 0o755)
    private.private_dir(mine, owned=False)
    assert mode(mine) == 0o755
    assert private.exposed([mine, logs, tmp_path / "absent"]) == [(mine, "drwxr-xr-x")]
    # One inside a listed folder that others cannot enter is out of their reach.
    inner = mine / "inner"
    inner.mkdir()
    os.chmod(inner, 0o777)
    assert [folder for folder, _ in private.exposed([mine, inner])] == [mine, inner]
    os.chmod(mine, 0o744)  # others may list it, not enter it
    assert private.exposed([mine, inner]) == [(mine, "drwxr--r--")]


def test_a_new_home_is_private_and_info_names_an_open_one(cli: CLI, home: Path) -> None:
    assert cli("list").code == 0
    assert mode(home) == 0o700
    data = json.loads(cli("info", "--json").stdout)
    assert not [n for n in data["notes"] if "open to other users" in n]
    os.chmod(home, 0o755)
    (home / "responses").mkdir(mode=0o777)
    os.chmod(home / "responses", 0o777)
    text = cli("info").stdout
    notes = [line for line in text.splitlines() if "open to other users" in line]
    assert len(notes) == 2, text
    assert f"{home} is open to other users (drwxr-xr-x)" in notes[0]
    assert "chat history" in notes[0] and notes[0].endswith(f"chmod 700 {home}")
    assert "Responses" in notes[1] and notes[1].endswith(f"chmod 700 {home / 'responses'}")
    # Once the home is closed, what an older version left open inside it is out of reach.
    os.chmod(home, 0o700)
    assert "open to other users" not in cli("info").stdout


def test_a_home_any_first_command_makes_is_private(cli: CLI, tmp_path: Path) -> None:
    """README's first commands (`runtime install exact` makes LOCALRUN_HOME/runtimes; --version
    records the build under cache/) and the others that write under LOCALRUN_HOME make the home
    0700, as the store does: `info` then has nothing to tell the user to chmod."""
    for i, args in enumerate(
        (
            ["runtime", "select", "cpu"],
            ["--version"],
            ["upstream", "add", "box", "http://127.0.0.1:9", "--model", "m"],
        )
    ):
        home = tmp_path / f"fresh-{i}" / "share" / "localrun"
        done = cli(*args, env={"LOCALRUN_HOME": str(home)})
        assert done.code == 0, (args, done.stderr)
        assert home.exists() or args == ["--version"], args  # (a build without libllama)
        made = [p for p in (home, home.parent, home.parent.parent) if p.exists()]
        assert [mode(p) for p in made] == [0o700] * len(made), (args, made)
        told = cli("info", "--json", env={"LOCALRUN_HOME": str(home)})
        assert not [n for n in json.loads(told.stdout)["notes"] if "chmod" in n], args


def test_a_home_that_cannot_be_made_does_not_stop_a_store_elsewhere(
    cli: CLI, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LOCALRUN_HOME", str(blocker / "home"))  # under a file: never made
    monkeypatch.setenv("LOCALRUN_MODELS", str(tmp_path / "models"))
    result = cli("list")
    assert result.code == 0, result.stderr


def test_the_helpers_never_write_through_a_planted_link(tmp_path: Path) -> None:
    """What localrun writes of its own under LOCALRUN_HOME (launch's files and log, the chat
    history, upstreams.toml) goes through these: a link planted where a file or a folder of
    localrun's should be is replaced or refused, its target never written or chmod-ed."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    home = private.private_dir(tmp_path / "home")

    def untouched() -> bool:
        return victim.read_text() == "precious\n" and mode(victim) == 0o644

    whole = home / "settings.yml"
    whole.symlink_to(victim)
    private.write(whole, b"mine\n")
    assert untouched() and not whole.is_symlink() and whole.read_bytes() == b"mine\n"
    assert mode(whole) == 0o600
    history = home / "history"
    history.symlink_to(victim)
    private.restrict(history)
    private.touch(history)
    private.write_with(history, lambda new: new.write_text("ls\n"))
    assert untouched() and not history.is_symlink() and history.read_text() == "ls\n"
    assert not [p for p in home.iterdir() if p.name.endswith(".tmp")]

    log = home / "serve.log"
    os.mkfifo(home / "fifo")
    for plant in (log.symlink_to, log.hardlink_to):
        plant(victim)
        with pytest.raises(private.Planted):
            private.open_log(log)
        log.unlink()
    with pytest.raises(private.Planted):
        private.open_log(home / "fifo")  # opened without O_NONBLOCK, this would never return
    with private.open_log(log) as out:
        out.write(b"line\n")
    with private.open_log(log) as out:
        out.write(b"more\n")
    assert log.read_bytes() == b"line\nmore\n" and mode(log) == 0o600
    assert untouched()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chmod(elsewhere, 0o755)
    (home / "logs").symlink_to(elsewhere)
    with pytest.raises(private.Planted):
        private.private_dir(home / "logs")
    assert mode(elsewhere) == 0o755
    # LOCALRUN_HOME itself may be a link (to another disk): only folders of localrun's own
    # are refused.
    (tmp_path / "linked-home").symlink_to(home)
    assert private.private_dir(tmp_path / "linked-home", owned=False) == tmp_path / "linked-home"
