"""A conversation made renderable by one Jinja template, decided by probing the template.

llama.cpp does not trust a template to take every conversation: it renders a few small ones
first (common/jinja/caps.cpp) and adapts what it passes (common/chat.cpp's workarounds). So do
we, from what the probes' output shows, once per template:

- system role: a template that refuses a system message or drops it (Gemma) gets it folded
  into the first user message, joined by a newline (llama.cpp's choice); one that refuses or
  drops a system message later in the conversation (Anthropic's mid-conversation system
  messages, which Claude Code sends; OpenAI's and Ollama's anywhere) gets it folded into the
  turn before it (a user turn or a tool result), else into the user turn after it, else as a
  user turn of its own: never lost;
- content: a template that renders typed content only ([{"type": "text", ...}]) gets it typed;
- tools: a template that does not show the `tools` it is given gets them as a system note
  (formats/calls.py), so the model still learns them; llama.cpp passes them to be dropped;
- tool calls: arguments as an object where the template writes them with tojson, as the JSON
  text a client sent where it concatenates strings (an object sent is written compact, as
  llama-server writes it); calls written out as <tool_call> blocks where the template shows
  none; ids made 9 letters and digits for templates that require it (Mistral), which
  llama.cpp leaves to fail;
- tool results: as user turns in <tool_response> blocks where the template has no tool role;
- reasoning in the history: as `thinking` to a template that reads that name (LFM2.5), as a
  "thinking" content block to one that shows it only so (Ministral 3; llama.cpp decides by
  markers and so also sends Devstral blocks it drops);
- `functions`: Firefunction v2's template reads the tool list as JSON text in this variable;
  SmolLM3's reads it as `xml_tools`.

A template is told what Hugging Face's apply_chat_template tells it: `tools` is None when there
are none (vLLM's Llama 3.1 and xLAM templates test `tools is not none`), as llama-server too
passes it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from localrun.errors import BadRequestError, TemplateError, TemplateLimitError
from localrun.formats import calls as calls_mod
from localrun.formats import parsers
from localrun.formats.jinja.env import render_jinja, variables

Message = dict[str, Any]

_SYSTEM = "PROBE_SYSTEM_TEXT"
_USER = "PROBE_USER_TEXT"
_ARG = "PROBE_ARG_VALUE"
_RESULT = "PROBE_TOOL_RESULT"
_TOOL = "probe_tool_name"
_PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": _TOOL,
            "description": "Tool description",
            "parameters": {
                "type": "object",
                "properties": {"arg": {"type": "string", "description": "Arg description"}},
                "required": ["arg"],
            },
        },
    }
]


# What llama-server passes every template unless a request says otherwise: a reasoning model
# thinks (templates that test `enable_thinking is defined` would otherwise close it), and past
# reasoning stays in the history (its --reasoning-preserve default: the previous prompt stays a
# prefix of the next, for the prompt cache).
DEFAULTS: dict[str, Any] = {
    "enable_thinking": True,
    "preserve_thinking": True,
    "clear_thinking": False,
    "truncate_history_thinking": False,
    "drop_thinking": False,
}


@dataclass(frozen=True)
class Caps:
    """What one template renders, as its probes showed."""

    system_role: bool = True
    mid_system: bool = True  # shows a system message after other turns
    tools_in_system: bool = False  # lists the tools only within a system message
    typed_content: bool = False  # content as [{"type": "text", "text": ...}] only
    tools: bool = True  # shows the tool list it is given
    tool_calls: bool = True  # shows an assistant's tool calls
    object_arguments: bool = True  # writes a call's arguments from an object (tojson)
    tool_role: bool = True  # shows a tool result given with role "tool"
    short_ids: bool = False  # requires tool call ids of 9 letters and digits (Mistral)
    every_call: bool = True  # shows each of a turn's several calls (gpt-oss shows the first)
    functions: bool = False  # reads the tools as JSON text in `functions` (Firefunction)
    xml_tools: bool = False  # reads the tools in `xml_tools` (SmolLM3)
    reasoning_as: str = "reasoning_content"  # or "thinking", "thought", "blocks" (_reasoning_as)


def _call_turns(
    arguments: Any, call_id: str, *, tool_role: bool = True, calls: bool = True
) -> list[Message]:
    """llama.cpp's tool probe: a call, its result, an answer and a new question; `tool_role`
    and `calls` False give them as adapt() would for a template without them."""
    call = {"id": call_id, "type": "function", "function": {"name": _TOOL, "arguments": arguments}}
    assistant: Message = {"role": "assistant", "content": ""}
    if calls:
        assistant["tool_calls"] = [call]
    else:
        assistant["content"] = f"{calls_mod.TOOL_OPEN}{_ARG}{calls_mod.TOOL_CLOSE}"
    result: Message = {"role": "tool", "content": _RESULT, "tool_call_id": call_id, "name": _TOOL}
    if not tool_role:
        result = {"role": "user", "content": f"<tool_response>\n{_RESULT}\n</tool_response>"}
    return [
        {"role": "user", "content": "User message"},
        assistant,
        result,
        {"role": "assistant", "content": "The tool response was 'tool response'"},
        {"role": "user", "content": "User message"},
    ]


def _try(source: str, messages: list[Message], tools: Any = None) -> str | None:
    """The template's output for a probe, or None if it refuses it (a breach of the bounds
    is not a refusal: it ends the probing with that error)."""
    context = {
        **DEFAULTS,
        "messages": messages,
        "add_generation_prompt": True,
        "bos_token": "",
        "eos_token": "",
    }
    try:
        return rendered(source, {**context, "tools": tools})
    except TemplateLimitError:
        raise
    except TemplateError:
        return None


def rendered(source: str, context: dict[str, Any]) -> str:
    """The Jinja template rendered with `context`; where it fails with `tools` None, again with
    `tools` undefined: a template written for llama.cpp's engine, which loops over a null as
    over nothing (Command R+'s tool_use template loops over the tools unasked), renders as it
    does there."""
    try:
        return render_jinja(source, context)
    except TemplateLimitError:
        raise
    except TemplateError:
        if context.get("tools") is not None:
            raise
        return render_jinja(source, {k: v for k, v in context.items() if k != "tools"})


@lru_cache(maxsize=32)
def probe(source: str) -> Caps:
    """What `source` renders (about ten small renderings, once per template)."""
    plain = _try(source, [{"role": "user", "content": _USER}])
    typed = False
    if plain is None or _USER not in plain:
        typed_turn = [{"role": "user", "content": [{"type": "text", "text": _USER}]}]
        typed_out = _try(source, typed_turn)
        typed = typed_out is not None and _USER in typed_out

    def turn(text: str) -> Any:
        return [{"type": "text", "text": text}] if typed else text

    with_system = _try(
        source,
        [{"role": "system", "content": turn(_SYSTEM)}, {"role": "user", "content": turn(_USER)}],
    )
    system_role = with_system is not None and _SYSTEM in with_system
    mid_system = _shows_later_system(source, turn)

    tools, system_listed = _lists_tools(source, turn)

    # Tool calls: llama.cpp's probe ids are 9 characters ("call00001"), which Mistral's
    # templates require; an id of another shape tells whether the template does. A template
    # that refuses the tool turn (strict alternation, no tool role) is tried with the result
    # as a user turn, then with the call written out too.
    object_arguments = tool_role = tool_calls = short_ids = False
    for tool_role, with_calls in ((True, True), (False, True), (False, False)):
        shape = {"tool_role": tool_role, "calls": with_calls}
        as_object = _try(source, _call_turns({"arg": _ARG}, "call00001", **shape), _PROBE_TOOLS)
        as_text = None
        if with_calls:
            text_turns = _call_turns(json.dumps({"arg": _ARG}), "call00001", **shape)
            as_text = _try(source, text_turns, _PROBE_TOOLS)
        # An object where the template writes it (tojson, or key by key); the client's JSON
        # text where it prints what it is given (a dict would come out as Python's repr).
        object_arguments = (
            as_object is not None and _ARG in as_object and f"'arg': '{_ARG}'" not in as_object
        )
        if not object_arguments and as_text is None:
            object_arguments = as_object is not None
        rendered = as_object if object_arguments else as_text
        if rendered is None:
            continue
        tool_calls = with_calls and _ARG in rendered
        tool_role = tool_role and _RESULT in rendered
        if with_calls:
            arguments: Any = {"arg": _ARG} if object_arguments else json.dumps({"arg": _ARG})
            other = _call_turns(arguments, "call_probe_1", tool_role=tool_role)
            short_ids = _try(source, other, _PROBE_TOOLS) is None
        break
    else:
        tool_role = False
    every_call = not tool_calls or _shows_every_call(source, object_arguments, short_ids)
    return Caps(
        every_call=every_call,
        reasoning_as=_reasoning_as(source),
        system_role=system_role,
        mid_system=mid_system,
        typed_content=typed,
        tools=tools or system_listed,
        tools_in_system=system_listed,
        tool_calls=tool_calls,
        object_arguments=object_arguments,
        tool_role=tool_role,
        short_ids=short_ids,
        functions="functions" in variables(source),
        xml_tools="xml_tools" in variables(source),
    )


def _shows_every_call(source: str, object_arguments: bool, short_ids: bool) -> bool:
    """Whether the template shows both calls of a turn that made two."""
    second = "PROBE_ARG_SECOND"
    calls = []
    for number, value in enumerate((_ARG, second), 1):
        arguments: Any = {"arg": value}
        if not object_arguments:
            arguments = json.dumps(arguments)
        call_id = f"call0000{number}" if short_ids else f"call_probe_{number}"
        function = {"name": _TOOL, "arguments": arguments}
        calls.append({"id": call_id, "type": "function", "function": function})
    turns: list[Message] = [
        {"role": "user", "content": "User message"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        *({"role": "tool", "content": _RESULT, "tool_call_id": c["id"]} for c in calls),
        {"role": "user", "content": "User message"},
    ]
    out = _try(source, turns, _PROBE_TOOLS)
    return out is not None and _ARG in out and second in out


def _lists_tools(source: str, turn: Any) -> tuple[bool, bool]:
    """Whether the template lists the tools it is given, and whether only where the
    conversation has a system message (FunctionGemma's lists them inside the system turn)."""
    user = {"role": "user", "content": turn(_USER)}
    listed = _try(source, [user], _PROBE_TOOLS)
    if listed is not None and _TOOL in listed:
        return True, False
    system = {"role": "system", "content": turn(_SYSTEM)}
    out = _try(source, [system, user], _PROBE_TOOLS)
    return False, out is not None and _TOOL in out


def _shows_later_system(source: str, turn: Any) -> bool:
    """Whether the template shows a system message after other turns (`turn` makes content
    as the template takes it)."""
    later = _try(
        source,
        [
            {"role": "user", "content": turn(_USER)},
            {"role": "assistant", "content": turn(_ARG)},
            {"role": "user", "content": turn(_USER)},
            {"role": "system", "content": turn(_SYSTEM)},
        ],
    )
    return later is not None and _SYSTEM in later


def _reasoning_as(source: str) -> str:
    """How the template shows an answer's past reasoning: as `reasoning_content` (most), as
    `thinking` (Ollama's name, LFM2.5's templates), as `thought` (MiniCPM 3's), or as a typed
    content block ({"type": "thinking"} then {"type": "text"}: Ministral 3, Magistral)."""
    if "thinking" not in source and "thought" not in source:
        return "reasoning_content"
    reasoning = "PROBE_REASONING_TEXT"

    def shows(assistant: Message) -> bool:
        turns = [{"role": "user", "content": _USER}, assistant, {"role": "user", "content": _USER}]
        out = _try(source, turns)
        # Shown as parts, not printed whole (a list printed as it is names its keys).
        printed = out is not None and ("'type'" in out or '"type"' in out)
        return out is not None and reasoning in out and _ARG in out and not printed

    if shows({"role": "assistant", "content": _ARG, "reasoning_content": reasoning}):
        return "reasoning_content"
    for name in ("thinking", "thought"):
        if shows({"role": "assistant", "content": _ARG, name: reasoning}):
            return name
    blocks = [{"type": "thinking", "thinking": reasoning}, {"type": "text", "text": _ARG}]
    if shows({"role": "assistant", "content": blocks}):
        return "blocks"
    return "reasoning_content"


def _example(family: parsers.Family | None, tools: list[dict[str, Any]]) -> str | None:
    """A call in the family's syntax, for the tool note (None: Hermes's, the note's own).
    A family's call text is its parser's (formats/parsers): what the note asks for is what
    the runner reads back."""
    if family is None or family.syntax.name == "hermes":
        return None
    syntax = family.syntax
    try:
        return syntax.write("<tool name>", "<arguments as a JSON object>")
    except (ValueError, TypeError):  # values written one by one: show the first tool's
        function = tools[0]["function"]
        keys = list((function.get("parameters") or {}).get("properties") or {}) or ["argument"]
        return syntax.write(function["name"], json.dumps({key: "..." for key in keys}))


def adapt(
    source: str,
    messages: list[Message],
    tools: list[dict[str, Any]] | None,
    family: parsers.Family | None = None,
    *,
    repairs: frozenset[str] = frozenset(),
) -> tuple[list[Message], list[dict[str, Any]] | None, dict[str, Any]]:
    """`messages` and `tools` as `source` can render them, and any variables it needs besides
    (new objects: the caller's are left as they were). `family` is the model's, whose call
    syntax a tool note asks for (default: the one the template's markers tell). `repairs`
    (template.render's, after the template refused the conversation as it was): "fold_system"
    folds the later system messages even where the probe saw them shown, "split_calls" gives
    each of a turn's several tool calls a turn of its own followed by its result (Llama 3's
    templates take one call a turn), "merge_turns" joins a user turn to the tool result or
    user turn before it (templates that insist on alternating roles)."""
    caps = probe(source)
    if "split_calls" in repairs or not caps.every_call:
        messages = _split_calls(messages)
    extra: dict[str, Any] = {}
    if caps.functions:
        specs = [tool.get("function", tool) for tool in tools or []]
        extra["functions"] = json.dumps(specs, ensure_ascii=False, indent=4) if specs else ""
    if caps.xml_tools and tools:
        extra["xml_tools"] = tools
    out = [_message(m, caps, index) for index, m in enumerate(messages)]
    if tools and caps.tools_in_system and not any(m.get("role") == "system" for m in out):
        out.insert(0, {"role": "system", "content": ""})  # where its tools are listed
    if tools and not (caps.tools or caps.functions or caps.xml_tools):
        family = family if family is not None else parsers.by_markers(source)
        out, tools = calls_mod.add_system_note(out, tools, _example(family, tools)), None
    if not caps.system_role and out and out[0].get("role") == "system":
        out = _fold_first_system(out, caps)
    if "fold_system" in repairs or not caps.mid_system:
        out = _fold_later_system(out)
    if "merge_turns" in repairs:
        out = _merge_turns(out)
    if caps.reasoning_as in ("thinking", "thought"):
        for message in out:
            if "reasoning_content" in message:
                message[caps.reasoning_as] = message.pop("reasoning_content")
    elif caps.reasoning_as == "blocks":
        for message in out:
            thought = message.pop("reasoning_content", None)
            if message.get("role") in ("system", "assistant") and isinstance(thought, str):
                text = message.get("content")
                message["content"] = [
                    {"type": "thinking", "thinking": thought},
                    *([{"type": "text", "text": text}] if isinstance(text, str) else text or []),
                ]
    if caps.typed_content:
        for message in out:
            if isinstance(message.get("content"), str):
                message["content"] = [{"type": "text", "text": message["content"]}]
    return out, tools, extra


def repairs_for(messages: list[Message]) -> list[frozenset[str]]:
    """The repairs to try, each adding one to the last, for a conversation its template
    refused: only those that change something in it."""
    steps = []
    if _later_system(messages):
        steps.append("fold_system")
    if any(len(m.get("tool_calls") or []) > 1 for m in messages):
        steps.append("split_calls")
    roles = [m.get("role") for m in messages]
    if any(a in ("tool", "user") and b == "user" for a, b in itertools.pairwise(roles)):
        steps.append("merge_turns")
    return [frozenset(steps[: n + 1]) for n in range(len(steps))]


def _split_calls(messages: list[Message]) -> list[Message]:
    """Each of an assistant turn's tool calls in a turn of its own, followed by its result
    (by id, else the next result given)."""
    out: list[Message] = []
    index = 0
    while index < len(messages):
        message = messages[index]
        calls = message.get("tool_calls") or []
        if message.get("role") != "assistant" or len(calls) < 2:
            out.append(message)
            index += 1
            continue
        end = index + 1
        while end < len(messages) and messages[end].get("role") == "tool":
            end += 1
        results = list(messages[index + 1 : end])
        for n, call in enumerate(calls):
            turn = {**message, "tool_calls": [call]}
            if n:
                turn = {"role": "assistant", "content": "", "tool_calls": [call]}
            out.append(turn)
            call_id = call.get("id") if isinstance(call, dict) else None
            paired = [r for r in results if call_id and r.get("tool_call_id") == call_id]
            if paired or results:
                result = (paired or results)[0]
                results.remove(result)
                out.append(result)
        out += results
        index = end
    return out


def _merge_turns(messages: list[Message]) -> list[Message]:
    """A user turn joined to the tool result or user turn just before it (a blank line
    between): for a template that refuses two such turns in a row."""
    out: list[Message] = []
    for message in messages:
        before = out[-1] if out else None
        text = message.get("content")
        if (
            before is not None
            and message.get("role") == "user"
            and before.get("role") in ("user", "tool")
            and isinstance(text, str)
            and isinstance(before.get("content"), str)
            and not message.get("media")
        ):
            out[-1] = {**before, "content": _join(before["content"], text, "\n\n")}
            continue
        out.append(message)
    return out


def _fold_first_system(out: list[Message], caps: Caps) -> list[Message]:
    """The system messages that open the conversation (Codex sends two), joined and folded
    into the turn after them, for a template with no system role."""
    lead = next((i for i, m in enumerate(out) if m.get("role") != "system"), len(out))
    first = out[0]["content"]
    for message in out[1:lead]:
        first = _join(first, message.get("content"), "\n\n")
    out = out[lead:]
    if out:
        out[0] = {**out[0], "content": _join(first, out[0].get("content"))}
    elif not caps.mid_system:
        out = [{"role": "user", "content": first}]
    else:
        out = [{"role": "system", "content": first}]
    return out


def _later_system(messages: list[Message]) -> bool:
    """Whether a system message comes after the first turn."""
    return any(m.get("role") == "system" for m in messages[1:])


def lost_later_system(messages: list[Message], prompt: str) -> bool:
    """Whether `prompt` lacks the text of a system message where the conversation has more
    than one (a template that keeps one system prompt, the last it saw: DeepSeek-R1's, which
    loses the first of Codex's two opening ones)."""
    texts = {m.get("content") for m in messages[1:] if m.get("role") == "system"}
    if texts and messages[0].get("role") == "system":
        texts.add(messages[0].get("content"))
    for text in texts:
        if isinstance(text, str) and text:
            given = sum(
                m["content"].count(text) for m in messages if isinstance(m.get("content"), str)
            )
            if prompt.count(text) < given:
                return True
    return False


def _fold_later_system(messages: list[Message]) -> list[Message]:
    """The system messages after the first turn, folded for a template that shows none there:
    into the user turn or tool result before each (joined by a blank line), else into the user
    turn after it, else as a user turn at its place."""
    out: list[Message] = []
    waiting: list[str] = []  # system texts for the next user turn
    for index, message in enumerate(messages):
        if message.get("role") != "system" or index == 0:
            if waiting and message.get("role") == "user":
                text = "\n\n".join(waiting)
                message = {**message, "content": _join(text, message.get("content"), "\n\n")}
                waiting = []
            elif waiting:
                out.append({"role": "user", "content": "\n\n".join(waiting)})
                waiting = []
            out.append(message)
            continue
        text = str(message.get("content") or "")
        before = out[-1] if out else None
        if before is not None and before.get("role") in ("user", "tool") and not waiting:
            out[-1] = {**before, "content": _join(before.get("content"), text, "\n\n")}
        elif text:
            waiting.append(text)
    if waiting:
        out.append({"role": "user", "content": "\n\n".join(waiting)})
    return out


def _join(system: Any, user: Any, between: str = "\n") -> Any:
    if isinstance(system, str) and isinstance(user, str):
        return f"{system}{between}{user}"
    return user


def _message(message: Message, caps: Caps, index: int) -> Message:
    out = {k: v for k, v in message.items() if k != "media"}
    calls = out.pop("tool_calls", None)
    if out.get("content") is None:
        out["content"] = ""
    if calls:
        if not isinstance(calls, list):
            raise BadRequestError(f"messages[{index}].tool_calls must be a list")
        made = [_call(call, caps, index, n) for n, call in enumerate(calls)]
        if caps.tool_calls:
            out["tool_calls"] = made
        else:
            blocks = "".join(
                calls_mod.TOOL_OPEN
                + json.dumps(
                    {"name": c["function"]["name"], "arguments": _as_object(c)},
                    ensure_ascii=False,
                )
                + calls_mod.TOOL_CLOSE
                for c in made
            )
            out["content"] = (str(out["content"]) + "\n" + blocks).lstrip("\n")
    if out.get("role") == "tool":
        if "name" not in out and isinstance(out.get("tool_name"), str):
            out["name"] = out["tool_name"]
        if caps.short_ids and isinstance(out.get("tool_call_id"), str):
            out["tool_call_id"] = _short_id(out["tool_call_id"])
        if not caps.tool_role:
            answer = f"<tool_response>\n{out['content']}\n</tool_response>"
            out = {"role": "user", "content": answer}
    return out


def _call(call: Any, caps: Caps, index: int, n: int) -> dict[str, Any]:
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadRequestError(
            f"messages[{index}].tool_calls[{n}] has no function name",
            hint='a tool call is {"function": {"name": ..., "arguments": {...}}}',
        )
    arguments = function.get("arguments", {})
    if caps.object_arguments:
        arguments = calls_mod.arguments_object(arguments)
    elif not isinstance(arguments, str):
        # Compact, as llama-server writes an object for a template that prints the text (and
        # Ollama and OpenAI write arguments): the same prompt as theirs (Functionary v3.2).
        arguments = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
    made: dict[str, Any] = {"type": "function", "function": {"name": function["name"]}}
    made["function"]["arguments"] = arguments
    call_id = call.get("id") if isinstance(call, dict) else None
    if isinstance(call_id, str) and call_id:
        made["id"] = _short_id(call_id) if caps.short_ids else call_id
    elif caps.short_ids:
        made["id"] = _short_id(f"{index}:{n}")
    return made


def _as_object(call: dict[str, Any]) -> Any:
    return calls_mod.arguments_object(call["function"]["arguments"])


def _short_id(call_id: str) -> str:
    """A 9-character id of letters and digits, the same for the same id (a call and its
    result stay paired)."""
    if len(call_id) == 9 and call_id.isalnum() and call_id.isascii():
        return call_id
    digest = hashlib.sha256(call_id.encode()).digest()
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(alphabet[b % len(alphabet)] for b in digest[:9])
