"""A conversation made renderable by one Jinja template, decided by probing the template.

llama.cpp does not trust a template to take every conversation. It renders a few small ones first
(common/jinja/caps.cpp) and adapts what it passes (common/chat.cpp's workarounds). So do we, once
per template, from what the probes' output shows. A system message the template refuses or drops is
folded into a turn beside it, never lost. Tools it does not show become a system note
(formats/calls.py). Typed content, tool calls, tool results and past reasoning take the shape it
reads. Caps holds what the probes found; adapt() applies it.

A template is told what Hugging Face's apply_chat_template tells it: `tools` is None when there
are none, as llama-server passes it (vLLM's Llama 3.1 and xLAM templates test for it).
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
    """llama.cpp's tool probe: a call, its result, an answer and a new question.

    `tool_role` and `calls` False give them as adapt() would for a template without them.
    """
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
    """The template's output for a probe, or None if it refuses it.

    A breach of the bounds is not a refusal: it ends the probing with that error.
    """
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
    """The Jinja template rendered with `context`, again with `tools` undefined if None fails.

    So a template written for llama.cpp's engine, which loops over a null as over nothing, renders
    as it does there. Command R+'s tool_use template loops over the tools unasked.
    """
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
    """Whether the template lists the tools it is given, and whether only beside a system message.

    FunctionGemma's template lists them inside the system turn.
    """
    user = {"role": "user", "content": turn(_USER)}
    listed = _try(source, [user], _PROBE_TOOLS)
    if listed is not None and _TOOL in listed:
        return True, False
    system = {"role": "system", "content": turn(_SYSTEM)}
    out = _try(source, [system, user], _PROBE_TOOLS)
    return False, out is not None and _TOOL in out


def _shows_later_system(source: str, turn: Any) -> bool:
    """Whether the template shows a system message after other turns.

    `turn` makes content as the template takes it.
    """
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
    """How the template shows an answer's past reasoning: the name it reads, or "blocks".

    Most read `reasoning_content`. `thinking` is Ollama's name, read by LFM2.5's templates;
    `thought` is MiniCPM 3's. "blocks" means a typed content block, {"type": "thinking"} then
    {"type": "text"}, as Ministral 3 and Magistral read it.
    """
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
    """A call in the family's syntax for the tool note, or None for Hermes's, the note's own.

    A family's call text is its parser's (formats/parsers), so what the note asks for is what the
    runner reads back.
    """
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
    """`messages` and `tools` as `source` can render them, and any variables it needs besides.

    It returns new objects and leaves the caller's as they were. `family` is the model's, whose call
    syntax a tool note asks for; None means the one the template's markers tell. `repairs` come from
    template.render, after the template refused the conversation as it was. "fold_system" folds the
    later system messages even where the probe saw them shown. "split_calls" gives each of a turn's
    tool calls a turn of its own, followed by its result: Llama 3's templates take one call a turn.
    "merge_turns" joins a user turn to the tool result or user turn before it, for templates that
    insist on alternating roles.
    """
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
    # A note, so the model still learns the tools; llama.cpp passes them to be dropped.
    if tools and not (caps.tools or caps.functions or caps.xml_tools):
        family = family if family is not None else parsers.by_markers(source)
        out, tools = calls_mod.add_system_note(out, tools, _example(family, tools)), None
    # A refused or dropped system message (Gemma) joins the first user turn after a newline, as
    # llama.cpp does. Later ones come from Claude Code, OpenAI's and Ollama's clients.
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
        # Decided by probing: llama.cpp decides by markers, so it also sends blocks to Devstral,
        # whose template drops them.
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
    """The repairs to try for a conversation its template refused, each adding one to the last.

    Only those that change something in the conversation are tried.
    """
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
    """Each of an assistant turn's tool calls in a turn of its own, followed by its result.

    A call's result is found by id, else it is the next result given.
    """
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
    """A user turn joined to the tool result or user turn just before it, a blank line between.

    This serves a template that refuses two such turns in a row.
    """
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
    """The system messages that open the conversation, joined and folded into the turn after them.

    This serves a template with no system role. Codex opens with two system messages.
    """
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
    """Whether `prompt` lacks the text of a system message, where the conversation has several.

    Some templates keep one system prompt, the last they saw. DeepSeek-R1's does, and so loses the
    first of Codex's two opening ones.
    """
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
    """The system messages after the first turn, folded for a template that shows none there.

    Each goes into the user turn or tool result before it, joined by a blank line. Failing that, it
    goes into the user turn after it, else it becomes a user turn at its place.
    """
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
    """A 9-character id of letters and digits, the same for the same id.

    A call and its result stay paired. Mistral's templates require such ids; llama.cpp leaves them
    to fail.
    """
    if len(call_id) == 9 and call_id.isalnum() and call_id.isascii():
        return call_id
    digest = hashlib.sha256(call_id.encode()).digest()
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(alphabet[b % len(alphabet)] for b in digest[:9])
