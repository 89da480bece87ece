"""Model parameters: one table, the same acceptance for Modelfile text, --param and JSON."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from localrun.errors import InvalidParameterError
from localrun.recipes import params
from localrun.recipes.params import SPECS, ParamSpec, merge, parse_assignment, spec, validate

OLLAMA_PARAMETERS = {
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "num_thread",
    "use_mmap",
    "num_keep",
    "seed",
    "num_predict",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "repeat_last_n",
    "temperature",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "stop",
    "draft_num_predict",  # Ollama's name for the longest draft of speculative decoding
}
# localrun's own: how to speculate (engine.speculation.speculator.MODES).
LOCALRUN_PARAMETERS = {"speculate", "grammar_forcing"}


def test_the_table_is_ollamas_set() -> None:
    assert set(SPECS) == OLLAMA_PARAMETERS | LOCALRUN_PARAMETERS
    for name, found in SPECS.items():
        assert found.name == name
        assert found.type in (int, float, bool, str)
        assert found.help
        if found.minimum is not None and found.maximum is not None:
            assert found.minimum <= found.maximum
    assert [n for n, s in SPECS.items() if s.repeated] == ["stop"]


def _valid_texts(found: ParamSpec) -> list[tuple[str, params.Value]]:
    """Textual values a parameter must accept, with what they parse to."""
    if found.type is bool:
        return [
            ("true", True),
            ("TRUE", True),
            ("1", True),
            ("yes", True),
            ("on", True),
            ("false", False),
            ("False", False),
            ("0", False),
            ("no", False),
            ("off", False),
            ("  true \t", True),
        ]
    if found.type is str and found.choices:
        first = found.choices[0]
        return [(c, c) for c in found.choices] + [(f" {first.upper()} ", first)]
    if found.type is str:
        return [("<|im_end|>", "<|im_end|>"), (" x ", " x "), ("\n", "\n"), ("a b", "a b")]
    assert found.minimum is not None and found.maximum is not None
    lo, hi = found.minimum, found.maximum
    if found.type is int:
        middle = int(lo + hi) // 2
        return [(str(int(lo)), int(lo)), (str(int(hi)), int(hi)), (f" {middle} ", middle)]
    mid = (lo + hi) / 2
    return [
        (str(lo), lo),
        (str(int(lo)), lo),
        (repr(hi), hi),
        (repr(mid), mid),
        (f"{mid:e}", mid),
    ]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_parameter_parses_valid_values(name: str) -> None:
    found = SPECS[name]
    for text, expected in _valid_texts(found):
        value = found.parse(text)
        assert value == expected, text
        assert type(value) is found.type, text
        assert spec(name).parse(text) == expected
        assert parse_assignment(f"{name}={text}") == (name, expected)


@pytest.mark.parametrize("name", sorted(n for n, s in SPECS.items() if s.type in (int, float)))
def test_every_numeric_parameter_refuses_out_of_range(name: str) -> None:
    found = SPECS[name]
    assert found.minimum is not None and found.maximum is not None
    step = 1 if found.type is int else 0.5
    for value in (found.minimum - step, found.maximum + step):
        text = str(int(value)) if found.type is int else repr(value)
        with pytest.raises(InvalidParameterError, match=name) as info:
            found.parse(text)
        assert "minimum" in str(info.value) or "maximum" in str(info.value)
        with pytest.raises(InvalidParameterError, match=name):
            found.check(value)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("num_ctx", "abc"),
        ("num_ctx", "1.5"),
        ("num_ctx", "2048.0"),
        ("num_ctx", "0x10"),
        ("num_ctx", ""),
        ("num_ctx", "  "),
        ("seed", "1e3"),
        ("top_k", "true"),
        ("temperature", "hot"),
        ("temperature", ""),
        ("temperature", "1,5"),
        ("temperature", "nan"),
        ("temperature", "inf"),
        ("temperature", "-inf"),
        ("temperature", "1e999"),
        ("top_p", "NaN"),
        ("use_mmap", "maybe"),
        ("use_mmap", "2"),
        ("use_mmap", ""),
        ("use_mmap", "t"),
        ("stop", ""),
    ],
)
def test_wrong_types_name_the_parameter(name: str, text: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        SPECS[name].parse(text)
    err = info.value
    assert f"parameter {name}" in str(err)
    assert err.code == "invalid_parameter"
    assert err.hint is not None and err.hint.startswith(f"{name}: ")
    with pytest.raises(InvalidParameterError, match=name):
        parse_assignment(f"{name}={text}")


@pytest.mark.parametrize(
    ("assignment", "fragment"),
    [
        ("top_p=1.5", "above the maximum 1"),
        ("min_p=-0.1", "below the minimum 0"),
        ("num_ctx=0", "below the minimum 1"),
        ("temperature=-1", "below the minimum 0"),
        ("temperature=100.5", "above the maximum 100"),
        ("presence_penalty=3", "above the maximum 2"),
        ("frequency_penalty=-2.5", "below the minimum -2"),
        ("num_gpu=-2", "below the minimum -1"),
        ("num_predict=-3", "below the minimum -2"),
        ("seed=18446744073709551616", "above the maximum 18446744073709551615"),
        ("seed=-9223372036854775809", "below the minimum -9223372036854775808"),
        ("main_gpu=256", "above the maximum 255"),
    ],
)
def test_out_of_range_values(assignment: str, fragment: str) -> None:
    name = assignment.partition("=")[0]
    with pytest.raises(InvalidParameterError) as info:
        parse_assignment(assignment)
    assert f"parameter {name}" in str(info.value)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("given", "reduced"),
    [
        (-1, -1),  # random, kept as is
        (0, 0),
        (2**32 - 2, 2**32 - 2),
        (2**32, 0),
        (2**32 + 7, 7),
        (2**63 - 1, 2**32 - 1),
        (2**64 - 1, 2**32 - 1),
        (-2, 2**32 - 2),  # as Go's uint32(int64) conversion, which Ollama applies
        (-(2**63), 0),
    ],
)
def test_any_64_bit_seed_is_reduced_to_32_bits(given: int, reduced: int) -> None:
    from localrun.engine.sampling.sampler import native_seed

    assert validate({"seed": given}) == {"seed": given}  # kept as written (Modelfiles too)
    assert parse_assignment(f"seed={given}") == ("seed", given)
    if given == -1:
        import llama_cpp

        reduced = llama_cpp.LLAMA_DEFAULT_SEED
    assert native_seed(given) == reduced


def test_boundaries_are_inclusive() -> None:
    assert parse_assignment("top_p=1") == ("top_p", 1.0)
    assert parse_assignment("top_p=0") == ("top_p", 0.0)
    assert parse_assignment("num_gpu=-1") == ("num_gpu", -1)
    assert parse_assignment("num_predict=-2") == ("num_predict", -2)
    assert parse_assignment("presence_penalty=-2") == ("presence_penalty", -2.0)


@pytest.mark.parametrize("name", ["bogus", "temp", "num-ctx", "stops", "", " "])
def test_unknown_parameters(name: str) -> None:
    with pytest.raises(InvalidParameterError, match="unknown parameter") as info:
        spec(name)
    assert info.value.hint is not None and "temperature" in info.value.hint
    if name.strip():
        with pytest.raises(InvalidParameterError, match=f"unknown parameter '{name}'"):
            parse_assignment(f"{name}=1")


@pytest.mark.parametrize("name", ["Temperature", "TEMPERATURE", " temperature ", "tEmPeRaTuRe"])
def test_names_are_case_insensitive(name: str) -> None:
    assert spec(name) is SPECS["temperature"]
    assert parse_assignment(f"{name}=0.5") == ("temperature", 0.5)
    assert validate({name: 0.5}) == {"temperature": 0.5}


def test_stop_keeps_its_blanks() -> None:
    assert parse_assignment("stop= \n") == ("stop", " \n")
    assert parse_assignment("stop=\t</s> ") == ("stop", "\t</s> ")
    assert SPECS["stop"].parse("  ") == "  "


def test_parse_assignment() -> None:
    assert parse_assignment("temperature=0.2") == ("temperature", 0.2)
    assert parse_assignment("num_ctx=4096") == ("num_ctx", 4096)
    assert parse_assignment(" top_k = 5 ") == ("top_k", 5)
    assert parse_assignment("use_mmap=false") == ("use_mmap", False)
    assert parse_assignment("stop=a=b") == ("stop", "a=b")


@pytest.mark.parametrize("text", ["temperature", "=1", " =1", "", "temperature 0.2", "="])
def test_parse_assignment_bad_forms(text: str) -> None:
    with pytest.raises(InvalidParameterError, match="NAME=VALUE") as info:
        parse_assignment(text)
    assert info.value.hint is not None and "--param" in info.value.hint


def test_merge_overrides_and_replaces_the_inherited_stop_list() -> None:
    base = {"stop": ["<|a|>", "<|b|>"], "temperature": 0.7, "num_ctx": 2048}
    out = merge(base, [("stop", "x"), ("temperature", 0.1), ("stop", "y"), ("top_k", 5)])
    assert out == {"stop": ["x", "y"], "temperature": 0.1, "num_ctx": 2048, "top_k": 5}
    assert base == {"stop": ["<|a|>", "<|b|>"], "temperature": 0.7, "num_ctx": 2048}


def test_merge_keeps_inherited_stop_when_not_repeated_and_last_value_wins() -> None:
    base = {"stop": ["<|a|>"]}
    out = merge(base, [("temperature", 0.1), ("temperature", 0.3)])
    assert out == {"stop": ["<|a|>"], "temperature": 0.3}
    assert merge({}, []) == {}
    assert merge({}, [("stop", "s")]) == {"stop": ["s"]}
    # The inherited list object itself is never appended to.
    inherited = ["<|a|>"]
    merge({"stop": inherited}, [("stop", "z")])
    assert inherited == ["<|a|>"]


def test_validate_a_json_object() -> None:
    raw = {
        "temperature": 1,
        "num_ctx": 2.0,
        "use_mmap": True,
        "stop": ["</s>", " "],
        "Top_P": 0.9,
        "seed": -1,
    }
    out = validate(raw)
    assert out == {
        "temperature": 1.0,
        "num_ctx": 2,
        "use_mmap": True,
        "stop": ["</s>", " "],
        "top_p": 0.9,
        "seed": -1,
    }
    assert type(out["temperature"]) is float
    assert type(out["num_ctx"]) is int
    assert validate({}) == {}


def test_validate_wraps_a_single_stop() -> None:
    assert validate({"stop": "</s>"}) == {"stop": ["</s>"]}
    assert validate({"stop": []}) == {"stop": []}


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ({"num_ctx": True}, "num_ctx"),
        ({"num_ctx": False}, "num_ctx"),
        ({"temperature": True}, "temperature"),
        ({"num_ctx": 2.5}, "num_ctx"),
        ({"num_ctx": "2048"}, "num_ctx"),
        ({"num_ctx": None}, "num_ctx"),
        ({"num_ctx": [1]}, "num_ctx"),
        ({"num_ctx": math.inf}, "num_ctx"),
        ({"num_ctx": math.nan}, "num_ctx"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": -math.inf}, "temperature"),
        ({"temperature": "0.5"}, "temperature"),
        ({"temperature": 10**400}, "temperature"),
        ({"seed": 10**400}, "seed"),
        ({"use_mmap": 1}, "use_mmap"),
        ({"use_mmap": "true"}, "use_mmap"),
        ({"use_mmap": None}, "use_mmap"),
        ({"stop": [""]}, "stop"),
        ({"stop": [1]}, "stop"),
        ({"stop": ["ok", None]}, "stop"),
        ({"stop": ""}, "stop"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
    ],
)
def test_validate_refuses(values: dict[str, Any], name: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        validate(values)
    assert f"parameter {name}" in str(info.value)


def test_validate_refuses_unknown_names() -> None:
    with pytest.raises(InvalidParameterError, match="unknown parameter 'bogus'"):
        validate({"temperature": 0.5, "bogus": 1})


# --- properties -------------------------------------------------------------------------------


def _values(found: ParamSpec) -> st.SearchStrategy[Any]:
    if found.type is bool:
        return st.booleans()
    if found.type is str and found.choices:
        return st.sampled_from(found.choices)
    if found.type is str:
        return st.text(min_size=1)
    assert found.minimum is not None and found.maximum is not None
    if found.type is int:
        return st.integers(int(found.minimum), int(found.maximum))
    return st.floats(found.minimum, found.maximum, allow_nan=False)


_spec_and_value = st.sampled_from(sorted(SPECS.values(), key=lambda s: s.name)).flatmap(
    lambda s: st.tuples(st.just(s), _values(s))
)


def _text(value: params.Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


@given(_spec_and_value)
def test_valid_values_survive_text_and_json(pair: tuple[ParamSpec, Any]) -> None:
    found, value = pair
    assert found.parse(_text(value)) == value
    assert found.check(value) == value
    assert validate({found.name: value})[found.name] == ([value] if found.repeated else value)


@given(st.sampled_from(sorted(SPECS)), st.text())
def test_arbitrary_text_parses_in_range_or_raises(name: str, text: str) -> None:
    found = SPECS[name]
    try:
        value = found.parse(text)
    except InvalidParameterError as err:
        assert f"parameter {name}" in str(err)
        return
    assert type(value) is found.type
    if found.type in (int, float):
        assert math.isfinite(value)  # type: ignore[arg-type]
        assert found.minimum is not None and found.maximum is not None
        assert found.minimum <= value <= found.maximum  # type: ignore[operator]


@given(
    st.sampled_from(sorted(SPECS)),
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.lists(st.text() | st.integers()),
)
def test_arbitrary_json_validates_or_raises(name: str, value: Any) -> None:
    try:
        out = validate({name: value})
    except InvalidParameterError:
        return
    checked = out[name]
    items = checked if SPECS[name].repeated else [checked]
    for item in items:
        assert type(item) is SPECS[name].type


def test_unknown_parameter_message_escapes_control_characters() -> None:
    with pytest.raises(InvalidParameterError) as info:
        spec("te\x1b[2Jmp\r\n")
    assert "\x1b" not in str(info.value) and "\n" not in str(info.value)
    assert "\\x1b" in str(info.value)
