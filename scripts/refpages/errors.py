"""docs/reference/errors.md: the error tree, each class's code and HTTP status, and an error as
each surface shows it."""

from __future__ import annotations

import json
from typing import get_args

from localrun import errors
from localrun.cli.common import error_line
from localrun.server import errors as wire
from refpages.markdown import MissingText, code, first_line, header, own_doc, prose, table


def error_classes() -> list[tuple[int, type]]:
    """(depth, class) for every class of localrun.errors, depth first in definition order."""
    out: list[tuple[int, type]] = []

    def visit(cls: type, depth: int) -> None:
        out.append((depth, cls))
        sub: type
        for sub in cls.__subclasses__():
            if sub.__module__ == errors.__name__:
                visit(sub, depth + 1)

    visit(errors.LocalrunError, 0)
    return out


def _tree(classes: list[tuple[int, type]]) -> list[str]:
    lines = []
    for index, (depth, cls) in enumerate(classes):
        if depth == 0:
            lines.append(cls.__name__)
            continue
        # The marks of each level above: a bar where that level has a later sibling.
        marks = []
        for level in range(1, depth + 1):
            later = next((d for d, _ in classes[index + 1 :] if d <= level), 0)
            marks.append(later == level)
        prefix = "".join("│   " if more else "    " for more in marks[:-1])
        lines.append(prefix + ("├── " if marks[-1] else "└── ") + cls.__name__)
    return lines


def _error_rows(classes: list[tuple[int, type]]) -> list[list[str]]:
    rows = []
    for _, cls in classes:
        doc = own_doc(cls)
        if not doc:
            raise MissingText(f"errors.{cls.__name__}: give the class a docstring")
        status = wire.status_of(cls.__new__(cls))  # type: ignore[call-overload]
        code_ = cls.code  # type: ignore[attr-defined]
        openai = wire.plain_body("", status, code_, "openai")["error"]["type"]
        anthropic = wire.plain_body("", status, code_, "anthropic")["error"]["type"]
        rows.append(
            [code(cls.__name__), code(code_), str(status), openai, anthropic, first_line(doc)]
        )
    return rows


def _error_notes(classes: list[tuple[int, type]]) -> list[str]:
    notes = []
    for _, cls in classes:
        if "wire_as_parent" in vars(cls):
            parent = cls.__mro__[1].__name__
            notes.append(f"`{cls.__name__}` travels as `{parent}` (the client rebuilds that).")
        if vars(cls).get("facts"):
            fields = ", ".join(code(f) for f in cls.facts)  # type: ignore[attr-defined]
            notes.append(f"`{cls.__name__}` carries {fields} beside its message, as numbers.")
    for wire_code, cls in errors.LocalrunError.by_code.items():
        if cls.code != wire_code:
            notes.append(f"The client also reads the code `{wire_code}` as `{cls.__name__}`.")
    return [f"- {note}" for note in notes] + [""]


# The routes of each dialect of server.errors (its dialect_of decides which a path speaks).
SURFACES = {
    "ollama": "Ollama's routes (`/api/...`)",
    "openai": "OpenAI's routes (`/v1/...`) and llama-server's (`/tokenize`, `/infill`, ...)",
    "responses": "The Responses API's routes (`/v1/responses`)",
    "anthropic": "Anthropic's routes (`/v1/messages`, `/v1/complete`) and any request an "
    "Anthropic client sends (it carries `anthropic-version`)",
}
EXAMPLE_ID = "req_5f0c2a9d1e7b43a8c6d2f901"  # a request's id, as its `request-id` header has it


def _bodies() -> list[str]:
    example = errors.ModelNotFoundError("nope:1b")
    out = ["The command line prints it as one line on stderr:", "", "```"]
    out += [error_line(example), "```", ""]
    for dialect in get_args(wire.Dialect):
        if dialect not in SURFACES:
            raise MissingText(f"dialect {dialect!r}: name its routes in SURFACES")
        body = json.dumps(wire.body_of(example, dialect, EXAMPLE_ID), indent=2)
        out += [f"{SURFACES[dialect]} answer HTTP {wire.status_of(example)} with:", ""]
        out += ["```json", body, "```", ""]
    return out


def errors_page() -> str:
    classes = error_classes()
    out = header("Errors", "localrun/errors.py and localrun/server/errors.py")
    out += [prose((errors.__doc__ or "").rsplit("\n\n", 1)[-1]), ""]
    out += ["```", *_tree(classes), "```", "", "## Codes", "", prose(wire.__doc__ or ""), ""]
    out += table(
        ["class", "code", "HTTP status", "OpenAI type", "Anthropic type", "what it means"],
        _error_rows(classes),
    )
    out += _error_notes(classes)
    out += ["## On the wire", "", "An error, `ModelNotFoundError`, as each surface shows it.", ""]
    out += _bodies()
    return "\n".join(out).rstrip("\n") + "\n"
