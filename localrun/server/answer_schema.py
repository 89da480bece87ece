"""Ollama's `format`, kept where the engine cannot enforce it: the answer validated after.

Ollama's clients send their pydantic models' schemas (`set[str]` is `"uniqueItems": true`),
and Ollama takes any schema. So on Ollama's routes the keywords the constraint engine cannot
enforce (formats.grammar_bounds.UNENFORCED: `uniqueItems`, `contains`, `not`, `if` ...) are left
out of the constraint, and an answer that ended by itself is validated against the whole
schema with `jsonschema`: one that does not validate is an error in Ollama's shape (422, or the
last line of a stream), naming the keyword, never a 200 carrying a value the client's schema
refuses. Every other route refuses such a schema with a 400 before any token is made.
"""

from __future__ import annotations

import json
from typing import Any

from localrun.errors import AnswerSchemaError
from localrun.formats import grammar_bounds


def to_check(format: Any) -> dict[str, Any] | None:
    """The schema an Ollama answer is validated against after: the format's, where it holds a
    keyword the engine does not enforce (None: the constraint enforces all of it)."""
    if not isinstance(format, dict) or not grammar_bounds.unenforced(format):
        return None
    return format


def check(text: str, schema: dict[str, Any]) -> None:
    """Raise AnswerSchemaError unless `text` is JSON that validates against `schema`."""
    import jsonschema

    keywords = ", ".join(grammar_bounds.unenforced(schema))
    hint = f"{keywords} cannot be enforced while the answer is made (README: Structured outputs)"
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise AnswerSchemaError(f"the answer is not JSON: {exc}", hint=hint) from None
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        error = jsonschema.exceptions.best_match(validator(schema).iter_errors(value))
    except (jsonschema.exceptions.SchemaError, RecursionError, ValueError) as exc:
        raise AnswerSchemaError(f"the format's schema cannot validate: {exc}", hint=hint) from None
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "the answer"
        raise AnswerSchemaError(
            f"the answer does not match the format's schema at {where}: "
            f"{error.validator} {error.message[:200]}",
            hint=hint,
        )
