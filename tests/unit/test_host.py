"""The host wing (localrun/host): each portable piece under each system's branch, and the whole
package importable where the POSIX-only modules do not exist (Windows), checked here on Linux by
hiding them from localrun's own imports (tests/support/posix_hidden)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from localrun.engine.sampling import grammar_guard
from localrun.errors import InvalidNameError
from localrun.host import features, files, limits, locks, processes
from localrun.store import blobs, names

from support import ROOT

HIDDEN = ROOT / "tests" / "support" / "posix_hidden"


def hidden_python(code: str) -> subprocess.CompletedProcess[str]:
    """`code` run by this Python with the POSIX-only modules hidden from localrun."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HIDDEN), str(ROOT)])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip


def test_every_module_imports_without_the_posix_only_modules() -> None:
    done = hidden_python(
        "import importlib, pkgutil, localrun\n"
        "names = [m.name for m in pkgutil.walk_packages(localrun.__path__, 'localrun.')]\n"
        "failed = []\n"
        "for name in names:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except BaseException as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print(len(names), len(failed))\n"
        "print('\\n'.join(failed))\n"
        "from localrun.host import limits\n"
        "print(limits.cap_memory(1 << 30))\n"  # the hiding works: the cap says why it is not
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    count, failed = map(int, lines[0].split())
    assert count > 200 and failed == 0, done.stdout
    assert lines[-1] == "the resource module is missing"


def test_exit_texts(monkeypatch: pytest.MonkeyPatch) -> None:
    assert processes.exit_text(None) == "it never started"
    assert processes.exit_text(-9).startswith("killed by SIGKILL; the system may have run out")
    assert processes.exit_text(-11) == "killed by SIGSEGV"
    assert processes.exit_text(2) == "exit status 2"
    monkeypatch.setattr(sys, "platform", "win32")
    assert processes.exit_text(0xC0000005) == "ended by an access violation (0xC0000005)"
    assert processes.exit_text(-1073741571).startswith("ended by a stack overflow")
    assert processes.exit_text(3).startswith("exit status 3 (abort()")
    assert processes.exit_text(1) == "exit status 1"


def test_reads_and_writes_at_offsets_without_pread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows has no pread/pwrite: a seek and a read under a lock, from threads at once."""
    monkeypatch.delattr(os, "preadv")
    monkeypatch.delattr(os, "pwrite")
    monkeypatch.delattr(os, "fdatasync")
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:

        def write(k: int) -> None:
            for i in range(50):
                files.pwrite(fd, bytes([k]) * 100, (k * 50 + i) * 100)

        threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        files.fdatasync(fd)
        buffer = memoryview(bytearray(100))
        for k in range(4):
            assert files.pread_into(fd, buffer, (k * 50 + 49) * 100) == 100
            assert bytes(buffer) == bytes([k]) * 100
        assert files.pread_into(fd, buffer, 20_000) == 0
    finally:
        os.close(fd)


def test_a_lock_without_flock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """flock where there is fcntl; POSIX lockf where it is hidden: another process is kept
    out either way."""
    path = tmp_path / "lock"
    probe = (
        "import os, sys\n"
        "from localrun.host import locks\n"
        f"fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)\n"
        "print(locks.try_lock(fd))\n"
    )
    for hide in (False, True):
        if hide:
            monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` fails
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            assert locks.try_lock(fd)
            plain = [sys.executable, "-c", probe]
            other = (hidden_python(probe) if hide else
                     subprocess.run(plain, capture_output=True, text=True, timeout=60))  # fmt: skip
            assert other.stdout.strip() == "False", other.stderr
            locks.unlock(fd)
            again = subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                   text=True, timeout=60)  # fmt: skip
            assert again.stdout.strip() == "True", again.stderr
        finally:
            os.close(fd)


def test_limits_on_each_system(monkeypatch: pytest.MonkeyPatch) -> None:
    assert limits.private_bytes() is not None  # Linux: VmData
    assert limits.stack_soft() is None or limits.stack_soft() > 0  # type: ignore[operator]
    assert limits.peak_rss() > 1 << 20
    monkeypatch.setattr(sys, "platform", "darwin")
    assert limits.cap_memory(1 << 30) == limits.NOT_ON_MACOS
    assert limits.private_bytes() is None
    monkeypatch.setattr(sys, "platform", "win32")
    assert limits.raise_open_files() is None and limits.stack_soft() is None
    assert grammar_guard.guard_stack() == 512 << 10
    # The Job Object's branch runs as far as Windows' API, which this system has not.
    assert limits.cap_memory(1 << 30).startswith("the Job Object API could not be loaded")  # type: ignore[union-attr]


def test_what_info_says_of_each_system(monkeypatch: pytest.MonkeyPatch) -> None:
    for platform, degraded in (("linux", set()), ("darwin", {"memory caps", "exact runtime"}),
                               ("win32", {"create --link", "exact runtime"})):  # fmt: skip
        monkeypatch.setattr(sys, "platform", platform)
        found = features.features()
        assert {f.name for f in found if not f.had} - {"chat line editing"} == degraded
        assert all(f.how and "\n" not in f.how for f in found)


def test_windows_device_names_are_refused_there(monkeypatch: pytest.MonkeyPatch) -> None:
    assert names.parse("con:latest")  # a file of that name is fine here
    monkeypatch.setattr(sys, "platform", "win32")
    for name in ("con", "NUL:latest", "library/aux.v2", "x:com1", "lpt9"):
        with pytest.raises(InvalidNameError, match="Windows reserves"):
            names.parse(name)
    assert names.parse("console:latest") and names.parse("aux-model")


def test_a_path_past_max_path_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    exc = OSError(errno.ENOENT, "No such file or directory", "C:\\" + "x" * 300)
    assert "long paths" not in (blobs.os_error(exc, "writing").hint or "")
    monkeypatch.setattr(sys, "platform", "win32")
    error = blobs.os_error(exc, "writing")
    assert "longer than Windows allows" in error.message and "LongPathsEnabled" in error.hint
