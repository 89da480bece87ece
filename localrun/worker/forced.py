"""A forced tool call's grammar, in the model's own call syntax.

`tool_choice` "required" or a named function constrains the answer to a call; the call is
written as the model's family writes it (formats/parsers), so the model writes what it was
trained to write: `<tool_call>{"name": ..., "arguments": ...}</tool_call>` for Qwen,
`[TOOL_CALLS]NAME[ARGS]{...}` for Mistral, `<function=NAME><parameter=KEY>...` for Qwen3-Coder.
The syntax's `write` gives a call's text around a placeholder; JSON arguments are the tool's
schema, enforced by llguidance's JSON compiler (worker/grammar.py's `%json`), text values (the
XML families) any text up to the next tag, Python calls (LFM2) their arguments as written. The
rules are written as GBNF and read into Lark (worker/grammar.to_lark).
"""

from __future__ import annotations

import json
from typing import Any

from localrun.errors import BadRequestError
from localrun.formats import calls as tools_mod
from localrun.formats.parsers import Syntax
from localrun.worker.grammar import json_placeholder, to_lark

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
) -> str | None:
    """The grammar (Lark, engine.constraint's) of a forced call in `syntax`; None when the
    model may choose. `primed` is a marker the prompt already ends with (Functionary's `>>>`):
    not repeated. `special`: the family's markers the vocabulary has as special tokens (text:
    id), which the call may write as those tokens."""
    if tool_choice in (None, "auto", "none"):
        return None
    schemas: list[dict[str, Any]] = []
    rules = _calls(syntax, tools, tools_mod.forced_name(tools, tool_choice), primed, schemas)
    rules.append("root ::= calls")
    return to_lark("\n".join(rules), schemas, special or {})


def lazy(
    syntax: Syntax,
    tools: list[tools_mod.Tool],
    *,
    primed: str = "",
    special: dict[str, int] | None = None,
) -> tuple[str, tuple[str, ...]] | None:
    """The grammar of a call under tool_choice "auto" when a tool is `strict` (OpenAI's and
    Anthropic's promise that its call's arguments follow its schema), with the markers that
    open a call: the engine holds the answer to it from a marker until the call is whole
    (engine.constraint.Lazy), and leaves the rest of the answer free. A strict tool's call
    follows its schema; another tool's is any object of its parameters. None where no tool is
    strict, or the family's calls open with no marker of their own (a bare JSON object, a
    Python list, gpt-oss's channels): those calls are read as written."""
    if primed or not any(strict(tool) for tool in tools):
        return None
    triggers: set[str] = set()
    for tool in tools:
        name = tool["function"]["name"]
        try:
            text = syntax.write(name, "{}")
        except (ValueError, TypeError):
            text = syntax.write(name, json.dumps({_KEY: _VALUE}))
        found = [m for m in syntax.starts if m and text.startswith(m)]
        if not found:
            return None
        triggers.add(max(found, key=len))
    loose = [tool if strict(tool) else _loose(tool) for tool in tools]
    schemas: list[dict[str, Any]] = []
    rules = _calls(syntax, loose, None, "", schemas)
    rules.append("root ::= calls")
    return to_lark("\n".join(rules), schemas, special or {}), tuple(sorted(triggers))


def strict(tool: tools_mod.Tool) -> bool:
    """Whether a tool's calls must follow its parameters' schema (its `strict: true`)."""
    return tool["function"].get("strict") is True


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
    """The grammar for Ollama's `format` with tools: a call in the family's syntax, or an
    answer that is a value of the format's `schema`, so the model can still call what it is
    offered (`lenient`: the keywords the engine cannot enforce left out)."""
    schemas: list[dict[str, Any]] = []
    rules = _calls(syntax, tools, None, primed, schemas)
    schemas.append(schema)
    rules.append(f"root ::= calls | {json_placeholder(len(schemas) - 1)}")
    return to_lark("\n".join(rules), schemas, special or {}, lenient=lenient)


def _calls(
    syntax: Syntax,
    tools: list[tools_mod.Tool],
    only: str | None,
    primed: str,
    schemas: list[dict[str, Any]],
) -> list[str]:
    """GBNF rules `calls` (a call of any tool, or of `only`) and each call's own."""
    rules: list[str] = []
    calls: list[str] = []
    for index, tool in enumerate(tools):
        function = tool["function"]
        if only is not None and function["name"] != only:
            continue
        rule = f"call{index}"
        schema = tools_mod.parameters(tool)
        rules += _call_rules(syntax, rule, function["name"], schema, primed, schemas)
        calls.append(rule)
    rules.append(f"calls ::= {' | '.join(calls)}")
    return rules


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
    return [f"{rule} ::= {_quote(head)} {json_placeholder(len(schemas) - 1)} {_quote(tail)}"]


def _value_rules(syntax: Syntax, rule: str, name: str, parameters: dict[str, Any]) -> list[str]:
    """Calls whose values are written, not JSON: each parameter as the family writes it, its
    name one of the tool's, its value any text but a tag (or a Python literal)."""
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


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False) if text else '""'
