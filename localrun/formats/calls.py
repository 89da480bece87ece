"""Tool (function) calling: tool definitions in the prompt, forced calls, calls parsed back out.

Tools reach the model through its chat template (the `tools` variable of Hugging Face templates).
A template that does not show them (formats/adapt.py probes it) gets a system note listing them
instead, asking for the reply shape most open models are trained on (Hermes/Qwen style):

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

tool_choice "auto" (or None) lets the model choose; "none" hides the tools; "required" or
{"type": "function", "function": {"name": ...}} forces a call, which the worker enforces with a
grammar in the model's own call syntax (worker/grammars/forced.py). The answer is read back into
[{"name": ..., "arguments": {...}}] by the model family's parser (formats/parsers).

Pure: no llama_cpp and no I/O, so the server side can import it too.
"""

from __future__ import annotations

import json
from typing import Any

from localrun.errors import BadRequestError
from localrun.request import jsonlimits

TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"

Message = dict[str, Any]
Tool = dict[str, Any]
ToolCall = dict[str, Any]


# -- requests ---------------------------------------------------------------------------------


def normalize(tools: Any) -> list[Tool]:
    """Check tool definitions, and give them back as the client wrote them.

    Accepts {"type": "function", "function": {"name", "description"?, "parameters"?, ...}} and, for
    convenience, the bare function object, wrapped in that shape. Nothing is rebuilt, reordered or
    dropped. So a template that prints the tools (Qwen's, Llama 3's, Mistral's ...) shows the model
    the definition as the client sent it, key for key and in its order. Hugging Face's
    apply_chat_template does the same, and the model was trained on what clients send. Raises
    BadRequestError naming what is wrong.
    """
    if not isinstance(tools, list):
        raise BadRequestError(f"tools must be a list, not {type(tools).__name__}")
    out: list[Tool] = []
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise BadRequestError(f"tools[{index}] must be an object")
        kind = tool.get("type", "function")
        if kind != "function":
            raise BadRequestError(f"tools[{index}] has type {kind!r}; only 'function' is known")
        bare = "function" not in tool and "name" in tool
        function = tool if bare else tool.get("function")
        if not isinstance(function, dict):
            raise BadRequestError(f"tools[{index}] has no function object")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequestError(f"tools[{index}].function.name must be a non-empty string")
        if name in seen:
            raise BadRequestError(f"the tool {name!r} is defined twice")
        seen.add(name)
        if not isinstance(function.get("parameters") or {}, dict):
            raise BadRequestError(f"the parameters of tool {name!r} must be a JSON schema object")
        out.append({"type": "function", "function": function} if bare else tool)
    return out


def parameters(tool: Tool) -> dict[str, Any]:
    """A normalized tool's parameter schema (an object of no properties where it has none)."""
    found = tool["function"].get("parameters")
    return found if isinstance(found, dict) else {"type": "object", "properties": {}}


def names(tools: list[Tool]) -> list[str]:
    return [str(tool["function"]["name"]) for tool in tools]


def in_force(tools: Any, tool_choice: Any) -> list[Tool] | None:
    """The normalized tools a request uses: None without tools or with tool_choice "none"."""
    if tool_choice == "none":
        return None
    found = normalize(tools) if tools is not None else []
    if not found:
        if tool_choice not in (None, "auto"):
            # OpenAI answers 400 here too: a forced call with nothing to call is a client bug.
            raise BadRequestError(
                f"tool_choice {tool_choice!r} was given without any tools",
                hint="send the functions in `tools`, or leave tool_choice out",
            )
        return None
    forced_name(found, tool_choice)  # an unknown choice is refused even when it is not used
    return found


def forces(tool_choice: Any) -> bool:
    """Whether tool_choice forces a call ("required", or a tool named)."""
    return tool_choice not in (None, "auto", "none")


def strict(tool: Tool) -> bool:
    """Whether a tool's calls must follow its parameters' schema (its `strict: true`)."""
    return tool["function"].get("strict") is True


def enforced(tools: list[Tool], tool_choice: Any) -> list[Tool]:
    """The tools whose calls the answer's constraint holds to their parameters' schemas.

    Those are the tools a forced call may call, and the strict ones.
    """
    only = forced_name(tools, tool_choice) if forces(tool_choice) else None
    called = forces(tool_choice)
    return [
        tool
        for tool in tools
        if strict(tool) or (called and only in (None, tool["function"]["name"]))
    ]


def forced_name(tools: list[Tool], tool_choice: Any) -> str | None:
    """The single tool tool_choice names; None unless it names one. Raises for unknown names."""
    if tool_choice in (None, "auto", "none", "required"):
        return None
    name: Any = None
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, dict) else tool_choice.get("name")
    elif isinstance(tool_choice, str):
        name = tool_choice  # a bare name, as some clients send it
    if not isinstance(name, str) or not name:
        raise BadRequestError(
            f"tool_choice {tool_choice!r} is not understood",
            hint='use "auto", "none", "required" or '
            '{"type": "function", "function": {"name": ...}}',
        )
    if name not in names(tools):
        raise BadRequestError(f"tool_choice names {name!r}, which is not among the tools")
    return name


# -- rendering --------------------------------------------------------------------------------


def system_note(tools: list[Tool], example: str | None = None) -> str:
    """The tool list and the expected reply shape, for templates without tool support."""
    listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (
        "You can call the following tools (JSON schemas):\n"
        f"<tools>\n{listed}\n</tools>\n"
        "To call a tool, reply with only this, one block per call:\n"
        + (
            example
            or f'{TOOL_OPEN}{{"name": <tool name>, "arguments": <arguments as a JSON object>}}'
            f"{TOOL_CLOSE}"
        )
    )


def arguments_object(value: Any) -> Any:
    """A call's arguments as an object when they are JSON text (else as they are)."""
    if isinstance(value, str):
        try:
            return jsonlimits.loads(value, "a tool call's arguments")
        except ValueError:
            return value
    return value


def add_system_note(
    conversation: list[Message], tools: list[Tool], example: str | None = None
) -> list[Message]:
    """The conversation with the tool note appended to its system message, or placed as one.

    `example` is a call in the model's own syntax; None means the Hermes block.
    """
    note = system_note(tools, example)
    if conversation and conversation[0].get("role") == "system":
        first = dict(conversation[0])
        first["content"] = f"{first.get('content') or ''}\n\n{note}".lstrip()
        return [first, *conversation[1:]]
    return [{"role": "system", "content": note}, *conversation]
