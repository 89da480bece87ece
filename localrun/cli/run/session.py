"""Define what `localrun run` talks to: the `Session` and `Answer` protocols.

The one-shot answer, the chat REPL and --batch all see a session this way. cli/run/connect.py
opens one: the running server's model (cli/run/remote.py) or one loaded in this process
(cli/run/local.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Protocol

from localrun.engine.types import Timings

if TYPE_CHECKING:
    from localrun.recipes.modelfile import Modelfile

Message = dict[str, Any]


class Answer(Protocol):
    """One streamed answer: iterate for text; then `text`, `done_reason` and `timings` are set."""

    text: str
    done_reason: str | None
    thinking: str  # a reasoning model's thinking, apart from the answer
    on_thinking: Callable[[str], None] | None  # called with each piece of it, as it comes

    @property
    def timings(self) -> Timings: ...

    def __iter__(self) -> Iterator[str]: ...

    def cancel(self) -> None:
        """Stop now (Ctrl-C): the text so far stays, done_reason becomes "cancelled"."""
        ...


@dataclass
class ModelView:
    """What the chat's /show prints of the current model (the shape `show_text` reads)."""

    details: dict[str, Any] = field(default_factory=dict)
    adapter_paths: list[PurePath] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    messages: list[Any] = field(default_factory=list)  # modelfile.Message
    template: str | None = None
    licenses: list[str] = field(default_factory=list)
    draft: dict[str, Any] | None = None  # {model, digest, details}, as Model.draft


class Session(Protocol):
    """A model to talk to, in this process or on the server."""

    name: str  # the model's name, e.g. smollm2:135m
    notes: list[str]  # lines for --verbose (e.g. why everything runs on the CPU)
    runtime: str | None  # what runs the model here (info's runtime and exact), for --verbose
    cache_note: str | None  # why the disk prompt cache is off for the model, for --verbose

    def chat(
        self,
        messages: list[Message],
        *,
        system: str | None = None,
        options: dict[str, Any] | None = None,
        format: str | None = None,
        think: bool | str | None = None,
    ) -> Answer: ...

    def load_s(self, answer: Answer) -> float:
        """The load time to report with this answer (a load counts once, as in Ollama)."""
        ...

    def view(self) -> ModelView: ...

    def reconfigure(self, overrides: dict[str, Any]) -> None:
        """A load-time parameter (num_ctx, num_gpu, ...) changed: reload with `overrides`."""
        ...

    def switch(self, name: str, announce: Callable[[str], None]) -> None:
        """Load another model (/load NAME); `announce` gets its name once it is known to exist."""
        ...

    def save(self, name: str, modelfile: Modelfile) -> None:
        """Create model `name` from `modelfile` (FROM the current model) where the model lives."""
        ...

    def close(self) -> None: ...


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
