"""Model references: the grammar in localrun/store/names.py, its defaults, and that no name
escapes."""

from __future__ import annotations

import os
import re
import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from localrun.errors import InvalidNameError, LocalrunError
from localrun.store import names
from localrun.store.names import ModelName, is_valid, parse

# --- valid references -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("smollm2", ("localrun", "library", "smollm2", "latest")),
        ("smollm2:135m", ("localrun", "library", "smollm2", "135m")),
        ("me/assistant", ("localrun", "me", "assistant", "latest")),
        ("me/assistant:v1.2", ("localrun", "me", "assistant", "v1.2")),
        ("registry.example.com/team/model:q8_0", ("registry.example.com", "team", "model", "q8_0")),
        ("localhost:8080/ns/name:tag", ("localhost:8080", "ns", "name", "tag")),
        ("localhost:8080/ns/name", ("localhost:8080", "ns", "name", "latest")),
        ("hf.co/Org/Repo:Q4_K_M", ("hf.co", "org", "repo", "q4_k_m")),
        (
            "hf.co/bartowski/SmolLM2-135M-Instruct-GGUF",
            ("hf.co", "bartowski", "smollm2-135m-instruct-gguf", "latest"),
        ),
        ("SmolLM2:135M", ("localrun", "library", "smollm2", "135m")),
        ("  padded:tag \n", ("localrun", "library", "padded", "tag")),
        ("x:_private", ("localrun", "library", "x", "_private")),
        ("a.b_c-d", ("localrun", "library", "a.b_c-d", "latest")),
        ("9/9:9", ("localrun", "9", "9", "9")),
        ("my-host-1/ns/n", ("my-host-1", "ns", "n", "latest")),
        ("localhost:1/a/b", ("localhost:1", "a", "b", "latest")),
        ("localhost:65535/a/b", ("localhost:65535", "a", "b", "latest")),
    ],
)
def test_valid_references(text: str, expected: tuple[str, str, str, str]) -> None:
    name = parse(text)
    assert name.parts == expected
    assert (name.host, name.namespace, name.name, name.tag) == expected
    assert is_valid(text)


@pytest.mark.parametrize(
    ("text", "short", "full"),
    [
        ("smollm2", "smollm2:latest", "localrun/library/smollm2:latest"),
        ("smollm2:135m", "smollm2:135m", "localrun/library/smollm2:135m"),
        ("library/smollm2:135m", "smollm2:135m", "localrun/library/smollm2:135m"),
        ("localrun/library/smollm2", "smollm2:latest", "localrun/library/smollm2:latest"),
        ("me/assistant", "me/assistant:latest", "localrun/me/assistant:latest"),
        ("localrun/me/assistant:x", "me/assistant:x", "localrun/me/assistant:x"),
        ("HF.co/Org/Repo:Q4_K_M", "hf.co/org/repo:q4_k_m", "hf.co/org/repo:q4_k_m"),
        ("hf.co/library/repo", "hf.co/library/repo:latest", "hf.co/library/repo:latest"),
        (
            "localhost:8080/ns/name",
            "localhost:8080/ns/name:latest",
            "localhost:8080/ns/name:latest",
        ),
    ],
)
def test_short_and_full_forms(text: str, short: str, full: str) -> None:
    name = parse(text)
    assert str(name) == short
    assert name.full == full
    assert parse(short) == name
    assert parse(full) == name


def test_defaults() -> None:
    assert names.DEFAULT_HOST == "localrun"
    assert names.DEFAULT_NAMESPACE == "library"
    assert names.DEFAULT_TAG == "latest"
    assert parse("x") == ModelName("localrun", "library", "x", "latest")


def test_names_are_case_insensitive() -> None:
    assert parse("HF.CO/ORG/REPO:TAG") == parse("hf.co/org/repo:tag")
    assert parse("Me/Assistant:Latest").full == "localrun/me/assistant:latest"


def test_model_name_is_frozen_and_ordered() -> None:
    a, b = parse("a:1"), parse("b:1")
    assert sorted([b, a]) == [a, b]
    assert len({parse("a"), parse("A:latest"), parse("library/a")}) == 1
    with pytest.raises(AttributeError):
        a.name = "c"  # type: ignore[misc]


def test_part_length_limits_are_inclusive() -> None:
    assert parse("n" * 80 + "/x").namespace == "n" * 80
    assert parse("n" * 96).name == "n" * 96
    assert parse("x:" + "t" * 128).tag == "t" * 128
    host = ".".join(["h" * 49] * 5) + ".abc"  # 253 characters
    assert len(host) == 253
    assert parse(f"{host}/ns/x").host == host


def test_reference_of_exactly_400_characters() -> None:
    text = "h" * 200 + "/" + "n" * 80 + "/" + "m" * 96 + ":" + "t" * 21
    assert len(text) == 400
    assert str(parse(text)) == text
    with pytest.raises(InvalidNameError, match="400"):
        parse(text + "t")


# --- invalid references -----------------------------------------------------------------------


INVALID = [
    "",
    "   ",
    "\n\t",
    "a" * 401,
    "x:" + "t" * 399,
    "..",
    "../x",
    "x/..",
    "ns/../x",
    "../../etc/passwd",
    "a..b",
    "x:..",
    "x:a..b",
    "h..co/ns/x",
    "ns..x/y",
    "a/b\\c",
    "..\\..\\windows",
    "C:\\x",
    "x\\",
    "/etc/passwd",
    "/x",
    "//x",
    "a/b/c/d",
    "a/b/c/d:tag",
    "a/",
    "a//b",
    "/",
    "name:",
    "ns/name:",
    ":tag",
    ":",
    "has space",
    "has\ttab",
    "ns/na me:tag",
    "x:ta g",
    "nämé",
    "名前",
    "\u212a",  # KELVIN SIGN: lower() makes it an ASCII "k"
    "x:\u212a",
    "a\x00b",
    "\x00",
    "abc\n:latest",  # "$" matches before a trailing newline
    "ns\n/x",
    "hf.co\n/ns/x",
    "x\n",  # stripped, fine, but see below: inner newline
    ".hidden",
    "-x",
    "_x",
    "x:.tag",
    "x:-tag",
    "ns/.x",
    ".ns/x",
    "./x",
    "~/x",
    "x@sha256",
    "x:tag:more",
    "n" * 81 + "/x",
    "n" * 97,
    "x:" + "t" * 129,
    ".".join(["h" * 49] * 5) + ".abcd/ns/x",  # host of 254
    "-host/ns/x",
    "host-/ns/x",
    "ho_st/ns/x",
    ".host/ns/x",
    "host./ns/x",
    "localhost:0/ns/x",
    "localhost:00000/ns/x",
    "localhost:65536/ns/x",
    "localhost:70000/ns/x",
    "localhost:123456/ns/x",
    "localhost:/ns/x",
    "localhost:port/ns/x",
    ":8080/ns/x",
]


@pytest.mark.parametrize("text", [t for t in INVALID if t != "x\n"])
def test_invalid_references(text: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        parse(text)
    err = info.value
    assert isinstance(err, LocalrunError)
    assert err.code == "invalid_name"
    assert "\n" not in str(err) and "\r" not in str(err)
    assert len(str(err)) < 300
    assert err.hint
    assert not is_valid(text)


def test_surrounding_blanks_are_stripped_but_inner_newline_is_not() -> None:
    assert parse("x\n") == parse("x")
    with pytest.raises(InvalidNameError):
        parse("x\n:tag")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("a" * 401, "401"),
        ("../x", ".."),
        ("/etc/passwd", "absolute path"),
        ("a/b/c/d", "at most"),
        ("name:", "empty tag"),
        ("a//b", "empty namespace"),
        ("n" * 97, "name"),
        ("x:" + "t" * 129, "tag"),
        ("localhost:70000/ns/x", "port 70000"),
        ("localhost:0/ns/x", "port 0"),
        ("-h/ns/x", "host"),
    ],
)
def test_error_messages_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(InvalidNameError, match=fragment):
        parse(text)


def test_absolute_path_hint_points_to_a_modelfile() -> None:
    with pytest.raises(InvalidNameError) as info:
        parse("/models/x.gguf")
    assert info.value.hint is not None and "FROM" in info.value.hint


def test_error_shows_control_characters_escaped_and_long_input_shortened() -> None:
    with pytest.raises(InvalidNameError) as info:
        parse("bad\x00name\nnext")
    assert "\\x00" in str(info.value)
    with pytest.raises(InvalidNameError) as info:
        parse("x:" + "é" * 300)
    assert "\n" not in str(info.value)
    assert len(str(info.value)) < 300


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidNameError):
        parse(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "parts",
    [
        ("Localrun", "library", "x", "latest"),
        ("localrun", "", "x", "latest"),
        ("localrun", "library", "..", "latest"),
        ("localrun", "library", "a/b", "latest"),
        ("localrun", "library", "x", ".."),
        ("localrun", "library", "x", ""),
        ("localrun", "library", "x\n", "latest"),
        ("../..", "library", "x", "latest"),
        ("localhost:0", "library", "x", "latest"),
        ("h" * 200, "n" * 80, "m" * 96, "t" * 22),  # 401 characters in all
    ],
)
def test_model_name_constructor_validates(parts: tuple[str, str, str, str]) -> None:
    with pytest.raises(InvalidNameError):
        ModelName(*parts)


# --- properties -------------------------------------------------------------------------------

_ALNUM = string.ascii_lowercase + string.digits


def _part(pattern: re.Pattern[str]) -> st.SearchStrategy[str]:
    return st.from_regex(pattern, fullmatch=True).filter(lambda s: ".." not in s)


_label = st.from_regex(names._LABEL, fullmatch=True)
_host = st.builds(
    lambda labels, port: ".".join(labels) + ("" if port is None else f":{port}"),
    st.lists(_label, min_size=1, max_size=4),
    st.none() | st.integers(1, 65535),
).filter(lambda h: len(h.partition(":")[0]) <= 253)


@st.composite
def model_names(draw: st.DrawFn) -> ModelName:
    host = draw(st.just(names.DEFAULT_HOST) | _host)
    namespace = draw(st.just(names.DEFAULT_NAMESPACE) | _part(names._NAMESPACE_RE))
    name = draw(_part(names._NAME_RE))
    tag = draw(st.just(names.DEFAULT_TAG) | _part(names._TAG_RE))
    if len(f"{host}/{namespace}/{name}:{tag}") > names.MAX_REFERENCE:
        # Every part valid, the whole too long: str() would not parse back, so it is refused.
        with pytest.raises(InvalidNameError):
            ModelName(host, namespace, name, tag)
        assume(False)
    return ModelName(host, namespace, name, tag)


def _shouty(name: ModelName) -> str:
    return str(name).upper()


@given(model_names())
def test_generated_names_round_trip(name: ModelName) -> None:
    assert parse(str(name)) == name
    assert parse(name.full) == name
    assert parse(_shouty(name)) == name
    assert parse(f"  {name.full}\t") == name
    assert len(str(name)) <= len(name.full) <= names.MAX_REFERENCE


_name_chars = st.sampled_from([*"aZ09.-_:/\\ \t\n\x00é\u212a@~", "..", "hf.co/", ":8080"])
_texts = st.text() | st.lists(_name_chars, max_size=20).map("".join)


@given(_texts)
def test_arbitrary_text_parses_or_raises_invalid_name(text: str) -> None:
    try:
        name = parse(text)
    except InvalidNameError as err:
        assert "\n" not in str(err)
        assert err.hint
        assert not is_valid(text)
        return
    assert parse(str(name)) == name
    assert parse(name.full) == name
    assert is_valid(text)


def _assert_safe(name: ModelName) -> None:
    for part in name.parts:
        assert part not in ("", ".", "..")
        assert not part.startswith(".")
        assert "/" not in part and "\\" not in part and "\x00" not in part
        assert ".." not in part
        assert part.isascii() and part.isprintable()
    root = os.path.join(os.sep, "srv", "store", "manifests")
    joined = os.path.join(root, *name.parts)
    assert os.path.normpath(joined) == joined
    assert os.path.commonpath([root, joined]) == root
    assert joined.startswith(root + os.sep)


@given(_texts)
def test_no_parsed_name_escapes_the_store(text: str) -> None:
    try:
        name = parse(text)
    except InvalidNameError:
        return
    _assert_safe(name)


@given(model_names())
def test_no_generated_name_escapes_the_store(name: ModelName) -> None:
    _assert_safe(name)


@pytest.mark.parametrize(
    "text",
    ["../../../etc/passwd", "..%2f..%2fx", "x/../../y", "..\\x", "a/./b", "./a/b", "a/b/.", "."],
)
def test_traversal_attempts_are_refused(text: str) -> None:
    with pytest.raises(InvalidNameError):
        parse(text)
