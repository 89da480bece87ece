"""JSON from clients, parsed with a bound on nesting (LOCALRUN_MAX_JSON_DEPTH).

Python's json parser recurses once per level: ~1000 levels are a RecursionError, and a value a
few levels under that still overflows the recursive code that walks it later (grammar building,
templates). Depth is checked here, without recursion, where JSON enters: the request body and
the JSON strings inside it (a tool call's `arguments`).
"""

from __future__ import annotations

import json
from typing import Any

from localrun.errors import BadRequestError
from localrun.settings import limits


def too_deep(what: str) -> BadRequestError:
    limit = limits.max_json_depth()
    return BadRequestError(
        f"{what} nests more than {limit} levels of JSON",
        hint="flatten it; LOCALRUN_MAX_JSON_DEPTH sets the bound",
    )


def check_depth(value: Any, what: str) -> Any:
    """`value` if it nests at most LOCALRUN_MAX_JSON_DEPTH levels; else BadRequestError."""
    limit = limits.max_json_depth()
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            raise too_deep(what)
        # Only containers go on the stack: a list of millions of numbers costs one pass, not a
        # tuple each.
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return value


def loads(text: str | bytes, what: str) -> Any:
    """json.loads with the depth bound; ValueError for text that is not JSON."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise too_deep(what) from None
    return check_depth(value, what)
