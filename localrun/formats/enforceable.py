"""Keywords the constraint engine does not take, rewritten into ones it does that mean the same.

So they are enforced while the answer is made, rather than checked after it. A count written as a
decimal (`"maxItems": 2.0`) becomes the integer it is. `unevaluated*` and `propertyNames` become
keywords the engine takes where they say the same (_as_applied). An array of unique items of a few
values is written as the arrays it may be (_unique_finite). Keywords that exclude no value as
written are left out (_without_no_ops).

llguidance's JSON compiler has no `not`. Where a `not` says something the other keywords can say, it
is said that way (_without_not). Every other `not` is left as it is: the route's leniency decides,
checking after or refusing. The rewritten schema is only the grammar's: the answer is still checked
against the client's own (server.schema.answer), which the rewrite never loosens.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from localrun.formats import grammar_bounds, schema_refs

# JSON's types; "integer" is a kind of "number".
TYPES = ("null", "boolean", "object", "array", "number", "string")
MAX_PATTERN = 4096  # the longest pattern written for a `not` of strings (else: left as it is)
MAX_DEPTH = 120  # deeper nodes are left as they are (grammar_bounds refuses deeper schemas)

# Keywords whose value is one subschema, and those whose value is a list of them.
_ONE = ("items", "additionalProperties", "contains", "propertyNames", "if", "then", "else",
        "not", "unevaluatedItems", "unevaluatedProperties", "additionalItems")  # fmt: skip
_LIST = ("anyOf", "allOf", "oneOf", "prefixItems")


def enforceable(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` rewritten into keywords the engine enforces.

    The root itself is never made `false`.
    """
    if _deep_pointers(schema):
        return schema  # a $ref into a node's keywords: rewriting that node would break it
    rewritten = _node(schema, 0, False)
    return rewritten if isinstance(rewritten, dict) else schema


def _deep_pointers(schema: Any) -> bool:
    """Whether a `$ref` points inside a schema's keywords, as `#/$defs/s/items` does.

    Such a pointer reaches past the definitions and properties a rewrite keeps in place.
    """
    for key, value in grammar_bounds.keywords(schema):
        if key == "$ref" and isinstance(value, str) and value.startswith("#/"):
            parts = value[2:].split("/")
            if not (len(parts) == 2 and parts[0] in ("$defs", "definitions")):
                return True
    return False


def _node(node: Any, depth: int, property: bool) -> Any:
    """`node` rewritten, its subschemas first.

    `property` says it is the schema of an object's property, which may become `false`: the property
    may not be there.
    """
    if not isinstance(node, dict) or depth > MAX_DEPTH:
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in schema_refs.NAME_MAPS and isinstance(value, dict):
            named = key == "properties"
            out[key] = {name: _node(sub, depth + 1, named) for name, sub in value.items()}
        elif key in _LIST and isinstance(value, list):
            out[key] = [_node(sub, depth + 1, False) for sub in value]
        elif key in _ONE:
            out[key] = _node(value, depth + 1, False)
        else:
            out[key] = value
    out = _without_no_ops(_as_applied(_whole_counts(out)))
    return _unique_finite(_without_not(out, property))


MAX_ORDERS = 64  # the most arrays a uniqueItems of few values may be written as
_ARRAY_COUNTED = ("uniqueItems", "items", "minItems", "maxItems")  # said by the orders instead
_ANNOTATIONS = {"type", "description", "title"}


def _unique_finite(node: Any) -> Any:
    """An array of unique items of a few values each, as an anyOf of the arrays it may be.

    Each item takes one of a few values: an enum, a const or a boolean, as in pydantic's
    `set[Literal[...]]`. The anyOf holds each order of each choice of its values, at most
    MAX_ORDERS, each item a const.
    """
    if not isinstance(node, dict) or node.get("uniqueItems") is not True:
        return node
    if node.get("type") != "array":  # else any value but an array is one too
        return node
    if {"prefixItems", "contains", "anyOf", "oneOf", "allOf", "$ref"} & node.keys():
        return node
    values = _finite(node.get("items"))
    low, high = node.get("minItems", 0), node.get("maxItems")
    if values is None or not isinstance(low, int) or not isinstance(high, (int, type(None))):
        return node
    longest = len(values) if high is None else min(high, len(values))
    orders = [list(o) for n in range(low, longest + 1) for o in _orders(values, n, MAX_ORDERS + 1)]
    if not orders or len(orders) > MAX_ORDERS:
        return node
    rest = {k: v for k, v in node.items() if k not in _ARRAY_COUNTED}
    arrays = [{"prefixItems": [{"const": v} for v in order], "items": False,
               "minItems": len(order)} for order in orders]  # fmt: skip
    return {**rest, "anyOf": arrays}


def _finite(items: Any) -> list[Any] | None:
    """The few values an item may take, each once (None: not a few, or not only those)."""
    if not isinstance(items, dict):
        return None
    if set(items) == {"type"} and items["type"] in ("boolean", "null"):
        return [True, False] if items["type"] == "boolean" else [None]
    if set(items) <= {"enum", *_ANNOTATIONS} and isinstance(items.get("enum"), list):
        chosen = items["enum"]
    elif set(items) <= {"const", *_ANNOTATIONS} and "const" in items:
        chosen = [items["const"]]
    else:
        return None
    if "type" in items and not isinstance(items["type"], str):
        return None
    kept: list[Any] = []
    for value in chosen:
        if not _among(value, kept) and (items.get("type") is None or _is(value, items["type"])):
            kept.append(value)
    return kept if len(kept) <= 8 else None


def _is(value: Any, kind: str) -> bool:
    """Whether `value` is of JSON Schema's type `kind`."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {
        "string": isinstance(value, str), "boolean": isinstance(value, bool),
        "null": value is None, "number": number, "array": isinstance(value, list),
        "integer": number and float(value).is_integer(), "object": isinstance(value, dict),
    }.get(kind, False)  # fmt: skip


def _orders(values: list[Any], n: int, most: int) -> list[tuple[Any, ...]]:
    """The orders of `n` of `values` (each once), at most `most` of them."""
    return list(itertools.islice(itertools.permutations(values, n), most))


# Keywords whose value is a count: JSON Schema takes 2.0 for 2 (a number whose fraction is 0).
_COUNTS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties",
           "minContains", "maxContains")  # fmt: skip
# Keywords that apply subschemas to the node's own value: where one is there, what is
# "unevaluated" depends on what they evaluate, so unevaluated* is left as it is.
_IN_PLACE = ("$ref", "$dynamicRef", "$recursiveRef", "allOf", "anyOf", "oneOf", "not", "if",
             "then", "else", "dependentSchemas")  # fmt: skip


def _whole_counts(node: dict[str, Any]) -> dict[str, Any]:
    """The node with each count written 2.0 written 2."""
    fixed = {
        key: int(value)
        for key in _COUNTS
        if isinstance(value := node.get(key), float) and value.is_integer() and value >= 0
    }
    return {**node, **fixed} if fixed else node


def _as_applied(node: dict[str, Any]) -> dict[str, Any]:
    """The node's unevaluated* and `propertyNames` keywords, said as keywords the engine takes.

    `unevaluatedProperties` becomes `additionalProperties` and `unevaluatedItems` becomes `items`,
    where nothing else in the node evaluates its properties or items: then both say the same. A
    `propertyNames` of a pattern or of lengths alone, on an object that lists no properties, becomes
    the only pattern its properties may have (`patternProperties`).
    """
    if any(key in node for key in _IN_PLACE):
        return node
    node = dict(node)
    if "unevaluatedProperties" in node and "additionalProperties" not in node:
        node["additionalProperties"] = node.pop("unevaluatedProperties")
    if "unevaluatedItems" in node and "items" not in node and "contains" not in node:
        node["items"] = node.pop("unevaluatedItems")
    names = node.get("propertyNames")
    if isinstance(names, dict) and not {"properties", "patternProperties"} & node.keys():
        pattern = _names_pattern(names)
        if pattern is not None:
            del node["propertyNames"]
            node["patternProperties"] = {pattern: node.get("additionalProperties", True)}
            node["additionalProperties"] = False
    return node


_NOT_REGULAR = re.compile(r"\(\?<?[=!]|\(\?P=|\\[1-9]|\\k<")


def _names_pattern(names: dict[str, Any]) -> str | None:
    """The pattern of a `propertyNames` of a pattern, or of lengths (None: anything else)."""
    if set(names) == {"pattern"} and isinstance(names["pattern"], str):
        pattern = names["pattern"]
        # Lookarounds and backreferences: Python's regular expressions have them, the
        # grammar's do not (left to the check after).
        return None if _NOT_REGULAR.search(pattern) else pattern
    low, high = names.get("minLength", 0), names.get("maxLength")
    lengths = isinstance(low, int) and (high is None or (isinstance(high, int) and high >= low))
    if names and set(names) <= {"minLength", "maxLength"} and lengths:
        return f"^{_ANY}{{{low},{'' if high is None else high}}}$"
    return None


def _without_no_ops(node: dict[str, Any]) -> dict[str, Any]:
    """The node less the keywords that, as written, exclude no value.

    Those are `uniqueItems: false`, or true where at most one item may be; `if` with neither `then`
    nor `else`, and either without `if`; a `contains` that `minContains: 0` leaves free.
    """
    drop = set()
    unique = node.get("uniqueItems")
    most = node.get("maxItems")
    if unique is False or (unique is True and isinstance(most, int) and most <= 1):
        drop.add("uniqueItems")
    if "if" in node and "then" not in node and "else" not in node:
        drop.add("if")
    if "if" not in node:
        drop.update(key for key in ("then", "else") if key in node)
    if node.get("minContains") == 0 and "maxContains" not in node:
        drop.update(("contains", "minContains"))
    return {key: value for key, value in node.items() if key not in drop} if drop else node


def _without_not(node: dict[str, Any], property: bool) -> Any:
    """The node with its `not` said in other keywords where it can be; else as it is.

    A `not` of types becomes the node's other types, but not where an integer is excluded and
    numbers are not. A `not` of a `const` or an `enum` shrinks the node's own enum, or gives a
    string's node the pattern of every string but those. A `not` of the schema that takes everything
    is `false` for a property, which then may not be there. A `not` of one that takes nothing is no
    keyword at all.
    """
    if "not" not in node:
        return node
    negated = node["not"]
    rest = {key: value for key, value in node.items() if key != "not"}
    if negated is False or negated == {"not": {}} or negated == {"not": True}:
        return rest  # not nothing: everything
    if negated is True or negated == {}:
        # Not everything: nothing; said as `false` for a property alone (it may not be there):
        # llguidance refuses a schema, or a $ref to one, that no value can match.
        return False if property else node
    if not isinstance(negated, dict):
        return node
    if set(negated) == {"type"}:
        types = _other_types(rest.get("type"), negated["type"])
        if types is None:
            return node
        return {**rest, "type": types[0] if len(types) == 1 else types}
    excluded = _values(negated)
    if excluded is None:
        return node
    if isinstance(rest.get("enum"), list):
        kept = [value for value in rest["enum"] if not _among(value, excluded)]
        return {**rest, "enum": kept} if kept else node
    if rest.get("type") == "string" and "pattern" not in rest and "format" not in rest:
        strings = [value for value in excluded if isinstance(value, str)]
        pattern = _other_strings(strings)
        if pattern is not None:
            return {**rest, "pattern": pattern}
    return node


def _other_types(own: Any, negated: Any) -> list[str] | None:
    """The node's types less `negated`'s (None: not expressible as types)."""
    excluded = {negated} if isinstance(negated, str) else negated
    if not isinstance(excluded, (set, list)) or not all(isinstance(t, str) for t in excluded):
        return None
    excluded = set(excluded)
    if "integer" in excluded and "number" not in excluded:
        return None  # a number that is not an integer has no type of its own
    if "number" in excluded:
        excluded.add("integer")
    allowed = {own} if isinstance(own, str) else set(own) if isinstance(own, list) else set(TYPES)
    if not all(isinstance(t, str) for t in allowed):
        return None
    kept = [t for t in (*TYPES, "integer") if t in allowed and t not in excluded]
    return kept or None


def _values(negated: dict[str, Any]) -> list[Any] | None:
    """The values a `not` of a `const` or an `enum` (and nothing else) excludes."""
    if set(negated) == {"const"}:
        return [negated["const"]]
    if set(negated) == {"enum"} and isinstance(negated["enum"], list):
        return list(negated["enum"])
    return None


def _among(value: Any, values: list[Any]) -> bool:
    """Whether JSON Schema counts `value` equal to one of `values` (1 == 1.0, True != 1)."""
    return any(equal(value, other) for other in values)


def equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _other_strings(excluded: list[str]) -> str | None:
    """An anchored pattern of every string but `excluded`, or None where it cannot be written.

    None means the pattern is too long, or an excluded string holds a quote or a backslash. The
    grammar's JSON strings may also write those escaped: `\\"` would pass `[^"]`.
    """
    if any('"' in word or "\\" in word for word in excluded):
        return None
    trie: dict[str, Any] = {}
    for word in excluded:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}  # the end of an excluded word
    pattern = f"^(?:{_besides(trie)})$"
    return pattern if len(pattern) <= MAX_PATTERN else None


_ANY = r"[\s\S]"


def _besides(node: dict[str, Any]) -> str:
    """A regular expression of the strings that, from this trie node on, end on no excluded word."""
    children = sorted(char for char in node if char)
    options = [] if "" in node else [""]  # the string may end here unless a word ends here
    if children:
        others = "".join(_in_class(char) for char in children)
        options.append(f"[^{others}]{_ANY}*")
    else:
        options.append(f"{_ANY}+")
    options += [_literal(char) + f"(?:{_besides(node[char])})" for char in children]
    return "|".join(options)


def _literal(char: str) -> str:
    return "\\" + char if char in _META else char


_META = set("\\.+*?()|[]{}^$")


def _in_class(char: str) -> str:
    return "\\" + char if char in "\\]^-[" else char
