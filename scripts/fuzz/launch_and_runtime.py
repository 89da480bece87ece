"""Hostile settings, `launch` and runtimes (issue 76's items 12-16): an invalid context length
at serve's start, API keys that quote, links planted where launch writes its files, the exact
runtime's library changed under its record and built from a hostile source folder, replayed
with real `localrun` commands, timed and watched. `--runtime` adds items 15 and 16, which build
the exact runtime (minutes).

    python scripts/fuzz/launch_and_runtime.py [--only ITEM]... [--runtime]

Each case prints a row, and the run ends with each item against the issue's targets
(fuzzlib.replay). The exit status is 1 when a case got a 5xx, a dropped connection, a
traceback, or the server died.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from fuzzlib import inputs, replay
from fuzzlib.watched import Fuzz

HI = inputs.HI
STREAM = replay.STREAM


BAD_CONTEXTS = ["-5", "0", "1.5", "abc", "1e6", "0x1000", "99999999999"]


def item12(fz: Fuzz) -> None:
    """`localrun serve` with an invalid LOCALRUN_CONTEXT_LENGTH: refused at its start."""
    for value in BAD_CONTEXTS:
        env = {**fz.env, "LOCALRUN_CONTEXT_LENGTH": value}
        fz.command(f"serve, LOCALRUN_CONTEXT_LENGTH={value}", "serve", "--port", "0", env=env)


KEYS = ["it's-a-key", 'say "key"', "back\\slash-key", "k'\"\\e y"]


def item14(fz: Fuzz) -> None:
    """`launch --dry-run` with API keys quoting changes: the key is never printed."""
    for key in KEYS:
        env = {**fz.env, "LOCALRUN_API_KEY": key}
        for tool in ("claude", "codex", "opencode", "aider"):

            def masked(out: str, err: str, key: str = key) -> list[str]:
                shown = out + err
                leaked = [form for form in (key, json.dumps(key), repr(key)) if form in shown]
                return ["the key is printed"] if leaked else []

            fz.command(f"launch {tool} --dry-run, key {key!r}", "launch", tool, "--model",
                       "base", "--context", "8192", "--dry-run", env=env, want="exit 0",
                       check=masked)  # fmt: skip


# -- items 13, 15, 16: launch's files, the exact runtime ---------------------------------------


def _victim(fz: Fuzz) -> Path:
    victim = fz.work / "victim.txt"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    return victim


def _intact(victim: Path) -> list[str]:
    same = victim.read_text() == "precious\n" and victim.stat().st_mode & 0o777 == 0o644
    return [] if same else ["the link's target was written"]


def item13(fz: Fuzz) -> None:
    """Links planted in LOCALRUN_HOME where launch writes its own files: Aider's settings, and
    the log of the server it starts when none answers."""
    agents = fz.work / "agents"
    agents.mkdir(exist_ok=True)
    for name in ("aider", "claude"):
        (agents / name).write_text("#!/bin/sh\nexit 0\n")
        (agents / name).chmod(0o755)
    env = {**fz.env, "PATH": f"{agents}{os.pathsep}{os.environ.get('PATH', '')}",
           "LOCALRUN_HOST": fz.url.removeprefix("http://")}  # fmt: skip
    fz.command("launch aider, its files written afresh", "launch", "aider", "--model", "base",
               env=env, want="exit 0", within=30.0)  # fmt: skip
    victim = _victim(fz)
    written = [p for p in (fz.home / "launch").iterdir() if p.is_file()]
    for path in written:
        path.unlink()
        path.symlink_to(victim)
    fz.command(f"launch aider, {len(written)} of its files links", "launch", "aider", "--model",
               "base", env=env, want="exit 0", within=30.0,
               check=lambda _, __: _intact(victim))  # fmt: skip
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{free.getsockname()[1]}"
    log = fz.home / "logs" / "launch-serve.log"
    log.parent.mkdir(exist_ok=True)
    log.unlink(missing_ok=True)
    for label, plant in (("a symlink", log.symlink_to), ("a hard link", log.hardlink_to)):
        plant(victim)
        fz.command(f"launch aider, its server's log {label}", "launch", "aider", "--model",
                   "base", env={**env, "LOCALRUN_HOST": nobody}, within=10.0,
                   check=lambda _, __: _intact(victim))  # fmt: skip
        log.unlink()


def _tree_digest(folder: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file() and not path.is_symlink():
            digest.update(path.read_bytes())
            digest.update(oct(path.stat().st_mode).encode())
    return digest.hexdigest()


def item16(fz: Fuzz) -> None:
    """`runtime install exact` from a source folder (LOCALRUN_RUNTIME_SOURCE): the user's
    folder must be left as it was (8 of its files were patched in place)."""
    import subprocess
    import tarfile
    from importlib.metadata import version

    wanted = f"llama-cpp-python=={version('llama-cpp-python')}"
    sdists = fz.work / "sdist"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--no-binary", ":all:", "-d", str(sdists), wanted], check=True)  # fmt: skip
    archive = next(sdists.glob("*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(sdists, filter="data")
    folder = next(p for p in sdists.iterdir() if p.is_dir())
    before = _tree_digest(folder)
    # Builds of its own: the copy (and the build) happen afresh, not reused from an earlier one.
    env = {**fz.env, "LOCALRUN_RUNTIME_SOURCE": str(folder),
           "LOCALRUN_RUNTIME_BUILDS": str(fz.work / "builds")}  # fmt: skip

    def untouched(_: str, __: str) -> list[str]:
        return [] if _tree_digest(folder) == before else ["the source folder was changed"]

    fz.command(
        "runtime install exact from a source folder",
        "runtime",
        "install",
        "exact",
        env=env,
        want="exit 0",
        within=1200.0,
        check=untouched,
        capped=False,
    )  # fmt: skip  (a compiler: not a job's 512 MB)


def item15(fz: Fuzz) -> None:
    """The exact runtime's library changed with its size and mtime kept, and its record
    naming a module outside its folder: neither is loaded (the run goes on without it)."""
    found = sorted((fz.home / "runtimes").glob("exact-*/runtime.json"))
    if not found:
        fz.command("exact runtime: none installed (run item 16 first)", "list", want="exit 0")
        return
    record = found[0]
    data = json.loads(record.read_text())
    module = record.parent / data["module"]
    original = module.read_bytes()
    st = module.stat()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    module.write_bytes(bytes(flipped))
    os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns))

    def refused(out: str, _: str) -> list[str]:  # `localrun info` says why it is not loaded
        return [] if "damaged" in out else ["the changed runtime was not refused"]

    ask = ("run", "base", "Say hi", "--param", "num_predict=4")
    for label in ("its library changed, same size and mtime", "its record names one outside"):
        fz.command(f"exact runtime: {label}: run", *ask, want="exit 0", within=30.0)
        fz.command(f"exact runtime: {label}: info", "info", want="exit 0", within=30.0,
                   check=refused)  # fmt: skip
        module.write_bytes(original)
        outside = fz.work / "outside.so"
        outside.write_bytes(original)
        record.write_text(json.dumps({**data, "module": os.path.relpath(outside, record.parent)}))
    record.write_text(json.dumps(data))
    fz.command("exact runtime: as installed: info", "info", want="exit 0", within=30.0,
               check=lambda out, _: [] if "exact-" in out and "damaged" not in out else
               ["the runtime as installed is not loaded"])  # fmt: skip


# -- the run -----------------------------------------------------------------------------------


ITEMS = ["12", "13", "14", "15", "16"]
COMMANDS: replay.Steps = {"12": item12, "14": item14, "16": item16, "15": item15}
SERVER: replay.Steps = {"13": item13}


def main(argv: list[str] | None = None) -> int:
    return replay.main(__doc__, ITEMS, COMMANDS, SERVER, slow=("15", "16"), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
