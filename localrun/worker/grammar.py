"""The grammar of a request's `format`: "json" (any JSON value) or a JSON schema, bounded.

A forced tool call's grammar is worker/forced.py's; it takes the tools' schemas from here.
"""

from __future__ import annotations

import json
from typing import Any

from localrun.errors import BadRequestError
from localrun.formats import grammar_bounds

Format = str | dict[str, Any] | None


def grammar_for(format: Format) -> str | None:
    """The GBNF grammar for a `format`: "json" (any JSON value) or a JSON schema."""
    if format is None or format == "":
        return None
    if format == "json":
        from localrun.engine.grammars import json_grammar

        return json_grammar()
    if isinstance(format, dict):
        return schema_grammar(format)
    raise BadRequestError(f"unknown format {format!r}", hint='use "json" or a JSON schema object')


def schema_grammar(schema: dict[str, Any]) -> str:
    """A GBNF grammar for the JSON values a JSON schema accepts (BadRequestError if none)."""
    from localrun.engine.grammars import json_schema_grammar

    grammar_bounds.check_schema(schema)
    try:
        grammar = json_schema_grammar(json.dumps(schema))
    except Exception as exc:  # the converter raises anything from KeyError to assert
        raise BadRequestError(
            f"the JSON schema cannot be turned into a grammar: {type(exc).__name__}: {exc}",
            hint="simplify the schema (types, properties, enums, arrays, required)",
        ) from None
    return grammar_bounds.check_grammar(grammar)
