"""The `localrun` command: the typer app, every command registered on it, and the one place
errors are printed.

The command modules (info_cmd, launch_cmd, pull_cmd, run_cmd, runtime_cmd, serve_cmd,
server_cmds, store_cmds, upstream_cmd) define plain functions with their typer parameters and
never import this module; the names, help and settings of the commands are given here, in the
order `--help` lists them.

Heavy packages (llama_cpp, fastapi, uvicorn, huggingface_hub, modelscope, gguf/numpy) are imported
inside the commands that use them, typer is kept from importing pydantic and Markdown where they
serve nothing (cli/typer_patches) and --version reads llama.cpp's facts from a record
(cli/version), so `localrun --help`, `list` and `--version` start fast; tests/test_startup.py
checks what they import.
"""

from __future__ import annotations

import sys
import traceback
from typing import NoReturn

import typer
from typer._click.exceptions import NoArgsIsHelpError
from typer.exceptions import TyperException

from localrun.cli import (
    import_cmd,
    info_cmd,
    launch_cmd,
    pull_cmd,
    run_cmd,
    runtime_cmd,
    serve_cmd,
    server_cmds,
    store_cmds,
    typer_patches,
    upstream_cmd,
    version,
)
from localrun.cli.common import print_error
from localrun.errors import LocalrunError
from localrun.settings import config

typer_patches.apply()  # before any command is parsed or its help shown

app = typer.Typer(
    name="localrun",
    help="Run language models locally: pull, create, run and serve GGUF models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(version.text())
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-v", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Run language models locally: pull, create, run and serve GGUF models."""


app.command()(info_cmd.info)
app.command()(pull_cmd.pull)
app.command()(pull_cmd.search)
app.command(context_settings={"allow_interspersed_args": True})(run_cmd.run)
app.command()(serve_cmd.serve)
app.command()(launch_cmd.launch)
app.command()(server_cmds.ps)
app.command()(server_cmds.stop)
app.command()(store_cmds.create)
app.command("import")(import_cmd.import_)
app.command("list")(store_cmds.list_)
app.command("ls", hidden=True, help="List the models in the store.")(store_cmds.list_)
app.command()(store_cmds.show)
app.command()(store_cmds.cp)
app.command()(store_cmds.rm)
app.command()(store_cmds.prune)
app.command()(store_cmds.verify)
app.command()(store_cmds.env)

upstream_app = typer.Typer(
    help="Upstream servers (vLLM, SGLang, llama-server, Ollama, ...) that serve models for "
    "`localrun serve`.",
    no_args_is_help=True,
)
upstream_app.command("add")(upstream_cmd.add)
upstream_app.command("list")(upstream_cmd.list_)
upstream_app.command("rm")(upstream_cmd.rm)
app.add_typer(upstream_app, name="upstream")

runtime_app = typer.Typer(
    help="GPU runtimes: llama.cpp's CUDA or Vulkan backend, built here from the installed "
    "llama.cpp's source and loaded beside its CPU backend.",
    no_args_is_help=True,
)
runtime_app.command("list")(runtime_cmd.list_)
runtime_app.command("install")(runtime_cmd.install)
runtime_app.command("select")(runtime_cmd.select)
runtime_app.command("rm")(runtime_cmd.rm)
app.add_typer(runtime_app, name="runtime")


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
