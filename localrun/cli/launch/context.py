"""Choose the context a launched agent gets, and the model variant that loads with it.

The choice weighs what the model holds against what the agent needs (`localrun launch`).
An agent's requests say nothing of the context (only Aider's do). So the server would load the
model with its default: 4096 tokens, or the model's PARAMETER num_ctx. That is too small for an
agent's prompt. launch gives the agent a variant of the model instead, `NAME:TAG-ctx32k`: the
same weights with `PARAMETER num_ctx 32768`, created through the server. The variant is a
manifest and a small parameters layer, and creating it again changes nothing. An Ollama user
does the same by hand with a Modelfile.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from localrun.cli.common import open_store
from localrun.cli.launch import agents as launchers
from localrun.errors import ConfigError, LocalrunError
from localrun.store import names

if TYPE_CHECKING:
    from localrun.cli.client import Client


@dataclass(frozen=True)
class Facts:
    """What launch knows of a model: its trained context, its own num_ctx, whether it thinks.

    Either number is None when it is not known.
    """

    trained: int | None = None
    num_ctx: int | None = None
    thinks: bool = False


def facts(name: str, client: Client | None) -> Facts:
    """Return the model's facts from the running server's /api/show, else from the store.

    A model not in the store yet (a dry run's) gets empty Facts.
    """
    if client is not None:
        return _from_show(client.show(name))
    from localrun.model import capabilities
    from localrun.model import stored as model_mod

    try:
        m = model_mod.load(open_store(), names.parse(name))
    except LocalrunError:
        return Facts()
    trained = m.details.get("context_length")
    asked = m.parameters.get("num_ctx")
    return Facts(
        trained if isinstance(trained, int) and trained > 0 else None,
        asked if isinstance(asked, int) else None,
        "thinking" in capabilities.capabilities(m),
    )


def _from_show(shown: dict[str, Any]) -> Facts:
    info = shown.get("model_info") or {}
    arch = info.get("general.architecture")
    trained = info.get(f"{arch}.context_length") if arch else None
    found = re.search(r"^num_ctx\s+(\d+)\s*$", str(shown.get("parameters") or ""), re.MULTILINE)
    return Facts(
        trained if isinstance(trained, int) and trained > 0 else None,
        int(found.group(1)) if found else None,
        "thinking" in (shown.get("capabilities") or []),
    )


def choose(tool: launchers.Tool, name: str, known: Facts, asked: int | None) -> int:
    """Return the context `tool` gets on model `name`, never more than the model was trained on.

    That is `asked`, else the model's own num_ctx when it is enough, else the tool's `want`. A
    model that cannot hold what the tool needs is a ConfigError saying why. An `asked` context
    below the need goes ahead, with a warning.
    """
    ceiling = known.trained
    if asked is not None:
        if ceiling is not None and asked > ceiling:
            raise ConfigError(
                f"{name} was trained on a context of {ceiling} tokens; --context {asked} is more",
                hint=f"use --context {ceiling} or less (past it a model's answers degrade)",
            )
        if asked < tool.need:
            print(
                f"warning: {tool.title} needs a context of {tool.need} tokens ({tool.why}); "
                f"it gets {asked}",
                file=sys.stderr,
            )
        return asked
    own = known.num_ctx
    if own is not None and own >= tool.need and (ceiling is None or own <= ceiling):
        return own
    chosen = min(tool.want, ceiling) if ceiling is not None else tool.want
    if chosen < tool.need:
        raise ConfigError(
            f"{name} was trained on a context of {ceiling} tokens, and {tool.title} needs "
            f"{tool.need}: {tool.why}",
            hint=f"use a model trained on {tool.need} tokens or more (most current ones are: "
            f"Qwen3, Llama 3.1, Gemma 3), or go ahead with less: --context {ceiling}",
        )
    return chosen


def variant(name: str, num_ctx: int) -> str:
    """The name of `name`'s variant with a context of `num_ctx`: its tag plus `-ctx32k`."""
    parsed = names.parse(name)
    size = f"{num_ctx // 1024}k" if num_ctx % 1024 == 0 else str(num_ctx)
    made = dataclasses.replace(parsed, tag=f"{parsed.tag}-ctx{size}"[:128])
    return str(made)


def told(tool: launchers.Tool, name: str, served: str, num_ctx: int) -> str:
    """The line that says what the agent works with."""
    if served == name:
        return f"{tool.title} works with {name}, with a context of {num_ctx} tokens"
    return (
        f"{tool.title} works with {served}: {name} with a context of {num_ctx} tokens "
        f"(PARAMETER num_ctx {num_ctx})"
    )


def create_variant(client: Client, served: str, name: str, num_ctx: int) -> None:
    """Create (or create again: the same manifest) the variant through the server."""
    for _ in client.create(served, **{"from": name, "parameters": {"num_ctx": num_ctx}}):
        pass
