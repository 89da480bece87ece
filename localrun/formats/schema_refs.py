"""How deep a schema nests once its `$ref`s are followed: what a JSON schema compiler recurses.

llguidance compiles a schema by recursion, a `$ref` into its target as into any other
subschema, and crashes the process when that recursion passes its thread's stack (a chain of
2,500 `{"$ref": next}` definitions, or 925 objects each holding the next as a property, on an
8 MiB stack: issue 76). A schema nests at most grammar_bounds.MAX_DEPTH levels as written, but
a chain of definitions nests as deep as it is long; `resolved_depth` measures that.

The schema is a graph: a node is the schema at the root or at a local `$ref`'s target (a JSON
pointer, `#/$defs/a`); an edge, a `$ref` inside it, as deep as it is written there. A compiler
never enters a definition it is already compiling (a recursive schema, a tree, is a cycle it
compiles once), so within a cycle of definitions it recurses at most through each of them
once: the depth is the longest path through the graph's strongly connected components, each
counted as the depths of all its nodes together. That is never less than the compiler's own
recursion, and is near it for the chains that matter.

`$defs` and `definitions` are not entered where they are written (a definition is applied
where a `$ref` names it), so a long list of definitions nests no deeper than one of them.
A `$ref` that is not a local JSON pointer (`#anchor`, another document) is a leaf here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_TARGETS = 10_000  # distinct `$ref` targets followed; past it, the schema is refused

_NOT_APPLIED = frozenset({"$defs", "definitions"})


@dataclass
class _Node:
    """A schema at the root or at a `$ref`'s target: its own depth, and the `$ref`s inside it
    with the depth each is written at."""

    depth: int = 0
    refs: list[tuple[int, str]] = field(default_factory=list)


class TooManyTargets(ValueError):
    """The schema's `$ref`s name more than MAX_TARGETS places."""


def resolved_depth(schema: Any) -> int:
    """The deepest a compiler following `schema`'s local `$ref`s recurses, in JSON levels
    (module docstring); TooManyTargets past MAX_TARGETS distinct targets."""
    nodes: dict[str, _Node] = {}
    pending = [""]
    while pending:
        pointer = pending.pop()
        if pointer in nodes:
            continue
        if len(nodes) >= MAX_TARGETS:
            raise TooManyTargets(f"the schema's $refs name more than {MAX_TARGETS} places")
        node = nodes[pointer] = _walk(_target(schema, pointer))
        pending.extend(target for _, target in node.refs if target not in nodes)
    return _longest(nodes)


def _target(schema: Any, pointer: str) -> Any:
    """The value at a JSON pointer (`/a/b`, `~1` and `~0` escaped), or None."""
    node = schema
    for part in pointer.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _walk(schema: Any) -> _Node:
    """A schema's depth as written (definitions left out) and its local `$ref`s."""
    found = _Node()
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        value, depth = stack.pop()
        found.depth = max(found.depth, depth)
        if isinstance(value, dict):
            ref = value.get("$ref")
            if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
                found.refs.append((depth, ref[1:]))
            stack.extend(
                (item, depth + 1) for key, item in value.items() if key not in _NOT_APPLIED
            )
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
    return found


def _longest(nodes: dict[str, _Node]) -> int:
    """The longest path from the root through the graph, a strongly connected component of
    several nodes (or one naming itself) counted as all of its nodes' depths together."""
    component = _components(nodes)
    members: dict[int, list[str]] = {}
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
    return longest[component[""]]


def _components(nodes: dict[str, _Node]) -> dict[str, int]:
    """Each node's strongly connected component, numbered in the order Tarjan's algorithm
    closes them (a component after all those it reaches); iterative, for long chains."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    component: dict[str, int] = {}
    counter = closed = 0
    for start in nodes:
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
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
