"""docs/reference/settings.md: every LOCALRUN_* setting and the keys of upstreams.toml."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from localrun.settings import config, limits, parse, upstreams, view
from localrun.settings.setting import Setting
from refpages.markdown import MissingText, code, first_line, header, prose, table


def _duration(seconds: float) -> str:
    if seconds == math.inf:
        return "-1"
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms"


def _size(value: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= size and value % size == 0:
            return f"`{value}` ({value // size} {unit})"
    return code(str(value))


def setting_default(setting: Setting) -> str:
    if setting.shown_default:
        return setting.shown_default
    value = setting.default()
    if setting.parse in (parse.parse_duration, parse.parse_timeout):
        return code(_duration(value))
    if isinstance(value, int) and re.search(r"_BYTES$|_MEMORY$", setting.name):
        return _size(value)
    if isinstance(value, tuple) and all(isinstance(item, str) for item in value):
        return ", ".join(code(item) for item in value) or "(none)"
    return code(view.format_value(setting.name, value)) or "(none)"


def _setting_rows(settings: Iterable[Setting]) -> list[list[str]]:
    rows = []
    for setting in settings:
        kind = first_line(setting.parse.__doc__)
        if not setting.help or not kind:
            raise MissingText(
                f"{setting.name}: give it a help text, and its parser "
                f"(settings.parse.{setting.parse.__name__}) a docstring saying what it takes"
            )
        rows.append([code(setting.name), setting_default(setting), kind, setting.help])
    return rows


def settings_page() -> str:
    out = header("Settings", "localrun/settings (config, limits, upstreams)")
    out += [
        prose(
            """Settings are environment variables, read when they are used (never frozen at
            start-up). `localrun env` prints each one's value and where it came from;
            `localrun serve` reads every one at its start and stops, with one line naming the
            variable, at a bad one."""
        ),
        "",
        "## General",
        "",
    ]
    general = [s for name, s in config.SETTINGS.items() if name not in limits.LIMITS]
    head = ["variable", "default", "value", "what it does"]
    out += table(head, _setting_rows(general))
    out += ["## Limits", "", prose(first_line(limits.__doc__)), ""]
    out += table(head, _setting_rows(limits.LIMITS.values()))
    out += [
        "## upstreams.toml",
        "",
        prose(
            """`$LOCALRUN_HOME/upstreams.toml` declares the upstream servers `localrun serve`
            routes model names to, one table `[upstreams.NAME]` each; `localrun upstream add`
            and `localrun upstream rm` edit it. Keys of a table:"""
        ),
        "",
    ]
    out += table(["key", "what it holds"], [[code(k), v] for k, v in upstreams.KEYS.items()])
    return "\n".join(out).rstrip("\n") + "\n"
