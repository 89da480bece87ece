"""A Responses request's tools as the model sees them, and the model's calls as output items.

OpenAI's Responses API has more kinds of tool than the function tools the core runs:

- `namespace`: a group of client-side tools (Codex puts its sub-agent tools in `collaboration`),
  each offered to the model as a function named `<namespace>.<name>` (see `model_name`).
- `custom`: a free-form tool whose input is text, optionally in a grammar, rather than JSON
  arguments. The model gets a function with one string argument, `input`; its call comes back
  as a `custom_tool_call` item with that text.
- hosted tools the server would run itself (`web_search`, `file_search`, `code_interpreter`,
  `image_generation`, `mcp`, `computer_use_preview` ...). localrun runs none, so they are left
  out of what the model sees, logged, and named in the response header
  `X-Localrun-Tools-Left-Out` (core.tools_left_out). A request that offers one is still
  answered. The response object echoes them within a bound (`echoed`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from localrun.errors import BadRequestError

ECHO_BYTES = 4096  # a hosted tool (which no one runs here) echoed whole up to this much JSON
_RUN_HERE = ("function", "custom", "namespace")


def echoed(tools: list[Any]) -> list[Any]:
    """The request's tools as the response object echoes them: as given, within a bound.

    A hosted tool whose JSON passes ECHO_BYTES is echoed as its type alone: 15 MB of one was stored,
    and echoed three times by each replayed stream.
    """
    out = []
    for tool in tools:
        kind = tool.get("type", "function") if isinstance(tool, dict) else None
        if isinstance(tool, dict) and kind not in _RUN_HERE and _larger(tool, ECHO_BYTES):
            tool = {"type": kind}
        out.append(tool)
    return out


def _larger(value: Any, most: int) -> bool:
    """Whether `value`'s JSON takes more than `most` bytes.

    It walks the value and stops once past, without writing the JSON.
    """
    stack, size = [value], 0
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            size += 2 + len(item)
            for key, member in item.items():
                size += len(str(key)) + 3
                stack.append(member)
        elif isinstance(item, list):
            size += 2 + len(item)
            stack.extend(item)
        elif isinstance(item, str):
            size += len(item) + 2
        else:
            size += 8
        if size > most:
            return True
    return False


@dataclass
class ToolSet:
    """The tools a request offered, as the core takes them."""

    tools: list[dict[str, Any]] | None = None  # the functions the model sees
    left_out: list[str] = field(default_factory=list)  # hosted tools' types, as given
    # The model's name of each namespaced or custom tool -> (namespace or None, name, kind).
    names: dict[str, tuple[str | None, str, str]] = field(default_factory=dict)
    # A custom tool's grammar of its input, by the model's name for it (GenRequest's).
    grammars: dict[str, dict[str, str]] = field(default_factory=dict)

    def call_item(self, call: dict[str, Any]) -> dict[str, Any]:
        """A call of the model's (the core's {"id", "name", "arguments"}) as an output item."""
        namespace, name, kind = self.names.get(call["name"], (None, call["name"], "function"))
        base = call["id"].removeprefix("call_")
        if kind == "custom":
            arguments = call["arguments"]
            text = arguments.get("input") if isinstance(arguments, dict) else None
            item: dict[str, Any] = {
                "type": "custom_tool_call",
                "id": "ctc_" + base,
                "call_id": call["id"],
                "name": name,
                "input": text if isinstance(text, str) else json.dumps(arguments),
                "status": "completed",
            }
        else:
            item = {
                "type": "function_call",
                "id": "fc_" + base,
                "call_id": call["id"],
                "name": name,
                "arguments": json.dumps(call["arguments"], ensure_ascii=False),
                "status": "completed",
            }
        if namespace is not None:
            item["namespace"] = namespace
        return item


# A namespaced tool is offered as `<namespace>.<name>`, the name the model's own prompt uses, as
# in Codex's `functions.collaboration.spawn_agent`. A call to one comes back in OpenAI's shape
# for it: a `function_call` item with `namespace` and the member's bare `name` apart, since
# Codex's registry keys them so. A call of that shape in the input is the dotted name again.
def model_name(namespace: Any, name: str) -> str:
    """The name the model knows a tool by."""
    return f"{namespace}.{name}" if isinstance(namespace, str) and namespace else name


def _function(tool: dict[str, Any], where: str, namespace: str | None) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequestError(f"{where}.name must be a non-empty string")
    # The definition as the client wrote it, key for key (strict included), less its type:
    # what vLLM's Responses route hands the chat template.
    function = {k: model_name(namespace, name) if k == "name" else v for k, v in tool.items()
                if k != "type"}  # fmt: skip
    return {"type": "function", "function": function}


def _custom(
    tool: dict[str, Any], where: str, namespace: str | None, grammars: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """A free-form tool as a function of one string, `input`.

    Its grammar, if any, is told to the model and put in `grammars`, so that a call of it is held
    to it.
    """
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequestError(f"{where}.name must be a non-empty string")
    described = "The tool's input, as free text."
    spec = tool.get("format")
    if isinstance(spec, dict) and spec.get("type") == "grammar":
        syntax, definition = spec.get("syntax", "lark"), spec.get("definition", "")
        if syntax not in ("lark", "regex") or not isinstance(definition, str) or not definition:
            raise BadRequestError(
                f"{where}.format needs a syntax (lark or regex) and its definition",
                hint='e.g. {"type": "grammar", "syntax": "regex", "definition": "\\d+"}',
            )
        grammars[model_name(namespace, name)] = {"syntax": syntax, "definition": definition}
        described = f"The tool's input, in this {syntax} grammar:\n{definition}"
    parameters = {
        "type": "object",
        "properties": {"input": {"type": "string", "description": described}},
        "required": ["input"],
    }
    function: dict[str, Any] = {"name": model_name(namespace, name), "parameters": parameters}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def tools_of(value: Any) -> ToolSet:
    """The request's `tools`: functions, namespaces of them and custom tools offered to the model.

    Hosted tools are left out, their types in `left_out`.
    """
    out = ToolSet()
    if value is None:
        return out
    if not isinstance(value, list):
        raise BadRequestError("tools must be a list")
    tools: list[dict[str, Any]] = []
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise BadRequestError(f"{where} must be an object")
        kind = tool.get("type", "function")
        if kind == "namespace":
            namespace = tool.get("name")
            members = tool.get("tools")
            if not isinstance(namespace, str) or not namespace:
                raise BadRequestError(f"{where}.name must be a non-empty string")
            if not isinstance(members, list):
                raise BadRequestError(f"{where}.tools must be a list of tools")
            for number, member in enumerate(members):
                at = f"{where}.tools[{number}]"
                if not isinstance(member, dict):
                    raise BadRequestError(f"{at} must be an object")
                member_kind = member.get("type", "function")
                if member_kind not in ("function", "custom"):
                    raise BadRequestError(
                        f"{at} has type {member_kind!r}; a namespace holds function and "
                        "custom tools"
                    )
                if member_kind == "function":
                    made = _function(member, at, namespace)
                else:
                    made = _custom(member, at, namespace, out.grammars)
                tools.append(made)
                out.names[made["function"]["name"]] = (namespace, member["name"], member_kind)
        elif kind == "function":
            tools.append(_function(tool, where, None))
        elif kind == "custom":
            made = _custom(tool, where, None, out.grammars)
            tools.append(made)
            out.names[made["function"]["name"]] = (None, tool["name"], "custom")
        elif isinstance(kind, str):
            out.left_out.append(kind)
        else:
            raise BadRequestError(f"{where}.type must be a string")
    out.tools = tools or None
    return out


def tool_choice_of(value: Any) -> Any:
    """`tool_choice` as the core takes it (a named function, custom or namespaced tool)."""
    if isinstance(value, dict) and value.get("type") in ("function", "custom"):
        name = value.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequestError("tool_choice needs the tool's name")
        return {"type": "function", "function": {"name": model_name(value.get("namespace"), name)}}
    if value is None or value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict) and value.get("type") in ("auto", "none", "required"):
        return value["type"]
    raise BadRequestError(
        f"tool_choice {value!r} is not understood",
        hint='use "auto", "none", "required" or {"type": "function", "name": ...}',
    )
