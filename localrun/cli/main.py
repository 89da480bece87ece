"""Run the `localrun` command line, print any error once, and set the exit code.

The typer app and its commands are in cli/app. A command line that only prints and has nothing
to parse (`localrun --version`, `list`, `env`, each bare or with --json) runs here without it.
Importing typer and building every command is most of such a command's start.
tests/unit/cli/test_startup.py checks that they print the same either way, and what each imports.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, NoReturn

from localrun.cli import listings
from localrun.cli.commands import version
from localrun.cli.common import print_error
from localrun.errors import LocalrunError
from localrun.settings import config

if TYPE_CHECKING:
    from typer.exceptions import TyperException


def _print_version() -> None:
    print(version.text())


# The command lines run without typer, each as its command runs it; any other, these with more
# arguments too, is typer's.
PLAIN: dict[tuple[str, ...], Callable[[], None]] = {
    ("--version",): _print_version,
    ("-v",): _print_version,
    **{(name,): partial(listings.models, False) for name in ("list", "ls")},
    **{(name, "--json"): partial(listings.models, True) for name in ("list", "ls")},
    ("env",): partial(listings.settings, False),
    ("env", "--json"): partial(listings.settings, True),
}


# Options whose value may be left out, as in Ollama (`--think` is `--think=true`); typer
# cannot declare them, so a bare one is completed here.
_OPTIONAL_VALUES = {"--think": "--think=true"}


def _optional_values(argv: list[str]) -> list[str]:
    out: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":
            return out + argv[index:]
        out.append(_OPTIONAL_VALUES.get(arg, arg))
    return out


def _usage_message(err: TyperException) -> str:
    """Return click's message as one clause of our error line.

    "No such command 'pul'. Did you mean 'pull'?" becomes "no such command 'pul'; did you mean
    'pull'?".
    """
    parts = [p.strip().rstrip(".") for p in err.format_message().replace("\n", ". ").split(". ")]
    parts = [p[:1].lower() + p[1:] for p in parts if p]
    return "; ".join(parts) or "the command line is not complete"


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of the console script: run the app, print any error once, set the exit code."""
    debug = config.debug()
    code = 0
    try:
        args = _optional_values(sys.argv[1:] if argv is None else argv)
        plain = PLAIN.get(tuple(args))
        if plain is not None:
            plain()
        else:
            code = _run_app(args)
    except LocalrunError as err:
        if debug:
            traceback.print_exc()
        print_error(err)
        code = 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        code = 141
    except Exception as err:
        typer_code = _typer_outcome(err)
        if typer_code is not None:
            code = typer_code
        else:  # the last line of defence: one line, never a traceback
            if debug:
                traceback.print_exc()
            print(
                f"Error: unexpected {type(err).__name__}: {err}; run again with LOCALRUN_DEBUG=1 "
                "for the details and report it",
                file=sys.stderr,
            )
            code = 1
    sys.stdout.flush()
    raise SystemExit(code)


def _run_app(args: list[str]) -> int:
    from localrun.cli.app import app  # typer and every command: only for what PLAIN does not run

    result = app(args=args, prog_name="localrun", standalone_mode=False)
    code = result if isinstance(result, int) else 0
    if code == 130:  # typer turns Ctrl-C into this exit code, silently
        print("\ninterrupted", file=sys.stderr)
    return code


def _typer_outcome(err: Exception) -> int | None:
    """Return the exit code of an exception typer raises for a command line, or None.

    Such an exception is an exit, the help of a bare command, a usage error or an abort; any
    message is printed once here. Any other exception gives None.
    """
    import typer
    from typer._click.exceptions import NoArgsIsHelpError
    from typer.exceptions import TyperException

    if isinstance(err, typer.Exit):
        return err.exit_code
    if isinstance(err, NoArgsIsHelpError):
        return 0  # `localrun` (or a group) alone: the help it printed is the answer
    if isinstance(err, TyperException):  # a usage error: bad option, missing argument
        ctx = getattr(err, "ctx", None)
        command = ctx.command_path if ctx is not None else "localrun"
        print(f"Error: {_usage_message(err)}; see `{command} --help`", file=sys.stderr)
        return err.exit_code
    if isinstance(err, typer.Abort):
        print("\ninterrupted", file=sys.stderr)
        return 130
    return None
