"""Modelfile parsing: every instruction, exact error positions, and the canonical str() form."""

from __future__ import annotations

import builtins
import os
import time
from typing import Any, NoReturn

import pytest
from hypothesis import given
from hypothesis import strategies as st

from localrun.errors import ModelfileError
from localrun.recipes import params
from localrun.recipes.modelfile import (
    INSTRUCTIONS,
    ROLES,
    Message,
    Modelfile,
    format_param,
    format_value,
    parse,
)

EXAMPLE = '''\
# A full example; comments and blank lines are ignored.
FROM smollm2:135m

  adapter ./lora-one.gguf
ADAPTER "./lora two.gguf"
PARAMETER temperature 0.2
parameter NUM_CTX 4096
PARAMETER stop "<|im_end|>"
PARAMETER stop """<|im_start|>"""
PARAMETER use_mmap false
TEMPLATE """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ .Prompt }}"""
SYSTEM You are a helpful assistant.   \t
MESSAGE user "Hi \\"there\\""
message ASSISTANT """Hello!
How can I help?"""
LICENSE """MIT License

Copyright (c) 2024"""
LICENSE Apache-2.0
'''


def test_example() -> None:
    m = parse(EXAMPLE)
    assert m.from_ == "smollm2:135m"
    assert m.adapters == ["./lora-one.gguf", "./lora two.gguf"]
    assert m.parameters == [
        ("temperature", 0.2),
        ("num_ctx", 4096),
        ("stop", "<|im_end|>"),
        ("stop", "<|im_start|>"),
        ("use_mmap", False),
    ]
    assert m.template == (
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ .Prompt }}"
    )
    assert m.system == "You are a helpful assistant."
    assert m.messages == [
        Message("user", 'Hi "there"'),
        Message("assistant", "Hello!\nHow can I help?"),
    ]
    assert m.licenses == ["MIT License\n\nCopyright (c) 2024", "Apache-2.0"]
    assert m.lines == {
        "FROM": 2,
        "ADAPTER:0": 4,
        "ADAPTER:1": 5,
        "TEMPLATE": 11,
        "SYSTEM": 14,
        "LICENSE": 21,
    }


def test_example_round_trips() -> None:
    m = parse(EXAMPLE)
    text = str(m)
    assert parse(text) == m
    assert str(parse(text)) == text
    assert text.startswith("FROM smollm2:135m\n")
    assert text.endswith("\n")


def test_minimal() -> None:
    m = parse("FROM x")
    assert m == Modelfile(from_="x")
    assert (m.system, m.template) == (None, None)
    assert (m.parameters, m.adapters, m.messages, m.licenses) == ([], [], [], [])
    assert str(m) == "FROM x\n"


@pytest.mark.parametrize("keyword", ["FROM", "from", "From", "fRoM"])
def test_keywords_are_case_insensitive(keyword: str) -> None:
    assert parse(f"{keyword} base").from_ == "base"


@pytest.mark.parametrize("keyword", INSTRUCTIONS)
def test_every_instruction_in_any_case(keyword: str) -> None:
    args = {
        "FROM": "other",
        "PARAMETER": "Top_K 7",
        "SYSTEM": "be brief",
        "TEMPLATE": "{{ .Prompt }}",
        "ADAPTER": "./a.gguf",
        "DRAFT": "smollm2:135m",
        "PROJECTOR": "./mmproj.gguf",
        "MESSAGE": "User hello there",
        "LICENSE": "MIT",
    }[keyword]
    head = "" if keyword == "FROM" else "FROM base\n"
    for spelled in (keyword, keyword.lower(), keyword.capitalize()):
        m = parse(f"{head}{spelled} {args}\n")
        assert m.from_ == ("other" if keyword == "FROM" else "base")
        if keyword == "PARAMETER":
            assert m.parameters == [("top_k", 7)]
        elif keyword == "SYSTEM":
            assert m.system == "be brief"
        elif keyword == "TEMPLATE":
            assert m.template == "{{ .Prompt }}"
        elif keyword == "ADAPTER":
            assert m.adapters == ["./a.gguf"]
        elif keyword == "DRAFT":
            assert m.draft == "smollm2:135m"
        elif keyword == "PROJECTOR":
            assert m.projector == "./mmproj.gguf"
        elif keyword == "MESSAGE":
            assert m.messages == [Message("user", "hello there")]
        elif keyword == "LICENSE":
            assert m.licenses == ["MIT"]


def test_comments_and_blank_lines() -> None:
    text = "\n\n# comment\n   # indented comment\n\t\nFROM x\n#FROM y\n   \n# end"
    assert parse(text) == Modelfile(from_="x")


def test_hash_inside_a_value_is_not_a_comment() -> None:
    m = parse("FROM x\nSYSTEM #1 fan # not a comment\nLICENSE #")
    assert m.system == "#1 fan # not a comment"
    assert m.licenses == ["#"]


def test_leading_blanks_and_tabs_between_words() -> None:
    m = parse("\t FROM\t\tx\n  PARAMETER \t temperature \t 0.5 \t\n MESSAGE\tuser\thi")
    assert m.from_ == "x"
    assert m.parameters == [("temperature", 0.5)]
    assert m.messages == [Message("user", "hi")]


def test_bare_value_keeps_inner_blanks_and_drops_trailing_ones() -> None:
    m = parse('FROM x\nSYSTEM   two  words \t \nTEMPLATE say "hi" now\n')
    assert m.system == "two  words"
    assert m.template == 'say "hi" now'


def test_triple_quoted_value_is_verbatim() -> None:
    body = '\n  # not a comment\n\nFROM not-an-instruction\n\tsay "hi" \\n \\q \n'
    m = parse(f'FROM x\nSYSTEM """{body}"""\nPARAMETER seed 1\n')
    assert m.system == body
    assert m.parameters == [("seed", 1)]


def test_triple_quoted_on_one_line_and_empty() -> None:
    m = parse('FROM x\nSYSTEM """one line"""   \nTEMPLATE """"""\nLICENSE ""')
    assert m.system == "one line"
    assert m.template == ""
    assert m.licenses == [""]


def test_triple_quoted_value_with_single_and_double_quotes() -> None:
    m = parse('FROM x\nSYSTEM """a "b" ""c"" d"""')
    assert m.system == 'a "b" ""c"" d'


def test_quoted_values_and_escapes() -> None:
    m = parse('FROM x\nSYSTEM "a\\\\b\\"c\\nd\\te\\rf"\nTEMPLATE "  padded  "\nLICENSE "#"')
    assert m.system == 'a\\b"c\nd\te\rf'
    assert m.template == "  padded  "
    assert m.licenses == ["#"]


def test_quoted_value_keeps_other_characters_verbatim() -> None:
    m = parse('FROM x\nSYSTEM "é ünïcode\x00 \'single\' \\"\\"\\" inside\t#"')
    assert m.system == 'é ünïcode\x00 \'single\' """ inside\t#'


def test_parameters_accumulate_in_order_and_stop_repeats() -> None:
    m = parse(
        "FROM x\n"
        "PARAMETER stop <|a|>\n"
        "PARAMETER temperature 0.1\n"
        'PARAMETER stop " "\n'
        "PARAMETER temperature 0.9\n"
        'PARAMETER stop """\n"""\n'
    )
    assert m.parameters == [
        ("stop", "<|a|>"),
        ("temperature", 0.1),
        ("stop", " "),
        ("temperature", 0.9),
        ("stop", "\n"),
    ]
    assert params.merge({"stop": ["old"]}, m.parameters) == {
        "stop": ["<|a|>", " ", "\n"],
        "temperature": 0.9,
    }


@pytest.mark.parametrize("name", sorted(params.SPECS))
def test_every_parameter_can_be_written(name: str) -> None:
    found = params.SPECS[name]
    value: params.Value
    if found.type is bool:
        text, value = "TRUE", True
    elif found.choices:
        text, value = found.choices[-1].upper(), found.choices[-1]
    elif found.type is str:
        text, value = '"</s>"', "</s>"
    else:
        assert found.maximum is not None
        value = found.type(found.maximum)
        text = str(value)
    m = parse(f"FROM x\nPARAMETER {name.upper()} {text}")
    assert m.parameters == [(name, value)]
    assert parse(str(m)) == m


def test_message_roles() -> None:
    m = parse("FROM x\nMESSAGE system s\nMESSAGE USER u\nMESSAGE Assistant a\nMESSAGE user ''")
    assert m.messages == [
        Message("system", "s"),
        Message("user", "u"),
        Message("assistant", "a"),
        Message("user", "''"),
    ]
    assert {msg.role for msg in m.messages} == set(ROLES)


def test_licenses_and_adapters_accumulate() -> None:
    m = parse("FROM x\nLICENSE a\nADAPTER one\nLICENSE b\nADAPTER two\nLICENSE a")
    assert m.licenses == ["a", "b", "a"]
    assert m.adapters == ["one", "two"]
    assert m.lines["ADAPTER:0"] == 3
    assert m.lines["ADAPTER:1"] == 5
    assert m.lines["LICENSE"] == 6


def test_system_and_template_last_one_wins() -> None:
    m = parse("FROM x\nSYSTEM one\nTEMPLATE t1\nSYSTEM two\nTEMPLATE t2\n")
    assert m.system == "two"
    assert m.template == "t2"
    assert m.lines["SYSTEM"] == 4
    assert m.lines["TEMPLATE"] == 5


def test_from_may_come_after_other_instructions() -> None:
    m = parse("SYSTEM s\nFROM late")
    assert m.from_ == "late"
    assert m.lines["FROM"] == 2


def test_crlf_input() -> None:
    text = 'FROM x\r\nSYSTEM """a\r\nb"""\r\nPARAMETER stop "q"\r\nLICENSE  mit \r\n'
    m = parse(text)
    assert m.system == "a\nb"
    assert m.parameters == [("stop", "q")]
    assert m.licenses == ["mit"]
    assert m == parse(text.replace("\r\n", "\n"))


def test_byte_order_mark() -> None:
    m = parse("\ufeffFROM x\nSYSTEM s\n")
    assert m == Modelfile(from_="x", system="s")
    assert parse("\ufeff# comment\r\nFROM y").from_ == "y"


def test_draft_is_kept_as_written_and_round_trips() -> None:
    for value in ("smollm2:135m", "./draft model.gguf", "~/m/d.gguf", "C:\\m\\d.gguf", " # odd"):
        m = parse(f"FROM base\nDRAFT {format_value(value)}\n")
        assert m.draft == value
        assert m.lines["DRAFT"] == 2
        assert parse(str(m)) == m
    assert parse("FROM base").draft is None
    assert "DRAFT" not in str(parse("FROM base"))
    # Where it is written does not matter; str() puts it after FROM and ADAPTER.
    m = parse("DRAFT d\nSYSTEM s\nADAPTER a\nFROM base\n")
    assert str(m) == "FROM base\nADAPTER a\nDRAFT d\nSYSTEM s\n"


def test_from_path_is_kept_as_written() -> None:
    assert parse("FROM ./models/My Model.Q4_K_M.gguf").from_ == "./models/My Model.Q4_K_M.gguf"
    assert parse("FROM hf.co/Org/Repo:Q4_K_M").from_ == "hf.co/Org/Repo:Q4_K_M"
    assert parse('FROM "C:\\\\models\\\\m.gguf"').from_ == "C:\\models\\m.gguf"


# --- errors: the exact line and column ----------------------------------------------------------


def _error(text: str) -> ModelfileError:
    with pytest.raises(ModelfileError) as info:
        parse(text)
    err = info.value
    assert err.code == "modelfile_error"
    assert err.hint
    assert str(err).startswith(f"Modelfile:{err.line}:{err.column}: ")
    assert "\n" not in str(err)
    return err


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        # unknown instruction: where the word starts
        ("FROM x\n  BOGUS y\n", 2, 3, "unknown instruction 'BOGUS'"),
        ("FROM x\nRUN echo hi", 2, 1, "unknown instruction 'RUN'"),
        ("FROM x\n\tFROMX y", 2, 2, "unknown instruction 'FROMX'"),
        ("\ufeffBOGUS", 1, 1, "unknown instruction"),
        ("FROM x\r\n\r\nBOGUS\r\n", 3, 1, "unknown instruction"),
        ('FROM x\nSYSTEM """a\nb\nc"""\n BOGUS\n', 5, 2, "unknown instruction"),
        ("FROM x\nFROM#y", 2, 1, "unknown instruction 'FROM#y'"),
        # unknown parameter: the column of its name
        ("FROM x\nPARAMETER  bogus 1\n", 2, 12, "unknown parameter 'bogus'"),
        ("FROM x\nPARAMETER\ttemp 1\n", 2, 11, "unknown parameter 'temp'"),
        # wrong type or range: the column of the value
        ("FROM x\nPARAMETER num_ctx abc\n", 2, 19, "parameter num_ctx"),
        ("FROM x\nPARAMETER temperature hot\n", 2, 23, "parameter temperature"),
        ("FROM x\nPARAMETER use_mmap maybe\n", 2, 20, "parameter use_mmap"),
        ("FROM x\nPARAMETER temperature -1\n", 2, 23, "below the minimum 0"),
        ("FROM x\nPARAMETER top_p    1.5\n", 2, 20, "above the maximum 1"),
        ("FROM x\nPARAMETER presence_penalty 3", 2, 28, "above the maximum 2"),
        ("FROM x\nPARAMETER num_ctx 0\n", 2, 19, "below the minimum 1"),
        ('FROM x\nPARAMETER stop ""\n', 2, 16, "parameter stop"),
        ('FROM x\nPARAMETER num_ctx """\n12x"""\n', 2, 19, "parameter num_ctx"),
        # missing FROM
        ("", 1, 1, "missing FROM"),
        ("# only a comment\n\n", 1, 1, "missing FROM"),
        ("SYSTEM hi\nPARAMETER seed 1\n", 1, 1, "missing FROM"),
        # FROM twice: the second one
        ("FROM a\n# c\n FROM b\n", 3, 2, "FROM given twice"),
        ("from a\nFrom a", 2, 1, "FROM given twice"),
        # DRAFT twice: the second one (even when it names the same model)
        ("FROM a\nDRAFT d\nSYSTEM s\n  draft d\n", 4, 3, "DRAFT given twice"),
        ("DRAFT ./d.gguf\nFROM a\nDraft e", 3, 1, "DRAFT given twice"),
        # unterminated """: where it opened
        ('FROM x\nSYSTEM """abc\nmore\n', 2, 8, 'unterminated """'),
        ('FROM x\nMESSAGE  user """abc', 2, 15, 'unterminated """'),
        ('FROM x\nSYSTEM """abc""', 2, 8, 'unterminated """'),
        # unterminated quote: where it opened
        ('FROM x\nSYSTEM "abc\nFROM y\n', 2, 8, "unterminated quoted value"),
        ('FROM x\nSYSTEM   "abc', 2, 10, "unterminated quoted value"),
        ('FROM x\nSYSTEM "abc\\"', 2, 8, "unterminated quoted value"),
        ('FROM "x', 1, 6, "unterminated quoted value"),
        # MESSAGE with an unknown role: the column of the role
        ("FROM x\nMESSAGE robot hi", 2, 9, "unknown MESSAGE role 'robot'"),
        ("FROM x\nMESSAGE \t tool hi", 2, 11, "unknown MESSAGE role 'tool'"),
        # an instruction with no value
        ("FROM x\nSYSTEM\n", 2, 7, "SYSTEM needs a value"),
        ("FROM x\nSYSTEM", 2, 7, "SYSTEM needs a value"),
        ("FROM x\nSYSTEM   \n", 2, 10, "SYSTEM needs a value"),
        ("FROM", 1, 5, "FROM needs a value"),
        ("FROM \t ", 1, 8, "FROM needs a value"),
        ("FROM x\nLICENSE\r\n", 2, 8, "LICENSE needs a value"),
        ("FROM x\nDRAFT\n", 2, 6, "DRAFT needs a value"),
        ("FROM x\nDRAFT   \n", 2, 9, "DRAFT needs a value"),
        ('FROM x\nDRAFT "d" e\n', 2, 11, "unexpected text after the closing quote"),
        ("FROM x\nPARAMETER \n", 2, 11, "PARAMETER needs a name"),
        ("FROM x\nPARAMETER temperature\n", 2, 22, "PARAMETER temperature needs a value"),
        ("FROM x\nPARAMETER temperature   \n", 2, 25, "PARAMETER needs a value"),
        ("FROM x\nMESSAGE user\n", 2, 13, "MESSAGE user needs a value"),
        ("FROM x\nMESSAGE\n", 2, 8, "MESSAGE needs a value"),
        # text after the closing quote
        ('FROM x\nSYSTEM "abc" extra\n', 2, 14, "unexpected text after the closing quote"),
        ('FROM x\nSYSTEM """a\nb""" x', 3, 6, "unexpected text after the closing quote"),
        ('FROM x\nSYSTEM """a"""" ', 2, 15, "unexpected text after the closing quote"),
        ('FROM "x"y', 1, 9, "unexpected text after the closing quote"),
        # an unknown escape: where the backslash is
        ('FROM x\nSYSTEM "a\\qb"', 2, 10, "unknown escape '\\q'"),
        ('FROM x\nSYSTEM "\\u00e9"', 2, 9, "unknown escape '\\u'"),
        ('FROM x\nSYSTEM "ab\\', 2, 11, "unknown escape"),
        ('FROM x\nSYSTEM "ab\\\nc"', 2, 11, "unknown escape"),
    ],
)
def test_error_positions(text: str, line: int, column: int, fragment: str) -> None:
    err = _error(text)
    assert (err.line, err.column) == (line, column), str(err)
    assert fragment in err.reason


def test_unknown_parameter_hint_and_message() -> None:
    err = _error("FROM x\nPARAMETER bogus 1")
    assert "unknown parameter 'bogus'" in str(err)


def test_errors_stay_on_one_line_whatever_the_input() -> None:
    err = _error("FROM x\n\x00\x1b[31m\u2028" + "é" * 100 + " y")
    assert err.line == 2 and err.column == 1
    assert "\\x00" in err.reason
    err = _error("FROM x\nMESSAGE \x1b[2J hi")
    assert "\\x1b" in err.reason


def test_error_with_path() -> None:
    err = _error("FROM x\nBOGUS")
    located = err.with_path("/tmp/Modelfile.dev")
    assert str(located).startswith("/tmp/Modelfile.dev:2:1: unknown instruction")
    assert (located.line, located.column, located.hint) == (2, 1, err.hint)


def test_line_numbers_count_lines_inside_multiline_values() -> None:
    text = 'FROM x\nLICENSE """\n\n\n"""\nPARAMETER seed "1x"\n'
    err = _error(text)
    assert (err.line, err.column) == (6, 16)


# --- no I/O --------------------------------------------------------------------------------------


def test_parser_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise AssertionError(f"the parser touched the file system: {args!r}")

    text = "FROM /dev/random\nADAPTER /dev/zero\nLICENSE /etc/shadow\nFROM2 x"
    with monkeypatch.context() as patch:
        for module, attr in (
            (builtins, "open"),
            (os, "open"),
            (os, "stat"),
            (os, "lstat"),
            (os, "listdir"),
            (os, "scandir"),
        ):
            patch.setattr(module, attr, refuse)
        started = time.monotonic()
        with pytest.raises(ModelfileError):
            parse(text)
        m = parse(text.rpartition("\n")[0])
        elapsed = time.monotonic() - started
    assert m.from_ == "/dev/random"
    assert m.adapters == ["/dev/zero"]
    assert m.licenses == ["/etc/shadow"]
    assert elapsed < 1.0


def test_missing_file_is_not_an_error_when_parsing() -> None:
    assert parse("FROM ./does/not/exist.gguf").from_ == "./does/not/exist.gguf"


# --- the canonical writer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("smollm2:135m", "smollm2:135m"),
        ("two words", "two words"),
        ("tab\tinside", "tab\tinside"),
        ('say "hi"', 'say "hi"'),
        ("é", "é"),
        ("", '""""""'),
        (" lead", '""" lead"""'),
        ("trail ", '"""trail """'),
        ("#hash", '"""#hash"""'),
        ("multi\nline", '"""multi\nline"""'),
        ('"quoted"', '"\\"quoted\\""'),
        ('has """ and\nnewline', '"has \\"\\"\\" and\\nnewline"'),
        ("cr\r\nlf", '"cr\\r\\nlf"'),
        ("back\\slash\n", '"""back\\slash\n"""'),
    ],
)
def test_format_value(value: str, written: str) -> None:
    assert format_value(value) == written
    assert parse(f"FROM {written}").from_ == value


@pytest.mark.parametrize(
    ("value", "written"),
    [(True, "true"), (False, "false"), (0.1, "0.1"), (1.0, "1.0"), (1e-07, "1e-07"), (42, "42")],
)
def test_format_param(value: params.Value, written: str) -> None:
    assert format_param(value) == written


def test_str_order_is_canonical() -> None:
    m = Modelfile(
        from_="base",
        parameters=[("stop", "a"), ("temperature", 0.5), ("stop", "b")],
        system="sys",
        template="tpl",
        adapters=["ad"],
        messages=[Message("user", "u"), Message("assistant", "a")],
        licenses=["l1", "l2"],
        draft="small",
    )
    assert str(m) == (
        "FROM base\n"
        "ADAPTER ad\n"
        "DRAFT small\n"
        "PARAMETER stop a\n"
        "PARAMETER temperature 0.5\n"
        "PARAMETER stop b\n"
        "TEMPLATE tpl\n"
        "SYSTEM sys\n"
        "MESSAGE user u\n"
        "MESSAGE assistant a\n"
        "LICENSE l1\n"
        "LICENSE l2\n"
    )
    assert parse(str(m)) == m


_TRICKY = [
    '"',
    '""',
    '"""',
    "'",
    "\\",
    "\\n",
    '\\"',
    "\n",
    "\r",
    "\r\n",
    "\t",
    " ",
    "#",
    "# x",
    "a",
    "é",
    "名",
    "\ufeff",
    "\x00",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x85",
    "\u2028",
    "\u00a0",
    "FROM x",
    "PARAMETER",
    "😀",
]
_text = (
    st.text()
    | st.lists(st.sampled_from(_TRICKY), max_size=12).map("".join)
    | st.lists(st.sampled_from(_TRICKY) | st.text(max_size=3), max_size=8).map("".join)
)


def _param_value(found: params.ParamSpec) -> st.SearchStrategy[params.Value]:
    if found.type is bool:
        return st.booleans()
    if found.choices:
        return st.sampled_from(found.choices)
    if found.type is str:
        return _text.filter(bool)
    assert found.minimum is not None and found.maximum is not None
    if found.type is int:
        return st.integers(int(found.minimum), int(found.maximum))
    return st.floats(found.minimum, found.maximum, allow_nan=False)


_parameter = st.sampled_from(sorted(params.SPECS.values(), key=lambda s: s.name)).flatmap(
    lambda s: st.tuples(st.just(s.name), _param_value(s))
)

_modelfiles = st.builds(
    Modelfile,
    from_=_text,
    parameters=st.lists(_parameter, max_size=6),
    system=st.none() | _text,
    template=st.none() | _text,
    adapters=st.lists(_text, max_size=3),
    messages=st.lists(st.builds(Message, st.sampled_from(ROLES), _text), max_size=4),
    licenses=st.lists(_text, max_size=3),
    draft=st.none() | _text,
)


@given(_modelfiles)
def test_generated_modelfiles_round_trip(m: Modelfile) -> None:
    text = str(m)
    assert parse(text) == m
    assert str(parse(text)) == text


@given(_text)
def test_every_value_round_trips_in_every_position(value: str) -> None:
    written = format_value(value)
    for text in (
        f"FROM {written}",
        f"FROM x\nSYSTEM {written}\nLICENSE after",
        f"FROM x\nMESSAGE user {written}\n",
        f"FROM x\nDRAFT {written}\n",
    ):
        m = parse(text)
        assert value in (m.from_, m.system, m.draft, *(msg.content for msg in m.messages))
    if value:
        assert parse(f"FROM x\nPARAMETER stop {written}").parameters == [("stop", value)]


_line = st.lists(
    st.sampled_from(
        [
            *INSTRUCTIONS,
            *("from", "system", " ", "\t", "\n", "\r\n", '"', '"""', "\\", "#"),
            *("temperature", "stop", "user", "robot", "0.5", "x", "-1", "é"),
        ]
    ),
    max_size=25,
).map("".join)


@given(_line | st.text())
def test_arbitrary_text_parses_or_raises_modelfile_error(text: str) -> None:
    try:
        m = parse(text)
    except ModelfileError as err:
        assert err.line >= 1 and err.column >= 1
        assert "\n" not in str(err)
        return
    assert parse(str(m)) == m
