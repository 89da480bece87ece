"""How `localrun env` shows the settings: each one's value as a user would write it.

It also says whether a value came from the environment or the default. A key is never shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from localrun.settings.config import SETTINGS

_DURATIONS = frozenset(
    {"LOCALRUN_KEEP_ALIVE", "LOCALRUN_RESPONSES_MAX_AGE", "LOCALRUN_LOAD_TIMEOUT",
     "LOCALRUN_TEMPLATE_TIMEOUT", "LOCALRUN_HEADER_TIMEOUT", "LOCALRUN_BODY_TIMEOUT",
     "LOCALRUN_IDLE_TIMEOUT"}
)  # fmt: skip


def format_value(name: str, value: Any) -> str:
    if name == "LOCALRUN_HOST":
        host_, port = value
        return f"[{host_}]:{port}" if ":" in host_ else f"{host_}:{port}"
    if name == "LOCALRUN_API_KEY":
        return "(set)" if value else ""
    if name == "LOCALRUN_REGISTRY_AUTH":  # secrets: only the hosts they are for
        return ",".join(f"{host}=(set)" for host, _ in value)
    if value is None:
        return ""
    if name in _DURATIONS:
        return "-1" if value == float("inf") else f"{value:g}s"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


@dataclass(frozen=True)
class Described:
    """A setting's current value and where it came from ("environment" or "default")."""

    name: str
    value: str
    source: str
    help: str


def describe() -> list[Described]:
    """Every setting with its current value and source; raises ConfigError on a bad value."""
    rows = []
    for setting in SETTINGS.values():
        source = "environment" if setting.raw() is not None else "default"
        rows.append(
            Described(
                setting.name, format_value(setting.name, setting.value()), source, setting.help
            )
        )
    return rows
