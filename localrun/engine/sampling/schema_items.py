"""The keywords of an answer's schema that hold between its items, held while it is written.

llguidance's grammar holds a JSON answer to its schema, except where one item depends on another:
`uniqueItems` (an item equal to an earlier one) and `contains` (`minContains`, `maxContains`: how
many items match a schema). Items of a few values each are grammar already (formats.enforceable).
For the others, `ItemWatch` reads the answer's bytes as they are chosen and says whether a token
would finish an item that breaks one of them (`ItemWatch.allows`).

The sampler (engine.sampling.sampler) draws again without a token the watch refuses, as it does
without one the grammar refuses. A token the grammar forces, or one whose every alternative is
refused, is taken; the check on the finished answer (server.schema.answer) still stands behind it.
Only items whose schema is known from their place are watched (properties, items, prefixItems, local
$refs): under an anyOf the watch does not guess the branch. Anything it does not read as JSON (a
thought before the value, text after it) turns it off for the answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from localrun.formats import grammar_bounds, schema_refs
from localrun.formats.enforceable import equal

MAX_REFS = 32  # $refs followed to find a place's schema
# The `]` of an array short of its `contains` matches is refused after at most this many
# lengths of it: a model that writes no match would otherwise add items to its token limit
# (then: the check after).
MAX_PUSHES = 8
_ANNOTATIONS = {"description", "title", "default", "examples", "$comment", "deprecated"}
_SPACE = b" \t\r\n"
_SCALAR = b"+-.0123456789eEtrufalsn"  # the bytes of a number or a literal


@dataclass
class _Frame:
    """An object or array being written, and the schema of its place (None: not known)."""

    array: bool
    schema: dict[str, Any] | None
    start: int = -1  # where the value being written in it starts (-1: between values)
    count: int = 0  # the values written in it
    key: str | None = None  # an object's key whose value comes next
    reading_key: bool = False
    key_start: int = 0
    values: list[Any] = field(default_factory=list)  # an array's items, when unique
    matches: int = 0  # an array's items matching its `contains`
    serial: int = 0  # which array of the answer it is (told apart once gone)


class ItemWatch:
    """uniqueItems and contains, held over the answer's bytes.

    `allows` is asked before a token is taken, and `accept` once it is.
    """

    def __init__(self, schema: dict[str, Any]) -> None:
        self.root = schema
        self._anchors = schema_refs.anchors(schema)  # what `#name` references lead to
        self.text = bytearray()
        self.stack: list[_Frame] = []
        self.in_string = False
        self.escaped = False
        self.scalar = -1  # where a number or a literal being written starts
        self.off = False  # not JSON as the watch reads it: it holds nothing more
        self.done = False  # the answer's value is whole
        self.broken = False  # the last bytes fed finished an item that breaks a keyword
        self._validators: dict[int, Any] = {}
        # The items an array had each time its `]` was refused, by array (its serial).
        self._pushed: dict[int, set[int]] = {}
        self._serial = 0

    def allows(self, piece: bytes) -> bool:
        """Whether the answer may go on with `piece` (nothing changes).

        It refuses what would finish an item that breaks a keyword. For uniqueItems that is the
        closing quote of a string equal to an earlier item, the bracket that closes an equal object
        or array, or the separator after an equal number or literal. The model then writes the item
        on: `"a"` becoming `"ab"`, `1` becoming `12`. For contains it is the `]` of an array with
        fewer matches than it needs (the model writes another item), or an item one match past
        `maxContains`.
        """
        if self.off or self.done or not piece:
            return True
        saved = self._save()
        try:
            self._feed(piece)
            return not self.broken
        finally:
            self._restore(saved)

    def accept(self, piece: bytes) -> None:
        if not self.off and not self.done:
            self._feed(piece)
            self.broken = False

    # -- reading ----------------------------------------------------------------------------

    def _feed(self, piece: bytes) -> None:
        for byte in piece:
            if self.off or self.done:
                return
            self._byte(byte)
            self.text.append(byte)

    def _byte(self, byte: int) -> None:
        if self.in_string:
            self._string_byte(byte)
            return
        if self.scalar >= 0:
            if byte in _SCALAR:
                return
            self.scalar = -1
            self._value_done(b"")  # the byte after a number or literal ends it
            if self.done:
                return
        if byte in _SPACE:
            return
        top = self.stack[-1] if self.stack else None
        if byte in b"{[":
            schema = self._child_schema()
            self._begin_value()
            self._serial += 1
            self.stack.append(_Frame(byte == ord("["), schema, serial=self._serial))
        elif byte in b"}]":
            if top is None or top.array != (byte == ord("]")) or top.reading_key:
                self.off = True
                return
            if top.array and top.schema is not None:
                self._check_contains_end(top)
            self.stack.pop()
            self._value_done(bytes([byte]))
        elif byte == ord('"'):
            if top is not None and not top.array and top.key is None:
                top.reading_key = True
                top.key_start = len(self.text)
            else:
                self._begin_value()
            self.in_string = True
        elif byte == ord(":"):
            if top is None or top.array or top.key is None:
                self.off = True
        elif byte == ord(","):
            if top is None:
                self.off = True
        elif byte in b"-0123456789tfn":
            self._begin_value()
            self.scalar = len(self.text)
        else:
            self.off = True

    def _string_byte(self, byte: int) -> None:
        if self.escaped:
            self.escaped = False
        elif byte == ord("\\"):
            self.escaped = True
        elif byte == ord('"'):
            self.in_string = False
            top = self.stack[-1] if self.stack else None
            if top is not None and top.reading_key:
                top.reading_key = False
                try:
                    top.key = json.loads(bytes(self.text[top.key_start :]) + b'"')
                except ValueError:
                    self.off = True
            else:
                self._value_done(b'"')

    def _begin_value(self) -> None:
        top = self.stack[-1] if self.stack else None
        if top is not None:
            top.start = len(self.text)

    def _value_done(self, last: bytes) -> None:
        """End the value being written with the byte being read.

        `last` is that byte where it is the value's own: a closing quote or bracket.
        """
        if not self.stack:
            self.done = True
            return
        top = self.stack[-1]
        if top.array and top.schema is not None and top.start >= 0:
            self._check_item(top, bytes(self.text[top.start :]) + last)
        top.count += 1
        top.start = -1
        top.key = None

    # -- checks -----------------------------------------------------------------------------

    def _check_item(self, frame: _Frame, raw: bytes) -> None:
        try:
            value = json.loads(raw)
        except ValueError:
            return
        schema = frame.schema
        assert schema is not None
        if schema.get("uniqueItems") is True:
            if any(equal(value, seen) for seen in frame.values):
                self.broken = True
            frame.values.append(value)
        contains = schema.get("contains")
        if contains is not None and self._matches(contains, value):
            frame.matches += 1
            most = _count(schema.get("maxContains"))
            if most is not None and frame.matches > most:
                self.broken = True

    def _check_contains_end(self, frame: _Frame) -> None:
        schema = frame.schema
        assert schema is not None
        if "contains" not in schema:
            return
        least = _count(schema.get("minContains", 1))
        if least is None or frame.matches >= least:
            return
        pushed = self._pushed.setdefault(frame.serial, set())
        if frame.count in pushed or len(pushed) < MAX_PUSHES:
            pushed.add(frame.count)
            self.broken = True

    def _matches(self, subschema: Any, value: Any) -> bool:
        validator = self._validators.get(id(subschema))
        if validator is None:
            import jsonschema
            import jsonschema.validators

            kind = jsonschema.validators.validator_for(self.root, jsonschema.Draft202012Validator)
            validator = kind(self.root).evolve(schema=subschema)
            self._validators[id(subschema)] = validator
        try:
            return bool(validator.is_valid(value))
        except Exception:  # a schema jsonschema cannot read: the watch holds nothing more
            self.off = True
            return False

    # -- where an item's schema comes from ---------------------------------------------------

    def _child_schema(self) -> dict[str, Any] | None:
        """The schema of the value beginning now, from its place in its parent's."""
        if not self.stack:
            return self._resolve(self.root)
        parent = self.stack[-1]
        schema = parent.schema
        if schema is None:
            return None
        if parent.array:
            prefix = schema.get("prefixItems")
            if isinstance(prefix, list) and parent.count < len(prefix):
                return self._resolve(prefix[parent.count])
            return self._resolve(schema.get("items"))
        properties = schema.get("properties")
        if isinstance(properties, dict) and parent.key in properties:
            return self._resolve(properties[parent.key])
        if "patternProperties" in schema:
            return None
        return self._resolve(schema.get("additionalProperties"))

    def _resolve(self, schema: Any) -> dict[str, Any] | None:
        """`schema` with its local $refs followed; None where it is not one place's alone."""
        for _ in range(MAX_REFS):
            if not isinstance(schema, dict):
                return None
            if {"anyOf", "oneOf", "allOf", "if", "$dynamicRef"} & schema.keys():
                return None
            ref = schema.get("$ref")
            if not isinstance(ref, str):
                return schema
            if set(schema) - {"$ref", *_ANNOTATIONS} or not ref.startswith("#"):
                return None  # beside other keywords (pydantic's description: followed)
            schema = schema_refs.resolve(self.root, ref, self._anchors)
        return None

    # -- a try that leaves nothing behind ---------------------------------------------------

    def _save(self) -> tuple[Any, ...]:
        frames = [(f, dict(f.__dict__), len(f.values)) for f in self.stack]
        scalars = (self.in_string, self.escaped, self.scalar, self.off, self.done, self.broken)
        return list(self.stack), frames, scalars, len(self.text)

    def _restore(self, saved: tuple[Any, ...]) -> None:
        stack, frames, scalars, length = saved
        self.stack = stack
        for frame, state, count in frames:
            frame.__dict__.update(state)
            del frame.values[count:]
        self.in_string, self.escaped, self.scalar, self.off, self.done, self.broken = scalars
        del self.text[length:]


def watched(schema: Any) -> bool:
    """Whether a schema holds a keyword this watch holds (uniqueItems, contains)."""
    return any(
        (key == "uniqueItems" and value is True) or key == "contains"
        for key, value in grammar_bounds.keywords(schema)
    )


def _count(value: Any) -> int | None:
    """A count as JSON Schema takes it (2.0 is 2); None: not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if float(value).is_integer() and value >= 0 else None
