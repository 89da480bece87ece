"""Go templates as Ollama renders them: Ollama's own template tests, outputs recorded from Go's
text/template, Go syntax, and hostile templates. Pure unit tests."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import Any

import pytest

from localrun.errors import TemplateError
from localrun.formats.gotemplate.exec import looks_like_go, parse
from localrun.formats.gotemplate.json import go_json
from localrun.formats.ollama import template as ot
from localrun.formats.ollama.template import collate, load, ollama_messages, render
from localrun.formats.template import is_go as template_is_go
from localrun.formats.template import render as template_render

from support import OLLAMA_TEMPLATES

DATA = OLLAMA_TEMPLATES
RECORDED = json.loads((DATA / "go_recorded.json").read_text(encoding="utf-8"))


def run(source: str, data: Any = None, funcs: dict[str, Any] | None = None) -> str:
    return parse(source, frozenset(funcs or ())).execute(data, funcs)


# -- Ollama's template_test.go ----------------------------------------------------------------

USER = {"role": "user", "content": "Hello, how are you?"}
ASSISTANT = {"role": "assistant", "content": "I'm doing great. How can I help you today?"}
USER2 = {"role": "user", "content": "I'd like to show off how chat templating works!"}
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CONVERSATIONS = {
    "user": [USER],
    "user-assistant-user": [USER, ASSISTANT, USER2],
    "system-user-assistant-user": [SYSTEM, USER, ASSISTANT, USER2],
}
# TestTemplate drops one trailing space from these templates' output before comparing.
TRAILING_SPACE = {"chatqa", "llama2-chat", "mistral-instruct", "openchat", "vicuna"}


@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", sorted(p.stem for p in DATA.glob("*.gotmpl")))
def test_ollama_builtin_templates(name: str, case: str) -> None:
    source = (DATA / f"{name}.gotmpl").read_text(encoding="utf-8")
    out = render(source, CONVERSATIONS[case])
    if name in TRAILING_SPACE and out.endswith(" "):
        out = out[:-1]
    assert out == (DATA / "expected" / f"{name}.gotmpl" / case).read_text(encoding="utf-8")


def test_all_builtin_templates_are_there() -> None:
    assert len(list(DATA.glob("*.gotmpl"))) == 20
    assert len(list((DATA / "expected").glob("*/*"))) == 60


PARSE_CASES = [
    ("{{ .Prompt }}", ["prompt", "response"]),
    ("{{ .System }} {{ .Prompt }}", ["prompt", "response", "system"]),
    ("{{ .System }} {{ .Prompt }} {{ .Response }}", ["prompt", "response", "system"]),
    (
        "{{ with .Tools }}{{ . }}{{ end }} {{ .System }} {{ .Prompt }}",
        ["prompt", "response", "system", "tools"],
    ),
    ("{{ range .Messages }}{{ .Role }} {{ .Content }}{{ end }}", ["content", "messages", "role"]),
    (
        '{{ range .Messages }}{{ if eq .Role "tool" }}Tool Result: {{ .ToolName }} '
        "{{ .Content }}{{ end }}{{ end }}",
        ["content", "messages", "role", "toolname"],
    ),
    (
        '{{- range .Messages }}\n{{- if eq .Role "system" }}SYSTEM:\n'
        '{{- else if eq .Role "user" }}USER:\n{{- else if eq .Role "assistant" }}ASSISTANT:\n'
        '{{- else if eq .Role "tool" }}TOOL:\n{{- end }} {{ .Content }}\n{{- end }}',
        ["content", "messages", "role"],
    ),
    (
        "{{- if .Messages }}\n{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}"
        "<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ else -}}\n{{ if .System }}"
        "<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user"
        "\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>"
        "\n{{- end -}}",
        ["content", "messages", "prompt", "response", "role", "system"],
    ),
]


@pytest.mark.parametrize(("source", "names"), PARSE_CASES)
def test_ollama_parse_vars(source: str, names: list[str]) -> None:
    """TestParse: Ollama's Vars(), which also gives {{ .Response }} to templates without it."""
    assert sorted(load(source).vars) == names


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("{{ .Prompt ", "unclosed action"),
        ('{{define "x"}}{{template "x"}}{{end}}{{template "x"}}', "undefined template specified"),
    ],
)
def test_ollama_parse_errors(source: str, error: str) -> None:
    with pytest.raises(TemplateError, match=error):
        load(source)


MISTRAL = "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}"
MISTRAL_MESSAGES = (
    MISTRAL + "\n{{- range .Messages }}\n"
    '{{- if eq .Role "user" }}{{ .Content }}[/INST] {{ else if eq .Role "assistant" }}'
    "{{ .Content }}[INST] {{ end }}\n{{- end }}"
)
CHATML_RESPONSE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}"
    "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    "{{ .Response }}<|im_end|>\n"
)
CHATML_MESSAGES = (
    "\n{{- range $index, $_ := .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
HELLO = [
    {"role": "user", "content": "Hello friend!"},
    {"role": "assistant", "content": "Hello human!"},
    {"role": "user", "content": "What is your name?"},
]
HELLO_SYSTEM = [{"role": "system", "content": "You are a helpful assistant!"}, *HELLO]
EXECUTE_CASES = [
    (
        [MISTRAL + "{{ .Prompt }}[/INST] ", MISTRAL + "{{ .Prompt }}[/INST] {{ .Response }}",
         MISTRAL_MESSAGES],
        HELLO,
        "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] ",
    ),
    (
        [MISTRAL + "{{ .Prompt }}[/INST] ", MISTRAL + "{{ .Prompt }}[/INST] {{ .Response }}",
         MISTRAL_MESSAGES],
        HELLO_SYSTEM,
        "[INST] You are a helpful assistant!\n\nHello friend![/INST] Hello human![INST] What is "
        "your name?[/INST] ",
    ),
    (
        ["[INST] {{ .Prompt }}[/INST] ", "[INST] {{ .Prompt }}[/INST] {{ .Response }}",
         '\n{{- range $i, $m := .Messages }}\n{{- if eq .Role "user" }}[INST] {{ .Content }}'
         '[/INST] {{ else if eq .Role "assistant" }}{{ .Content }}{{ end }}\n{{- end }}'],
        [*HELLO, {"role": "assistant", "content": "My name is Ollama and I"}],
        "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] My name is "
        "Ollama and I",
    ),
    (
        [CHATML_RESPONSE, CHATML_MESSAGES],
        HELLO_SYSTEM,
        "<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n<|im_start|>user\nHello "
        "friend!<|im_end|>\n<|im_start|>assistant\nHello human!<|im_end|>\n<|im_start|>user\n"
        "What is your name?<|im_end|>\n<|im_start|>assistant\n",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("source", "messages", "expected"),
    [(source, m, out) for sources, m, out in EXECUTE_CASES for source in sources],
)
def test_ollama_execute_with_messages(
    source: str, messages: list[dict[str, Any]], expected: str
) -> None:
    """TestExecuteWithMessages: legacy (.Prompt/.Response) and .Messages templates agree."""
    assert render(source, messages) == expected


SUFFIX_TEMPLATE = (
    "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>\n"
    "{{- else }}{{ .Prompt }}\n{{- end }}"
)


def test_ollama_execute_with_suffix() -> None:
    assert render(SUFFIX_TEMPLATE, [{"role": "user", "content": "hello"}]) == "hello"
    fim = render(SUFFIX_TEMPLATE, [{"role": "user", "content": "def add("}], suffix="return x")
    assert fim == "<PRE> def add( <SUF>return x <MID>"


def test_ollama_date_functions() -> None:
    today = datetime.now().strftime("%Y-%m-%d")
    hello = [{"role": "user", "content": "Hello"}]
    messages = "{{- range .Messages }}{{ .Content }}{{ end }}"
    assert render(messages + " Today is {{ currentDate }}", hello) == "Hello Today is " + today
    yesterday = (datetime.now() - timedelta(days=1)).strftime("%Y-%m-%d")
    out = render(messages + " Yesterday was {{ yesterdayDate }}", hello)
    assert out == "Hello Yesterday was " + yesterday
    out = render("{{- range .Messages }}{{ end }}{{ yesterdayDate }}", hello)
    assert datetime.strptime(out, "%Y-%m-%d").date() == datetime.now().date() - timedelta(days=1)
    assert render(messages + '{{ currentDate "2006" }}', hello) == "Hello" + today


COLLATE_CASES = [
    (
        [{"role": "user", "content": "Hello"}, {"role": "user", "content": "How are you?"}],
        [("user", "Hello\n\nHow are you?", "")],
        "",
    ),
    (
        [{"role": "tool", "content": "sunny", "name": "get_weather"},
         {"role": "tool", "content": "72F", "name": "get_temperature"}],
        [("tool", "sunny", "get_weather"), ("tool", "72F", "get_temperature")],
        "",
    ),
    (
        [{"role": "user", "content": "What's the weather?"},
         {"role": "tool", "content": "sunny", "name": "get_conditions"},
         {"role": "tool", "content": "72F", "name": "get_temperature"}],
        [("user", "What's the weather?", ""), ("tool", "sunny", "get_conditions"),
         ("tool", "72F", "get_temperature")],
        "",
    ),
    (
        [{"role": "system", "content": "You are helpful"},
         {"role": "user", "content": "Hello"},
         {"role": "assistant", "content": "Hi there!"},
         {"role": "user", "content": "What's the weather?"},
         {"role": "tool", "content": "sunny", "name": "get_weather"},
         {"role": "tool", "content": "72F", "name": "get_temperature"},
         {"role": "user", "content": "Thanks"}],
        [("system", "You are helpful", ""), ("user", "Hello", ""),
         ("assistant", "Hi there!", ""), ("user", "What's the weather?", ""),
         ("tool", "sunny", "get_weather"), ("tool", "72F", "get_temperature"),
         ("user", "Thanks", "")],
        "You are helpful",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("messages", "expected", "system"), COLLATE_CASES)
def test_ollama_collate(
    messages: list[dict[str, Any]], expected: list[tuple[str, str, str]], system: str
) -> None:
    got_system, collated = collate(ollama_messages(messages))
    assert got_system == system
    assert [(m.role, m.content, m.tool_name) for m in collated] == expected


WEATHER_CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {
                "name": "get_weather",
                "arguments": '{"location":"Tokyo","unit":"celsius"}',
            },
        }
    ],
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get weather",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string", "description": "City name"}},
        },
    },
}


ARGS_TEMPLATE = (
    "{{- range .Messages }}{{- range .ToolCalls }}{{ .Function.Arguments }}{{- end }}{{- end }}"
)
PROPS_TEMPLATE = (
    "{{- range .Messages }}{{- end }}"
    "{{- range .Tools }}{{ .Function.Parameters.Properties }}{{- end }}"
)


def test_ollama_arguments_print_as_json() -> None:
    assert render(ARGS_TEMPLATE, [WEATHER_CALL]) == '{"location":"Tokyo","unit":"celsius"}'


def test_ollama_properties_print_as_json() -> None:
    out = render(PROPS_TEMPLATE, [{"role": "user", "content": "test"}], tools=[WEATHER_TOOL])
    assert json.loads(out) == {"location": {"type": "string", "description": "City name"}}


def test_ollama_range_over_arguments_and_properties() -> None:
    source = (
        "{{- range .Messages }}{{- range .ToolCalls }}{{- range $k, $v := .Function.Arguments }}"
        "{{ $k }}={{ $v }};{{- end }}{{- end }}{{- end }}"
    )
    assert render(source, [WEATHER_CALL]) == "location=Tokyo;unit=celsius;"
    source = (
        "{{- range .Messages }}{{- end }}{{- range .Tools }}"
        "{{- range $name, $prop := .Function.Parameters.Properties }}{{ $name }}:{{ $prop.Type }};"
        "{{- end }}{{- end }}"
    )
    user = [{"role": "user", "content": "t"}]
    assert render(source, user, tools=[WEATHER_TOOL]) == "location:string;"


# -- recorded from Go ---------------------------------------------------------------------------


RECORDED_CASES = [
    (group["data"], source, expected)
    for group in RECORDED["text_template"]
    for source, expected in group["cases"]
]


@pytest.mark.parametrize(("data", "source", "expected"), RECORDED_CASES)
def test_go_text_template_recorded(data: Any, source: str, expected: str | None) -> None:
    data = json.loads(json.dumps(data), parse_int=float)  # numbers as Go decodes them
    funcs = {"json": go_json}
    if expected is None:
        with pytest.raises(TemplateError):
            run(source, data, funcs)
    else:
        assert run(source, data, funcs) == expected


@pytest.mark.parametrize(
    ("group", "source", "expected"),
    [(group, s, out) for group in RECORDED["ollama"] for s, out in group["cases"]],
)
def test_ollama_values_recorded(group: dict[str, Any], source: str, expected: str | None) -> None:
    """Messages, tool calls and tools print and encode as Ollama's template types do (real
    tool templates among them: llama3.1, qwen2.5, Mistral's from Ollama's docs)."""
    messages, tools = group["messages"], group["tools"]
    if expected is None:
        with pytest.raises(TemplateError):
            render(source, messages, tools=tools)
    else:
        assert render(source, messages, tools=tools) == expected


# -- Go syntax ----------------------------------------------------------------------------------


def test_trim_markers_need_a_space() -> None:
    assert run("a  \n {{- 1 -}} \n b") == "a1b"
    assert run("a {{-3}} b") == "a -3 b"  # a negative number, not a trim marker
    assert run("x {{- /* gone */ -}} y") == "xy"
    assert run("{{ 1 }}\n{{- 2 }}\n{{ 3 -}}\n\t4") == "12\n34"


def test_comments_and_literals() -> None:
    assert run("{{/* a\ncomment */}}x") == "x"
    assert run("{{ \"a\\tb\\u00e9\\x41\" }}|{{ `raw\\n` }}|{{ 'a' }}") == "a\tbéA|raw\\n|97"
    assert run("{{ 0x1F }} {{ 0o17 }} {{ 1_000 }} {{ 1.5 }} {{ 1e6 }} {{ .5 }}") == (
        "31 15 1000 1.5 1e+06 0.5"
    )
    assert run("{{ true }} {{ false }} {{ print nil }}") == "true false <nil>"


def test_if_else_if_with_and_truth() -> None:
    source = '{{ if eq .R "a" }}A{{ else if eq .R "b" }}B{{ else if .X }}X{{ else }}-{{ end }}'
    assert [run(source, {"R": r, "X": x}) for r, x in (("a", 0), ("b", 0), ("c", 1), ("c", 0))] == [
        "A", "B", "X", "-",
    ]  # fmt: skip
    falsy = [0, 0.0, "", [], {}, None, False]
    assert all(run("{{ if . }}t{{ else }}f{{ end }}", v) == "f" for v in falsy)
    assert run("{{ with .A }}{{ . }}{{ else }}none{{ end }}", {"A": "x"}) == "x"
    assert run("{{ with .A }}{{ . }}{{ else with .B }}b{{ . }}{{ end }}", {"B": 2}) == "b2"


def test_range_forms() -> None:
    data = {"L": ["a", "b", "c"], "M": {"z": 1, "a": 2, "m": 3}, "E": []}
    assert run("{{ range $i, $v := .L }}{{ $i }}{{ $v }}{{ end }}", data) == "0a1b2c"
    assert run("{{ range $k, $v := .M }}{{ $k }}={{ $v }} {{ end }}", data) == "a=2 m=3 z=1 "
    assert run("{{ range .E }}x{{ else }}empty{{ end }}", data) == "empty"
    assert run("{{ range .Missing }}x{{ else }}nil{{ end }}", data) == "nil"
    assert run("{{ range 3 }}{{ . }}{{ end }}") == "012"
    source = '{{ range .L }}{{ if eq . "b" }}{{ continue }}{{ end }}{{ . }}{{ end }}'
    assert run(source, data) == "ac"
    source = '{{ range .L }}{{ if eq . "b" }}{{ break }}{{ end }}{{ . }}{{ end }}'
    assert run(source, data) == "a"


def test_variables_and_scope() -> None:
    assert run("{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ $y := 3 }}{{ end }}{{ $x }}") == "2"
    source = "{{ $n := 0 }}{{ range .L }}{{ $n = . }}{{ end }}{{ $n }}"
    assert run(source, {"L": [1, 2, 3]}) == "3"
    with pytest.raises(TemplateError, match="undefined variable"):
        parse("{{ if true }}{{ $y := 3 }}{{ end }}{{ $y }}")
    assert run("{{ range .L }}{{ $.T }}{{ end }}", {"L": [1, 2], "T": "t"}) == "tt"


def test_define_template_block() -> None:
    source = '{{ define "item" }}[{{ . }}]{{ end }}{{ range .L }}{{ template "item" . }}{{ end }}'
    assert run(source, {"L": [1, 2]}) == "[1][2]"
    assert run('{{ block "b" .X }}<{{ . }}>{{ end }}', {"X": "x"}) == "<x>"
    with pytest.raises(TemplateError, match="no such template"):
        run('{{ template "nope" . }}')
    with pytest.raises(TemplateError, match="multiple definition"):
        parse('{{ define "a" }}x{{ end }}{{ define "a" }}y{{ end }}')


def test_functions() -> None:
    data = {"L": [1, 2, 3, 4], "M": {"k": {"j": "deep"}}, "S": "héllo"}
    assert run("{{ len .L }} {{ len .S }} {{ len .M }}", data) == "4 6 1"  # bytes, as Go counts
    assert run("{{ slice .L 1 3 }} {{ slice .L 2 }} {{ slice .S 0 1 }}", data) == "[2 3] [3 4] h"
    assert run('{{ index .L 2 }} {{ index .M "k" "j" }} {{ index .M "x" }}', data) == (
        "3 deep <no value>"
    )
    assert run('{{ printf "%05.1f|%-4s|%q|%x|%d%%" 3.14159 "ab" "a\\"b" 255 7 }}') == (
        '003.1|ab  |"a\\"b"|ff|7%'
    )
    assert run('{{ printf "%d %s" "x" }}') == "%!d(string=x) %!s(MISSING)"
    assert run('{{ print 1 2 "a" "b" 3 }}|{{ println "x" 1 }}') == "1 2ab3|x 1\n"
    assert run('{{ html "<a&\'>" }} {{ js "a\'<" }} {{ urlquery "a b/c" }}') == (
        "&lt;a&amp;&#39;&gt; a\\'\\u003C a+b%2Fc"
    )
    assert run('{{ .S | len | printf "%d!" }}', data) == "6!"


def test_and_or_short_circuit() -> None:
    assert run('{{ and 1 0 2 }}|{{ and 1 2 }}|{{ or 0 "" }}|{{ or 0 3 }}') == "0|2||3"
    # the deciding argument stops evaluation, so the failing `index` never runs
    assert run("{{ if and .F (index .L 99) }}y{{ else }}n{{ end }}", {"F": False, "L": []}) == "n"
    assert run("{{ or .T (index .L 99) }}", {"T": "t", "L": []}) == "t"
    with pytest.raises(TemplateError, match="index out of range"):
        run("{{ and .T (index .L 99) }}", {"T": True, "L": []})


def test_comparisons_are_typed_as_in_go() -> None:
    assert run('{{ eq 1 1 }} {{ eq "a" "b" "a" }} {{ ne 1 2 }} {{ lt 1 2 }} {{ ge "a" "b" }}') == (
        "true true true true false"
    )
    assert run('{{ eq .Missing "x" }}', {}) == "false"
    with pytest.raises(TemplateError, match="incompatible types"):
        run("{{ eq 1 1.0 }}")


def test_missing_and_nil_values() -> None:
    assert run("{{ .Missing }}|{{ print .Missing }}", {}) == "<no value>|<nil>"
    with pytest.raises(TemplateError, match="nil pointer"):
        run("{{ .Missing.Field }}", {})
    with pytest.raises(TemplateError, match="can't evaluate field"):
        run("{{ .S.Field }}", {"S": "x"})


def test_struct_fields_only_never_methods() -> None:
    class Plain:
        Secret = "no"

    with pytest.raises(TemplateError, match="can't evaluate field"):
        run("{{ .Secret }}", Plain())
    with pytest.raises(TemplateError, match="can't evaluate field"):
        run("{{ .__class__ }}", ot.JSONMap({"a": 1}).__class__)
    assert run("{{ .__class__ }}", {"a": 1}) == "<no value>"  # a map key, not an attribute


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("{{ end }}", r"unexpected \{\{end\}\} \(line 1\)"),
        ("a\n\n{{ if .X }}", r"unexpected EOF"),
        ("{{ .X", "unclosed action"),
        ("{{ nope 1 }}", "function 'nope' not defined"),
        ("{{ $x }}", "undefined variable"),
        ("{{ range .L }}{{ end }}{{ break }}", "outside"),
        ("{{ 1 | 2 }}", "non executable command"),
        ('{{ "a" "b" }}', "can't give argument to non-function"),
        ("{{ /* x */ }}", "unexpected"),
        ('{{ "unterminated }}', "unterminated quoted string"),
        ("{{ 08 }}", "illegal number syntax"),
        ("{{ if .A }}{{ else }}{{ else }}{{ end }}", "expected end"),
    ],
)
def test_errors_are_template_errors_with_a_line(source: str, error: str) -> None:
    with pytest.raises(TemplateError, match=error):
        run(source, {"L": [], "X": 1})


def test_error_names_the_line() -> None:
    with pytest.raises(TemplateError, match=r"\(line 3\)"):
        run("a\nb\n{{ len 3 }}")


def test_fields_and_references() -> None:
    tmpl = parse(
        "{{ range $i, $m := .Messages }}{{ $m.Role }}{{ (index $.Tools 0).Name }}{{ end }}"
    )
    assert tmpl.fields() == {"Messages", "Role", "Tools", "Name"}
    assert tmpl.references("Messages")
    assert not tmpl.references("Prompt")


@pytest.mark.parametrize(
    ("source", "is_go"),
    [
        ("{{ .Prompt }}", True),
        ("{{- range .Messages }}{{ .Content }}{{ end }}", True),
        ("{{ if .System }}x{{ end }}", True),
        ("{{ $x := 1 }}", True),
        ("plain text", True),
        ("{% for m in messages %}{{ m['content'] }}{% endfor %}", False),
        ("{{ bos_token }}{{ messages[0]['content'] }}", False),
        ("{#- comment #}{{ x }}", False),
        # a template that begins with a function call (issue 57, item 12b)
        ('{{ printf "%s" .Prompt }}', True),
        ('{{- printf "<|user|>%s" .Prompt }}', True),
        ("{{ index .Messages 0 }}", True),
        ("{{ json .Tools }}{{ .Prompt }}", True),
        ("{{ len .Messages }}", True),
        ("{{ printf }}", False),
        ("{{ index + 1 }}", False),
        ("{{ messages|length }}", False),
        ("{{ len(messages) }}", False),
    ],
)
def test_looks_like_go(source: str, is_go: bool) -> None:
    assert looks_like_go(source) is is_go
    assert template_is_go(source) is is_go


# -- Ollama's layer ---------------------------------------------------------------------------

TOOL_TEMPLATE = (
    "{{- if .Tools }}TOOLS {{ json .Tools }}\n{{ end }}"
    "{{- range .Messages }}<{{ .Role }}{{ with .ToolName }} {{ . }}{{ end }}>"
    "{{- with .Thinking }}(think: {{ . }}){{ end }}{{ .Content }}"
    "{{- range .ToolCalls }}[{{ .ID }} {{ .Function.Name }} {{ .Function.Arguments }}]{{ end }}\n"
    "{{ end }}|{{ .Think }} {{ .ThinkLevel }} {{ .IsThinkSet }}"
)


def test_render_openai_conversation_with_tools() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Tokyo?"},
        {**WEATHER_CALL, "reasoning_content": "use the tool"},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 <C>"},
    ]
    out = render(TOOL_TEMPLATE, messages, tools=[WEATHER_TOOL], think=True)
    assert out == (
        'TOOLS [{"type":"function","function":{"name":"get_weather","description":"Get weather",'
        '"parameters":{"type":"object","properties":{"location":{"type":"string",'
        '"description":"City name"}}}}}]\n'
        "<system>Be brief.\n<user>Weather in Tokyo?\n"
        '<assistant>(think: use the tool)[call_1 get_weather {"location":"Tokyo",'
        '"unit":"celsius"}]\n<tool get_weather>sunny, 21 <C>\n|true medium true'
    )


def test_render_think_values() -> None:
    source = "{{ range .Messages }}{{ end }}{{ .Think }} {{ .ThinkLevel }} {{ .IsThinkSet }}"
    hi = [{"role": "user", "content": "hi"}]
    assert render(source, hi) == "false  false"
    assert render(source, hi, think=False) == "false  true"
    assert render(source, hi, think="high") == "true high true"


def test_arguments_numbers_are_float64() -> None:
    args = {"n": 3, "big": 1e21, "x": 1e-7, "s": "<&>"}
    call = {
        "role": "assistant",
        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": args}}],
    }
    source = (
        "{{ range .Messages }}{{ range .ToolCalls }}"
        "{{ .Function.Arguments }} {{ .Function.Arguments.n }}{{ end }}{{ end }}"
    )
    assert render(source, [call]) == '{"big":1e+21,"n":3,"s":"\\u003c\\u0026\\u003e","x":1e-7} 3'


def test_content_parts_become_messages_then_collate() -> None:
    """As Ollama's OpenAI layer: one message a part, merged again by collate, which keeps the
    first message's images only."""
    source = "{{ range .Messages }}[{{ .Role }}:{{ .Content }}:{{ len .Images }}]{{ end }}"
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert render(source, [{"role": "user", "content": parts}]) == "[user:look\n\n:0]"
    assert render(source, [{"role": "user", "content": parts[::-1]}]) == "[user:\n\nlook:1]"


def test_legacy_template_runs_per_turn_and_cuts_the_last() -> None:
    source = "{{ if .System }}S:{{ .System }}\n{{ end }}U:{{ .Prompt }}\nA:{{ .Response }}</s>\n"
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": "two"},
    ]
    assert render(source, messages) == "S:sys\nU:one\nA:1</s>\nU:two\nA:"
    whole = render(source, messages, add_generation_prompt=False)
    assert whole == "S:sys\nU:one\nA:1</s>\nU:two\nA:</s>\n"
    # a system message after a turn starts a new one
    later = [*messages[1:3], {"role": "system", "content": "new"}, {"role": "user", "content": "x"}]
    assert render(source, later) == "U:one\nA:1</s>\nS:new\nU:x\nA:"


def test_legacy_last_turn_has_no_functions_as_in_ollama() -> None:
    with pytest.raises(TemplateError, match="not a defined function"):
        render("{{ .Prompt }} {{ currentDate }}", [{"role": "user", "content": "hi"}])


def test_response_inside_a_branch_with_else_is_refused() -> None:
    source = "{{ .Prompt }}{{ if .System }}{{ .Response }}{{ else }}x{{ end }}"
    with pytest.raises(TemplateError, match="Response"):
        render(source, [{"role": "user", "content": "hi"}])


def test_check_accepts_builtin_templates_and_refuses_broken_ones() -> None:
    for path in DATA.glob("*.gotmpl"):
        ot.check(path.read_text(encoding="utf-8"))
    ot.check("{{ .Prompt }}")
    for broken in ("{{ .Prompt ", "{{ range .Messages }}{{ .Nope }}{{ end }}", "{{ len 3 }}"):
        with pytest.raises(TemplateError):
            ot.check(broken)


def test_tool_call_arguments_must_be_json() -> None:
    bad = {
        "role": "assistant",
        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{"}}],
    }
    with pytest.raises(TemplateError, match="not valid JSON"):
        render("{{ range .Messages }}{{ end }}", [bad])


# -- hostile templates --------------------------------------------------------------------------

BIG = {"L": list(range(100_000))}
HOSTILE = [
    ("{{ if 1 }}" * 5000 + "{{ end }}" * 5000, "nested more than"),
    ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "nested more than"),
    ('{{ define "a" }}{{ template "a" . }}{{ end }}{{ template "a" . }}', "template depth"),
    ('{{ define "a" }}{{ template "a" . }}{{ template "a" . }}{{ end }}{{ template "a" . }}',
     "template depth"),
    ('{{ define "a" }}' + "{{ if 1 }}" * 90 + '{{ template "a" . }}' + "{{ end }}" * 90
     + '{{ end }}{{ template "a" . }}', "nests more than"),
    ("{{ range $.L }}{{ range $.L }}{{ end }}{{ end }}", "steps"),
    ("{{ range $.L }}{{ range $.L }}x{{ end }}{{ end }}", "steps"),
    ("{{ range 1000000000 }}{{ end }}", "steps"),
    ('{{ printf "%9999999d" 1 }}', "width"),
    ('{{ $x := "ab" }}{{ range $.L }}{{ $x = printf "%s%s" $x $x }}{{ end }}{{ $x }}', "over"),
    ('{{ $x := printf "%1000000d" 1 }}{{ print $x $x $x $x $x }}', "over"),
    ("{{ range $.L }}{{ range $.L }}" + "x" * 80 + "{{ end }}{{ end }}", "output grew"),
]  # fmt: skip


@pytest.mark.parametrize(("source", "error"), HOSTILE)
def test_hostile_templates_stop_with_a_template_error(source: str, error: str) -> None:
    start = time.monotonic()
    with pytest.raises(TemplateError, match=error):
        run(source, BIG)
    assert time.monotonic() - start < 30  # a hang, not a measure of speed (each is ~0.1 s)


def test_go_ignores_absurd_printf_widths() -> None:
    # Go reads a width past 10^7 as no width at all, so nothing big is ever built
    assert run('{{ printf "%999999999d" 1 }}') == "%!(NOVERB)%!(EXTRA int=1)"
    assert run('{{ printf "%*d" 999999999 1 }}') == "%!(BADWIDTH)1"


def test_deep_data_is_a_template_error() -> None:
    deep: Any = "x"
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(TemplateError):
        run("{{ . }}", deep)
    args: Any = {}
    for _ in range(50_000):
        args = {"a": args}
    call = {
        "role": "assistant",
        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": args}}],
    }
    with pytest.raises(TemplateError):
        render("{{ range .Messages }}{{ .ToolCalls }}{{ end }}", [call])


def test_render_bounds_the_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALRUN_TEMPLATE_MAX_BYTES", "1000")
    long = [{"role": "user", "content": "x" * 600}, {"role": "assistant", "content": "y" * 600}]
    with pytest.raises(TemplateError, match="output grew"):
        render("{{ range .Messages }}{{ .Content }}{{ end }}", long)
    with pytest.raises(TemplateError, match="output grew"):  # the turns of a legacy template add up
        render("{{ .Prompt }}{{ .Response }}", [*long, *long])


def test_render_is_bounded_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALRUN_TEMPLATE_TIMEOUT", "20ms")
    messages = [{"role": ("user", "assistant")[i % 2], "content": str(i)} for i in range(900)]
    source = "{{ range .Messages }}{{ range $.Messages }}{{ .Content }}{{ end }}{{ end }}"
    with pytest.raises(TemplateError):
        render(source, messages)


# -- numbers past Go's bounds (issue 57, item 3) ------------------------------------------------

HUGE_LITERALS = [
    ("{{ 0x" + "f" * 4000 + " }}", "integer overflow"),  # past Python's int digit limit
    ("{{ " + "9" * 4000 + " }}", "integer overflow"),
    ("{{ 0b" + "1" * 5000 + " }}", "integer overflow"),
    ("{{ 0x" + "f" * 17 + " }}", "overflows int"),
    ("{{ " + "9" * 4000 + ".5 }}", "illegal number syntax"),  # +Inf: ParseFloat refuses it
    ("{{ 1e99999 }}", "illegal number syntax"),
    ("{{ 0x" + "f" * 4000 + "p1 }}", "illegal number syntax"),
    # parsed whole, as Go parses: a branch the conversation does not take still refuses
    ("{{ if .Tools }}{{ 0x" + "f" * 4000 + " }}{{ end }}", "integer overflow"),
]


@pytest.mark.parametrize(("literal", "error"), HUGE_LITERALS)
def test_number_literals_past_go_bounds_are_template_errors(literal: str, error: str) -> None:
    start = time.monotonic()
    with pytest.raises(TemplateError, match=error) as caught:
        template_render(literal + "{{ .Prompt }}", [{"role": "user", "content": "hi"}])
    assert "\n" not in str(caught.value)
    assert time.monotonic() - start < 2


def test_number_literals_within_go_bounds() -> None:
    assert run("{{ 0x" + "0" * 80 + "1 }} {{ 0b" + "1" * 63 + " }}") == f"1 {2**63 - 1}"
    assert (
        run("{{ -9223372036854775808 }} {{ 1e-99999 }} {{ 0x1p-2 }}")
        == "-9223372036854775808 0 0.25"
    )


ARGUMENTS_PAST_FLOAT64 = [
    '{"n": ' + "9" * 401 + "}",
    '{"n": 1e999}',
    '{"n": NaN}',
    '{"n": -Infinity}',
    '{"n": ' + "9" * 5000 + "}",
    {"n": int("9" * 401)},
    {"n": float("inf")},
    {"a": [{"b": float("nan")}]},
]


@pytest.mark.parametrize("arguments", ARGUMENTS_PAST_FLOAT64)
def test_arguments_a_float64_cannot_hold_are_template_errors(arguments: Any) -> None:
    call = {
        "role": "assistant",
        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": arguments}}],
    }
    source = (
        "{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Arguments }}{{ end }}{{ end }}"
    )
    start = time.monotonic()
    with pytest.raises(TemplateError, match=r"float64|not valid JSON") as caught:
        template_render(source, [{"role": "user", "content": "hi"}, call])
    assert "\n" not in str(caught.value)
    assert time.monotonic() - start < 2
    tools = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "parameters": {
                    "type": "object",
                    "properties": {"x": {"type": "number", "enum": [float("inf")]}},
                },
            },
        }
    ]
    with pytest.raises(TemplateError, match="float64"):
        template_render(
            "{{ .Tools }}{{ range .Messages }}{{ end }}",
            [{"role": "user", "content": "hi"}],
            tools=tools,
        )
