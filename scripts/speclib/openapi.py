"""An OpenAPI 3.1 document read for validating answers: its operations by path and method, and
any of its schemas applied to a JSON value with jsonschema (Draft 2020-12), each failure one
Problem at a JSON path.

Two readings the documents need beyond plain Draft 2020-12, both as their SDKs read them:

- `nullable: true` (OpenAPI 3.0's keyword, still in OpenAI's 3.1 document 112 times) allows
  null: Draft 2020-12 knows no such keyword and would refuse null where the document means to
  allow it. Each such schema becomes `anyOf: [itself, {type: null}]`.
- A union whose branches are told apart by a property (Anthropic's `discriminator` with its
  `mapping`; OpenAI's `discriminator` without one, or no discriminator at all, as in
  `ResponseStreamEvent`, whose branches each fix `type` to one value) is applied by that
  property, as the SDKs choose the class to parse into: a value is held to the one branch its
  tag names, and a failure is reported inside it, not as "valid under none of 40 schemas".
- A property the schema does not require may be null: the SDKs built from these documents
  (Stainless's openai-python, openai-node, anthropic-sdk-python) type every optional field
  `Optional[X] = None`, so null reads as absent, which the schema allows; and the documents'
  own examples send such nulls (OpenAI's Response examples: `"user": null`, `"usage": null` in
  `response.created`). A required property is held to its schema, null or not.

A required property that is missing is a Problem with `nullable` set when its schema allows
null: "required but nullable", the field a client could be sent as null.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, ValidationError, validators
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

TAG = "x-localrun-tag"  # written on a union told apart by a property: {property, branches}


@dataclass(frozen=True)
class Problem:
    """One way a value fails its schema: where (a JSON path), what, and whether it is a
    required property missing whose schema allows null."""

    path: str
    what: str
    nullable: bool = False


class _Loader(yaml.CSafeLoader):
    """YAML as JSON has it: a date stays the string it is written as."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.CSafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_Loader)  # a SafeLoader's subclass


class Document:
    """An OpenAPI 3.1 document; `base` is the path its `paths` are below on the wire (OpenAI's
    server URL ends in /v1, Anthropic's paths start with it)."""

    def __init__(self, data: dict[str, Any], uri: str, base: str = "") -> None:
        _allow_nullable(data)
        _tag_unions(data, data)
        self.data = data
        self.uri = uri
        self.base = base
        resource = Resource.from_contents(data, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(uri, resource)
        self._paths = sorted(
            ((_template(base + path), path) for path in data.get("paths", {})),
            key=lambda entry: entry[1].count("{"),  # a literal path before a template
        )

    @classmethod
    def read(cls, path: Path, uri: str, base: str = "") -> Document:
        return cls(load_yaml(path), uri, base)

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
        """The document's path template that `path` matches and its operation for `method`."""
        for pattern, template in self._paths:
            if pattern.fullmatch(path):
                operation = self.data["paths"][template].get(method.lower())
                return (template, operation) if isinstance(operation, dict) else None
        return None

    def pointer(self, *keys: str) -> str:
        return "#/" + "/".join(k.replace("~", "~0").replace("/", "~1") for k in keys)

    def schema(self, name: str) -> str:
        """The pointer to a component schema by its name."""
        if name not in self.data["components"]["schemas"]:
            raise KeyError(f"{self.uri} has no schema {name}")
        return self.pointer("components", "schemas", name)

    def problems(self, instance: Any, pointer: str) -> list[Problem]:
        """How `instance` fails the schema at `pointer` (empty: it validates)."""
        validator = _Validator({"$ref": self.uri + pointer}, registry=self.registry)
        found = [p for error in validator.iter_errors(instance) for p in _problems(error)]
        return sorted(set(found), key=lambda p: (p.path, p.what))


def _template(path: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", path)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts))


# -- reading the document as its SDKs do ------------------------------------------------------


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every object in the document, each once (YAML aliases share objects)."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _allow_nullable(data: Any) -> None:
    for node in list(_walk(data)):
        if node.get("nullable") is True:
            inner = {k: v for k, v in node.items() if k != "nullable"}
            node.clear()
            node["anyOf"] = [inner, {"type": "null"}]
        elif "nullable" in node and not isinstance(node.get("nullable"), dict):
            del node["nullable"]


def _resolve(data: dict[str, Any], node: Any) -> Any:
    """A local `$ref` followed (the documents hold no other kind)."""
    while isinstance(node, dict) and isinstance(node.get("$ref"), str):
        ref = node["$ref"]
        if not ref.startswith("#/"):
            return node
        node = data
        for key in ref[2:].split("/"):
            node = node[key.replace("~1", "/").replace("~0", "~")]
    return node


def _tags(data: dict[str, Any], branch: Any, prop: str) -> list[Any]:
    """The values a branch fixes `prop` to (const or enum), looking into allOf."""
    branch = _resolve(data, branch)
    if not isinstance(branch, dict):
        return []
    schema = _resolve(data, branch.get("properties", {}).get(prop))
    if isinstance(schema, dict):
        if "const" in schema:
            return [schema["const"]]
        if isinstance(schema.get("enum"), list):
            return list(schema["enum"])
    return [tag for part in branch.get("allOf", []) for tag in _tags(data, part, prop)]


def _tag_unions(data: dict[str, Any], root: Any) -> None:
    for node in list(_walk(root)):
        for keyword in ("oneOf", "anyOf"):
            branches = node.get(keyword)
            if not isinstance(branches, list) or len(branches) < 2:
                continue
            discriminator = node.get("discriminator") or {}
            prop = discriminator.get("propertyName", "type")
            mapping = discriminator.get("mapping")
            if mapping:
                refs = [b.get("$ref") if isinstance(b, dict) else None for b in branches]
                chosen = {v: refs.index(r) for v, r in mapping.items() if r in refs}
            else:
                chosen = {}
                for index, branch in enumerate(branches):
                    for tag in _tags(data, branch, prop):
                        chosen[tag] = -1 if tag in chosen else index  # -1: two claim it
            if chosen and -1 not in chosen.values() and _all_tagged(data, branches, prop):
                node[TAG] = {"property": prop, "keyword": keyword, "branches": chosen}


def _all_tagged(data: dict[str, Any], branches: list[Any], prop: str) -> bool:
    return all(_tags(data, b, prop) for b in branches)


# -- validating ---------------------------------------------------------------------------------


def _union(default: Any, keyword: str) -> Any:
    def check(validator: Any, branches: Any, instance: Any, schema: dict[str, Any]) -> Any:
        tag = schema.get(TAG)
        if tag is None or tag["keyword"] != keyword or not isinstance(instance, dict):
            yield from default(validator, branches, instance, schema)
            return
        prop = tag["property"]
        if prop not in instance:
            yield ValidationError(f"{prop!r} is a required property", validator="required")
            return
        index = tag["branches"].get(instance[prop]) if _hashable(instance[prop]) else None
        if index is None:
            known = ", ".join(sorted(map(str, tag["branches"])))
            error = ValidationError(f"{instance[prop]!r} is none of the union's: {known}")
            error.path.appendleft(prop)
            yield error
            return
        yield from validator.descend(instance, branches[index], schema_path=index)

    return check


def _hashable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _properties(validator: Any, properties: Any, instance: Any, schema: dict[str, Any]) -> Any:
    if validator.is_type(instance, "object"):
        required = schema.get("required", ())
        instance = {k: v for k, v in instance.items() if v is not None or k in required}
    yield from Draft202012Validator.VALIDATORS["properties"](
        validator, properties, instance, schema
    )


def _required(validator: Any, required: Any, instance: Any, schema: dict[str, Any]) -> Any:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    for name in required:
        if name in instance:
            continue
        error = ValidationError(f"{name!r} is a required property")
        inner = properties.get(name)
        error.missing = name  # type: ignore[attr-defined]
        error.nullable = inner is not None and validator.evolve(schema=inner).is_valid(None)  # type: ignore[attr-defined]
        yield error


_Validator = validators.extend(
    Draft202012Validator,
    {
        "oneOf": _union(Draft202012Validator.VALIDATORS["oneOf"], "oneOf"),
        "anyOf": _union(Draft202012Validator.VALIDATORS["anyOf"], "anyOf"),
        "required": _required,
        "properties": _properties,
    },
)


def json_path(parts: Any) -> str:
    path = "$"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _problems(error: ValidationError) -> Iterator[Problem]:
    """The failures a ValidationError stands for, a union's looked for in its likeliest
    branch: the one whose type the value has, with the fewest failures."""
    if error.context:
        branch = _likeliest(error.context)
        if branch is not None:
            for inner in branch:
                yield from _problems(inner)
            return
    missing = getattr(error, "missing", None)
    if missing is not None:
        where = json_path([*error.absolute_path, missing])
        yield Problem(where, "missing (required)", bool(getattr(error, "nullable", False)))
        return
    yield Problem(json_path(error.absolute_path), _what(error))


def _likeliest(context: list[ValidationError]) -> list[ValidationError] | None:
    by_branch: dict[Any, list[ValidationError]] = {}
    for error in context:
        by_branch.setdefault(error.relative_schema_path[0], []).append(error)
    fitting = [
        errors
        for errors in by_branch.values()
        if not any(e.validator == "type" and not e.relative_path for e in errors)
    ]
    return min(fitting, key=len) if fitting else None


def _what(error: ValidationError) -> str:
    shown = json.dumps(error.instance)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if error.validator == "type":
        return f"{shown} is not of type {json.dumps(error.validator_value)}"
    if error.validator in ("enum", "const"):
        return f"{shown} is not {json.dumps(error.validator_value)[:200]}"
    if error.validator in ("anyOf", "oneOf") and error.context:
        return f"{shown} is none of the schemas allowed here"
    return error.message if len(error.message) <= 200 else error.message[:197] + "..."
