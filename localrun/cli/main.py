"""The `localrun` command's entry point: the typer app (cli/app) run, any error printed once,
the exit code set."""

from __future__ import annotations

import sys
import traceback
from typing import NoReturn

import typer
from typer._click.exceptions import NoArgsIsHelpError
from typer.exceptions import TyperException

from localrun.cli.app import app
from localrun.cli.common import print_error
from localrun.errors import LocalrunError
from localrun.settings import config

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
    """click's message as one clause of our line: "No such command 'pul'. Did you mean
    'pull'?" becomes "no such command 'pul'; did you mean 'pull'?"."""
    parts = [p.strip().rstrip(".") for p in err.format_message().replace("\n", ". ").split(". ")]
    parts = [p[:1].lower() + p[1:] for p in parts if p]
    return "; ".join(parts) or "the command line is not complete"


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of the console script: run the app, print any error once, set the exit code."""
    debug = config.debug()
    code = 0
    try:
        args = _optional_values(sys.argv[1:] if argv is None else argv)
        result = app(args=args, prog_name="localrun", standalone_mode=False)
        code = result if isinstance(result, int) else 0
        if code == 130:  # typer turns Ctrl-C into this exit code, silently
            print("\ninterrupted", file=sys.stderr)
    except LocalrunError as err:
        if debug:
            traceback.print_exc()
        print_error(err)
        code = 1
    except typer.Exit as err:
        code = err.exit_code
    except NoArgsIsHelpError:
        code = 0  # `localrun` (or a group) alone: the help it printed is the answer
    except TyperException as err:  # a usage error: bad option, missing argument
        ctx = getattr(err, "ctx", None)
        command = ctx.command_path if ctx is not None else "localrun"
        print(f"Error: {_usage_message(err)}; see `{command} --help`", file=sys.stderr)
        code = err.exit_code
    except (KeyboardInterrupt, typer.Abort):
        print("\ninterrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        code = 141
    except Exception as err:  # the last line of defence: one line, never a traceback
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
