"""Hostile registries (issue 76's items 3, 5-10 and 17, and the store's locks): gzip bombs,
token realms elsewhere, stalls, 429s, tokens no header can carry, a port that speaks no HTTP,
pulls and pushes with the server's login, replayed against a real `localrun serve` on an
ephemeral port, timed and watched.

    python scripts/fuzz/registries.py [--only ITEM]...

Each case prints a row, and the run ends with each item against the issue's targets
(fuzzlib.replay). The exit status is 1 when a case got a 5xx, a dropped connection, a
traceback, or the server died.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from fuzzlib import inputs, replay
from fuzzlib.registry import registries
from fuzzlib.watched import Fuzz, Row, said

HI = inputs.HI
STREAM = replay.STREAM


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


ITEMS = ["3", "5", "6", "7", "8", "9", "10", "17", "locks"]
COMMANDS: replay.Steps = {}
SERVER: replay.Steps = {
    "3": item3,
    "5": item5,
    "6": item6,
    "7": item7,
    "8": item8,
    "9": item9,
    "10": item10,
    "17": item17,
    "locks": locks,
}


def main(argv: list[str] | None = None) -> int:
    return replay.main(__doc__, ITEMS, COMMANDS, SERVER, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
