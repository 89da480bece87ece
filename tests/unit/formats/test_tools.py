"""Tool calling, pure parts: definitions, forced-call schemas, rendering and parsing of calls."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from localrun.engine.fake import FakeBatchEngine
from localrun.engine.sampling import constraint
from localrun.engine.types import LoadOptions
from localrun.errors import BadRequestError
from localrun.formats import calls as calls_mod
from localrun.formats import parsers, template
from localrun.formats.parsers.base import partial_marker
from localrun.formats.parsers.stream import CallStream
from localrun.model.stored import load as load_model
from localrun.recipes import create, modelfile
from localrun.request.genrequest import GenRequest
from localrun.store import names
from localrun.store.local import Store
from localrun.worker import prompt
from localrun.worker.grammars import forced
from localrun.worker.grammars import format as grammar_mod

from support.tools import WEATHER

HERMES = parsers.by_name("hermes")

ADD = {
    "name": "add",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a", "b"],
    },
}

# A Hermes/Qwen-style template that renders `tools`, tool calls and tool results itself.
TOOL_TEMPLATE = (
    "{% if tools %}[tools:{% for t in tools %}{{ t.function.name }};{% endfor %}]{% endif %}"
    "{% for m in messages %}"
    "{% if m.tool_calls %}[{{ m.role }} calls:{% for c in m.tool_calls %}"
    "{{ c.function.name }}{{ c.function.arguments | tojson }}{% endfor %}]"
    "{% elif m.role == 'tool' %}[tool result:{{ m.content }}]"
    "{% else %}[{{ m.role }}:{{ m.content }}]{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}[assistant:{% endif %}"
)


def test_normalize_accepts_both_shapes_and_refuses_bad_ones() -> None:
    out = calls_mod.normalize([WEATHER, ADD])
    assert [t["function"]["name"] for t in out] == ["get_weather", "add"]
    assert out[1] == {"type": "function", "function": ADD}
    # Nothing is added to what the client sent: a tool without parameters stays so, and the
    # code that needs a schema takes an empty object's.
    ping = calls_mod.normalize([{"name": "ping"}])[0]
    assert ping == {"type": "function", "function": {"name": "ping"}}
    assert calls_mod.parameters(ping) == {"type": "object", "properties": {}}
    bad_tools: list[Any] = [{"a": 1}, [1], [{"type": "retrieval"}], [{"function": {}}], [ADD, ADD]]
    for bad in bad_tools:
        with pytest.raises(BadRequestError):
            calls_mod.normalize(bad)
    with pytest.raises(BadRequestError, match="parameters"):
        calls_mod.normalize([{"name": "x", "parameters": "nope"}])


def test_tool_choice() -> None:
    assert calls_mod.in_force([WEATHER], "none") is None
    assert calls_mod.in_force(None, "auto") is None
    assert calls_mod.in_force([], None) is None
    normalized = calls_mod.normalize([WEATHER, ADD])
    syntax = HERMES.syntax.with_tools(normalized)
    assert forced.grammar(syntax, normalized, "auto") is None
    assert forced.grammar(syntax, normalized, None) is None
    both = forced.grammar(syntax, normalized, "required")
    assert both is not None and "get_weather" in both and '\\"add\\"' in both
    named = forced.grammar(syntax, normalized, {"type": "function", "function": {"name": "add"}})
    assert named is not None and "add" in named and "get_weather" not in named
    with pytest.raises(BadRequestError, match="not among the tools"):
        forced.grammar(syntax, normalized, {"type": "function", "function": {"name": "nope"}})
    with pytest.raises(BadRequestError, match="not understood"):
        forced.grammar(syntax, normalized, {"type": "function"})


def test_forced_schemas_compile_to_grammars() -> None:
    normalized = calls_mod.normalize([WEATHER, ADD])
    grammar = forced.grammar(HERMES.syntax.with_tools(normalized), normalized, "required")
    assert grammar is not None and grammar.count("%json") == 2  # each tool's schema
    assert "get_weather" in grammar and "add" in grammar
    constraint.check(grammar)  # llguidance takes it
    with pytest.raises(BadRequestError, match="cannot be enforced"):
        constraint.check(grammar_mod.constraint_for({"type": "no-such-type"}) or "")
    with pytest.raises(BadRequestError, match="unknown format"):
        grammar_mod.constraint_for("xml")
    assert grammar_mod.constraint_for(None) is None
    assert "%json" in (grammar_mod.constraint_for("json") or "")


def test_system_note_for_templates_without_tools() -> None:
    assert template.shows_tools(TOOL_TEMPLATE)
    assert not template.shows_tools(None)
    assert not template.shows_tools(template.CHATML)
    normalized = calls_mod.normalize([WEATHER])
    note = calls_mod.system_note(normalized)
    assert "get_weather" in note and "<tool_call>" in note and "</tool_call>" in note
    convo = [{"role": "user", "content": "hi"}]
    added = calls_mod.add_system_note(convo, normalized)
    assert added[0]["role"] == "system" and added[1:] == convo
    merged = calls_mod.add_system_note(
        [{"role": "system", "content": "be brief"}, *convo], normalized
    )
    assert merged[0]["content"].startswith("be brief\n\n") and "get_weather" in merged[0]["content"]
    assert len(merged) == 2


TURNS: list[dict[str, Any]] = [
    {"role": "user", "content": "weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "content": "18 C, sunny", "tool_call_id": "call_1"},
]


def test_tool_turns_render_with_and_without_template_support() -> None:
    # The template shows calls (arguments through tojson: given as an object), results and
    # tools: it gets them as they are, ids kept, null content made "".
    text = template.render(TOOL_TEMPLATE, TURNS, tools=calls_mod.normalize([WEATHER]))
    assert text == (
        "[tools:get_weather;][user:weather in Paris?]"
        '[assistant calls:get_weather{"city": "Paris"}][tool result:18 C, sunny][assistant:'
    )
    # A template that shows no calls and no tools: the calls written out, the tools in a note.
    plain = "{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}"
    text = template.render(plain, TURNS, tools=calls_mod.normalize([WEATHER]))
    assert text.startswith("[system:You can call the following tools")
    assert text.endswith(
        '[assistant:<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
        "</tool_call>][tool:18 C, sunny]"
    )
    # One that refuses a tool role gets the result as a user turn.
    strict = (
        "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
        "{{ raise_exception('roles must alternate') }}{% endif %}[{{ m.role }}:{{ m.content }}]"
        "{% endfor %}"
    )
    assert template.render(strict, TURNS).endswith(
        "[user:<tool_response>\n18 C, sunny\n</tool_response>]"
    )
    with pytest.raises(BadRequestError):
        template.render(None, [{"role": "assistant", "tool_calls": [{"x": 1}]}])


@pytest.fixture
def tool_model(store: Store, tmp_path: Path, tiny_model: Path) -> Any:
    (tmp_path / "tiny.gguf").write_bytes(tiny_model.read_bytes())
    quoted = TOOL_TEMPLATE.replace('"', '\\"')
    mf = modelfile.parse(f'FROM tiny.gguf\nTEMPLATE "{quoted}"\n')
    create.create(store, names.parse("tools"), mf, tmp_path)
    create.create(store, names.parse("plain"), modelfile.parse("FROM tiny.gguf\n"), tmp_path)
    return store


def _prompter(store: Store, name: str) -> prompt.Prompter:
    model = load_model(store, names.parse(name))
    engine = FakeBatchEngine("unused", LoadOptions(num_ctx=4096), 1)
    engine.close()
    template_ = model.template or engine.chat_template
    stops = prompt.stop_tokens_for(template_, engine)
    return prompt.Prompter(model, dict(model.parameters), template_, engine, stops)


def _text(tokens: list[int]) -> str:
    return "".join(map(chr, tokens))


def test_prompter_renders_tools_through_the_template(tool_model: Store) -> None:
    aware = _prompter(tool_model, "tools")
    prepared = aware.chat(GenRequest("m", messages=TURNS, tools=[WEATHER], tool_choice="auto"))
    assert _text(prepared.tokens).startswith("[tools:get_weather;][user:weather in Paris?]")
    assert prepared.tool_names == ["get_weather"] and not prepared.forced_tool
    assert prepared.sampling.constraint is None
    ignored = aware.chat(GenRequest("m", messages=TURNS[:1], tools=[WEATHER], tool_choice="none"))
    assert ignored.tool_names is None and not _text(ignored.tokens).startswith("[tools:")
    forced = aware.chat(
        GenRequest("m", messages=TURNS[:1], tools=[WEATHER], tool_choice="required")
    )
    assert (
        forced.forced_tool
        and forced.sampling.constraint
        and "get_weather" in forced.sampling.constraint
    )

    plain = _prompter(tool_model, "plain")
    prepared = plain.chat(GenRequest("m", messages=TURNS, tools=[WEATHER]))
    text = _text(prepared.tokens)
    assert text.startswith("<|im_start|>system\nYou can call the following tools")
    assert "<|im_start|>tool\n18 C, sunny" in text and '"get_weather"' in text


# -- parsing -----------------------------------------------------------------------------------

CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
PARIS = {"name": "get_weather", "arguments": {"city": "Paris"}}


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        (f"<tool_call>{CALL}</tool_call>", "", [PARIS]),
        (f"Let me look.\n<tool_call>\n{CALL}\n</tool_call>", "Let me look.", [PARIS]),
        (f"<tool_call>{CALL}</tool_call><tool_call>{CALL}</tool_call>", "", [PARIS, PARIS]),
        (f"<tool_call>{CALL}", "", [PARIS]),  # stopped before the closing tag
        (CALL, "", [PARIS]),
        (f"```json\n{CALL}\n```", "", [PARIS]),
        (f"[{CALL}, {CALL}]", "", [PARIS, PARIS]),
        ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}', "", [PARIS]),
        ('{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [PARIS]),
        ('{"type": "function", "function": ' + CALL + "}", "", [PARIS]),
        ("Paris is sunny.", "Paris is sunny.", None),
        ('{"name": "John", "age": 3}', '{"name": "John", "age": 3}', None),
        (
            '{"name": "other_tool", "arguments": {}}',
            '{"name": "other_tool", "arguments": {}}',
            None,
        ),
        ("<tool_call>not json</tool_call>", "<tool_call>not json</tool_call>", None),
        (
            '{"name": "get_weather", "arguments": [1]}',
            '{"name": "get_weather", "arguments": [1]}',
            None,
        ),
    ],
)
def test_parse(text: str, content: str, calls: list[dict[str, Any]] | None) -> None:
    """The Hermes syntax (Qwen's, and what the tool note asks for), bare JSON too."""
    stream = CallStream(HERMES.syntax.with_tools(calls_mod.normalize([WEATHER])))
    out, found = stream.feed(text)
    rest, last = stream.finish()
    assert (out + rest, found + last or None) == (content, calls)


def _stream(pieces: list[str], *, forced: bool = False) -> tuple[list[str], str, Any]:
    stream = CallStream(HERMES.syntax.with_tools(calls_mod.normalize([WEATHER])), forced=forced)
    out, calls = [], []
    for piece in pieces:
        text, found = stream.feed(piece)
        calls += found
        if text:
            out.append(text)
    rest, last = stream.finish()
    return out, rest, calls + last or None


def test_call_stream_passes_text_and_holds_calls() -> None:
    out, rest, calls = _stream(["Par", "is is ", "<", "tool", "ing"])
    assert "".join(out) + rest == "Paris is <tooling" and calls is None
    assert out[0] == "Par"  # streamed as it comes
    out, rest, calls = _stream(["  ", "<tool", "_call>", CALL[:10], CALL[10:], "</tool_call>"])
    assert out == [] and rest == "" and calls == [PARIS]
    out, rest, calls = _stream(["Sure.", " <tool_call>", CALL, "</tool_call>"])
    assert "".join(out) == "Sure." and rest == "" and calls == [PARIS]  # its blanks: the call's
    out, rest, calls = _stream(["{", '"a": 1}'])  # JSON that is not a call comes out at the end
    assert out == [] and rest == '{"a": 1}' and calls is None
    forced_call = f"<tool_call>{CALL}</tool_call>"
    out, rest, calls = _stream([forced_call[:5], forced_call[5:]], forced=True)
    assert out == [] and rest == "" and calls == [PARIS]
    out, rest, calls = _stream(["hello"], forced=True)
    assert out == [] and rest == "hello" and calls is None
    assert _stream([]) == ([], "", None)


def test_tool_results_and_calls_round_trip_through_json() -> None:
    out, _, calls = _stream([f"<tool_call>{CALL}</tool_call>"])
    assert calls is not None and json.loads(json.dumps(calls)) == [PARIS] and out == []


def test_held_marker_check_is_linear_in_the_marker() -> None:
    """What a stream holds back (the end of a piece that may start a marker: a stop sequence
    hundreds of thousands of characters long too) costs a pass, not a pass per length
    (issue 57, item 11: 0.35 s at 100k characters and 4.4 s at 400k before)."""
    assert partial_marker("text <tool", ("<tool_call>",)) == 5
    assert partial_marker("text <tool_call>", ("<tool_call>", "</think>")) == 0
    assert partial_marker("x</thi", ("</think>", "<think>")) == 5
    assert partial_marker("ab" * 10, ("abababx",)) == 6

    def took(n: int, last: str) -> float:
        text, marker = "a" * (n - 2) + "b", "a" * (n // 2) + "b" + "a" * n + last
        start = time.perf_counter()
        assert partial_marker(text, (marker,)) == n // 2 + 1
        return time.perf_counter() - start

    small = min(took(100_000, str(i)) for i in range(3))
    large = min(took(400_000, str(i)) for i in range(3))
    assert large < 0.5, large
    assert large < 6 * max(small, 0.005), (small, large)
