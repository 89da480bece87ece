"""Tool (function) calling: tool definitions in the prompt, forced calls, calls parsed back out.

Tools reach the model through its chat template (the `tools` variable of Hugging Face templates).
A template that does not show them (formats/adapt.py probes it) gets a system note listing them
instead, asking for the reply shape most open models are trained on (Hermes/Qwen style):

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

tool_choice "auto" (or None) lets the model choose; "none" hides the tools; "required" or
{"type": "function", "function": {"name": ...}} forces a call, which the worker enforces with a
grammar built from `forced_schema`. The answer is parsed back into
[{"name": ..., "arguments": {...}}] from <tool_call> blocks or from a bare JSON object or list.

Pure: no llama_cpp and no I/O, so the server side can import it too.
"""

from __future__ import annotations

import json
import re
from typing import Any

from localrun import jsonlimits
from localrun.errors import BadRequestError

TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"
MISTRAL_CALLS = "[TOOL_CALLS]"

Message = dict[str, Any]
Tool = dict[str, Any]
ToolCall = dict[str, Any]


# -- requests ---------------------------------------------------------------------------------


def normalize(tools: Any) -> list[Tool]:
    """Validate tool definitions into the OpenAI/Ollama shape templates expect.

    Accepts {"type": "function", "function": {"name", "description"?, "parameters"?}} and, for
    convenience, the bare function object. Raises BadRequestError naming what is wrong.
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
        function = tool.get("function", tool if "name" in tool else None)
        if not isinstance(function, dict):
            raise BadRequestError(f"tools[{index}] has no function object")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequestError(f"tools[{index}].function.name must be a non-empty string")
        if name in seen:
            raise BadRequestError(f"the tool {name!r} is defined twice")
        seen.add(name)
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise BadRequestError(f"the parameters of tool {name!r} must be a JSON schema object")
        entry: dict[str, Any] = {"name": name, "parameters": parameters}
        if isinstance(function.get("description"), str):
            entry["description"] = function["description"]
        out.append({"type": "function", "function": entry})
    return out


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


def forced_schema(tools: list[Tool], tool_choice: Any) -> dict[str, Any] | None:
    """A JSON schema every forced tool call must match; None when the model may choose.

    Each tool becomes {"name": <its name>, "arguments": <its parameters>}, so the arguments
    are checked against the schema of the tool actually named.
    """
    if tool_choice in (None, "auto", "none"):
        return None
    only = forced_name(tools, tool_choice)
    options = []
    for tool in tools:
        function = tool["function"]
        if only is not None and function["name"] != only:
            continue
        options.append(
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": [function["name"]]},
                    "arguments": function["parameters"],
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    return options[0] if len(options) == 1 else {"anyOf": options}


# -- rendering --------------------------------------------------------------------------------


def system_note(tools: list[Tool]) -> str:
    """The tool list and the expected reply shape, for templates without tool support."""
    listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (
        "You can call the following tools (JSON schemas):\n"
        f"<tools>\n{listed}\n</tools>\n"
        "To call a tool, reply with only this, one block per call:\n"
        f'{TOOL_OPEN}{{"name": <tool name>, "arguments": <arguments as a JSON object>}}'
        f"{TOOL_CLOSE}"
    )


def arguments_object(value: Any) -> Any:
    """A call's arguments as an object when they are JSON text (else as they are)."""
    if isinstance(value, str):
        try:
            return jsonlimits.loads(value, "a tool call's arguments")
        except ValueError:
            return value
    return value


def add_system_note(conversation: list[Message], tools: list[Tool]) -> list[Message]:
    """The conversation with the tool note appended to (or placed as) its system message."""
    note = system_note(tools)
    if conversation and conversation[0].get("role") == "system":
        first = dict(conversation[0])
        first["content"] = f"{first.get('content') or ''}\n\n{note}".lstrip()
        return [first, *conversation[1:]]
    return [{"role": "system", "content": note}, *conversation]


# -- parsing ----------------------------------------------------------------------------------


def _as_call(value: Any, known: set[str] | None) -> ToolCall | None:
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):  # {"type": "function", "function": {...}}
        value = value["function"]
    name = value.get("name")
    if not isinstance(name, str) or (known is not None and name not in known):
        return None
    key = "arguments" if "arguments" in value else "parameters" if "parameters" in value else None
    if key is None:
        return None
    arguments = arguments_object(value[key])
    if not isinstance(arguments, dict):
        return None
    return {"name": name, "arguments": arguments}


def _calls_in_json(text: str, known: set[str] | None) -> list[ToolCall] | None:
    text = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
    if fenced:
        text = fenced.group(1)
    try:
        value = jsonlimits.loads(text, "the answer")
    except (ValueError, BadRequestError):  # not JSON, or nested past any tool call's shape
        return None
    items = value if isinstance(value, list) else [value]
    calls = [_as_call(item, known) for item in items]
    if not calls or any(call is None for call in calls):
        return None
    return [call for call in calls if call is not None]


def parse(text: str, tool_names: list[str] | None = None) -> tuple[str, list[ToolCall] | None]:
    """Split a model's answer into (content, tool calls or None).

    Calls come from <tool_call> blocks (a missing closing tag at the end is tolerated: the
    answer may have been stopped there) or from an answer that is nothing but a JSON call or
    list of calls (optionally after Mistral's [TOOL_CALLS] marker). With `tool_names`, only
    calls of those tools count.
    """
    known = set(tool_names) if tool_names is not None else None
    if TOOL_OPEN in text:
        calls: list[ToolCall] = []
        content: list[str] = []
        rest = text
        while TOOL_OPEN in rest:
            before, _, after = rest.partition(TOOL_OPEN)
            content.append(before)
            body, closed, rest = after.partition(TOOL_CLOSE)
            found = _calls_in_json(body, known)
            if found is None:
                return text, None
            calls += found
            if not closed:
                rest = ""
        content.append(rest)
        return "".join(content).strip(), calls
    # Mistral's models write their calls as "[TOOL_CALLS] [{...}]".
    bare = text.strip().removeprefix(MISTRAL_CALLS)
    found = _calls_in_json(bare, known)
    if found is not None:
        return "", found
    return text, None


class CallStream:
    """Streams an answer's text while holding back what may turn out to be tool calls.

    Text is passed on as it comes until a <tool_call> tag (or, at the very start, a JSON
    object, list or code fence) appears; from there on everything is held until `finish`,
    which parses it: calls found are returned, anything else is released as text after all.
    With `forced`, everything is held (the answer is grammar-constrained to be a call).
    """

    def __init__(self, tool_names: list[str], *, forced: bool = False) -> None:
        self.tool_names = tool_names
        self.holding = forced
        self.pending = ""  # text that may be the start of a tag
        self.held = ""
        self.started = False  # something other than blanks went out

    def feed(self, piece: str) -> str:
        if self.holding:
            self.held += piece
            return ""
        pending = self.pending + piece
        if not self.started:
            stripped = pending.lstrip()
            if not stripped:
                self.pending = pending
                return ""
            if stripped[0] in "{[`":
                self.holding, self.held, self.pending = True, pending, ""
                return ""
        index = pending.find(TOOL_OPEN)
        if index >= 0:
            self.holding, self.held, self.pending = True, pending[index:], ""
            out = pending[:index]
        else:
            keep = 0
            for size in range(min(len(TOOL_OPEN) - 1, len(pending)), 0, -1):
                if TOOL_OPEN.startswith(pending[-size:]):
                    keep = size
                    break
            out, self.pending = pending[: len(pending) - keep], pending[len(pending) - keep :]
        if not self.started and out.strip():
            self.started = True
        elif not self.started:
            self.pending, out = out + self.pending, ""  # still only blanks: hold them too
        return out

    def finish(self) -> tuple[str, list[ToolCall] | None]:
        """(text still to release, tool calls or None) once the answer is complete."""
        held, self.held = self.pending + self.held, ""
        self.pending = ""
        if not held:
            return "", None
        content, calls = parse(held, self.tool_names)
        if calls is None:
            return held, None
        return content, calls
