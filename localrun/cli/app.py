"""Register every command on the typer app, with its name, help and settings, in `--help` order.

The command modules define plain functions with their typer parameters and never import this
module. Heavy packages (llama_cpp, fastapi, uvicorn, huggingface_hub, modelscope, gguf/numpy) are
imported inside the commands that use them, so `localrun --help` stays fast. cli/typer_patches
keeps typer from importing pydantic and Markdown where they serve nothing.
tests/unit/cli/test_startup.py checks what the commands import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from localrun.cli import typer_patches
from localrun.cli.commands import help as help_cmd
from localrun.cli.commands import import_models as import_cmd
from localrun.cli.commands import info as info_cmd
from localrun.cli.commands import pull as pull_cmd
from localrun.cli.commands import runtime as runtime_cmd
from localrun.cli.commands import serve as serve_cmd
from localrun.cli.commands import server as server_cmds
from localrun.cli.commands import store as store_cmds
from localrun.cli.commands import upstream as upstream_cmd
from localrun.cli.commands import version
from localrun.cli.commands import worker as worker_cmd
from localrun.cli.launch import command as launch_cmd
from localrun.cli.run import command as run_cmd

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
app.command()(pull_cmd.push)
app.command()(pull_cmd.search)
app.command(context_settings={"allow_interspersed_args": True})(run_cmd.run)
app.command()(serve_cmd.serve)
app.command()(worker_cmd.worker)
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


def _group(name: str, help: str, commands: dict[str, Callable[..., Any]]) -> None:
    """A command group (`localrun NAME SUBCOMMAND`) with these subcommands."""
    group = typer.Typer(help=help, no_args_is_help=True)
    for sub, command in commands.items():
        group.command(sub)(command)
    app.add_typer(group, name=name)


_group(
    "upstream",
    "Upstream servers (vLLM, SGLang, llama-server, Ollama, ...) that serve models for "
    "`localrun serve`.",
    {"add": upstream_cmd.add, "list": upstream_cmd.list_, "rm": upstream_cmd.rm},
)
_group(
    "runtime",
    "GPU runtimes (llama.cpp's CUDA or Vulkan backend) and the exact CPU runtime (answers "
    "that do not depend on the batch), built here from the installed llama.cpp's source.",
    {
        "list": runtime_cmd.list_,
        "install": runtime_cmd.install,
        "select": runtime_cmd.select,
        "rm": runtime_cmd.rm,
    },
)
app.command("help")(help_cmd.help_)
