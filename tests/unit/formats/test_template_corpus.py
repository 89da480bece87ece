"""llama.cpp's 70 real chat templates: every one renders every conversation, and the prompts
are llama-server's but for the differences listed here, each a choice with its reason (and
the conversations llama-server refuses, listed with what localrun renders instead)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from corpora.template_prompts import placeholders

from localrun.formats import adapt, families, template

from support import TEMPLATES

CORPUS = TEMPLATES
DATA = json.loads((CORPUS / "prompts.json").read_text())
FILES = sorted(p.name for p in CORPUS.glob("*.jinja"))

# What localrun renders differently from llama-server, and why.
NOTE = "tools the template does not show go in a system note, so the model learns them"
WRITTEN = "a call the template does not show is written out in the answer, not dropped"
# The conversations with tools and a call: "tools" ends on its result, "followup" goes on to
# the user's next question.
TOOL_CONVERSATIONS = ("tools", "followup")
DIFFERENT = {
    **{
        (name, conv): NOTE
        for conv in TOOL_CONVERSATIONS
        for name in (
            "HuggingFaceTB-SmolLM3-3B.jinja",
            "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
            "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
            "deepseek-ai-DeepSeek-V3.1.jinja",
            "llama-cpp-rwkv-world.jinja",
            "microsoft-Phi-3.5-mini-instruct.jinja",
        )
    },
    **{
        (name, conv): WRITTEN
        for conv in TOOL_CONVERSATIONS
        for name in (
            "LFM2-8B-A1B.jinja",
            "LFM2.5-Instruct.jinja",
            "ibm-granite-granite-3.3-2B-Instruct.jinja",
        )
    },
    **{
        ("fireworks-ai-llama-3-firefunction-v2.jinja", conv): (
            "the template reads the tools as JSON text in `functions`: llama-server leaves it empty"
        )
        for conv in TOOL_CONVERSATIONS
    },
    **{
        ("google-gemma-4-31B-it-interleaved.jinja", conv): (
            "llama-server folds tool results into the model's turn for older Gemma 4 templates "
            "(a family adaptation, with Gemma 4's tool calls)"
        )
        for conv in TOOL_CONVERSATIONS
    },
    **{
        ("Apertus-8B-Instruct.jinja", conv): (
            "enable_thinking is true for every template; llama-server turns it off where its "
            "parsers do not know the reasoning markers (Apertus deliberates)"
        )
        for conv in DATA["conversations"]
    },
    ("unsloth-mistral-Devstral-Small-2507.jinja", "reasoning"): (
        "llama-server sends reasoning as content blocks by its Ministral markers, and "
        "Devstral's template then drops the answer; localrun probes the template"
    ),
}

# What llama-server refuses (its prompt recorded as None), and what localrun renders instead.
ALTERNATE = "the template refuses a user turn right after a tool result (roles must alternate)"
REFUSED = {
    **{
        (name, "followup"): ALTERNATE + "; localrun joins it to the result"
        for name in (
            "Mistral-Small-3.2-24B-Instruct-2506.jinja",
            "mistralai-Ministral-3-14B-Reasoning-2512.jinja",
            "mistralai-Mistral-Nemo-Instruct-2407.jinja",
        )
    },
    **{
        ("google-gemma-2-2b-it.jinja", conv): (
            "the template has no tool role and insists on alternating roles; localrun gives the "
            "result as a user turn, joined to the user turn after it"
        )
        for conv in TOOL_CONVERSATIONS
    },
}


def _render(name: str, conversation: dict[str, Any]) -> str:
    source = (CORPUS / name).read_text()
    bos = DATA["bos_token"]
    out = template.render(
        source,
        conversation["messages"],
        tools=conversation.get("tools"),
        bos_token=bos,
        eos_token=DATA["eos_token"],
    )
    out = out.removeprefix(bos)  # the tokenizer adds it (llama.cpp strips it the same way)
    return placeholders(out, datetime.now())  # the corpus was recorded on another day


def test_the_corpus_is_whole() -> None:
    assert len(FILES) == 70
    assert set(DATA["llama_server"]) == set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_every_template_renders_every_conversation_as_llama_server(name: str) -> None:
    differs, refused = [], []
    for conv, conversation in DATA["conversations"].items():
        ours = _render(name, conversation)
        theirs = DATA["llama_server"][name][conv]
        if theirs is None:
            refused.append(conv)
        elif ours != theirs:
            differs.append(conv)
    assert sorted(differs) == sorted(conv for (file, conv) in DIFFERENT if file == name)
    assert sorted(refused) == sorted(conv for (file, conv) in REFUSED if file == name)


def test_probes_find_what_each_family_needs() -> None:
    def caps(name: str) -> adapt.Caps:
        return adapt.probe((CORPUS / name).read_text())

    gemma = caps("google-gemma-2-2b-it.jinja")
    assert not gemma.system_role and not gemma.tool_role and not gemma.tools
    assert caps("mistralai-Mistral-Nemo-Instruct-2407.jinja").short_ids
    assert not caps("meetkai-functionary-medium-v3.2.jinja").object_arguments
    assert caps("Qwen-Qwen3-0.6B.jinja") == adapt.Caps()
    assert caps("fireworks-ai-llama-3-firefunction-v2.jinja").functions
    assert caps("LFM2.5-8B-A1B.jinja").reasoning_as == "thinking"
    assert caps("mistralai-Ministral-3-14B-Reasoning-2512.jinja").reasoning_as == "blocks"


def test_gemma_2_takes_a_system_prompt_and_tool_turns() -> None:
    source = (CORPUS / "google-gemma-2-2b-it.jinja").read_text()
    tools = DATA["conversations"]["tools"]
    system = {"role": "system", "content": "Be brief."}
    out = template.render(source, [system, *tools["messages"]], tools=tools["tools"])
    assert "<start_of_turn>user\nBe brief.\n" in out  # folded into the first user turn
    assert "<tool_response>\nsunny\n</tool_response>" in out
    assert '"name": "get_weather"' in out  # the call, written out


def test_mistral_tool_ids_are_made_nine_characters_and_stay_paired() -> None:
    source = (CORPUS / "mistralai-Mistral-Nemo-Instruct-2407.jinja").read_text()
    messages = json.loads(json.dumps(DATA["conversations"]["tools"]["messages"]))
    messages[1]["tool_calls"][0]["id"] = messages[2]["tool_call_id"] = "call_abc_123"
    out = template.render(source, messages, tools=DATA["conversations"]["tools"]["tools"])
    short = adapt._short_id("call_abc_123")
    assert len(short) == 9 and short.isalnum() and out.count(short) == 2


def test_object_arguments_are_written_compact_where_the_template_prints_text() -> None:
    """Functionary v3.2 prints a call's arguments as they come: an object is written as
    llama-server writes it (compact, unescaped), the JSON text a client sent is left alone."""
    source = (CORPUS / "meetkai-functionary-medium-v3.2.jinja").read_text()
    tools = DATA["conversations"]["tools"]["tools"]
    for arguments, shown in (
        ({"city": "Zürich", "days": [1, 2]}, '{"city":"Zürich","days":[1,2]}'),
        ('{"city": "Zürich"}', '{"city": "Zürich"}'),
    ):
        messages = json.loads(json.dumps(DATA["conversations"]["followup"]["messages"]))
        messages[1]["tool_calls"][0]["function"]["arguments"] = arguments
        out = template.render(source, messages, tools=tools)
        assert f">>>get_weather\n{shown}<|eot_id|>" in out


# Where Claude Code puts its mid-conversation system messages (Anthropic's rules): right after
# a user turn (which may be tool results), last or before an assistant turn.
CALL = {"id": "call00001", "type": "function", "function": {"name": "get_weather"}}
LATER_SYSTEM: dict[str, list[dict[str, Any]]] = {
    "two to open": [  # Codex's: its instructions, then the sandbox's
        {"role": "system", "content": "NOTE-ONE"},
        {"role": "system", "content": "NOTE-TWO"},
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": "Again"},
    ],
    "last": [
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "NOTE-ONE"},
    ],
    "before an answer": [
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "NOTE-ONE"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"},
        {"role": "system", "content": "NOTE-TWO"},
    ],
    "after tool results": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {**CALL, "function": {**CALL["function"], "arguments": {"city": "Oslo"}}}
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call00001", "name": "get_weather"},
        {"role": "system", "content": "NOTE-ONE"},
    ],
}


@pytest.mark.parametrize("name", FILES)
def test_every_template_keeps_a_later_system_message(name: str) -> None:
    """Shown as a system turn where the template shows one there, else folded into the turn
    beside it; never refused, never lost."""
    source = (CORPUS / name).read_text()
    tools = DATA["conversations"]["tools"]["tools"]
    for shape, messages in LATER_SYSTEM.items():
        out = template.render(source, messages, tools=tools, bos_token="<s>", eos_token="</s>")
        for note in ("NOTE-ONE", "NOTE-TWO"):
            if any(m["content"] == note for m in messages):
                assert out.count(note) == 1, (shape, note)


@pytest.mark.parametrize("family", [f[0] for f in families.FAMILIES])
def test_every_family_template_keeps_a_later_system_message(family: str) -> None:
    """The templates a GGUF without one gets (Gemma 3 270M's): Gemma's refuses every system
    message, so Codex's two opening ones are joined and folded into its first turn."""
    source = next(f[2] for f in families.FAMILIES if f[0] == family)
    for shape, messages in LATER_SYSTEM.items():
        out = template.render(source, messages, bos_token="<s>", eos_token="</s>")
        for note in ("NOTE-ONE", "NOTE-TWO"):
            if any(m["content"] == note for m in messages):
                assert out.count(note) == 1, (shape, note)


def test_a_later_system_message_is_folded_where_the_template_refuses_it() -> None:
    source = (CORPUS / "mistralai-Mistral-Nemo-Instruct-2407.jinja").read_text()
    assert not adapt.probe(source).mid_system
    out = template.render(source, LATER_SYSTEM["before an answer"])
    assert "Hi\n\nNOTE-ONE[/INST]Hello" in out.replace(" ", "")  # into the user turn before it
    assert "NOTE-TWO" in out


def _call(call_id: str, city: str) -> dict[str, Any]:
    function = {"name": "get_weather", "arguments": {"city": city}}
    return {"id": call_id, "type": "function", "function": function}


# What a coding agent's history holds: two calls in one turn (Claude Code makes them in
# parallel), their results, then the user's next words right after the results.
PARALLEL: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo and Rome?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [_call("call00001", "OSLO-ARG"), _call("call00002", "ROME-ARG")],
    },
    {"role": "tool", "content": "RESULT-OSLO", "tool_call_id": "call00001", "name": "get_weather"},
    {"role": "tool", "content": "RESULT-ROME", "tool_call_id": "call00002", "name": "get_weather"},
    {"role": "user", "content": "NEXT-WORDS"},
]  # fmt: skip


@pytest.mark.parametrize("name", FILES)
def test_every_template_takes_an_agents_history(name: str) -> None:
    """Parallel calls and a user turn right after tool results: split into one call a turn,
    or joined to the result, where the template refuses them as they are; nothing lost."""
    source = (CORPUS / name).read_text()
    tools = DATA["conversations"]["tools"]["tools"]
    out = template.render(source, PARALLEL, tools=tools, bos_token="<s>", eos_token="</s>")
    for text in ("OSLO-ARG", "ROME-ARG", "RESULT-OSLO", "RESULT-ROME", "NEXT-WORDS"):
        assert text in out, text
    assert out.index("RESULT-OSLO") < out.index("RESULT-ROME") < out.index("NEXT-WORDS")


def test_llama_3_gets_one_call_a_turn() -> None:
    source = (CORPUS / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text()
    out = template.render(source, PARALLEL, tools=DATA["conversations"]["tools"]["tools"])
    assert out.index("OSLO-ARG") < out.index("RESULT-OSLO") < out.index("ROME-ARG")
