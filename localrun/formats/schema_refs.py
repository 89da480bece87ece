"""How deep a schema nests once its `$ref`s are followed: what a JSON schema compiler recurses.

llguidance compiles a schema by recursion, a `$ref` into its target as into any other subschema. It
crashes the process when that recursion passes its thread's stack: a chain of 2,500 `{"$ref": next}`
definitions, or 925 objects each holding the next as a property, on an 8 MiB stack (issue 76). A
schema nests at most grammar_bounds.MAX_DEPTH levels as written, but a chain of definitions nests as
deep as it is long; `resolved_depth` measures that.

The schema is a graph: a node is the schema at the root or at a `$ref`'s target; an edge, a `$ref`
inside it, as deep as it is written there. A compiler never enters a definition it is already
compiling: a recursive schema, a tree, is a cycle it compiles once. So within a cycle of definitions
it recurses at most through each of them once. The depth is the longest path through the graph's
strongly connected components, each counted as the depths of all its nodes together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

# Each target is walked once, however many references spell it; past MAX_VISITS the schema is
# refused (TooLarge).
MAX_VISITS = 1_000_000  # subschemas walked in all (a schema within the grammar bound has <200k)

# Not entered where a schema holds them: a definition is applied where a `$ref` names it, so a
# long list of definitions nests no deeper than one of them. A property of that name is entered.
_NOT_APPLIED = frozenset({"$defs", "definitions"})
# The keywords whose value is an object of names, each naming a schema (grammar_bounds' too).
NAME_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
_INDEX = re.compile(r"0|[1-9][0-9]{0,8}")  # an array index as RFC 6901 spells it


@dataclass
class _Node:
    """A schema at the root or at a `$ref`'s target: its own depth, and the `$ref`s inside it.

    Each `$ref` is kept with the depth it is written at, and its target by id.
    """

    depth: int = 0
    refs: list[tuple[int, int]] = field(default_factory=list)


class TooLarge(ValueError):
    """Following the schema's `$ref`s walks more than MAX_VISITS subschemas."""


def resolved_depth(schema: Any) -> int:
    """The deepest a compiler following `schema`'s `$ref`s recurses, in JSON levels.

    The module's docstring says how. Raises TooLarge past MAX_VISITS subschemas walked.
    """
    walk = _Walk(schema)
    pending = [schema]
    while pending:
        value = pending.pop()
        if id(value) not in walk.nodes:
            pending.extend(walk.node(value))
    return _longest(walk.nodes, id(schema))


class _Walk:
    """The nodes of a schema's graph as they are walked, and the visits they cost."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema
        self.nodes: dict[int, _Node] = {}
        self.visits = 0
        self.anchors = _anchors(schema)
        self.targets: dict[str, Any] = {}  # a reference's text: its target (None: a leaf)

    def node(self, value: Any) -> list[Any]:
        """Walk the schema `value`, a node of the graph; the targets of its references."""
        found = self.nodes[id(value)] = _Node()
        onward = []
        stack: list[tuple[Any, int, bool]] = [(value, 1, False)]  # (value, depth, names)
        while stack:
            item, depth, names = stack.pop()
            self.visits += 1
            if self.visits > MAX_VISITS:
                raise TooLarge(f"the schema's $refs lead to more than {MAX_VISITS:,} subschemas")
            found.depth = max(found.depth, depth)
            if isinstance(item, dict):
                ref = None if names else item.get("$ref")
                target = self.target(ref) if isinstance(ref, str) else None
                if target is not None:
                    found.refs.append((depth, id(target)))
                    onward.append(target)
                stack.extend(
                    (child, depth + 1, not names and key in NAME_MAPS)
                    for key, child in item.items()
                    if names or key not in _NOT_APPLIED
                )
            elif isinstance(item, list):
                stack.extend((child, depth + 1, False) for child in item)
        return onward

    def target(self, ref: str) -> Any:
        if ref not in self.targets:
            self.targets[ref] = _resolve(self.schema, ref, self.anchors)
        return self.targets[ref]


def resolve(schema: Any, ref: str, anchors: dict[str, Any] | None = None) -> Any:
    """The value a local reference leads to in `schema`; None where it leads nowhere followed here.

    `anchors` is `anchors(schema)`, passed by a caller that resolves many.
    """
    return _resolve(schema, ref, _anchors(schema) if anchors is None else anchors)


def anchors(schema: Any) -> dict[str, Any]:
    """The schema's `$anchor`s, by name (what `resolve` follows a `#name` reference to)."""
    return _anchors(schema)


def _resolve(schema: Any, ref: str, anchors: dict[str, Any]) -> Any:
    """The value a local reference leads to: a JSON pointer, the root, or an anchor; else None.

    A reference may spell its target in any way: a JSON pointer (`#/$defs/a`, percent-encoded or
    not), the root (`#`), or an anchor (`#name`: `$anchor`, or an `$id` of that form). A pointer
    takes an array index only as RFC 6901 writes one, so `00` and `٠` name nothing. A reference to
    another document or by an `$id`'s URI is a leaf here. llguidance may follow it; what it does
    there is left to the grammar guard (engine.sampling.grammar_guard), which compiles every grammar
    in a child of its own first.
    """
    if not ref.startswith("#"):
        return None
    fragment = unquote(ref[1:])
    if not fragment.startswith("/"):
        return schema if fragment == "" else anchors.get(fragment)
    node = schema
    for part in fragment.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and _INDEX.fullmatch(part) and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node if isinstance(node, dict | list | bool) else None


def _anchors(schema: Any) -> dict[str, Any]:
    """Every anchor a schema defines (`$anchor`, or an `$id` of the form `#name`)."""
    found: dict[str, Any] = {}
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key in ("$anchor", "$id"):
                name = item.get(key)
                if isinstance(name, str) and (key == "$anchor" or name.startswith("#")):
                    found.setdefault(name.removeprefix("#"), item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _longest(nodes: dict[int, _Node], root: int) -> int:
    """The longest path from the root through the graph.

    A strongly connected component of several nodes, or of one naming itself, counts as all of its
    nodes' depths together.
    """
    component = _components(nodes)
    members: dict[int, list[int]] = {}
    for pointer, index in component.items():
        members.setdefault(index, []).append(pointer)
    # Tarjan's algorithm numbers a component after every component it reaches: in that order
    # each one's deepest continuation is known when it is measured.
    longest: dict[int, int] = {}
    for index in sorted(members):
        inside = members[index]
        cyclic = len(inside) > 1 or any(target == inside[0] for _, target in nodes[inside[0]].refs)
        onward = 0
        for pointer in inside:
            for depth, target in nodes[pointer].refs:
                if component[target] != index:
                    onward = max(onward, depth + longest[component[target]])
        if cyclic:  # through every member once, then on from the deepest
            longest[index] = sum(nodes[p].depth for p in inside) + onward
        else:
            longest[index] = max(nodes[inside[0]].depth, onward)
    return longest[component[root]]


def _components(nodes: dict[int, _Node]) -> dict[int, int]:
    """Each node's strongly connected component, numbered as Tarjan's algorithm closes them.

    A component comes after all those it reaches. The walk is iterative, for long chains.
    """
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    component: dict[int, int] = {}
    counter = closed = 0
    for start in nodes:
        if start in index:
            continue
        work: list[tuple[int, int]] = [(start, 0)]
        while work:
            pointer, edge = work.pop()
            if edge == 0:
                index[pointer] = low[pointer] = counter
                counter += 1
                stack.append(pointer)
                on_stack.add(pointer)
            refs = nodes[pointer].refs
            while edge < len(refs):
                target = refs[edge][1]
                edge += 1
                if target not in index:
                    work.append((pointer, edge))
                    work.append((target, 0))
                    break
                if target in on_stack:
                    low[pointer] = min(low[pointer], index[target])
            else:
                if low[pointer] == index[pointer]:
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component[member] = closed
                        if member == pointer:
                            break
                    closed += 1
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[pointer])
    return component
