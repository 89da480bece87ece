"""Every family's tool calls and reasoning, read without a model: the parser each template
chooses, each family's canonical answer read back whole and split anywhere, the cases a model
gets wrong (a call cut off, malformed, a tool nobody offered) given back as text, runaways
bounded. The same families end to end, through the real engine and server, are in
tests/integration/formats/test_family_calls.py."""

from __future__ import annotations

from typing import Any

import pytest

from localrun.formats import parsers, template
from localrun.formats.parsers.base import Syntax, Taken
from localrun.formats.parsers.stream import CallStream

from support.family_cases import (
    CASES,
    MINICPM3,
    PARIS,
    TEMPLATES,
    TOOLS,
    Case,
    template_at,
    template_path,
)


def _calls_only(case: Case) -> str:
    """The answer after its reasoning (what the call stream sees)."""
    family = case.family_of()
    says = case.says
    if case.reasoning:
        close = family.think[1]
        says = says.split(close, 1)[1] if close in says else says
    return says


def _stream(
    syntax: Syntax, text: str, step: int, primed: str = "", verbatim: Any = None
) -> tuple[str, list[Any]]:
    stream = CallStream(syntax, primed=primed, verbatim=verbatim)
    out, calls = [], []
    for i in range(0, len(text), step):
        piece, found = stream.feed(text[i : i + step])
        out.append(piece)
        calls += found
    piece, found = stream.finish()
    return "".join(out) + piece, calls + found


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_each_template_chooses_its_family(case: Case) -> None:
    assert case.family_of().name == case.family


@pytest.mark.parametrize("case", [c for c in CASES if c.family != "gpt-oss"], ids=lambda c: c.id)
@pytest.mark.parametrize("step", [1, 2, 5, 10_000])
def test_each_family_reads_its_calls_however_the_text_is_split(case: Case, step: int) -> None:
    family = case.family_of()
    primed = ">>>" if case.family == "functionary-v3.2" else ""
    content, calls = _stream(family.syntax.with_tools(TOOLS), _calls_only(case), step, primed)
    assert calls == list(case.calls)
    assert content.strip() == case.content


HERMES = parsers.by_name("hermes").syntax.with_tools(TOOLS)
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        # Text before and after a call stays text; the call is a call.
        (f"Sure.\n{CALL}\nDone.", "Sure.\nDone.", [PARIS]),
        # Cut off by max_tokens inside the arguments: the text as it came.
        (
            '<tool_call>{"name": "get_weather", "argu',
            '<tool_call>{"name": "get_weather", "argu',
            [],
        ),
        # Malformed arguments.
        (
            "<tool_call>{name: get_weather}</tool_call>",
            "<tool_call>{name: get_weather}</tool_call>",
            [],
        ),
        # A tool nobody offered.
        (
            '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
            '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
            [],
        ),
        # A bad block does not hide a good one after it.
        (f"<tool_call>oops</tool_call>{CALL}", "<tool_call>oops</tool_call>", [PARIS]),
        # A marker split over pieces at the end is held, then released as text.
        ("The tag <tool_", "The tag <tool_", []),
    ],
)
def test_what_is_not_a_call_comes_back_as_text(text: str, content: str, calls: list[Any]) -> None:
    for step in (1, 3, len(text)):
        got_content, got_calls = _stream(HERMES, text, step)
        assert (got_content, got_calls) == (content, calls)


@pytest.mark.parametrize(
    ("family", "text", "content", "calls", "primed"),
    [
        # A marker in prose is prose, its blanks kept, and it is let go at once.
        ("hermes", "Use the <tool_call> tag", "Use the <tool_call> tag", [], ""),
        (
            "firefunction",
            "You can use functools to cache",
            "You can use functools to cache",
            [],
            "",
        ),
        # The prompt's `>>>` is not the answer's.
        ("functionary-v3.2", "Hello there", "Hello there", [], ">>>"),
        (
            "functionary-v3.2",
            'all\nSure.\n>>>get_weather\n{"city": "Paris"}',
            "Sure.",
            [PARIS],
            ">>>",
        ),
        # Llama's built-in tools are called `NAME.call(...)`.
        (
            "llama3",
            '<|python_tag|>get_weather.call(city="Paris")',
            "",
            [PARIS],
            "",
        ),
        # Llama 3.2 writes several calls a line each.
        (
            "llama3",
            '{"name": "get_weather", "parameters": {"city": "Paris"}}\n'
            '{"name": "get_time", "parameters": {"tz": "CET"}}',
            "",
            [PARIS, {"name": "get_time", "arguments": {"tz": "CET"}}],
            "",
        ),
        # Llama 3: a call in a sentence, as vLLM reads it (the sentence stays text).
        (
            "llama3",
            'Here it is: {"name": "get_weather", "parameters": {"city": "Paris"}} Anything else?',
            "Here it is: Anything else?",
            [PARIS],
            "",
        ),
        # Gemma 4 quotes a key that is not a name.
        (
            "gemma4",
            '<|tool_call>call:get_weather{city:{<|"|>3<|"|>:<|"|>Paris<|"|>}}<tool_call|>',
            "",
            [{"name": "get_weather", "arguments": {"city": {"3": "Paris"}}}],
            "",
        ),
        # GLM: JSON in the block, as the GLM-4 template vLLM ships shows calls.
        (
            "glm-4.5",
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
            "",
            [PARIS],
            "",
        ),
        # Apertus: a list of {name: arguments}.
        (
            "apertus",
            '<|tools_prefix|>[{"get_weather": {"city": "Paris"}}, {"get_time": {"tz": "CET"}}]'
            "<|tools_suffix|>",
            "",
            [PARIS, {"name": "get_time", "arguments": {"tz": "CET"}}],
            "",
        ),
        # Muse Glimmer: MiniMax's invocations with `atem:` tags.
        (
            "muse-glimmer",
            '<atem:function_calls>\n<atem:invoke name="get_weather">\n<atem:parameter name="city">'
            "Paris</atem:parameter>\n</atem:invoke>\n</atem:function_calls>",
            "",
            [PARIS],
            "",
        ),
        # GigaChat 3: a message of its own after the text's; 3.1: its own token.
        (
            "gigachat3",
            'Sure.<|message_sep|>\n\nfunction call<|role_sep|>\n{"name": "get_weather", '
            '"arguments": {"city": "Paris"}}',
            "Sure.",
            [PARIS],
            "",
        ),
        ("gigachat3", "Hello.<|message_sep|>\n\n", "Hello.", [], ""),
        (
            "gigachat3.1",
            'Sure.<|function_call|>{"name": "get_weather", "arguments": {"city": "Paris"}}',
            "Sure.",
            [PARIS],
            "",
        ),
        # FunctionGemma: Gemma 4's syntax between its own marks.
        (
            "functiongemma",
            "<start_function_call>call:get_weather{city:<escape>Paris<escape>}<end_function_call>",
            "",
            [PARIS],
            "",
        ),
        # InternLM2; Phi-4-mini's functools.
        (
            "internlm2",
            '<|action_start|><|plugin|>{"name": "get_weather", "parameters": {"city": "Paris"}}'
            "<|action_end|>",
            "",
            [PARIS],
            "",
        ),
        (
            "granite",
            'Sure.\nfunctools[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
            "Sure.",
            [PARIS],
            "",
        ),
        # xLAM: a JSON list, after text, bare or fenced.
        (
            "xlam",
            'Sure.\n```json\n[{"name": "get_weather", "arguments": {"city": "Paris"}}]\n```',
            "Sure.",
            [PARIS],
            "",
        ),
        # Muse Glimmer's turns open with their recipient: nobody's text.
        (
            "muse-glimmer",
            ' to=get_weather<|message|><atem:function_calls>\n<atem:invoke name="get_weather">'
            '\n<atem:parameter name="city">Paris</atem:parameter>\n</atem:invoke>\n'
            "</atem:function_calls>",
            "",
            [PARIS],
            "",
        ),
        ("muse-glimmer", " to=user<|message|>Hello.", "Hello.", [], ""),
        ("muse-glimmer", "Send it to=me please.", "Send it to=me please.", [], ""),
        # MiniCPM 3: calls one a line, fenced or not; a parameter Python reserves the name of
        # (read as its reader and Gorilla's read it), in a string as it is.
        (
            "minicpm3",
            "<|tool_call_start|>\nget_weather(city='select x from t', from='2024', in=\"t\")\n"
            'get_time(tz="CET")\n<|tool_call_end|>\nDone.',
            "Done.",
            [
                {
                    "name": "get_weather",
                    "arguments": {"city": "select x from t", "from": "2024", "in": "t"},
                },
                {"name": "get_time", "arguments": {"tz": "CET"}},
            ],
            "",
        ),
        (
            "minicpm3",
            '<|tool_call_start|>```py\n[get_weather(city="Paris")]\n```<|tool_call_end|>',
            "",
            [PARIS],
            "",
        ),
        # ... and text that is no call stays as it was written.
        (
            "minicpm3",
            "<|tool_call_start|>\n```python\nprint('hi')\n```\n<|tool_call_end|>",
            "<|tool_call_start|>\n```python\nprint('hi')\n```\n<|tool_call_end|>",
            [],
            "",
        ),
        # MiniMax-M3: an XML tree behind its namespace token, lists as <item>s.
        (
            "minimax-m3",
            ']<]minimax[>[<tool_call>\n]<]minimax[>[<invoke name="get_weather">'
            "]<]minimax[>[<city>Paris]<]minimax[>[</city>]<]minimax[>[</invoke>\n"
            ']<]minimax[>[<invoke name="get_time">]<]minimax[>[<tz>'
            "]<]minimax[>[<item>CET]<]minimax[>[</item>]<]minimax[>[</tz>]<]minimax[>[</invoke>"
            "\n]<]minimax[>[</tool_call>",
            "",
            [PARIS, {"name": "get_time", "arguments": {"tz": ["CET"]}}],
            "",
        ),
        # MiniMax-M1: two calls one a line in one block.
        (
            "derived-minimax-m1",
            '<tool_calls>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            '{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_calls>',
            "",
            [PARIS, {"name": "get_time", "arguments": {"tz": "CET"}}],
            "",
        ),
        # A bare Qwen3-Coder call, then text: the call does not wait for the end.
        (
            "qwen3-coder",
            "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\nDone.",
            "Done.",
            [PARIS],
            "",
        ),
    ],
)
def test_each_familys_edge_cases(
    family: str, text: str, content: str, calls: list[Any], primed: str
) -> None:
    if family == "derived-minimax-m1":  # derived from its template
        found = template.family((TEMPLATES / "MiniMax-M1.jinja").read_text(encoding="utf-8"))
        syntax = found.syntax.with_tools(TOOLS)
    else:
        syntax = parsers.by_name(family).syntax.with_tools(TOOLS)
    for step in (1, 3, len(text)):
        assert _stream(syntax, text, step, primed) == (content, calls)


class _Counting(Syntax):
    """Hermes, counting how often the stream asks it to read the block."""

    def __init__(self, inner: Syntax) -> None:
        super().__init__(name="counting", starts=inner.starts, ends=inner.ends)
        self.inner = inner
        self.reads = 0
        self.read_chars = 0

    def take(self, text: str, final: bool) -> Taken:
        self.reads += 1
        self.read_chars += len(text)
        return self.inner.take(text, final)


@pytest.mark.parametrize(
    "runaway",
    [
        "<tool_call>" + "[" * 100_000,  # 100k nested brackets, never closed
        "<tool_call>" + "[]" * 50_000,  # brackets that balance 50k times
        "<tool_call>" + "</tool_call" * 1 + "x</tool_call>" * 20_000,  # end markers galore
        '<tool_call>{"name": "get_weather", "arguments": {"city": "' + "a" * 100_000,
        "<tool_call>x" * 20_000,  # markers that are never calls: let go, then not looked for
    ],
)
def test_a_runaway_answer_is_read_a_bounded_number_of_times(runaway: str) -> None:
    syntax = _Counting(HERMES)
    content, calls = _stream(syntax, runaway, 7)
    assert calls == [] and content == runaway
    # Every try re-reads the block: the total read stays within a small multiple of it.
    assert syntax.read_chars <= 12 * len(runaway)


# -- end to end ----------------------------------------------------------------------------


TYPED = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            },
        },
    }
]
THREE_DAYS = {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}


@pytest.mark.parametrize(
    ("name", "says", "call"),
    [
        (
            "deepseek-ai-DeepSeek-V3.2.jinja",
            '<｜DSML｜function_calls>\n<｜DSML｜invoke name="get_weather">\n'
            '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
            '<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>\n'
            "</｜DSML｜invoke>\n</｜DSML｜function_calls>",
            THREE_DAYS,
        ),
        (
            "Kimi-K3.jinja",
            '<|open|>tools<|sep|><|open|>call tool="get_weather" index="2"<|sep|>'
            '<|open|>argument key="city" type="string"<|sep|>Paris<|close|>argument<|sep|>'
            '<|open|>argument key="days" type="integer"<|sep|>3<|close|>argument<|sep|>'
            "<|close|>call<|sep|><|close|>tools<|sep|>",
            THREE_DAYS,
        ),
        (
            "tencent-Hy3.jinja",  # its close holds an end-of-turn token: the answer ends first
            "<tool_calls:opensource>\n<tool_call:opensource>get_weather<tool_sep:opensource>\n"
            "<arg_key:opensource>city</arg_key:opensource>\n"
            "<arg_value:opensource>Paris</arg_value:opensource>\n</tool_call:opensource>\n"
            "</tool_calls:opensource>",
            {"name": "get_weather", "arguments": {"city": "Paris"}},
        ),
        (
            "openbmb-MiniCPM5-1B.jinja",
            '<function name="get_weather"><param name="city">Paris</param>'
            '<param name="days">3</param></function>',
            THREE_DAYS,
        ),
        (
            "Apriel-1.6-15b-Thinker-fixed.jinja",
            '<tool_calls>[{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]'
            "</tool_calls>",
            THREE_DAYS,
        ),
    ],
)
def test_a_derived_parser_reads_what_its_template_writes(name: str, says: str, call: Any) -> None:
    """Families no row knows: the parser read from the template's own rendering of a probe
    call takes values of other types and calls in other places than the probe's."""
    source = (TEMPLATES / name).read_text(encoding="utf-8")
    family = template.family(source)
    assert family.name.startswith("derived:")
    for step in (1, 3, len(says)):
        assert _stream(family.syntax.with_tools(TYPED), says, step) == ("", [call])


def test_derived_calls_in_one_wrapper() -> None:
    """DeepSeek V3.2 writes parallel calls as several `invoke`s in one `function_calls`: the
    probe's second call tells the wrapper from the call."""
    source = (TEMPLATES / "deepseek-ai-DeepSeek-V3.2.jinja").read_text(encoding="utf-8")
    says = (
        '<｜DSML｜function_calls>\n<｜DSML｜invoke name="get_weather">\n'
        '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>\n"
        '<｜DSML｜invoke name="get_weather">\n'
        '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>\n</｜DSML｜function_calls>\nDone."
    )
    syntax = template.family(source).syntax.with_tools(TYPED)
    for step in (1, 3, len(says)):
        assert _stream(syntax, says, step) == ("Done.", [PARIS, THREE_DAYS])


LFM2 = parsers.by_name("lfm2").syntax.with_tools(TOOLS)
PYTHONIC = parsers.by_name("pythonic").syntax.with_tools(TOOLS)


@pytest.mark.parametrize(
    ("syntax", "text", "content", "calls"),
    [
        # Python literals JSON cannot hold: text, never a call the answer cannot encode (the
        # request hung, or answered {"x": Infinity}, which is not JSON).
        *(
            (LFM2, f"<|tool_call_start|>[get_weather(city={v})]<|tool_call_end|>", None, [])
            for v in ("b'Paris'", "1e999", "-1e999", "1j", "{1: 'a'}")
        ),
        # What vLLM repairs (tests/tool_parsers/test_lfm2_tool_parser.py): a set is its items
        # in the order written; a raw newline in a string, a zero-padded integer, a NUL, a
        # quote that cannot close its string.
        *(
            (LFM2, f"<|tool_call_start|>[get_weather({said})]<|tool_call_end|>", "", [meant])
            for said, meant in (
                ("city={'b', 'a'}", {"name": "get_weather", "arguments": {"city": ["b", "a"]}}),
                ("city='Pa\nris'", {"name": "get_weather", "arguments": {"city": "Pa\nris"}}),
                ("city=07", {"name": "get_weather", "arguments": {"city": 7}}),
                ("city='a\x00b'", {"name": "get_weather", "arguments": {"city": "a\x00b"}}),
                (
                    "city='sed -n '1,5p' f.py'",
                    {"name": "get_weather", "arguments": {"city": "sed -n '1,5p' f.py"}},
                ),
                (
                    "city='say \"hi\", x', tz='CET'",
                    {"name": "get_weather", "arguments": {"city": 'say "hi", x', "tz": "CET"}},
                ),
            )
        ),
        (
            LFM2,
            '<|tool_call_start|>[get_weather(city=("Paris", 1.5))]<|tool_call_end|>',
            "",
            [{"name": "get_weather", "arguments": {"city": ["Paris", 1.5]}}],
        ),
        # Pythonic: only a list of calls that is the answer's start is read; a list that is
        # not calls is text, as vLLM reads it.
        (PYTHONIC, '[get_weather(city="Paris")]', "", [PARIS]),
        (PYTHONIC, "[1] See the notes.", None, []),
        (PYTHONIC, "[Paris] is sunny.", None, []),
        (PYTHONIC, 'See [get_weather(city="Paris")]', None, []),
        (PYTHONIC, '[get_weather(city="Pa', None, []),
        (PYTHONIC, '[rm_rf(path="/")]', None, []),
    ],
)
def test_python_calls_are_read_as_json_values_or_left_as_text(
    syntax: Any, text: str, content: str | None, calls: list[Any]
) -> None:
    for step in (1, 4, len(text)):
        got_content, got_calls = _stream(syntax, text, step)
        assert (got_content, got_calls) == (text if content is None else content, calls)


def test_a_python_call_that_cannot_be_repaired_is_text_in_bounded_time() -> None:
    """Quotes that might each close their string (the repair tries later ones) are tried a
    bounded number of times: an answer of thousands is text at once."""
    import time

    body = "get_weather(city='" + "a', " * 4000 + "')"
    text = f"<|tool_call_start|>[{body}]<|tool_call_end|>"
    start = time.perf_counter()
    assert _stream(LFM2, text, len(text)) == (text, [])
    assert time.perf_counter() - start < 5


def test_a_call_in_a_thought_the_answer_writes_is_text() -> None:
    """MiniMax-M1's template shows no reasoning, so its `<think>` is the answer's text: a call
    in it is one the model considered (as vLLM's MiniMax parser reads it), the one after it is
    made."""
    family = template.family((TEMPLATES / "MiniMax-M1.jinja").read_text(encoding="utf-8"))
    rome = '{"name": "get_weather", "arguments": {"city": "Rome"}}'
    paris = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    thought = f"<think>Maybe <tool_calls>\n{rome}\n</tool_calls> no.</think>"
    text = f"{thought}\n<tool_calls>\n{paris}\n</tool_calls>"
    syntax = family.syntax.with_tools(TOOLS)
    for step in (1, 3, len(text)):
        assert _stream(syntax, text, step, verbatim=family.think) == (thought, [PARIS])


@pytest.mark.parametrize(
    ("text", "reasoning", "answer"),
    [
        # Qwen3.5 calls before it closes the thought the prompt opened: the call is the answer's.
        (
            "Let me check.\n<tool_call>\n<function=get_weather>\n</function>\n</tool_call>\n"
            "</think>\n\nDone.",
            "Let me check.\n",
            "<tool_call>\n<function=get_weather>\n</function>\n</tool_call>\nDone.",
        ),
        # A thought closed before the call: as always.
        ("Hmm.</think>\n\n<tool_call>x</tool_call>", "Hmm.", "<tool_call>x</tool_call>"),
    ],
)
def test_a_call_ends_a_thought_the_prompt_opened(text: str, reasoning: str, answer: str) -> None:
    from localrun.formats.reasoning import Splitter

    for step in (1, 4, len(text)):
        splitter = Splitter(inside=True, calls=("<tool_call>",))
        parts = [splitter.feed(text[i : i + step]) for i in range(0, len(text), step)]
        parts.append(splitter.finish())
        assert "".join(p[0] for p in parts) == reasoning
        assert "".join(p[1] for p in parts) == answer


@pytest.mark.parametrize("family", ["minimax-m3", "muse-glimmer", "functiongemma", "apertus"])
def test_a_call_written_in_a_new_familys_syntax_reads_back(family: str) -> None:
    """What a forced call's grammar is built from (`write`) is what the family reads."""
    syntax = parsers.by_name(family).syntax.with_tools(TOOLS)
    text = syntax.write("get_weather", '{"city": "Paris"}')
    assert _stream(syntax, text, 3) == ("", [PARIS])


def test_minicpm3_is_told_from_lfm2_by_its_thought_token() -> None:
    """The two share `<|tool_call_start|>`; a vocabulary that has MiniCPM's thought is its."""
    minicpm = {"<|tool_call_start|>", "<|tool_call_end|>", "<|thought_start|>"}
    assert parsers.by_token(minicpm.__contains__).name == "minicpm3"  # type: ignore[union-attr]
    lfm2 = {"<|tool_call_start|>", "<|tool_call_end|>"}
    assert parsers.by_token(lfm2.__contains__).name == "lfm2"  # type: ignore[union-attr]


def test_minicpm3_sees_its_past_thought_and_calls_as_its_template_writes_them() -> None:
    """An answer's reasoning goes back as the `thought` MiniCPM's template reads, before the
    call it wrote (the prompt its tokenizer_config.json builds)."""
    if not template_path(MINICPM3).exists():
        pytest.skip("BFCL's handlers are not fetched: run scripts/corpora/fetch.py")
    source = template_at(MINICPM3)
    call = {"id": "c1", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "reasoning_content": "A call.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "Sunny"},
    ]
    out = template.render(source, messages, tools=TOOLS)
    assert (
        "<|im_start|>assistant\n<|thought_start|>\nA call.\n<|thought_end|>\n<|tool_call_start|>"
        '\n```python\nget_weather(city="Paris")\n```\n<|tool_call_end|>\n<|im_end|>'
    ) in out
    assert "def get_weather(city):" in out and "<|im_start|>tool\nSunny<|im_end|>" in out
