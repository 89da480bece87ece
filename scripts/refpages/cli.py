"""docs/reference/cli.md: every command of the typer app, as `localrun --help` lists them, and
the chat's commands."""

from __future__ import annotations

from typing import Any

import typer._click as click
import typer.main

from localrun.cli.app import app
from localrun.cli.run import chat
from refpages.markdown import MissingText, code, header, prose, table


def _option_value(param: Any, ctx: Any) -> str:
    """What an option takes, as typer's help shows it (`str`, `list[Path]`), with its range."""
    if getattr(param, "is_flag", False):
        return "flag"
    shown = (param.display_type_rich(ctx) or "").strip("<>").removesuffix(" range")
    bounds = []
    if param.min is not None:
        bounds.append(f"at least {param.min}")
    if param.max is not None:
        bounds.append(f"at most {param.max}")
    return ", ".join([shown, *bounds])


def _option_default(param: Any) -> str:
    if isinstance(param.show_default, str):
        return param.show_default
    default = param.default
    if getattr(param, "is_flag", False) or default in (None, "", [], ()) or callable(default):
        return ""
    return code(str(default))


def _param_rows(command: Any, ctx: Any) -> list[list[str]]:
    rows = []
    for param in command.params:
        if param.hidden:
            continue
        help_text = getattr(param, "help", None)
        if not help_text:
            raise MissingText(f"{ctx.command_path} {param.name}: give the parameter a help text")
        if param.param_type_name == "argument":
            names = code(param.name.upper() + ("..." if param.nargs == -1 else ""))
        else:
            names = ", ".join(code(o) for o in [*param.opts, *param.secondary_opts])
        notes = [help_text.strip()]
        if param.required:
            notes.append("Required.")
        rows.append([names, _option_value(param, ctx), _option_default(param), " ".join(notes)])
    return rows


def _command_section(command: Any, ctx: Any, level: int) -> list[str]:
    if not command.help:
        raise MissingText(f"{ctx.command_path}: give the command a help text")
    out = ["#" * level + f" `{ctx.command_path}`", ""]
    if command.hidden:
        out += ["Hidden: `localrun --help` does not list it.", ""]
    out += [prose(command.help.partition("\f")[0]), ""]
    usage = " ".join([ctx.command_path, *command.collect_usage_pieces(ctx)])
    out += ["```", usage, "```", ""]
    rows = _param_rows(command, ctx)
    if rows:
        out += table(["argument or option", "value", "default", "what it does"], rows)
    return out


def _link(command_path: str) -> str:
    """A link to the command's section: GitHub's anchor of its heading."""
    return f"[`{command_path}`](#{command_path.replace(' ', '-')})"


def _walk(command: Any, ctx: Any, level: int) -> list[str]:
    out = _command_section(command, ctx, level)
    if hasattr(command, "list_commands"):
        subs = [(n, command.get_command(ctx, n)) for n in command.list_commands(ctx)]
        out += table(
            ["command", "what it does"],
            [[_link(f"{ctx.command_path} {n}"), sub.get_short_help_str(1000)] for n, sub in subs],
        )
        for name, sub in subs:
            out += _walk(sub, click.Context(sub, info_name=name, parent=ctx), level + 1)
    return out


def cli_page() -> str:
    root = typer.main.get_command(app)
    ctx = click.Context(root, info_name="localrun")
    out = header("The `localrun` command", "localrun/cli (the typer app)")
    out += [
        "Every command takes `-h` / `--help`. An error is one line on stderr (`Error: ...`, with "
        "what to do next) and exit status 1; `LOCALRUN_DEBUG=1` adds the traceback. See "
        "[errors.md](errors.md).",
        "",
    ]
    out += _walk(root, ctx, 2)
    out += ["## Chat commands", "", "What `localrun run MODEL` on a terminal takes (`/?`):", ""]
    out += ["```", chat.HELP.strip("\n"), "```", ""]
    return "\n".join(out).rstrip("\n") + "\n"
