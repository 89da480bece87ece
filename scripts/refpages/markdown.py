"""The Markdown every reference page is written in, and what a page refuses to render."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from typing import Any

COMMAND = ".venv/bin/python scripts/maintenance/make_reference.py"


class MissingText(Exception):
    """Something a page lists has no text in the code to describe it."""


def header(title: str, sources: str) -> list[str]:
    return [
        f"<!-- Generated from {sources} by `{COMMAND}`: do not edit by hand. -->",
        "",
        f"# {title}",
        "",
    ]


def _escape_outside_code(text: str) -> str:
    """`<` that would open an HTML tag is escaped, except inside `code spans`."""
    parts = text.split("`")
    for index in range(0, len(parts), 2):
        parts[index] = re.sub(r"<(?=[A-Za-z/!?])", r"\\<", parts[index])
    return "`".join(parts)


def cell(text: object) -> str:
    """Text for one table cell: one line, pipes escaped (inside code spans too, as GFM asks)."""
    value = " ".join(str(text).split())
    return _escape_outside_code(value).replace("|", "\\|")


def prose(text: str) -> str:
    return _escape_outside_code(inspect.cleandoc(text))


def code(text: str) -> str:
    return f"`{text}`" if text else ""


def table(head: Iterable[str], rows: Iterable[Iterable[object]]) -> list[str]:
    columns = list(head)
    out = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    out += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return [*out, ""]


def first_line(doc: str | None) -> str:
    return inspect.cleandoc(doc or "").split("\n\n", 1)[0].replace("\n", " ").strip()


def own_doc(obj: Any) -> str:
    """The docstring written on this class itself, not one it inherits."""
    return inspect.cleandoc(vars(obj).get("__doc__") or "")
