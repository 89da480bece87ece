"""Tool definitions and family templates as a model is sent them, without a server: a client's
tool reaches the template as it sent it, a family's template is chosen by the vocabulary and
renders every conversation, and the GGUF header looks for every family's markers."""

from __future__ import annotations

import json

from localrun.formats import families

from support import DATA
from support.tools import CLIENT_TOOL

CORPUS = DATA / "templates"


def _name(template: str) -> str:
    return template.lower().replace(".", "-")[:60]


def test_a_family_is_chosen_by_the_vocabulary() -> None:
    gemma = families.choose(None, None, {"<start_of_turn>", "<|im_start|>"})
    assert gemma.origin == "gemma" and "<start_of_turn>" in gemma.reason
    assert families.choose(None, None, {"<|im_start|>"}).origin == "chatml"
    assert families.choose(None, None, {"<|start_header_id|>"}).origin == "llama3"
    assert families.choose(None, None, {"[INST]"}).origin == "mistral"
    assert families.choose(None, None, {"<|user|>"}).origin == "base"  # Phi-3 needs all three
    base = families.choose(None, None, set())
    assert base.base and "base model" in base.reason
    assert families.choose("T", "G", set()).source == "T"
    assert families.choose(None, "G", set()).source == "G"
    assert families.choose(None, None, None).source is None  # unknown vocabulary: ChatML


def test_the_header_looks_for_every_familys_markers() -> None:
    from localrun.gguf.header import CHAT_TOKENS

    assert {t for _name, tokens, _source in families.FAMILIES for t in tokens} <= CHAT_TOKENS
    from localrun.formats import parsers

    assert {t for f in parsers.FAMILIES for t in f.tokens} <= CHAT_TOKENS


def test_family_templates_render_every_conversation() -> None:
    from localrun.formats import template

    data = json.loads((CORPUS / "prompts.json").read_text())
    for name, _tokens, source in families.FAMILIES:
        for conversation in data["conversations"].values():
            out = template.render(source, conversation["messages"], tools=conversation.get("tools"))
            assert out, name
    gemma = dict((n, s) for n, _t, s in families.FAMILIES)["gemma"]
    out = template.render(
        gemma, [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    )
    assert out == "<start_of_turn>user\nS\nU<end_of_turn>\n<start_of_turn>model\n"


def test_a_bare_function_is_wrapped_and_nothing_else_changes() -> None:
    from localrun.formats import calls

    bare = {"name": "f", "parameters": {"type": "object"}, "strict": True}
    assert calls.normalize([bare]) == [{"type": "function", "function": bare}]
    assert calls.normalize([CLIENT_TOOL])[0] is CLIENT_TOOL
    assert calls.parameters({"function": {"name": "g"}}) == {"type": "object", "properties": {}}


def test_no_tools_is_none_to_a_template() -> None:
    """vLLM's Llama 3.1 tool template tests `tools is not none`: with no tools it must not take
    its tools branch (transformers passes None)."""
    from localrun.formats import template

    source = "{% if tools is not none %}TOOLS{% else %}NONE{% endif %}"
    assert template.render(source, [{"role": "user", "content": "hi"}]) == "NONE"


def test_each_dialects_tool_keeps_the_clients_order() -> None:
    """Anthropic's {name, description, input_schema} and a Responses function tool become a
    function of name, description, parameters in that order (vLLM's translations), a Responses
    tool keeping its other keys (strict)."""
    from localrun.server.anthropic import tools as anthropic_tools
    from localrun.server.body import Body
    from localrun.server.responses import tools as responses_tools

    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    body = {"tools": [{"name": "w", "description": "d", "input_schema": schema}]}
    tools, _ = anthropic_tools.tools_of(Body(body))
    assert tools is not None
    assert list(tools[0]["function"].items()) == [("name", "w"), ("description", "d"),
                                                  ("parameters", schema)]  # fmt: skip
    flat = {"type": "function", "name": "w", "description": "d", "parameters": schema,
            "strict": True}  # fmt: skip
    offered = responses_tools.tools_of([flat]).tools
    assert offered is not None
    made = offered[0]["function"]
    assert list(made.items()) == [("name", "w"), ("description", "d"), ("parameters", schema),
                                  ("strict", True)]  # fmt: skip
