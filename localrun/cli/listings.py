"""What `localrun list` and `localrun env` print.

They are kept apart from their typer commands (store_cmds), so that cli/main can run their plain
forms without importing typer. Importing typer and building every command cost most of such a
command's start, for a command line with nothing to parse.
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timezone

from localrun.cli.common import open_store
from localrun.cli.output import ago, columns, human_size
from localrun.settings import view

# A value past it (a long LOCALRUN_ORIGINS) is cut in `env`'s table: one value made every row
# 500 characters wide, and the column saying where each value came from wrapped off the screen.
VALUE_WIDTH = 48


def models(as_json: bool) -> None:
    """The models in the store, and those upstream servers serve (marked remote)."""
    entries = open_store().entries()
    remote = _remote_models({str(e.name) for e in entries})
    if as_json:
        out = [
            {
                "name": str(e.name),
                "model": e.name.full,
                "digest": e.digest,
                "size": e.size,
                "modified_at": datetime.fromtimestamp(e.modified, timezone.utc).isoformat(),
            }
            for e in entries
        ]
        out += [{"name": name, "model": name, "remote_host": host} for name, host in remote]
        print(json.dumps(out, indent=2))
        return
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for e in sorted(entries, key=lambda e: e.modified, reverse=True):
        rows.append([str(e.name), e.digest[7:19], human_size(e.size), ago(e.modified)])
    for name, host in remote:
        rows.append([name, "", "remote", f"via {host}"])
    print(columns(rows))


def _remote_models(local: set[str]) -> list[tuple[str, str]]:
    """Return (model, upstream) for each model an upstream serves and the store does not hold.

    The models are those upstreams.toml names, and those a running server discovered. Nothing
    is read without an upstreams.toml.
    """
    from localrun.settings import upstreams

    if not upstreams.path().exists():
        return []
    served = {m: u.name for u in upstreams.load() for m in u.models}
    from localrun.cli.client import Client
    from localrun.errors import ServerError

    client = Client()
    if client.is_up():
        with contextlib.suppress(ServerError):
            data = client.request("GET", "/api/tags")
            for m in data.get("models") or [] if isinstance(data, dict) else []:
                if isinstance(m, dict) and m.get("remote_host"):
                    served[str(m.get("name"))] = str(m["remote_host"])  # the server knows all
    return sorted((name, host) for name, host in served.items() if name not in local)


def settings(as_json: bool) -> None:
    """Every LOCALRUN_* setting, its value and where the value comes from."""
    rows = view.describe()
    if as_json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
        return
    table = [["NAME", "VALUE", "SOURCE", "DESCRIPTION"]]
    cut = [r.name for r in rows if len(r.value) > VALUE_WIDTH]
    table += [[r.name, _cut(r.value), r.source, r.help] for r in rows]
    print(columns(table, gap=2))
    if cut:
        print(f"\n{', '.join(cut)}: cut at {VALUE_WIDTH} characters here; `localrun env --json` "
              "has every value whole")  # fmt: skip


def _cut(value: str) -> str:
    return value if len(value) <= VALUE_WIDTH else value[: VALUE_WIDTH - 3] + "..."
