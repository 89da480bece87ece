"""The constraint of a request's answer as Lark text, for llguidance (engine.sampling.constraint).

- `format` "json" is a JSON object; a JSON schema is itself, as `%json {...}`. llguidance's JSON
  compiler enforces it keyword by keyword. It refuses in one line a keyword it cannot enforce
  (`uniqueItems`, `not`, `if`), as OpenAI's strict mode does.
- A forced tool call (worker/grammars/forced.py) is GBNF with a placeholder where a tool's
  arguments go (`json_placeholder`). `to_lark` turns it into Lark with llguidance's converter.

JSON is written on one line as Python's `json.dumps` writes it, as Guidance writes it by default:
", " between items, ": " after a key, no other blank. So a model cannot fill its answer with
blanks, and every separator is forced text, read without decodes of its own. A small model's
answer then takes fewer tokens (the JSONSchemaBench run in docs/benchmarks.md).
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from localrun.errors import BadRequestError
from localrun.formats import enforceable, grammar_bounds

Format = str | dict[str, Any] | None

# JSON on one line, ", " between items and ": " after a key, as Python's json.dumps writes it.
LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# What "json" asks for: an object, as llama.cpp's JSON grammar's root is.
ANY_OBJECT: dict[str, Any] = {"type": "object"}

# A schema's place in a forced call's GBNF: a literal no tool name or marker can spell (its
# nonce is this process's own).
_NONCE = secrets.token_hex(8)
_PLACEHOLDER = re.compile(rf'"@@json-{_NONCE}-(\d+)@@"')
_GRAMMAR_PLACEHOLDER = re.compile(rf'"@@lark-{_NONCE}-(\d+)@@"')
# Lark's pieces a name is not renamed inside: strings and regular expressions.
_LARK_TEXT = re.compile(r'"(?:[^"\\]|\\.)*"i?|/(?:[^/\\\n]|\\.)+/[imslux]*')
_LARK_NAME = re.compile(r"\b[A-Z][A-Z0-9_]*\b")


def constraint_for(format: Format, *, lenient: bool = False) -> str | None:
    """Return the Lark grammar of a `format`: "json" (a JSON object) or a JSON schema.

    `lenient` is for a schema that is not OpenAI's strict one: Ollama's `format`, or a
    json_schema without `strict`. It leaves out the keywords llguidance cannot enforce instead
    of refusing the schema. It also closes the objects that say nothing of other keys
    (`closed`), as Ollama's grammar does.
    """
    if format is None or format == "":
        return None
    if format == "json":
        return f"{header()}\nstart: {schema_lark(ANY_OBJECT)}"
    if isinstance(format, dict):
        schema = closed(format) if lenient else format
        return f"{header()}\nstart: {schema_lark(schema, lenient=lenient)}"
    raise BadRequestError(f"unknown format {format!r}", hint='use "json" or a JSON schema object')


def header(forcing: bool = True) -> str:
    """Return llguidance's options line, with forcing or without.

    With forcing (the default), text the grammar forces is written as the tokenizer spells it,
    which fast-forwards it. Without, the model spells it token by token: PARAMETER
    grammar_forcing false, for a model that does not answer in its tokenizer's spelling.
    """
    return "%llguidance {}" if forcing else '%llguidance {"no_forcing": true}'


def with_forcing(grammar: str, forcing: bool) -> str:
    """A grammar of this module's with its forcing as asked."""
    if forcing:
        return grammar
    if grammar.startswith("{"):  # several grammars (to_lark's): the first is the call's
        whole = json.loads(grammar)
        first = whole["grammars"][0]
        first["lark_grammar"] = with_forcing(first["lark_grammar"], forcing)
        return json.dumps(whole, ensure_ascii=False)
    return grammar.replace(header(), header(False), 1)


def format_schema(format: Format) -> dict[str, Any] | None:
    """The JSON schema a `format` asks for (None: none)."""
    if format == "json":
        return ANY_OBJECT
    return format if isinstance(format, dict) else None


def schema_lark(schema: dict[str, Any], *, lenient: bool = False) -> str:
    """A JSON schema as a Lark expression, checked against the bounds a schema may not pass."""
    grammar_bounds.check_schema(schema)
    schema = enforceable.enforceable(_known_formats(schema))  # `not` as other keywords
    options: dict[str, Any] = {**LAYOUT, "lenient": lenient}
    if grammar_bounds.has_one_of(schema):
        # oneOf is read as anyOf: the same values where no value matches two branches; where
        # one could, the answer is validated after (server.schema.answer), on every route.
        options["coerce_one_of"] = True
    try:
        text = json.dumps({**schema, "x-guidance": options}, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise BadRequestError(f"the JSON schema is not JSON: {exc}") from None
    return f"%json {text}"


# The string formats llguidance enforces. Any other is an annotation, as JSON Schema has it
# (a validator asserts none it does not know): left out of the grammar, not refused.
FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid", "uri"}
)


_VALUES = ("const", "enum", "default", "examples")  # keywords whose value is JSON data


def _known_formats(schema: Any, names: bool = False) -> Any:
    """`schema` without the `format`s llguidance does not know (a copy where it has one)."""
    if isinstance(schema, list):
        return [_known_formats(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if not names and key == "format" and isinstance(value, str) and value not in FORMATS:
            continue
        if not names and key in _VALUES:  # a value, not a schema: kept as it is
            out[key] = value
            continue
        out[key] = _known_formats(value, not names and key in grammar_bounds.NAME_MAPS)
    return out


_OTHER_KEYS = ("additionalProperties", "patternProperties", "unevaluatedProperties")


def closed(schema: Any, names: bool = False, merged: bool = False) -> Any:
    """Return `schema` with each object that lists `properties` closed to other keys.

    An object that says nothing of other keys gets `additionalProperties: false`, as llama.cpp's
    JSON-schema converter (which Ollama's `format` goes through) does. JSON Schema leaves such an
    object open, and a model then adds keys of its own (`skills`, `description`). Clients'
    parsers refuse those, and they cut answers short. An object with no `properties` stays any
    object. The branches of an `allOf` stay open: closing each would refuse the others' keys.
    """
    if isinstance(schema, list):
        return [closed(item, merged=merged) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if names:  # a map of names to schemas: each value a schema
            out[key] = closed(value)
        elif key in _VALUES:
            out[key] = value
        else:
            out[key] = closed(value, key in grammar_bounds.NAME_MAPS, key == "allOf")
    object_like = isinstance(schema.get("properties"), dict) and schema.get("type") in (
        None, "object", ["object"])  # fmt: skip
    if (not names and object_like and not merged and "allOf" not in schema
            and not any(k in schema for k in _OTHER_KEYS)):  # fmt: skip
        out["additionalProperties"] = False
    return out


def json_placeholder(index: int) -> str:
    """GBNF for where the JSON value of `schemas[index]` goes (to_lark puts it in)."""
    return f'"@@json-{_NONCE}-{index}@@"'


def grammar_placeholder(index: int) -> str:
    """GBNF for where the text of `grammars[index]` goes (to_lark refers to it)."""
    return f'"@@lark-{_NONCE}-{index}@@"'


def to_lark(
    gbnf: str,
    schemas: list[dict[str, Any]],
    special: dict[str, int],
    *,
    lenient: bool | frozenset[int] = False,
    grammars: list[str] | None = None,
) -> str:
    """Return a GBNF grammar built around placeholders as Lark, for llguidance.

    Each JSON placeholder becomes its schema's `%json`. Each marker of `special` (text: its
    token's id) inside a literal becomes the token or its text. Terminals become rules, since
    llguidance takes neither `%json` nor a token inside a terminal. With `grammars` (Lark of a
    custom tool's input), each grammar placeholder refers to its grammar, and the whole is
    llguidance's list of grammars, the call's first. `lenient` leaves out the keywords the
    engine cannot enforce: every schema's, or those of the schemas at these indices alone.
    """
    from llguidance.gbnf_to_lark import GbnfToLarkError, gbnf_to_lark

    try:
        lark = gbnf_to_lark(gbnf)
    except (GbnfToLarkError, ValueError, IndexError, KeyError) as exc:
        raise BadRequestError(f"the grammar cannot be read: {exc}") from None
    lark = _as_rules(lark, special)

    def put(match: re.Match[str]) -> str:
        index = int(match.group(1))
        if index >= len(schemas):
            return match[0]
        loose = lenient if isinstance(lenient, bool) else index in lenient
        return schema_lark(schemas[index], lenient=loose)

    lark = _PLACEHOLDER.sub(put, lark)
    if not grammars:
        return lark
    lark = _GRAMMAR_PLACEHOLDER.sub(lambda m: f"@custom{int(m.group(1))}", lark)
    named = [{"name": f"custom{i}", "lark_grammar": g} for i, g in enumerate(grammars)]
    return json.dumps({"grammars": [{"lark_grammar": lark}, *named]}, ensure_ascii=False)


def _tokens_in(literal: str, special: dict[str, int]) -> str:
    """Return a Lark string literal with each special marker in it as `("TEXT" | <[ID]>)`.

    The model may write the marker's token or spell it.
    """
    if (
        not special
        or literal.endswith("i")
        or _PLACEHOLDER.fullmatch(literal)
        or _GRAMMAR_PLACEHOLDER.fullmatch(literal)
    ):
        return literal
    try:
        text = json.loads(literal)
    except ValueError:
        return literal
    found = re.compile("|".join(re.escape(m) for m in sorted(special, key=len, reverse=True)))
    parts, last = [], 0
    for match in found.finditer(text):
        if match.start() > last:
            parts.append(json.dumps(text[last : match.start()], ensure_ascii=False))
        marker = match[0]
        parts.append(f"({json.dumps(marker, ensure_ascii=False)} | <[{special[marker]}]>)")
        last = match.end()
    if not parts:
        return literal
    if last < len(text):
        parts.append(json.dumps(text[last:], ensure_ascii=False))
    return " ".join(parts)


def _as_rules(lark: str, special: dict[str, int]) -> str:
    """Return Lark with its terminals (upper-case names) renamed as rules (lower case).

    The special markers in its literals become tokens too (_tokens_in).
    """
    out = []
    for line in lark.split("\n"):
        pieces, last = [], 0
        for match in _LARK_TEXT.finditer(line):
            pieces.append(_LARK_NAME.sub(lambda m: _rule_name(m[0]), line[last : match.start()]))
            text = match[0]
            pieces.append(_tokens_in(text, special) if text.startswith('"') else text)
            last = match.end()
        pieces.append(_LARK_NAME.sub(lambda m: _rule_name(m[0]), line[last:]))
        out.append("".join(pieces))
    return "\n".join(out)


def _rule_name(name: str) -> str:
    return "t_" + name.lower()
