"""Files in place: `create --link` adds a user's GGUF without a second copy (a hard link on
this machine's ext4; a copy, said so, across file systems), `verify` names a linked file edited
in place, and `rm` never deletes the user's original."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from localrun.errors import StoreError
from localrun.model import stored as model_mod
from localrun.store import links, names
from localrun.store.blobs import temp_path
from localrun.store.local import Store

from support.cli import CLI, assert_one_line_error

pytestmark = [pytest.mark.model]


def _digest(path: Path) -> str:
    return "sha256-" + hashlib.sha256(path.read_bytes()).hexdigest()


def _create(cli: CLI, folder: Path, name: str, gguf: str, *extra: str) -> tuple[int, str]:
    modelfile = folder / f"Modelfile.{name}"
    modelfile.write_text(f"FROM {gguf}\n")
    result = cli("create", name, "-f", str(modelfile), *extra)
    return result.code, result.stderr


@pytest.fixture
def users_file(tmp_path: Path, tiny_model: Path) -> Path:
    """The user's own GGUF, in a folder of theirs on the store's file system."""
    folder = tmp_path / "lm-studio" / "models"
    folder.mkdir(parents=True)
    copy = folder / "tiny.gguf"
    shutil.copyfile(tiny_model, copy)
    return copy


def test_a_linked_file_is_the_blob_and_outlives_rm(cli: CLI, home: Path, users_file: Path) -> None:
    original = users_file.read_bytes()
    code, stderr = _create(cli, users_file.parent, "mine", "./tiny.gguf", "--link")
    assert code == 0, stderr
    blob = home / "models" / "blobs" / _digest(users_file)
    assert "hard link" in stderr and "no data copied" in stderr
    assert os.path.samefile(blob, users_file)  # no second copy of the data
    assert cli("run", "mine", "hello").code == 0
    assert cli("verify").code == 0
    removed = cli("rm", "mine")
    # Only the small layers come back: the model's data is the user's file.
    assert removed.code == 0 and removed.stdout.rstrip().endswith(" B)"), removed.stdout
    assert not blob.exists()
    assert users_file.read_bytes() == original
    assert not any((home / "models" / "links").iterdir())


def test_verify_names_a_linked_file_edited_in_place(cli: CLI, home: Path, users_file: Path) -> None:
    assert _create(cli, users_file.parent, "mine", str(users_file), "--link")[0] == 0
    with open(users_file, "r+b") as f:  # an edit in place: the same file, other bytes
        f.seek(-16, os.SEEK_END)
        f.write(b"\x00" * 16)
    checked = cli("verify")
    assert checked.code == 1
    assert f"edited in place: {users_file.resolve()}" in checked.stdout
    assert "mine:latest" in checked.stdout
    assert "create --link" in checked.stderr


def _one_sentence(message: str) -> None:
    """A message that says its cause once, with its parentheses balanced."""
    assert message.count("(") == message.count(")"), message
    assert message.count("is not a valid GGUF") + message.count("no longer a valid GGUF") == 1


@pytest.mark.parametrize("edit", ["truncated", "same size"])
def test_a_linked_file_changed_after_create_says_so_and_how_to_fix_it(
    cli: CLI, home: Path, users_file: Path, tiny_model: Path, edit: str
) -> None:
    assert _create(cli, users_file.parent, "lk2", str(users_file), "--link")[0] == 0
    size = users_file.stat().st_size
    with open(users_file, "r+b") as f:  # edited in place: the blob is the same file
        f.write(b"XXXX")
        if edit == "truncated":
            f.truncate(5000)
    ran = cli("run", "lk2", "hi")
    assert_one_line_error(ran, str(users_file.resolve()), "changed since it was linked")
    (line,) = [x for x in ran.stderr.splitlines() if x.startswith("Error: ")]
    message, hint = line.split("; ", 1)
    _one_sentence(message)
    if edit == "truncated":
        assert f"its size went from {size:,} to 5,000 bytes" in message
    else:
        assert "its content no longer matches its checksum" in message
    fix = "localrun show lk2:latest --modelfile | localrun create lk2:latest --link -f -"
    assert f"put the file back (or a new version of it) at {users_file.resolve()}" in hint
    assert hint.endswith(f"`{fix}`")
    # Done as the hint says: a good file back at the path (a download renames a new file over
    # it), then the one command; the model runs again, from the user's file, not a copy.
    fresh = users_file.with_suffix(".new")
    shutil.copyfile(tiny_model, fresh)
    os.replace(fresh, users_file)
    modelfile = cli("show", "lk2", "--modelfile")
    assert f"FROM {users_file.resolve()}" in modelfile.stdout
    recreated = cli("create", "lk2", "--link", "-f", "-", input=modelfile.stdout)
    assert recreated.code == 0, recreated.stderr
    assert "creating new layer" in recreated.stderr and "hard link" in recreated.stderr
    assert cli("run", "lk2", "hi").code == 0 and cli("verify").code == 0
    assert os.path.samefile(home / "models" / "blobs" / _digest(users_file), users_file)
    # The server's Modelfile names blobs by digest, never the user's file.
    stored = model_mod.load(Store(home / "models"), names.parse("lk2"))
    assert stored.to_modelfile().from_ == str(stored.model_path)
    # Once the original is gone, FROM is the blob (intact: the store keeps its own name).
    users_file.unlink()
    assert f"FROM {stored.model_path}" in cli("show", "lk2", "--modelfile").stdout


def test_a_damaged_blob_names_the_model_and_the_blob(
    cli: CLI, home: Path, users_file: Path
) -> None:
    assert _create(cli, users_file.parent, "copied", str(users_file))[0] == 0
    blob = home / "models" / "blobs" / _digest(users_file)
    with open(blob, "r+b") as f:
        f.write(b"XXXX")
    ran = cli("run", "copied", "hi")
    assert_one_line_error(
        ran, "the model file of copied:latest", f"(blob sha256:{blob.name[7:19]})"
    )
    (line,) = [x for x in ran.stderr.splitlines() if x.startswith("Error: ")]
    message, hint = line.split("; ", 1)
    _one_sentence(message.replace("is damaged", "is no longer a valid GGUF"))
    assert "bad magic" in message and str(home) not in line
    assert hint == (
        "run `localrun verify` to see what else it affects, then `localrun rm copied:latest` "
        "and pull or create it again"
    )


def test_a_file_replaced_by_a_new_one_leaves_the_model_intact(
    cli: CLI, home: Path, users_file: Path, tiny_model: Path
) -> None:
    assert _create(cli, users_file.parent, "mine", str(users_file), "--link")[0] == 0
    # What a download or an editor's save does: a new file renamed over the old name.
    fresh = users_file.with_suffix(".new")
    fresh.write_bytes(b"GGUF but something else entirely")
    os.replace(fresh, users_file)
    assert cli("verify").code == 0
    assert cli("run", "mine", "hello").code == 0


def test_a_symlink_as_in_the_hugging_face_cache_links_its_target(
    cli: CLI, home: Path, users_file: Path, tmp_path: Path
) -> None:
    snapshot = tmp_path / "hf" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.gguf").symlink_to(users_file)
    assert _create(cli, snapshot, "hf", "./model.gguf", "--link")[0] == 0
    blob = home / "models" / "blobs" / _digest(users_file)
    assert os.path.samefile(blob, users_file)
    how, path, stamp = (home / "models" / "links" / blob.name).read_text().splitlines()
    assert (how, path) == ("hard link", str(users_file.resolve()))
    st = users_file.stat()  # what the original was: verify tells a file put in its place
    assert stamp == f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns}"


def test_across_file_systems_it_copies_and_says_so(
    cli: CLI, home: Path, tiny_model: Path, tmp_path: Path
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system here")
    folder = shm / f"localrun-test-{os.getpid()}"
    folder.mkdir()
    try:
        elsewhere = folder / "tiny.gguf"
        shutil.copyfile(tiny_model, elsewhere)
        code, stderr = _create(cli, folder, "far", "./tiny.gguf", "--link")
        assert code == 0, stderr
        assert "cannot be linked" in stderr
        blob = home / "models" / "blobs" / _digest(elsewhere)
        assert blob.is_file() and not os.path.samefile(blob, elsewhere)
        assert cli("rm", "far").code == 0 and elsewhere.is_file()
    finally:
        shutil.rmtree(folder)


def test_without_link_the_file_is_copied(cli: CLI, home: Path, users_file: Path) -> None:
    code, stderr = _create(cli, users_file.parent, "copied", "./tiny.gguf")
    assert code == 0 and "link" not in stderr
    blob = home / "models" / "blobs" / _digest(users_file)
    assert not os.path.samefile(blob, users_file)


def test_a_file_written_after_it_was_hashed_is_not_linked(tmp_path: Path, users_file: Path) -> None:
    store = Store(tmp_path / "store")
    fd = os.open(users_file, os.O_RDONLY)
    try:
        before = os.fstat(fd)
        digest = "sha256:" + _digest(users_file)[7:]
        with open(users_file, "r+b") as f:  # written between its hashing and its linking
            f.write(b"GGUF")
            os.utime(f.fileno(), ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
        store.blobs.mkdir(parents=True)
        with pytest.raises(StoreError, match="changed"):
            links.link(fd, users_file, temp_path(store.blobs), digest, before)
    finally:
        os.close(fd)
    assert list(store.blobs.iterdir()) == []  # nothing half-made


def test_link_with_a_missing_file_is_one_line(cli: CLI, home: Path, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM ./gone.gguf\n")
    assert_one_line_error(cli("create", "x", "-f", str(modelfile), "--link"), "no such file")
