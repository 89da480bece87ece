"""Structured outputs without a model: the constraint engine's pieces (the depth of a schema through
its refs, the watch over an array's items, one-of branches told apart, a discriminator, formats
it does not know, a redraw's seed)."""

from __future__ import annotations

import time
from typing import Any

import jsonschema
import pytest

from localrun.engine.sampling import constraint
from localrun.errors import AnswerSchemaError, BadRequestError
from localrun.formats import grammar_bounds
from localrun.server.schema import answer as answer_schema
from localrun.worker.grammars.format import constraint_for


def test_one_of_is_enforced_where_no_value_matches_two_branches() -> None:
    """oneOf read as anyOf is the same where each branch has its own type or its own value
    of a required property; else only Ollama's lenient format takes it (validated after)."""
    shapes = {
        "oneOf": [
            {"type": "object", "properties": {"kind": {"const": "circle"}}, "required": ["kind"]},
            {"$ref": "#/$defs/square"},
        ],
        "$defs": {
            "square": {
                "type": "object",
                "properties": {"kind": {"enum": ["square"]}, "side": {"type": "number"}},
                "required": ["kind"],
            }
        },
    }
    assert "%json" in (constraint_for(shapes) or "")
    assert "%json" in (constraint_for({"oneOf": [{"type": "string"}, {"type": "null"}]}) or "")
    assert "oneOf" not in grammar_bounds.unenforced(shapes)
    overlapping = {"oneOf": [{"type": "number"}, {"type": "integer", "minimum": 2}]}
    assert grammar_bounds.unenforced(overlapping) == ["oneOf"]  # validated after
    assert constraint_for(overlapping) is not None


def test_the_check_after_names_the_one_of_two_branches_matched() -> None:
    """Snowplow's Igluctl schema (JSONSchemaBench sp_209): items are anyOf a push and an s3cp
    action, the push's apikey oneOf a uuid `format` and a pattern, neither saying "string".
    A push with a number apikey matches both: the check after names that oneOf, not the s3cp
    branch's `action` (what jsonschema's best_match names)."""
    key = {"oneOf": [{"format": "uuid"}, {"pattern": "^\\$[A-Z0-9-_]+"}]}
    push = {
        "type": "object",
        "properties": {"action": {"enum": ["push"]}, "apikey": key},
        "required": ["action", "apikey"],
    }
    s3cp = {"type": "object", "properties": {"action": {"enum": ["s3cp"]}}, "required": ["action"]}
    schema = {"type": "array", "items": {"anyOf": [push, s3cp]}}
    errors = jsonschema.Draft202012Validator(schema).iter_errors([{"action": "push", "apikey": 7}])
    assert jsonschema.exceptions.best_match(errors).validator == "enum"  # named before
    with pytest.raises(AnswerSchemaError) as caught:
        answer_schema.check('[{"action": "push", "apikey": 7}]', schema)
    assert "at 0/apikey: oneOf 7 is valid under each of" in str(caught.value), caught.value
    assert "oneOf" in (caught.value.hint or "")
    # A value no branch matches: jsonschema's best match, as before.
    with pytest.raises(AnswerSchemaError, match="at 0: anyOf"):
        answer_schema.check('[{"action": "pull"}]', schema)
    # A key the pattern does not match: the `format` branch alone (an annotation: any string).
    key = "123e4567-e89b-12d3-a456-426614174000"
    answer_schema.check(f'[{{"action": "push", "apikey": "{key}"}}, {{"action": "s3cp"}}]', schema)


def test_a_discriminator_tells_objects_apart_not_other_values() -> None:
    """`{"k": "a"}` and `{"k": "b"}` tell two object branches apart, but a string matches
    both branches of a oneOf that does not say objects: refused, never read as anyOf."""
    branch = [{"required": ["k"], "properties": {"k": {"const": v}}} for v in ("a", "b")]
    assert grammar_bounds.unenforced({"oneOf": branch}) == ["oneOf"]
    objects = [{**b, "type": "object"} for b in branch]
    assert grammar_bounds.unenforced({"oneOf": objects}) == []
    ones = [
        {"type": "object", "required": ["k"], "properties": {"k": {"const": v}}} for v in (1, 1.0)
    ]
    assert grammar_bounds.unenforced({"oneOf": ones}) == ["oneOf"]  # 1 and 1.0 are one value


def test_a_format_llguidance_does_not_know_is_an_annotation() -> None:
    """JSON Schema's `format` asserts nothing a validator does not know: such a one is left
    out of the grammar, not refused (a property named `format` stays)."""
    schema = {
        "type": "object",
        "properties": {
            "format": {"type": "string", "format": "url"},
            "day": {"type": "string", "format": "date"},
        },
    }
    grammar = constraint_for(schema) or ""
    assert '"format": {"type": "string"}' in grammar and '"format": "date"' in grammar
    constraint.check(grammar)


def test_closed_objects_requiring_what_the_other_cannot_have_are_apart() -> None:
    def closed(name: str) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {name: {"type": "string"}},
            "required": [name],
            "additionalProperties": False,
        }

    assert grammar_bounds.unenforced({"oneOf": [closed("email"), closed("phone")]}) == []
    email, phone = ({**closed(n), "additionalProperties": True} for n in ("email", "phone"))
    assert grammar_bounds.unenforced({"oneOf": [email, phone]}) == ["oneOf"]  # it may have both


def _chain(kind: str, n: int) -> dict[str, Any]:
    """A schema whose definitions chain `n` deep, each holding the next as `kind` does."""

    def hop(i: int) -> dict[str, Any]:
        ref = {"$ref": f"#/$defs/d{i + 1}"}
        return {
            "ref": ref,
            "properties": {"type": "object", "properties": {"x": ref}},
            "items": {"type": "array", "items": ref},
            "prefixItems": {"type": "array", "prefixItems": [ref]},
            "patternProperties": {"type": "object", "patternProperties": {"^a": ref}},
            "anyOf": {"anyOf": [ref, {"type": "null"}]},
            "allOf": {"allOf": [ref]},
        }[kind]

    defs = {f"d{i}": hop(i) for i in range(n)}
    defs[f"d{n}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


CHAINS = ["ref", "properties", "items", "prefixItems", "patternProperties", "anyOf", "allOf"]


@pytest.mark.parametrize("kind", CHAINS)
def test_a_chain_of_definitions_is_bounded_below_where_the_compiler_crashes(kind: str) -> None:
    """A chain of 2,500 definitions crashed llguidance (its recursion passed the runner's
    stack). The longest chain within MAX_RESOLVED_DEPTH compiles in the guard's child, on half
    the stack a runner compiles on (the keyword that costs most stack a level, `items`,
    crashes an 8 MiB stack past 2,100 levels); one more hop is a 400 before the compiler."""
    from localrun.engine.sampling.grammar_guard import Guard

    def fits(n: int) -> bool:
        try:
            grammar_bounds.check_schema(_chain(kind, n))
            return True
        except BadRequestError:
            return False

    low, high = 1, 4_000  # the longest chain that fits, by bisection
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    assert 100 <= low < 2_500 // 2
    with pytest.raises(BadRequestError, match=r"once its \$refs are followed"):
        grammar_bounds.check_schema(_chain(kind, low + 1))
    guard = Guard()
    try:
        guard.check(constraint_for(_chain(kind, low)) or "")
    finally:
        guard.close()


def test_the_depth_of_a_schema_follows_its_refs_once_through_each_cycle() -> None:
    from localrun.formats.schema_refs import resolved_depth

    tree = {"$defs": {"node": {"type": "object", "properties": {
        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
        "$ref": "#/$defs/node"}  # fmt: skip
    assert resolved_depth(tree) <= 8  # recursion is compiled once, not unrolled
    assert resolved_depth(_chain("properties", 1_000)) == 3 * 1_000 + 3  # three levels a hop
    # Definitions that are never named add no depth, however many.
    unused = {"$defs": {f"d{i}": {"type": "string"} for i in range(5_000)}, "type": "string"}
    assert resolved_depth(unused) == 2
    # A cycle through many definitions counts each of them once.
    ring = _chain("properties", 300)
    ring["$defs"]["d300"] = {"$ref": "#/$defs/d0"}
    assert 900 <= resolved_depth(ring) <= 4 * 301 + 3  # each one once, to its leaves
    grammar_bounds.check_schema(unused)
    with pytest.raises(BadRequestError):
        grammar_bounds.check_schema(ring)


def test_the_depth_follows_every_spelling_of_a_reference_and_none_that_names_nothing() -> None:
    """A chain hidden from the bound: through a property named `$defs`, by percent-encoded
    pointers, by anchors. A reference that names nothing (an index RFC 6901 does not spell,
    `00` or `²`) is a leaf, never a 500; many spellings of one target walk it once."""
    from localrun.formats.schema_refs import resolved_depth

    def chain(ref: str, *, prop: str = "x", anchors: bool = False) -> dict[str, Any]:
        defs: dict[str, Any] = {}
        for i in range(3_000):
            defs[f"d{i}"] = {"type": "object", "properties": {prop: {"$ref": ref.format(i + 1)}}}
            if anchors:
                defs[f"d{i}"]["$anchor"] = f"a{i}"
        defs["d3000"] = {"type": "string", **({"$anchor": "a3000"} if anchors else {})}
        return {"$defs": defs, "$ref": ref.format(0)}

    for schema in (
        chain("#/$defs/d{}", prop="$defs"),
        chain("#/%24defs/d{}"),
        chain("#a{}", anchors=True),
    ):
        assert resolved_depth(schema) > 9_000
        with pytest.raises(BadRequestError, match=r"once its \$refs are followed"):
            grammar_bounds.check_schema(schema)
    assert resolved_depth({"allOf": [{}], "$ref": "#/allOf/²"}) == 3
    assert resolved_depth({"allOf": [{}], "$ref": "#/allOf/" + "0" * 5_000}) == 3
    wide = {"enum": list(range(20_000))}
    aliases = {"allOf": [wide], "properties": {f"p{i}": {"$ref": "#/allOf/0"} for i in range(500)}}
    started = time.monotonic()
    grammar_bounds.check_schema(aliases)
    assert time.monotonic() - started < 5  # the enum walked twice, not 500 times


def test_the_watch_refuses_the_byte_that_finishes_an_item_breaking_its_array() -> None:
    """engine.sampling.schema_items reads a JSON answer byte by byte: the closing quote of a string
    equal to an earlier item, the separator after a number equal to one, the bracket closing an
    object equal to one, the `]` of an array short of its `contains`; wherever the schema of the
    array is known from its place ($refs followed); not JSON, and it holds nothing."""
    from localrun.engine.sampling.schema_items import ItemWatch

    def refused(schema: dict[str, Any], text: str) -> list[int]:
        watch, found = ItemWatch(schema), []
        for at, char in enumerate(text):
            if not watch.allows(char.encode()):
                found.append(at)
            watch.accept(char.encode())
        return found

    unique = {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
    assert refused(unique, '["a", "b", "a"]') == [13] and refused(unique, '["a", "ab"]') == []
    nested = {"type": "object", "properties": {"tags": {"$ref": "#/$defs/ints"}},
              "$defs": {"ints": {"type": "array", "items": {"type": "integer"},
                                 "uniqueItems": True}}}  # fmt: skip
    assert refused(nested, '{"tags": [1, 2, 1]}') == [17]
    assert refused(nested, '{"tags": [1, 12]}') == []
    objects = {"type": "array", "uniqueItems": True}
    assert refused(objects, '[{"a": 1, "b": [2]}, {"b": [2], "a": 1.0}]') == [40]
    some = {"type": "array", "items": {"type": "integer"}, "contains": {"minimum": 5},
            "maxContains": 1}  # fmt: skip
    assert refused(some, "[1, 2]") == [5] and refused(some, "[1, 7]") == []
    assert refused(some, "[7, 8]") == [5]  # a second match, one past maxContains
    assert refused(unique, '<think>x</think>["a", "a"]') == []  # not JSON: off


def test_a_redraw_derives_its_seed_and_reads_the_prompt_once() -> None:
    """Draw k of a seeded request has a seed of its own (the same each time, not a
    neighbouring choice's seed + 1); no draw scores the prompt again (its entries came with
    the first)."""
    from localrun.request.genrequest import GenRequest
    from localrun.server.generation import redrawn

    req = GenRequest("m", prompt="x", options={"seed": 5}, prompt_logprobs=2)
    second, third = redrawn(req, 2), redrawn(req, 3)
    assert second == redrawn(req, 2) and second.options["seed"] not in (5, 6, 7)
    assert third.options["seed"] != second.options["seed"]
    assert second.prompt_logprobs is None and req.prompt_logprobs == 2
    free = GenRequest("m", prompt="x")
    assert redrawn(free, 2).options["seed"] != redrawn(free, 2).options["seed"]


def test_an_object_that_says_nothing_of_other_keys_is_closed_where_the_schema_is_lenient() -> None:
    """As llama.cpp's JSON-schema converter (Ollama's `format`) closes such objects: only the
    lenient (not strict) schema, every object listing its properties, not one with no
    properties, one that speaks of other keys, or an allOf's branches."""
    from localrun.worker.grammars.format import closed

    person = {"type": "object", "properties": {"name": {"type": "string"},
              "pet": {"type": "object", "properties": {"kind": {"enum": ["cat"]}}},
              "notes": {"type": "object"}, "tags": {"type": "array", "items": {
                  "properties": {"t": {}}}}}, "required": ["name"]}  # fmt: skip
    shut = closed(person)
    assert shut["additionalProperties"] is False
    assert shut["properties"]["pet"]["additionalProperties"] is False
    assert "additionalProperties" not in shut["properties"]["notes"]
    assert shut["properties"]["tags"]["items"]["additionalProperties"] is False
    assert "additionalProperties" not in person  # a copy: the request's schema as it was
    said = {"properties": {"a": {}}, "additionalProperties": {"type": "integer"}}
    assert closed(said) == said
    assert closed({"properties": {"a": {}}, "patternProperties": {"^x": {}}})["patternProperties"]
    merged = {"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]}
    assert closed(merged) == merged
    assert closed({"const": {"properties": {}}}) == {"const": {"properties": {}}}  # a value
    grammar = constraint_for(person, lenient=True) or ""
    assert '"additionalProperties": false' in grammar
    assert '"additionalProperties"' not in (constraint_for(person) or "")  # strict: as written
