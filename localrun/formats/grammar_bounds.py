"""Bounds on the grammar a request's JSON schema may produce, checked before it is built.

llama.cpp parses a GBNF grammar recursively and samples with it by advancing every parse stack
the grammar allows at each character. Three things in a schema make that cost unbounded, and
the audit found each: a repetition count past ~1500 nests groups deeper than llama.cpp's stack
(`"pattern": "^a{0,30000}$"`: SIGSEGV); a repetition of something that can match several
lengths is ambiguous, and the stacks multiply with its count (`^((a{0,1000}){0,1000})$`: a hang
of 120 s; `(a?){0,1000}` alike); and a huge grammar (an enum of 100,000 strings: 59 s, during
which the runner answered nobody else). So, per request:

- every count bound (minLength, maxItems, a pattern's {m,n}) is at most MAX_BOUND;
- along any nesting of a pattern's quantifiers, the counts of those over a variable-width body
  multiply to at most MAX_AMBIGUITY (`*` and `+` over one count as STAR_FACTOR);
- a pattern has at most MAX_PATTERN characters and MAX_QUANTIFIERS quantifiers;
- the schema nests at most MAX_DEPTH levels;
- the grammar text is at most LOCALRUN_MAX_GRAMMAR_BYTES.

Past any of them the request is a 400 naming the bound. The limits allow what real schemas
use (formats, enums of hundreds, nested objects, common regexes) with sampling that stays fast.
"""

from __future__ import annotations

import re
from typing import Any

from localrun.errors import BadRequestError
from localrun.settings import limits

# The regular expression parser Python's re uses, for the tree of a schema's pattern.
try:  # Python 3.11+
    from re import _constants as _c  # type: ignore[attr-defined]
    from re import _parser as _sre  # type: ignore[attr-defined]
except ImportError:  # Python 3.10
    import sre_constants as _c
    import sre_parse as _sre

MAX_BOUND = 1000
MAX_AMBIGUITY = 32
STAR_FACTOR = 16
MAX_PATTERN = 1024
MAX_QUANTIFIERS = 64
MAX_DEPTH = 64
_REPEATS = (_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", _c.MAX_REPEAT))

_BOUNDS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)
_HINT = "simplify the schema; see the limits in `localrun env`"


def check_schema(schema: Any) -> None:
    """Raise BadRequestError if `schema` would build a grammar past the bounds."""
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
                if key in _BOUNDS and number and value > MAX_BOUND:
                    raise BadRequestError(
                        f"the JSON schema's {key} of {value} is more than a grammar can enforce "
                        f"(at most {MAX_BOUND})",
                        hint=f"drop {key} or lower it to {MAX_BOUND} or less",
                    )
                if key == "pattern" and isinstance(value, str):
                    check_pattern(value)
                stack.append((value, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)


def check_pattern(pattern: str) -> None:
    """Refuse a regular expression whose grammar would be too deep, too ambiguous or too big."""
    tree = _parse_pattern(pattern)
    quantifiers = 0
    stack: list[tuple[Any, int]] = [(tree, 1)]
    while stack:
        sub, ambiguity = stack.pop()
        for op, av in sub:
            if op in _REPEATS:
                quantifiers += 1
                stack.append((av[2], _repeat_ambiguity(av, ambiguity)))
            elif op == _c.SUBPATTERN:
                stack.append((av[-1], ambiguity))
            elif op == _c.BRANCH:
                stack.extend((alt, ambiguity) for alt in av[1])
            elif op in (_c.ASSERT, _c.ASSERT_NOT):
                stack.append((av[1], ambiguity))
    if quantifiers > MAX_QUANTIFIERS:
        raise BadRequestError(
            f"the JSON schema's pattern has {quantifiers} quantifiers (at most "
            f"{MAX_QUANTIFIERS} in a grammar)",
            hint=_HINT,
        )


def _parse_pattern(pattern: str) -> Any:
    """The parse tree of a pattern of bounded length; a 400 if it is not a regular expression."""
    if len(pattern) > MAX_PATTERN:
        raise BadRequestError(
            f"the JSON schema's pattern is {len(pattern)} characters (at most {MAX_PATTERN})",
            hint=_HINT,
        )
    try:
        return _sre.parse(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise BadRequestError(
            f"the JSON schema's pattern is not a valid regular expression: {exc}", hint=_HINT
        ) from None


def _repeat_ambiguity(repeat: Any, ambiguity: int) -> int:
    """The ambiguity inside a repetition ({m,n}, *, +) reached with `ambiguity` outside it;
    a 400 past MAX_BOUND or MAX_AMBIGUITY."""
    low, high, body = repeat
    bounded = high != _c.MAXREPEAT
    if max(low, high if bounded else 0) > MAX_BOUND:
        raise BadRequestError(
            f"the JSON schema's pattern repeats {max(low, high)} times "
            f"(at most {MAX_BOUND} in a grammar)",
            hint=_HINT,
        )
    width_low, width_high = body.getwidth()
    factor = 1
    if width_low != width_high:  # a body of several lengths: ambiguous repeats
        factor = high if bounded else STAR_FACTOR
    nested = ambiguity * max(1, factor)
    if nested > MAX_AMBIGUITY:
        raise BadRequestError(
            "the JSON schema's pattern nests repetitions of variable-length parts "
            f"too deeply for a grammar (their counts multiply to {nested}, at most "
            f"{MAX_AMBIGUITY})",
            hint="simplify the pattern, e.g. make the repeated part fixed-length",
        )
    return nested


def check_grammar(grammar: str) -> str:
    """Refuse a grammar text past LOCALRUN_MAX_GRAMMAR_BYTES; returns it."""
    limit = limits.max_grammar_bytes()
    size = len(grammar.encode())
    if size > limit:
        raise BadRequestError(
            f"the JSON schema makes a grammar of {size} bytes (at most {limit}), e.g. a very "
            "long enum",
            hint="shorten the schema's enums and alternatives, or raise "
            "LOCALRUN_MAX_GRAMMAR_BYTES on the server",
        )
    return grammar
