"""`localrun launch claude|codex|opencode|aider`: start a coding agent on a local model.

The agent is pointed at the server at LOCALRUN_HOST (localrun.cli.launch.agents says how for
each). When none answers there, `localrun serve` is started for the agent's session and stopped
when the agent exits (see _serve). The model is checked first: with a running server, that it
serves it; otherwise it is found in the store, imported or pulled as `localrun run` would.

The agent gets the context its prompt needs: the agent's `want`, held to what the model was
trained on (or `--context N`). A model trained on less than the agent `need`s is refused with
the reason. Unless the model's own num_ctx is already that, the agent works with a variant such
as `NAME:TAG-ctx32k`, which loads with that context whatever the agent's requests leave out
(localrun.cli.launch.context). The agent is told the same window. `--dry-run` prints the
environment, the files and the command line, and starts nothing.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from localrun.cli.common import open_store
from localrun.cli.launch import agents as launchers
from localrun.cli.launch import context as agent_context
from localrun.errors import ConfigError, FileError, LocalrunError, ServerError
from localrun.host import private, processes, selfexec
from localrun.settings import config

if TYPE_CHECKING:
    from localrun.cli.client import Client

START_TIMEOUT_S = 60.0
# The key's stand-in in what --dry-run prints: letters and underscores, which neither shell
# quoting nor JSON respells, so that every place the key goes shows the variable instead.
SHOWN_KEY = "__LOCALRUN_API_KEY__"


def launch(
    tool: str = typer.Argument(..., help="The agent to start: claude, codex, opencode or aider."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="The model it works with (a name `localrun list` shows)."
    ),
    context: int | None = typer.Option(
        None,
        "--context",
        min=256,
        help="The context the agent gets, in tokens (default: what the agent wants, up to what "
        "the model was trained on).",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the environment and the command, and start nothing."
    ),
    args: list[str] | None = typer.Argument(
        None, help="Arguments for the agent itself (after --).", show_default=False
    ),
) -> None:
    """Start a coding agent (Claude Code, Codex, OpenCode, Aider) on a local model."""
    from localrun.cli.client import Client

    found = launchers.TOOLS.get(tool)
    if found is None:
        raise ConfigError(
            f"localrun cannot launch {tool!r}",
            hint=f"launch one of: {', '.join(launchers.TOOLS)}",
        )
    program = found.program if dry_run else _find(found)  # before a model is pulled for it
    client = Client()
    up = client.is_up()
    name = _model(model, client if up else None, found, dry_run)
    facts = agent_context.facts(name, client if up else None)
    num_ctx = agent_context.choose(found, name, facts, context)
    served = name if facts.num_ctx == num_ctx else agent_context.variant(name, num_ctx)
    setup = launchers.Setup(num_ctx, facts.thinks, config.home() / "launch")
    if dry_run:
        # What is shown is built with a stand-in for the key, never the key replaced after the
        # fact: quoting (shell, JSON) changes how a key with ' " or \ is spelled, and the
        # replace then missed it.
        shown = found.launch(client.url, SHOWN_KEY, served, list(args or []), setup)
        _print(shown, client, up, agent_context.told(found, name, served, num_ctx))
        return
    spec = found.launch(client.url, client.api_key or "localrun", served, list(args or []), setup)
    _write(spec)
    server = None if up else _serve(client, found)
    try:
        if served != name:
            agent_context.create_variant(client, served, name, num_ctx)
        print(agent_context.told(found, name, served, num_ctx), file=sys.stderr, flush=True)
        code = _run([program, *spec.argv[1:]], spec.env)
    finally:
        if server is not None:
            _stop(server)
    raise typer.Exit(code)


def _write(spec: launchers.Launch) -> None:
    """Write the agent's files in localrun's own folder, each replaced whole.

    They name the server's key. A link planted there is replaced, never written through.
    """
    for path, text in spec.files.items():
        try:
            private.private_dir(path.parent)
            private.write(path, text.encode("utf-8"))
        except OSError as exc:
            raise _unwritable(exc, path) from None


def _unwritable(exc: OSError, path: Path) -> LocalrunError:
    where = Path(exc.filename) if exc.filename else path
    if isinstance(exc, private.Planted):
        return FileError(
            f"{where} is {exc.strerror}: localrun does not write through it",
            hint=f"remove it, and localrun makes it again: rm {where}",
        )
    return FileError(f"cannot write {where}: {exc.strerror or exc}")


def _model(given: str | None, client: Client | None, tool: launchers.Tool, dry_run: bool) -> str:
    """Return the model to launch on, served by the running server or found in the store.

    Without a server, a model not in the store is imported or pulled now.
    """
    if not given:
        store = open_store()
        mine = [str(e.name) for e in sorted(store.entries(), key=lambda e: -e.modified)][:3]
        yours = f"yours: {', '.join(mine)}; " if mine else ""
        raise ConfigError(
            f"name the model {tool.title} should use: localrun launch {tool.name} --model NAME",
            hint=f"{yours}`localrun list` shows them, `localrun search` what can be pulled",
        )
    if client is not None:
        # agent_context.facts shows it: a name the server does not know is its not-found error.
        return given
    if dry_run:
        return given
    from localrun.cli.output import CreateProgress
    from localrun.sources import obtain
    from localrun.store import reference

    ref = reference.parse(given)
    progress = CreateProgress()
    try:
        obtain.find(open_store(), ref, progress)  # imported or pulled now, not mid-session
    finally:
        progress.close()
    return given


def _find(tool: launchers.Tool) -> str:
    found = shutil.which(tool.program)
    if found:
        return found
    if tool.name == "claude":  # where Claude Code's own installer puts it
        local = Path.home() / ".claude" / "local" / "claude"
        if local.is_file() and os.access(local, os.X_OK):
            return str(local)
    raise LocalrunError(
        f"{tool.title} is not installed (no `{tool.program}` on PATH)",
        hint=f"install it: {tool.install}",
    )


def _print(spec: launchers.Launch, client: Client, up: bool, told: str) -> None:
    """Print `spec` as --dry-run shows it, naming the variable that holds the key.

    `spec` is made with SHOWN_KEY for the key, so the key itself is never printed. Where no key
    is set, "localrun" is shown.
    """
    key = "$LOCALRUN_API_KEY" if client.api_key else "localrun"
    if not up:
        print(f"# no server answers at {client.url}: `localrun serve` would be started there")
    print(f"# {told}")
    for path, text in spec.files.items():
        print(f"# {path}:")
        print("\n".join(f"#   {line}" for line in text.splitlines()).replace(SHOWN_KEY, key))
    for name, value in spec.env.items():
        print(f"{name}={shlex.quote(value)}".replace(SHOWN_KEY, key))
    print(shlex.join(spec.argv).replace(SHOWN_KEY, key))


def _serve(client: Client, tool: launchers.Tool) -> subprocess.Popen[bytes]:
    """Start `localrun serve` at LOCALRUN_HOST and wait until it answers.

    It runs in a session of its own, so the agent's Ctrl-C interrupts the agent, not the server.
    Its log goes to a file, since its lines would tear the agent's screen.
    """
    if client.https and config.tls_pair() == (None, None):
        raise ConfigError(
            f"no server answers at {client.url}, and one started here would not serve HTTPS",
            hint="set LOCALRUN_TLS_CERT and LOCALRUN_TLS_KEY, or start `localrun serve` yourself",
        )
    log = config.home() / "logs" / "launch-serve.log"
    try:
        private.private_dir(log.parent)  # a server's log may quote what was asked of it
        out = private.open_log(log)
    except OSError as exc:
        raise _unwritable(exc, log) from None
    with out:
        server = subprocess.Popen(
            selfexec.cli("serve"),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=processes.NEW_SESSION,
            creationflags=processes.GROUP_FLAGS,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not client.is_up():
        if server.poll() is not None:
            last = _last_line(log)
            raise ServerError(f"localrun serve did not start: {last}", hint=f"see {log}")
        if time.monotonic() > deadline:
            _stop(server)
            raise ServerError(
                f"localrun serve did not answer within {START_TIMEOUT_S:.0f} s", hint=f"see {log}"
            )
        time.sleep(0.2)
    print(
        f"started localrun serve at {client.url} for {tool.title} (log: {log}); "
        f"it stops when {tool.title} exits",
        file=sys.stderr,
        flush=True,
    )
    return server


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].removeprefix("Error: ") if lines else "it printed nothing"


def _run(argv: list[str], env: dict[str, str]) -> int:
    """Run the agent in the foreground; its exit status."""
    try:
        agent = subprocess.Popen(argv, env={**os.environ, **env})
    except OSError as exc:
        raise LocalrunError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
    # Ctrl-C belongs to the agent (it interrupts a turn there): this process waits it out,
    # so that the server it started is stopped when the agent ends.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return agent.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop(server: subprocess.Popen[bytes]) -> None:
    processes.ask_to_stop(server)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
