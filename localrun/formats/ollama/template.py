"""Ollama's layer over Go templates: how it parses a template and renders a conversation.

This follows ollama/ollama `template/template.go`, with `server/prompt.go` and `openai/openai.go`
for how a request's messages and tools reach it. A template sees .System .Messages .Tools .Prompt
.Suffix .Response, and .Think .ThinkLevel .IsThinkSet. Their types are in values.py, how a request
becomes them in convert.py, and the template functions (json, currentDate, ...) in funcs.py. JSON is
Go's encoding/json: compact, `<>&` escaped, maps in key order, numbers from JSON as float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from localrun.errors import TemplateError
from localrun.formats import sandbox
from localrun.formats.gotemplate.exec import Budget, GoTemplate, parse
from localrun.formats.gotemplate.parse import (
    Action,
    Branch,
    Command,
    Field,
    ListNode,
    Node,
    Pipe,
    TemplateCall,
    Variable,
)
from localrun.formats.ollama.convert import (
    ApiMessage,
    collate,
    ollama_messages,
    template_messages,
    template_tools,
    think_flags,
)
from localrun.formats.ollama.funcs import FUNCS
from localrun.formats.ollama.values import (
    CallFunction,
    JSONMap,
    Message,
    NilList,
    OrderedMap,
    PropertyType,
    Tool,
    ToolCall,
    ToolFunction,
    ToolList,
    ToolParameters,
    ToolProperty,
)

__all__ = [  # what the other modules here define is re-exported for the callers of this one
    "FUNCS",
    "ApiMessage",
    "CallFunction",
    "JSONMap",
    "Message",
    "NilList",
    "OllamaTemplate",
    "OrderedMap",
    "PropertyType",
    "Tool",
    "ToolCall",
    "ToolFunction",
    "ToolList",
    "ToolParameters",
    "ToolProperty",
    "check",
    "collate",
    "cut_after_response",
    "load",
    "ollama_messages",
    "render",
]

# -- parsing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OllamaTemplate:
    template: GoTemplate
    vars: frozenset[str]  # Ollama's Vars(): identifiers, lower-cased

    @property
    def uses_messages(self) -> bool:
        return "messages" in self.vars


def _identifiers(root: Node) -> list[str]:
    """Ollama's Identifiers(): fields and variables in actions, branches and template calls.

    Those inside a chain's operand do not count.
    """
    names: list[str] = []
    stack: list[Node] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, ListNode):
            stack.extend(reversed(node.nodes))
        elif isinstance(node, TemplateCall):
            if node.pipe is None:
                raise TemplateError(
                    "the Go template is not valid: undefined template specified "
                    f"({{{{template {node.name!r}}}}} needs an argument, line {node.line})"
                )
            stack.append(node.pipe)
        elif isinstance(node, Action):
            stack.append(node.pipe)
        elif isinstance(node, Branch):
            stack.extend(n for n in (node.orelse, node.body, node.pipe) if n is not None)
        elif isinstance(node, Pipe):
            stack.extend(arg for cmd in reversed(node.cmds) for arg in reversed(cmd.args))
        elif isinstance(node, Field | Variable):
            names.extend(node.idents)
    return names


@lru_cache(maxsize=32)
def load(source: str) -> OllamaTemplate:
    """Parse as Ollama's template.Parse does; raises TemplateError.

    A template that names neither `.Messages` nor `.Response`, in any letter case and in any of its
    trees, gets `{{ .Response }}` appended. `{{ template "x" }}` without an argument is refused
    ("undefined template specified").
    """
    tmpl = parse(source, frozenset(FUNCS))
    names = frozenset(name.lower() for tree in tmpl.trees.values() for name in _identifiers(tree))
    trees = dict(tmpl.trees)
    if "messages" not in names and "response" not in names:
        line = source.count("\n") + 1
        response = Action(Pipe((), False, (Command((Field(("Response",)),)),), line))
        trees[""] = ListNode((*trees[""].nodes, response))
        names |= {"response"}
    return OllamaTemplate(GoTemplate(trees, source), names)


class _Cut:
    """Ollama's deleteNode: keep the tree up to its first `.Response` field, drop the rest."""

    def __init__(self) -> None:
        self.cut = False

    def drop(self, node: Node) -> bool:
        if isinstance(node, Field) and "Response" in node.idents:
            self.cut = True
            return False
        return self.cut

    def walk(self, node: Node) -> Node | None:
        if self.drop(node):
            return None
        if isinstance(node, ListNode):
            kept = (self.walk(child) for child in node.nodes)
            return ListNode(tuple(n for n in kept if n is not None))
        if isinstance(node, Branch):
            if self.drop(node):  # Go visits the BranchNode inside the If/Range/WithNode too
                return None
            body = self.walk(node.body)
            orelse = None
            if node.orelse is not None:
                orelse = self.walk(node.orelse)
                if orelse is None:  # a nil interface asserted to *ListNode: Go panics here
                    raise TemplateError(
                        "Ollama cannot render this template: its {{ .Response }} sits in a "
                        "branch that has an {{ else }}",
                        hint="move {{ .Response }} out of the {{ if }}/{{ range }}/{{ with }}",
                    )
            assert isinstance(body, ListNode)
            assert orelse is None or isinstance(orelse, ListNode)
            return Branch(node.kind, node.pipe, body, orelse)
        if isinstance(node, Action):
            pipe = self.walk(node.pipe)
            return Action(pipe) if isinstance(pipe, Pipe) else None
        if isinstance(node, Pipe):
            cmds = []
            for cmd in node.cmds:
                args = tuple(a for a in (self.walk(arg) for arg in cmd.args) if a is not None)
                if not args:
                    return None
                cmds.append(Command(args))
            return Pipe(node.decl, node.is_assign, tuple(cmds), node.line) if cmds else None
        return node


def cut_after_response(root: ListNode) -> ListNode:
    kept = _Cut().walk(root)
    assert isinstance(kept, ListNode)
    return kept


# -- rendering --------------------------------------------------------------------------------


def render(
    source: str,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    think: bool | str | None = None,
    suffix: str | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt Ollama gives its model for this conversation (OpenAI-shaped messages and tools).

    With `suffix`, it is the fill-in-the-middle prompt, and .Prompt is the last user message. With
    add_generation_prompt=False, the last turn of a template without .Messages is rendered whole,
    not cut after .Response. Raises TemplateError.
    """

    def bounded() -> str:
        try:
            return _render(source, messages, tools, think, suffix, add_generation_prompt)
        except RecursionError:
            raise TemplateError("the Go template's data nests too deeply") from None

    return sandbox.call(bounded)


def _render(
    source: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    think: bool | str | None,
    suffix: str | None,
    add_generation_prompt: bool,
) -> str:
    # Messages are collated: consecutive messages of one role joined by a blank line, except tool
    # results, and every system message also joined into .System. With a prompt and a suffix
    # (fill-in-the-middle) the template runs once on .Prompt/.Suffix. One that names .Messages
    # runs once on .System/.Messages/.Tools; any other once per prompt/response pair (_legacy).
    tmpl = load(source)
    flags = think_flags(think)
    budget = Budget()
    if suffix:
        users = [m for m in messages if str(m.get("role") or "").lower() == "user"]
        prompt = str(users[-1].get("content") or "") if users else ""
        if prompt:
            data = {"Prompt": prompt, "Suffix": suffix, "Response": "", **flags}
            return tmpl.template.execute(data, FUNCS, budget=budget)
        messages = []
    system, collated = collate(ollama_messages(messages))
    if tmpl.uses_messages:
        data = {
            "System": system,
            "Messages": template_messages(collated),
            "Tools": template_tools(tools),
            "Response": "",
            **flags,
        }
        return tmpl.template.execute(data, FUNCS, budget=budget)
    return _legacy(tmpl, collated, flags, budget, add_generation_prompt)


def _legacy(
    tmpl: OllamaTemplate,
    collated: list[ApiMessage],
    flags: dict[str, Any],
    budget: Budget,
    add_generation_prompt: bool,
) -> str:
    """One run per prompt/response pair; the last one cut after .Response.

    The cut is at the first `.Response` field, so the prompt ends where the model's answer begins.
    As in Ollama, that last run has neither the template's functions nor its {{define}}s.
    """
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def execute() -> None:
        out.append(tmpl.template.execute({**turn, **flags}, FUNCS, budget=budget))
        turn.update(System="", Prompt="", Response="")

    for m in collated:
        if m.role == "system":
            if turn["Prompt"] or turn["Response"]:
                execute()
            turn["System"] = m.content
        elif m.role == "user":
            if turn["Response"]:
                execute()
            turn["Prompt"] = m.content
        elif m.role == "assistant":
            turn["Response"] = m.content
    if not add_generation_prompt:
        execute()
        return "".join(out)
    last = GoTemplate({"": cut_after_response(tmpl.template.root)}, tmpl.template.source)
    out.append(last.execute({**turn, **flags}, {}, budget=budget))
    return "".join(out)


_TRIAL = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "It is sunny in Paris."},
    {"role": "user", "content": "And in Rome?"},
]
_TRIAL_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city"}},
                "required": ["city"],
            },
        },
    }
]


def check(source: str) -> None:
    """Refuse a template Ollama could not use, with a TemplateError that says why.

    It must parse and render a short conversation: system, user, assistant, user, with a tool.
    """
    load(source)
    render(source, _TRIAL, tools=_TRIAL_TOOLS)
