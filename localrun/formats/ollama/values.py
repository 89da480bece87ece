"""The values Ollama's templates see, as Go types that print and encode as Go's do.

These are the types of ollama/ollama `template/template.go` (templateMessage, templateTool,
templateArgs, ...) and `api/types.go` (ToolProperty, PropertyType): .Messages hold Role Content
Thinking Images ToolCalls ToolName ToolCallID; a tool call an ID and Function{Index Name
Arguments}, Arguments printing as JSON; .Tools print as their JSON. A type's `go_type` is the
name Go's %T and error messages give it, its `json_tags` the struct tags json.Marshal reads
(gotemplate.json.go_json). Building them from a request is convert.py's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from localrun.formats.gotemplate.json import encode_map, go_json


class JSONMap(dict[str, Any]):
    """A Go map that prints as its JSON (Ollama's templateArgs, templateProperties).

    A nil one prints `{}` and encodes as null.
    """

    go_type: ClassVar[str] = "template.templateArgs"

    def __init__(self, items: dict[str, Any] | None = None) -> None:
        super().__init__(items or {})
        self.nil = items is None

    def go_string(self) -> str:
        return "{}" if self.nil else self.go_json()

    def go_json(self) -> str:
        if self.nil:
            return "null"
        out: list[str] = []
        encode_map(self, sorted(self), out)
        return "".join(out)


class OrderedMap(dict[str, Any]):
    """A *ToolPropertiesMap: JSON in insertion order, omitted only when nil."""

    go_pointer: ClassVar[bool] = True

    def go_json(self) -> str:
        out: list[str] = []
        encode_map(self, list(self), out)
        return "".join(out)


class NilList(list[Any]):
    """A nil Go slice: prints `[]`, encodes as null."""

    def go_json(self) -> str:
        return "null"


class ToolList(list[Any]):
    """Ollama's templateTools: prints as its JSON (null when nil)."""

    go_type: ClassVar[str] = "template.templateTools"

    def __init__(self, items: list[Any] | None) -> None:
        super().__init__(items or [])
        self.nil = items is None

    def go_string(self) -> str:
        return go_json(self)

    def go_json(self) -> str:
        if self.nil:
            return "null"
        return "[" + ",".join(go_json(tool) for tool in self) + "]"


class PropertyType(list[str]):
    """api.PropertyType: one JSON type, or several."""

    go_type: ClassVar[str] = "api.PropertyType"

    def go_string(self) -> str:
        if len(self) < 2:
            return self[0] if self else ""
        return "[" + " ".join(self) + "]"

    def go_json(self) -> str:
        return go_json(self[0]) if len(self) == 1 else go_json(list(self))


@dataclass
class ToolProperty:
    go_type: ClassVar[str] = "api.ToolProperty"
    json_tags: ClassVar[dict[str, str]] = {
        "AnyOf": "anyOf,omitempty",
        "Type": "type,omitempty",
        "Items": "items,omitempty",
        "Description": "description,omitempty",
        "Enum": "enum,omitempty",
        "Properties": "properties,omitempty",
        "Required": "required,omitempty",
    }
    AnyOf: list[ToolProperty]
    Type: PropertyType
    Items: Any
    Description: str
    Enum: list[Any]
    Properties: OrderedMap | None
    Required: list[str]


@dataclass
class ToolParameters:
    go_type: ClassVar[str] = "template.templateToolFunctionParameters"
    json_tags: ClassVar[dict[str, str]] = {
        "Type": "type",
        "Defs": "$defs,omitempty",
        "Items": "items,omitempty",
        "Required": "required,omitempty",
        "Properties": "properties",
    }
    Type: str
    Defs: Any
    Items: Any
    Required: list[str]
    Properties: JSONMap


@dataclass
class ToolFunction:
    go_type: ClassVar[str] = "template.templateToolFunction"
    json_tags: ClassVar[dict[str, str]] = {
        "Name": "name",
        "Description": "description",
        "Parameters": "parameters",
    }
    Name: str
    Description: str
    Parameters: ToolParameters


@dataclass
class Tool:
    go_type: ClassVar[str] = "template.templateTool"
    json_tags: ClassVar[dict[str, str]] = {
        "Type": "type",
        "Items": "items,omitempty",
        "Function": "function",
    }
    Type: str
    Items: Any
    Function: ToolFunction

    def go_string(self) -> str:
        return go_json(self)


@dataclass
class CallFunction:
    go_type: ClassVar[str] = "template.templateToolCallFunction"
    Index: int
    Name: str
    Arguments: JSONMap


@dataclass
class ToolCall:
    go_type: ClassVar[str] = "template.templateToolCall"
    ID: str
    Function: CallFunction


@dataclass
class Message:
    go_type: ClassVar[str] = "*template.templateMessage"
    go_pointer: ClassVar[bool] = True
    Role: str
    Content: str
    Thinking: str
    Images: list[bytes]
    ToolCalls: list[ToolCall]
    ToolName: str
    ToolCallID: str
