"""A forced tool call's grammar, in the model's own call syntax.

`tool_choice` "required" or a named function constrains the answer to a call. The call is
written as the model's family writes it (formats/parsers), so the model writes what it was
trained to write: `<tool_call>{"name": ..., "arguments": ...}</tool_call>` for Qwen,
`[TOOL_CALLS]NAME[ARGS]{...}` for Mistral, `<function=NAME><parameter=KEY>...` for Qwen3-Coder.
The syntax's `write` gives a call's text around a placeholder. JSON arguments follow the tool's
schema, enforced by llguidance's JSON compiler (worker/grammars/format.py's `%json`). Text values
(the XML families) are any text up to the next tag; Python calls (LFM2) take their arguments as
written. The rules are written as GBNF and read into Lark (format.to_lark).
"""

from __future__ import annotations

import json
import re
from typing import Any

from localrun.errors import BadRequestError
from localrun.formats import calls as tools_mod
from localrun.formats import quoted
from localrun.formats.parsers import Syntax
from localrun.worker.grammars.format import grammar_placeholder, json_placeholder, to_lark

# A custom tool's grammar of its input, by its name: {"syntax": "lark" | "regex", "definition"}.
Grammars = dict[str, dict[str, str]]

_ARGS = "\x01"  # where a call's JSON arguments go
# An XML or Python parameter's name and value: plain text, which every family writes as is.
_KEY, _VALUE = "zqkeyqz", "zqvalueqz"
# Markers that end the answer as tokens of their own: the grammar stops before them and the
# end of generation is allowed once it is complete.
_END_TOKENS = ("<|call|>", "<|eom_id|>")


def grammar(
    syntax: Syntax,
    tools: list[tools_mod.Tool],
    tool_choice: Any,
    *,
    primed: str = "",
    special: dict[str, int] | None = None,
    grammars: Grammars | None = None,
) -> str | None:
    """Return the grammar (Lark) of a forced call in `syntax`; None when the model may choose.

    The grammar is engine.sampling.constraint's. `primed` is a marker the prompt already ends
    with (Functionary's `>>>`), not repeated. `special` maps the family's markers that are special
    tokens to their ids; the call may write them as those tokens. `grammars` holds the custom
    tools' grammars of their input, by tool name (the Responses API's). A strict tool's schema is
    enforced whole or refused. Another's is enforced as Ollama's `format` is: the keywords the
    engine cannot enforce are left out, and the call is validated after (server.schema.answer).
    """
    if not tools_mod.forces(tool_choice):
        return None
    made = _Made(grammars or {})
    rules = made.calls(syntax, tools, tools_mod.forced_name(tools, tool_choice), primed)
    rules.append("root ::= calls")
    return made.lark(rules, special, lenient=frozenset(made.loose))


def lazy(
    syntax: Syntax,
    tools: list[tools_mod.Tool],
    *,
    primed: str = "",
    special: dict[str, int] | None = None,
    grammars: Grammars | None = None,
) -> tuple[str, tuple[str, ...]] | None:
    """Return a call's grammar under tool_choice "auto" when a tool is strict, and its triggers.

    A tool's `strict` is OpenAI's and Anthropic's promise that its arguments follow its schema.
    The triggers are the markers that open a call. The engine holds the answer to the grammar from a
    marker until the call is whole (engine.sampling.constraint.Lazy), and leaves the rest free.
    A strict tool's call follows its schema, another's is any object of its parameters, and a
    custom tool with a grammar (`grammars`) follows that. None where no tool is strict, or where
    a call of the family cannot be told by its first characters (_trigger).
    """
    grammars = grammars or {}

    def held(tool: tools_mod.Tool) -> bool:
        return tools_mod.strict(tool) or tool["function"]["name"] in grammars

    if primed or not any(held(tool) for tool in tools):
        return None
    triggers: set[str] = set()
    before: set[str] = set()  # what a call's text holds ahead of its trigger (not held)
    for tool in tools:
        found = _trigger(syntax, tool["function"]["name"])
        if found is None:
            return None
        triggers.add(found[0])
        before.add(found[1])
    if len(before) > 1:
        return None
    loose = [tool if held(tool) else _loose(tool) for tool in tools]
    made = _Made(grammars)
    rules = made.calls(syntax, loose, None, before.pop())
    rules.append("root ::= calls")
    return made.lark(rules, special), tuple(sorted(triggers))


def _trigger(syntax: Syntax, name: str) -> tuple[str, str] | None:
    """Return what opens a call of `name` in the answer, and the call's text ahead of it.

    That is the family's marker that starts the call. Else it is the marker inside the call after
    a header of its own (gpt-oss's `to=functions.`, after `<|channel|>commentary `). Else, in a
    family whose calls have no marker (a Python list), it is the call's first characters up to
    the tool's name (`[get_weather`), as llama.cpp's triggers for such families are.
    """
    try:
        text = syntax.write(name, "{}")
    except (ValueError, TypeError):
        text = syntax.write(name, json.dumps({_KEY: _VALUE}))
    found = [m for m in syntax.starts if m and text.startswith(m)]
    if found:
        return max(found, key=len), ""
    if syntax.opens and syntax.opens in text:
        at = text.index(syntax.opens)
        return syntax.opens, text[:at]
    at = text.find(name)
    return (text[: at + len(name)], "") if at >= 0 else None


def _loose(tool: tools_mod.Tool) -> tools_mod.Tool:
    """A tool whose arguments may be any object of its parameters' names."""
    properties = tools_mod.parameters(tool).get("properties")
    names = properties.keys() if isinstance(properties, dict) else ()
    parameters = {"type": "object", "properties": {name: {} for name in names}}
    return {**tool, "function": {**tool["function"], "parameters": parameters}}


def call_or_format(
    syntax: Syntax,
    tools: list[tools_mod.Tool],
    schema: dict[str, Any],
    *,
    primed: str = "",
    special: dict[str, int] | None = None,
    lenient: bool = False,
) -> str:
    """Return the grammar for Ollama's `format` with tools: a call, or a value of `schema`.

    The call is in the family's syntax, so the model can still call what it is offered. With
    `lenient`, the keywords the engine cannot enforce are left out of `schema`.
    """
    made = _Made({})
    rules = made.calls(syntax, tools, None, primed)
    made.schemas.append(schema)
    index = len(made.schemas) - 1
    rules.append(f"root ::= calls | {json_placeholder(index)}")
    # Each schema as its own route takes it: a strict tool's whole, the format's as asked.
    loose = made.loose | ({index} if lenient else set())
    return made.lark(rules, special, lenient=frozenset(loose))


class _Made:
    """A call grammar's GBNF rules in the making, and what its placeholders stand for."""

    def __init__(self, grammars: Grammars) -> None:
        self.grammars = grammars
        self.schemas: list[dict[str, Any]] = []
        self.loose: set[int] = set()  # the schemas of tools not strict (by index)
        self.texts: list[str] = []  # custom tools' input grammars, each once quoted or raw

    def calls(
        self, syntax: Syntax, tools: list[tools_mod.Tool], only: str | None, primed: str
    ) -> list[str]:
        """GBNF rules `calls` (a call of any tool, or of `only`) and each call's own."""
        rules: list[str] = []
        calls: list[str] = []
        for index, tool in enumerate(tools):
            function = tool["function"]
            name = function["name"]
            if only is not None and name != only:
                continue
            rule = f"call{index}"
            spec = self.grammars.get(name)
            own = _custom_rules(syntax, rule, name, spec, primed, self.texts) if spec else None
            if own is None:
                schema, before = tools_mod.parameters(tool), len(self.schemas)
                own = _call_rules(syntax, rule, name, schema, primed, self.schemas)
                if not tools_mod.strict(tool):
                    self.loose.update(range(before, len(self.schemas)))
            rules += own
            calls.append(rule)
        rules.append(f"calls ::= {' | '.join(calls)}")
        return rules

    def lark(
        self,
        rules: list[str],
        special: dict[str, int] | None,
        *,
        lenient: bool | frozenset[int] = False,
    ) -> str:
        return to_lark(
            "\n".join(rules), self.schemas, special or {}, lenient=lenient, grammars=self.texts
        )


def _custom_rules(
    syntax: Syntax, rule: str, name: str, spec: dict[str, str], primed: str, texts: list[str]
) -> list[str] | None:
    """Return the rules of a custom tool's call whose `input` follows the tool's grammar.

    The input is raw where the family writes a value as text (XML parameters). It is JSON-escaped
    inside a JSON or Python string (formats.quoted). None where the family's call cannot hold it:
    its own value rules, or a grammar quoting cannot carry. The input is then any string, as the
    tool describes it.
    """
    definition = spec["definition"]
    raw = quoted.regex_grammar(definition) if spec["syntax"] == "regex" else definition
    if syntax.value_rules(rule, name, {"type": "object"}) is not None:
        return None
    try:
        text = syntax.write(name, _ARGS).removeprefix(primed)
    except (ValueError, TypeError):  # values written as text: `input`'s own
        text = syntax.write(name, json.dumps({"input": _VALUE})).removeprefix(primed)
        head, _, tail = text.partition(_VALUE)
        inside = head.endswith('"') and tail.startswith('"')  # a Python string
    else:
        for marker in _END_TOKENS:
            text = text.removesuffix(marker)
        head, _, tail = text.partition(_ARGS)
        head, tail, inside = head + '{"input": "', '"}' + tail, True
    if inside:
        try:
            raw = quoted.json_string(raw)
        except BadRequestError:
            return None
    texts.append(raw)
    return [f"{rule} ::= {_spaced(head)} {grammar_placeholder(len(texts) - 1)} {_spaced(tail)}"]


def _call_rules(
    syntax: Syntax,
    rule: str,
    name: str,
    parameters: dict[str, Any],
    primed: str,
    schemas: list[dict[str, Any]],
) -> list[str]:
    own = syntax.value_rules(rule, name, parameters)
    if own is not None:
        return own
    try:
        text = syntax.write(name, _ARGS).removeprefix(primed)
    except (ValueError, TypeError):  # the syntax writes values, not JSON: XML or Python
        return _value_rules(syntax, rule, name, parameters)
    for marker in _END_TOKENS:
        text = text.removesuffix(marker)
    head, _, tail = text.partition(_ARGS)
    schemas.append(parameters)
    return [f"{rule} ::= {_spaced(head)} {json_placeholder(len(schemas) - 1)} {_spaced(tail)}"]


def _value_rules(syntax: Syntax, rule: str, name: str, parameters: dict[str, Any]) -> list[str]:
    """Return the rules of calls whose values are written as text, not JSON.

    Each parameter is as the family writes it: its name one of the tool's, its value any text
    but a tag (or a Python literal).
    """
    keys = " | ".join(_quote(k) for k in (parameters.get("properties") or {}).keys() or ["x"])
    text = syntax.write(name, json.dumps({_KEY: _VALUE}))
    start, end = text.find(_KEY), text.find(_VALUE)
    if start < 0 or end < 0:
        raise BadRequestError(f"a forced call cannot be written in {syntax.name}'s syntax")
    after = end + len(_VALUE)
    if text[after:].startswith('"') and text[start - 1] in "(, ":  # Python: key="value"
        head, tail = text[:start], text[after + 1 :]
        value = r'"\"" ( [^"\\] | "\\" . )* "\"" | [-0-9.eE]+ | "True" | "False" | "None"'
        kv = f"{rule}-kv ::= ({keys}) {_quote(text[start + len(_KEY) : end - 1])} ({value})"
        return [kv, f'{rule} ::= {_quote(head)} ({rule}-kv (", " {rule}-kv)*)? {_quote(tail)}']
    param_open = text.rfind("<", 0, start)
    close = text.find(">", after)
    if param_open < 0 or close < 0:
        raise BadRequestError(f"a forced call cannot be written in {syntax.name}'s syntax")
    head, tail = text[:param_open], text[close + 1 :]
    before_key, between = text[param_open:start], text[start + len(_KEY) : end]
    after_value = text[after : close + 1]
    # Any text but the closing tag: `<` too (code, `a < b`), unless `</` begins.
    value = '([^<] | "<" [^/])*'
    param = f"{_quote(before_key)} ({keys}) {_quote(between)} {value} {_quote(after_value)}"
    # A newline between parameters, as the families write them (the first is in `tail`).
    body = f'({rule}-param "\\n"?)* {_quote(tail.removeprefix(chr(10)))}'
    return [f"{rule}-param ::= {param}", f"{rule} ::= {_quote(head)} {body}"]


# Where a tag meets a call's JSON (`<tool_call>{`, `}</tool_call>`): the families' templates
# and models put a newline there as often as not (Qwen's `<tool_call>\n{...}\n</tool_call>`).
_TAG_MEETS_JSON = re.compile(r"(?<=>)(?=[{\[])|(?<=[}\]])(?=<)")


def _spaced(text: str) -> str:
    """A call's fixed text as GBNF, a newline allowed where a tag meets its JSON."""
    pieces = _TAG_MEETS_JSON.split(text)
    return ' "\\n"? '.join(_quote(piece) for piece in pieces)


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False) if text else '""'
