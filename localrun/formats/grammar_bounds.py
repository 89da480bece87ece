"""Bounds on the schema a request constrains its answer with, checked before it is compiled.

llguidance (engine.sampling.constraint) compiles a JSON schema lazily and bounds its own work. A
grammar past its size or its lexer's fuel is refused when compiled, and no mask step may spend more
than its step fuel. Counts (`maxLength` of a million, `a{0,30000}`) and nested repetitions in
patterns cost it next to nothing, so they are taken as written. What is bounded here is what reaches
it: the schema's depth (MAX_DEPTH), its minimums (MAX_MINIMUM), its patterns' length (MAX_PATTERN),
its depth once its `$ref`s are followed (MAX_RESOLVED_DEPTH), and the grammar text
(LOCALRUN_MAX_GRAMMAR_BYTES). An enum of 100,000 strings costs llguidance a third of a second before
it refuses it. Past any bound the request is a 400 naming it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from localrun.errors import BadRequestError
from localrun.formats import schema_refs
from localrun.settings import limits

MAX_DEPTH = 120  # the JSON reader inside llguidance stops at 128 levels
# llguidance's recursion through a chain of definitions passes an 8 MiB stack past 2,100 of
# these levels (`items` chains, the deepest per level measured), 2,500 for `$ref` alone.
MAX_RESOLVED_DEPTH = 600
# No answer holds more: a larger minLength, minItems or minProperties can only end cut off.
MAX_MINIMUM = 1_000_000
MAX_PATTERN = 16 * 1024

_MINIMA = ("minLength", "minItems", "minProperties", "minContains")
_HINT = "simplify the schema; see the limits in `localrun env`"


def check_schema(schema: Any) -> None:
    """Raise BadRequestError if `schema` is past the bounds."""
    stack: list[tuple[Any, int]] = [(schema, 0)]
    while stack:  # iterative: a hostile schema may nest deeper than Python's recursion limit
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadRequestError(
                f"the JSON schema nests more than {MAX_DEPTH} levels", hint="flatten the schema"
            )
        if isinstance(node, dict):
            for key, value in node.items():
                number = isinstance(value, int | float) and not isinstance(value, bool)
                if key in _MINIMA and number and value > MAX_MINIMUM:
                    raise BadRequestError(
                        f"the JSON schema's {key} of {value} is more than any answer can hold "
                        f"(at most {MAX_MINIMUM})",
                        hint=f"drop {key} or lower it",
                    )
                if key == "pattern" and isinstance(value, str) and len(value) > MAX_PATTERN:
                    raise BadRequestError(
                        f"the JSON schema's pattern is {len(value)} characters "
                        f"(at most {MAX_PATTERN})",
                        hint=_HINT,
                    )
                stack.append((value, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
    try:
        resolved = schema_refs.resolved_depth(schema)
    except schema_refs.TooLarge as exc:
        raise BadRequestError(str(exc), hint=_HINT) from None
    if resolved > MAX_RESOLVED_DEPTH:
        raise BadRequestError(
            f"the JSON schema nests {resolved} levels once its $refs are followed "
            f"(at most {MAX_RESOLVED_DEPTH})",
            hint="shorten the chains of definitions that refer to one another",
        )


# The keywords llguidance cannot enforce (it refuses a schema with one, unless told to leave
# them out: Ollama's `format`, whose answers are then validated after).
UNENFORCED = frozenset(
    {
        "uniqueItems", "contains", "minContains", "maxContains", "not", "if", "then", "else",
        "dependentRequired", "dependentSchemas", "dependencies", "propertyNames",
        "unevaluatedProperties", "unevaluatedItems", "$dynamicRef", "$dynamicAnchor",
    }
)  # fmt: skip


def keywords(schema: Any) -> Iterator[tuple[str, Any]]:
    """Each keyword of `schema` with its value, at every depth to MAX_DEPTH.

    A property's name is not a keyword (`"properties": {"not": ...}`).
    """
    stack: list[tuple[Any, int, bool]] = [(schema, 0, False)]
    while stack:
        node, depth, names = stack.pop()
        if depth > MAX_DEPTH:
            continue
        if isinstance(node, dict):
            for key, value in node.items():
                if not names:
                    yield key, value
                stack.append((value, depth + 1, not names and key in NAME_MAPS))
        elif isinstance(node, list):
            stack.extend((item, depth + 1, False) for item in node)


def unenforced(schema: Any) -> list[str]:
    """The keywords of UNENFORCED that `schema` uses, each once, in the order met.

    `oneOf` is one of them where its branches are not exclusive.
    """
    found: dict[str, None] = {}
    for key, value in keywords(schema):
        if key in UNENFORCED or (key == "oneOf" and not _exclusive(value, schema)):
            found.setdefault(key, None)
    return list(found)


def has_one_of(schema: Any) -> bool:
    """Whether `oneOf` is one of the schema's keywords anywhere."""
    return any(key == "oneOf" for key, _ in keywords(schema))


# -- oneOf: enforced as anyOf where no value can match two of its branches ----------------------


MAX_ONE_OF = 64  # branches a oneOf may have to be read as anyOf (each pair is compared)


def _exclusive(branches: Any, root: Any) -> bool:
    """Whether no value can match two of `branches`, so that anyOf's grammar is oneOf's.

    Two branches are apart where they differ in type. They are apart too where both allow objects
    alone and a property both require takes disjoint values, as a discriminator does
    (`"kind": {"const": "circle"}`). Or where one requires a property that the other, a closed
    object (`additionalProperties: false`), does not list.
    """
    if not isinstance(branches, list) or len(branches) > MAX_ONE_OF:
        return False
    seen = [_resolve(branch, root) for branch in branches]
    return all(_apart(a, b) for i, a in enumerate(seen) for b in seen[i + 1 :])


def _resolve(schema: Any, root: Any) -> Any:
    """A branch with its local `$ref` followed (a few hops at most)."""
    for _ in range(8):
        ref = schema.get("$ref") if isinstance(schema, dict) else None
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return schema
        target = root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, dict) else None
        if target is None:
            return schema
        schema = target
    return schema


def _types(schema: Any) -> frozenset[str] | None:
    """The JSON types a branch allows, where it says (None: any)."""
    if not isinstance(schema, dict):
        return None
    named = _named(schema)
    if named is not None:
        return frozenset(_type_of(v) for v in named)
    kind = schema.get("type")
    if isinstance(kind, str):
        kinds = {kind}
    elif isinstance(kind, list) and all(isinstance(k, str) for k in kind):
        kinds = set(kind)
    else:
        return None
    if "number" in kinds:
        kinds.add("integer")
    return frozenset(kinds)


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _apart(a: Any, b: Any) -> bool:
    if a is False or b is False:  # a branch no value matches
        return True
    ta, tb = _types(a), _types(b)
    if ta is not None and tb is not None and not ta & tb:
        return True
    objects = frozenset({"object"})
    if ta != objects or tb != objects or not (isinstance(a, dict) and isinstance(b, dict)):
        return False  # a discriminator tells objects apart, not strings that match both
    names_a, names_b = a.get("required"), b.get("required")
    props_a, props_b = a.get("properties"), b.get("properties")
    if not (isinstance(names_a, list) and isinstance(names_b, list)):
        return False
    if not (isinstance(props_a, dict) and isinstance(props_b, dict)):
        return False
    needs_a = {n for n in names_a if isinstance(n, str)}
    needs_b = {n for n in names_b if isinstance(n, str)}
    if _forbids(b, needs_a - set(props_b)) or _forbids(a, needs_b - set(props_a)):
        return True  # one requires a property the other's closed object cannot have
    for name in needs_a & needs_b:
        va, vb = _values(props_a.get(name)), _values(props_b.get(name))
        if va is not None and vb is not None and not va & vb:
            return True
    return False


def _forbids(schema: dict[str, Any], names: set[str]) -> bool:
    """Whether an object of `schema` can have none of `names`, where some are given.

    So it is for a closed object: one that lists its properties and allows no others.
    """
    closed = schema.get("additionalProperties") is False and "patternProperties" not in schema
    return bool(names) and closed


def _values(schema: Any) -> frozenset[str] | None:
    """The values a property allows, as JSON text, where it names them in a const or an enum.

    A number is written as its value is, since 1 and 1.0 are one value to JSON Schema.
    """
    named = _named(schema) if isinstance(schema, dict) else None
    return None if named is None else frozenset(_text(v) for v in named)


def _named(schema: dict[str, Any]) -> list[Any] | None:
    """The values a schema names (its const, or its enum's), where it names them."""
    if "const" in schema:
        return [schema["const"]]
    enum = schema.get("enum")
    return enum if isinstance(enum, list) else None


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True)


# The keywords whose value is an object of names, each naming a schema.
NAME_MAPS = schema_refs.NAME_MAPS


def check_grammar(grammar: str) -> str:
    """Refuse a grammar text past LOCALRUN_MAX_GRAMMAR_BYTES; returns it."""
    limit = limits.max_grammar_bytes()
    size = len(grammar.encode())
    if size > limit:
        raise BadRequestError(
            f"the schema or grammar makes a grammar of {size} bytes (at most {limit}), e.g. a "
            "very long enum or list of alternatives",
            hint="shorten the schema's enums and the grammar's alternatives, or raise "
            "LOCALRUN_MAX_GRAMMAR_BYTES on the server",
        )
    return grammar
