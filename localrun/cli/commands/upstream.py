"""`localrun upstream add / list / rm`: the upstream servers `localrun serve` routes to."""

from __future__ import annotations

import json

import typer

from localrun.cli.output import columns


def add(
    name: str = typer.Argument(..., help="A name for it, e.g. gpu-box."),
    url: str = typer.Argument(..., help="Its root URL, e.g. http://10.0.0.5:8000."),
    dialect: str = typer.Option("openai", "--dialect", help="The API it speaks: openai, ollama."),
    api_key_env: str = typer.Option(
        None, "--api-key-env", help="The environment variable holding its API key."
    ),
    models: list[str] = typer.Option(
        None, "--model", help="A model it serves (repeatable); none: read from its model list."
    ),
    replace: bool = typer.Option(False, "--replace", help="Replace an upstream of that name."),
) -> None:
    """Route models to an upstream server (the running server reads this when it starts)."""
    from localrun.settings import upstreams  # upstreams.toml: read only by these commands

    if dialect not in upstreams.DIALECTS:
        raise typer.BadParameter(f"expected one of {', '.join(upstreams.DIALECTS)}")
    upstream = upstreams.Upstream(
        name=upstreams.check_name(name),
        url=upstreams.check_url(url),
        dialect=dialect,
        api_key_env=api_key_env,
        models=tuple(upstreams.check_model(m) for m in models or ()),
    )
    if api_key_env is not None:
        upstreams.check_env_name(api_key_env)
    upstreams.add(upstream, replace=replace)
    print(f"added upstream {name}; restart `localrun serve` to route to it")


def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the upstream servers."""
    from localrun.settings import upstreams  # upstreams.toml: read only by these commands

    declared = upstreams.load()
    if as_json:
        print(json.dumps([u.to_dict() for u in declared], indent=2))
        return
    rows = [["NAME", "URL", "DIALECT", "KEY", "MODELS"]]
    for u in declared:
        rows.append(
            [u.name, u.url, u.dialect, u.api_key_env or "", ", ".join(u.models) or "(its list)"]
        )
    print(columns(rows))


def rm(name: str = typer.Argument(..., help="The upstream to remove.")) -> None:
    """Stop routing to an upstream server."""
    from localrun.settings import upstreams  # upstreams.toml: read only by these commands

    upstreams.remove(name)
    print(f"removed upstream {name}")
