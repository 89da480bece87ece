"""One LOCALRUN_* setting: its name, a line of help, the parser of its text and its default.

Values are read from the environment at call time (never frozen at import), so a test or a
long-running server sees the current environment. A bad value raises ConfigError naming the
variable, with a hint to fix or unset it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from localrun.errors import ConfigError


@dataclass(frozen=True)
class Setting:
    """One environment setting: its name, default, parser and help text.

    `shown_default` words a default that depends on the machine (a platform folder) for
    docs/reference.
    """

    name: str
    help: str
    parse: Callable[[str], Any]
    default: Callable[[], Any]
    shown_default: str = ""

    def raw(self) -> str | None:
        return os.environ.get(self.name)

    def value(self) -> Any:
        raw = self.raw()
        if raw is None:
            return self.default()
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise ConfigError(
                f"{self.name}: {exc}", hint=f"fix {self.name} or unset it; see `localrun env`"
            ) from None
