"""The tools of a Messages request, given to the model as functions, and its `tool_choice`.

Custom tools and Anthropic's tools that the client runs (bash, text editor, memory) reach the
model as functions with their input's schema. Server tools run on Anthropic's side, which
localrun has not, so they are left out (core.tools_left_out names them). `tool_choice` becomes
the core's.
"""

from __future__ import annotations

from typing import Any

from localrun.errors import BadRequestError
from localrun.server.body import Body

_EDITOR_INPUT = {
    "type": "object",
    "properties": {
        "command": {
            "type": "string",
            "enum": ["view", "create", "str_replace", "insert", "undo_edit"],
        },
        "path": {"type": "string", "description": "Absolute path to a file or directory."},
        "file_text": {"type": "string", "description": "With create: the file's content."},
        "old_str": {"type": "string", "description": "With str_replace: the text to replace."},
        "new_str": {"type": "string", "description": "With str_replace and insert: new text."},
        "insert_line": {"type": "integer", "description": "With insert: the line after which."},
        "view_range": {"type": "array", "items": {"type": "integer"}},
    },
    "required": ["command", "path"],
}


def _memory_command(command: str, *required: str) -> dict[str, Any]:
    return {"properties": {"command": {"const": command}}, "required": ["command", *required]}


# The memory tool's commands as the SDK's memory tools take them (BetaMemoryTool20250818Command:
# each command's fields, required as there): every field listed once for the templates that
# show a tool's properties, and each command's own in `anyOf`, so that a call made under a
# grammar (tool_choice naming it) is one the client's tool accepts.
_MEMORY_INPUT = {
    "type": "object",
    "properties": {
        "command": {
            "type": "string",
            "enum": ["view", "create", "str_replace", "insert", "delete", "rename"],
        },
        "path": {"type": "string", "description": "A path under /memories."},
        "view_range": {
            "type": "array",
            "items": {"type": "integer"},
            "description": "With view: the first and last lines to show.",
        },
        "file_text": {"type": "string", "description": "With create: the file's content."},
        "old_str": {"type": "string", "description": "With str_replace: the text to replace."},
        "new_str": {"type": "string", "description": "With str_replace: the new text."},
        "insert_line": {"type": "integer", "description": "With insert: the line after which."},
        "insert_text": {"type": "string", "description": "With insert: the text."},
        "old_path": {"type": "string", "description": "With rename: the current path."},
        "new_path": {"type": "string", "description": "With rename: the new path."},
    },
    "required": ["command"],
    "anyOf": [
        _memory_command("view", "path"),
        _memory_command("create", "path", "file_text"),
        _memory_command("str_replace", "path", "old_str", "new_str"),
        _memory_command("insert", "path", "insert_line", "insert_text"),
        _memory_command("delete", "path"),
        _memory_command("rename", "old_path", "new_path"),
    ],
}

# Anthropic-defined tools that the client runs, by the prefix of their type: the model is
# given their schema.
_CLIENT_TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "bash_": (
        "Run a command in a bash shell; `restart` restarts the shell.",
        {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The command to run."},
                "restart": {"type": "boolean"},
            },
        },
    ),
    "text_editor_": (
        "View, create and edit files: view, create, str_replace, insert, undo_edit.",
        _EDITOR_INPUT,
    ),
    "memory_": (
        "Your memory, files under /memories that last from one conversation to the next: "
        "view, create, str_replace, insert, delete, rename.",
        _MEMORY_INPUT,
    ),
}


def tools_of(body: Body) -> tuple[list[dict[str, Any]] | None, list[str]]:
    """The tools the model is offered, and the server tools left out."""
    tools = body.get("tools", list)
    if tools is None:
        return None, []
    out = []
    left_out = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise BadRequestError(f"tools[{index}] must be an object")
        kind = tool.get("type", "custom")
        client = next(
            (v for k, v in _CLIENT_TOOLS.items() if isinstance(kind, str) and kind.startswith(k)),
            None,
        )
        if client is not None:
            description, schema = client
            function = {"name": tool.get("name"), "description": description, "parameters": schema}
        elif kind in ("custom", None):
            # as vLLM's Messages route and every chat template's clients order a function
            function = {"name": tool.get("name")}
            if isinstance(tool.get("description"), str):
                function["description"] = tool["description"]
            function["parameters"] = tool.get("input_schema")
            if tool.get("strict") is True:  # its calls follow input_schema (worker/forced.lazy)
                function["strict"] = True
        elif isinstance(kind, str):
            left_out.append(kind)
            continue
        else:
            raise BadRequestError(f"tools[{index}].type must be a string")
        out.append({"type": "function", "function": function})
    return out, left_out


def tool_choice_of(body: Body) -> Any:
    """Anthropic's tool_choice (auto, any, tool, none) as the core's."""
    choice = body.get("tool_choice", dict)
    if choice is None:
        return None
    kind = choice.get("type")
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequestError('tool_choice {"type": "tool"} needs the tool\'s name')
        return {"type": "function", "function": {"name": name}}
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))
    if mapped is None:
        raise BadRequestError(f"tool_choice type {kind!r} is not one of auto, any, tool, none")
    return mapped
