"""Schemas kept where the engine cannot enforce all of them: the answer validated after.

Ollama's clients send their pydantic models' schemas (`set[str]` is `"uniqueItems": true`),
and Ollama takes any schema. So wherever the client asked for no guarantee, the keywords the
constraint engine cannot enforce (formats.grammar_bounds.UNENFORCED: `uniqueItems`, `contains`,
`not`, `if` ...) are left out of the constraint. That is Ollama's `format`, OpenAI's
`response_format` and the Responses API's `text.format` without `strict: true`, Anthropic's
`output_config.format`, and a forced call of a tool that is not strict. A strict schema is
enforced whole or refused with a 400 before any token is made, as OpenAI's strict mode does. A
`oneOf` whose branches one value could match both of is enforced as `anyOf` on every route.

Where a schema holds such a keyword, the answer is validated against the whole schema with
`jsonschema` (`AfterCheck`): a value the client's schema refuses is an error, never a 200.
Every check whose time the client chooses runs in a child process with a deadline
(server.schema.checker), handed to it from a worker thread, never on the event loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from re import _constants as _c  # type: ignore[attr-defined]
from re import _parser as _sre  # type: ignore[attr-defined]
from typing import Any, Protocol

import anyio

from localrun.errors import AnswerSchemaError, BadRequestError
from localrun.formats import calls as tools_mod
from localrun.formats import grammar_bounds
from localrun.request.genrequest import GenRequest
from localrun.server.turns import NOBODY, Whose


class Checker(Protocol):
    """Where the checks below run: server.schema.checker.Checker's child processes.

    The children have a deadline. A check is awaited, so one waiting for its turn holds no thread.
    `whose` is the client asking, whose turns are shared fairly with other clients'.
    """

    async def schema(self, schema: dict[str, Any], what: str, whose: Whose = NOBODY) -> None: ...

    async def value(
        self, value: Any, schema: dict[str, Any], what: str, whose: Whose = NOBODY
    ) -> None: ...

    async def answer(self, text: str, schema: dict[str, Any], whose: Whose = NOBODY) -> None: ...


@dataclass
class AfterCheck:
    """What an answer is validated against once it is made, by `checker`'s children for `whose`.

    `answer` is the format's schema, None where the constraint enforced all of it. `tools` holds the
    schema of each enforced tool (`strict`, or forced by tool_choice) whose constraint did not.
    Generation checks an answer that ended by itself, for every dialect. One that does not validate
    is an error in the dialect's shape (422, or the last event of a stream) naming the keyword. An
    answer sent whole that was drawn at random is drawn again first (Generation._may_redraw).
    """

    checker: Checker
    answer: dict[str, Any] | None = None
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    whose: Whose = NOBODY

    async def check(self, text: str, calls: list[dict[str, Any]] | None) -> None:
        """Raise AnswerSchemaError unless the answer (its text, or its calls) validates."""
        if calls:
            for call in calls:
                schema = self.tools.get(str(call.get("name")))
                if schema is not None:
                    where = f"the call of {call.get('name')}"
                    await self.checker.value(call.get("arguments") or {}, schema, where,
                                             self.whose)  # fmt: skip
        elif self.answer is not None:
            await self.checker.answer(text, self.answer, self.whose)


async def after_check(
    req: GenRequest, checker: Checker, whose: Whose = NOBODY
) -> AfterCheck | None:
    """The check a request's answer needs, or None; `checker` checks its schemas first.

    They are checked before any token is made: a 400 for one that cannot be. Reading the request's
    schemas takes time that grows with them, so a request that has any reads them on a worker
    thread.
    """
    if req.format is None and not req.tools:
        return None
    answer, tools = await anyio.to_thread.run_sync(_schemas, req)
    if answer is not None:
        await checker.schema(answer, "the format's schema", whose)
    for name, schema in tools.items():
        await checker.schema(schema, f"the tool {name!r}'s schema", whose)
    if answer is None and not tools:
        return None
    return AfterCheck(checker, answer, tools, whose)


def _schemas(req: GenRequest) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """The format's schema and the enforced tools' whose answers are checked after."""
    tools = {}
    in_force = tools_mod.in_force(req.tools, req.tool_choice) if req.tools else None
    for tool in tools_mod.enforced(in_force or [], req.tool_choice):
        schema = tools_mod.parameters(tool)
        if to_check(schema) is not None:
            tools[str(tool["function"]["name"])] = schema
    return to_check(req.format), tools


def to_check(format: Any) -> dict[str, Any] | None:
    """`format` where it holds a keyword the engine does not enforce, else None.

    The answer is then validated against it after. A checker finds whether it can be
    (`check_schema`).
    """
    if not isinstance(format, dict) or not grammar_bounds.unenforced(format):
        return None
    return format


def check_schema(format: dict[str, Any], what: str) -> None:
    """Raise BadRequestError unless answers can be checked against `format`.

    It must be a schema jsonschema takes, each pattern one that Python's backtracking regular
    expressions run in bounded time on. server.schema.checker's children run this.
    """
    import jsonschema.exceptions

    try:
        _validator(format).check_schema(format)
    except (jsonschema.exceptions.SchemaError, RecursionError, ValueError, TypeError) as exc:
        message = getattr(exc, "message", str(exc))
        raise BadRequestError(f"{what} is not a JSON schema: {message}") from None
    for pattern in patterns(format):
        _check_pattern(pattern)


def check(text: str, schema: dict[str, Any]) -> None:
    """Raise AnswerSchemaError unless `text` is JSON that validates against `schema`.

    `schema` is one `to_check` gave.
    """
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise AnswerSchemaError(f"the answer is not JSON: {exc}", hint=_hint(schema)) from None
    validate(value, schema, "the answer")


def _hint(schema: dict[str, Any]) -> str:
    keywords = ", ".join(grammar_bounds.unenforced(schema))
    where = "localrun help structured-outputs"
    return f"{keywords} cannot be enforced while the answer is made ({where})"


def validate(value: Any, schema: dict[str, Any], what: str) -> None:
    """Raise AnswerSchemaError unless `value` validates against `schema`."""
    import jsonschema.exceptions
    import referencing.exceptions

    hint = _hint(schema)
    cannot = (
        jsonschema.exceptions.SchemaError,
        referencing.exceptions.Unresolvable,
        re.error,
        RecursionError,
        TypeError,
        ValueError,
    )
    try:
        error = _reason(list(_validator(schema)(schema).iter_errors(value)))
    except cannot as exc:
        raise AnswerSchemaError(f"{what} cannot be checked: {exc}", hint=hint) from None
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "its root"
        raise AnswerSchemaError(
            f"{what} does not match its schema at {where}: {error.validator} {error.message[:200]}",
            hint=hint,
        )


def _reason(errors: list[Any]) -> Any:
    """The error to name: an ambiguous `oneOf`, wherever it is, else jsonschema's best match.

    A `oneOf` more than one branch of which the value matches is named even inside an `anyOf`
    branch: the grammar read that oneOf as anyOf, and the check is there for it. best_match would
    name another branch's failure (`enum 'push' is not one of ['s3cp']`) where the branch the
    answer took failed only for its ambiguous oneOf.
    """
    import jsonschema.exceptions

    stack = list(reversed(errors))
    while stack:
        error = stack.pop()
        if error.validator == "oneOf" and not error.context:  # "valid under each of"
            return error
        stack.extend(reversed(error.context))
    return jsonschema.exceptions.best_match(errors)


def _validator(schema: dict[str, Any]) -> Any:
    import jsonschema
    import jsonschema.validators

    return jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)


def patterns(schema: Any) -> Iterator[str]:
    """Every regular expression the schema holds (`pattern`s, `patternProperties`' names)."""
    for key, value in grammar_bounds.keywords(schema):
        if key == "pattern" and isinstance(value, str):
            yield value
        elif key == "patternProperties" and isinstance(value, dict):
            yield from (name for name in value if isinstance(name, str))


# Python's regular expressions backtrack: a repetition of something of several lengths inside
# another repetition (`(a+)+`, `(a|aa)*`, `(\w+\s?)*`) can take time exponential in the text.
# Where an answer is checked with a pattern afterwards, it may hold none.
_REPEATS = (_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", _c.MAX_REPEAT))


def _check_pattern(pattern: str) -> None:
    hint = "simplify the pattern, or leave the keywords the engine cannot enforce out of the schema"
    try:
        tree = _sre.parse(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise BadRequestError(
            f"the schema's pattern {pattern[:60]!r} cannot be checked: {exc}", hint=hint
        ) from None
    stack: list[tuple[Any, bool]] = [(tree, False)]  # (a part, inside a repetition)
    while stack:
        sub, inside = stack.pop()
        for op, av in sub:
            if op in _REPEATS:
                low, high, body = av
                width_low, width_high = body.getwidth()
                if inside and (low != high or width_low != width_high):
                    raise BadRequestError(
                        f"the schema's pattern {pattern[:60]!r} repeats parts of several "
                        "lengths inside a repetition: checking an answer with it could take "
                        "exponential time",
                        hint=hint,
                    )
                stack.append((body, inside or high > 1))
            elif op == _c.SUBPATTERN:
                stack.append((av[-1], inside))
            elif op == _c.BRANCH:
                # Alternatives of several lengths repeated are as ambiguous (`(a|aa)*`).
                widths = {alt.getwidth() for alt in av[1]}
                if inside and len(widths) > 1:
                    raise BadRequestError(
                        f"the schema's pattern {pattern[:60]!r} repeats alternatives of "
                        "several lengths: checking an answer with it could take exponential "
                        "time",
                        hint=hint,
                    )
                stack.extend((alt, inside) for alt in av[1])
            elif op in (_c.ASSERT, _c.ASSERT_NOT):
                stack.append((av[1], inside))
