"""scripts/speclib, the instrument tests/integration/server/test_spec_conformance.py measures
with: an OpenAPI document's schemas applied as the SDKs read them, server-sent events parsed,
the streams' order, and whole answers checked, on small documents written here and, where
scripts/corpora/fetch.py fetched them, on the published ones."""

from __future__ import annotations

import json
from typing import Any

import pytest
from speclib import streams
from speclib.cases import CASES, Case
from speclib.check import NULLABLE, Specs, check
from speclib.openapi import Document, Problem
from speclib.wire import Answer, Event

from support.specs import fetched_specs

TEXT_BLOCK = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
}
CALL_BLOCK = {
    "type": "object",
    "required": ["type", "name", "caller"],
    "properties": {
        "type": {"type": "string", "enum": ["tool_use"]},
        "name": {"type": "string"},
        "caller": {"type": "object"},
    },
}
DOC: dict[str, Any] = {
    "openapi": "3.1.0",
    "paths": {
        "/things/{id}": {"get": {"responses": {"200": {}}}},
        "/things/count": {"get": {"responses": {"200": {}}}},
    },
    "components": {
        "schemas": {
            "Text": TEXT_BLOCK,
            "Call": CALL_BLOCK,
            "Mapped": {
                "oneOf": [
                    {"$ref": "#/components/schemas/Text"},
                    {"$ref": "#/components/schemas/Call"},
                ],
                "discriminator": {
                    "propertyName": "type",
                    "mapping": {
                        "text": "#/components/schemas/Text",
                        "tool_use": "#/components/schemas/Call",
                    },
                },
            },
            "Untagged": {
                "anyOf": [
                    {"$ref": "#/components/schemas/Text"},
                    {"$ref": "#/components/schemas/Call"},
                ]
            },
            "Message": {
                "type": "object",
                "required": ["id", "stop", "note"],
                "properties": {
                    "id": {"type": "string"},
                    "stop": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                    "note": {"type": "string", "nullable": True},
                    "usage": {"type": "object"},
                    "level": {"type": "string", "enum": ["a", "b"], "nullable": True},
                },
            },
        }
    },
}


@pytest.fixture
def doc() -> Document:
    return Document(json.loads(json.dumps(DOC)), "urn:test", base="/v1")


def test_a_union_is_applied_by_its_tag(doc: Document) -> None:
    for name in ("Mapped", "Untagged"):  # a discriminator's mapping, or each branch's own tag
        pointer = doc.schema(name)
        assert doc.problems({"type": "text", "text": "hi"}, pointer) == []
        assert doc.problems({"type": "tool_use", "name": "f"}, pointer) == [
            Problem("$.caller", "missing (required)")
        ]
        (unknown,) = doc.problems({"type": "image"}, pointer)
        assert unknown.path == "$.type" and "none of the union's: text, tool_use" in unknown.what


def test_nullable_and_optional_nulls_and_required_ones(doc: Document) -> None:
    message = doc.schema("Message")
    assert doc.problems({"id": "m", "stop": None, "note": None, "level": None}, message) == []
    # An optional property sent as null reads as absent; a required one is held to its schema.
    assert doc.problems({"id": "m", "stop": None, "note": "n", "usage": None}, message) == []
    (refused,) = doc.problems({"id": None, "stop": None, "note": "n"}, message)
    assert refused.path == "$.id" and not refused.nullable
    assert doc.problems({"id": "m", "stop": "x", "note": "n", "level": "c"}, message) == [
        Problem("$.level", '"c" is not ["a", "b"]')
    ]
    # Missing: `stop` and `note` allow null (required but nullable), `id` does not.
    assert doc.problems({}, message) == [
        Problem("$.id", "missing (required)"),
        Problem("$.note", "missing (required)", nullable=True),
        Problem("$.stop", "missing (required)", nullable=True),
    ]


def test_an_operation_is_found_by_its_path_literal_first(doc: Document) -> None:
    assert doc.operation("GET", "/v1/things/count")[0] == "/things/count"  # type: ignore[index]
    assert doc.operation("GET", "/v1/things/abc")[0] == "/things/{id}"  # type: ignore[index]
    assert doc.operation("POST", "/v1/things/abc") is None
    assert doc.operation("GET", "/things/abc") is None  # below the base only


def test_server_sent_events_are_parsed_as_the_standard_has_them() -> None:
    body = b': a comment\r\nevent: one\r\ndata: {"a":\r\ndata: 1}\r\n\r\ndata: [DONE]\n\ndata:x'
    events = Answer(200, "text/event-stream", body).events()
    assert events == [Event("one", '{"a":\n1}'), Event(None, "[DONE]"), Event(None, "x")]


def _block(kind: str, index: int, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "index": index, **extra}


ANTHROPIC_STREAM = [
    {"type": "message_start"},
    {"type": "ping"},
    _block("content_block_start", 0, content_block={"type": "thinking"}),
    _block("content_block_delta", 0, delta={"type": "thinking_delta"}),
    _block("content_block_stop", 0),
    _block("content_block_start", 1, content_block={"type": "text"}),
    _block("content_block_delta", 1, delta={"type": "text_delta"}),
    _block("content_block_stop", 1),
    {"type": "message_delta"},
    {"type": "message_stop"},
]


def test_the_anthropic_order() -> None:
    assert streams.anthropic(ANTHROPIC_STREAM) == []
    assert streams.anthropic(ANTHROPIC_STREAM[:-1]) == [
        ("event 8 (message_delta)", "the last event is not message_stop")
    ]
    wrong = [*ANTHROPIC_STREAM]
    wrong[6] = _block("content_block_delta", 1, delta={"type": "input_json_delta"})
    assert streams.anthropic(wrong) == [
        ("event 6 (content_block_delta)", "a input_json_delta in a text block")
    ]
    skipped = [e for e in ANTHROPIC_STREAM if e.get("index") != 0]
    assert ("event 2 (content_block_start)", "block 1 starts out of order") in streams.anthropic(
        skipped
    )


def _event(kind: str, number: int, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "sequence_number": number, **extra}


def test_the_responses_order() -> None:
    good = [
        _event("response.created", 0),
        _event("response.output_item.added", 1, output_index=0),
        _event("response.output_text.delta", 2, output_index=0),
        _event("response.output_item.done", 3, output_index=0),
        _event("response.completed", 4, response={"status": "completed"}),
    ]
    assert streams.responses(good) == []
    cut = [*good[:-1], _event("response.completed", 4, response={"status": "incomplete"})]
    assert streams.responses(cut) == [
        ("event 4 (response.completed)", "carries a response whose status is 'incomplete'")
    ]
    disordered = [good[0], good[2], good[1], good[3], good[4]]
    found = streams.responses(disordered)
    assert (
        "event 1 (response.output_text.delta)",
        "sequence_number does not count up by one",
    ) in found
    assert ("event 1 (response.output_text.delta)", "output item 0 is not open") in found
    assert streams.responses(good[1:])[0] == (
        "event 0 (response.output_item.added)",
        "the first event is not response.created",
    )
    assert ("stream", "0 terminal events, not one") in streams.responses(good[:-1])


def test_the_chat_chunks_order() -> None:
    def chunk(finish: str | None, usage: Any = None, choices: bool = True) -> dict[str, Any]:
        listed = [{"index": 0, "finish_reason": finish}] if choices else []
        return {"choices": listed, "usage": usage}

    assert streams.chat([chunk(None), chunk("stop"), "[DONE]"], include_usage=False) == []
    assert streams.chat([chunk(None), chunk("stop")], include_usage=False) == [
        ("stream", "does not end with data: [DONE]")
    ]
    with_usage = [chunk(None), chunk("stop"), chunk(None, {"total_tokens": 3}, False), "[DONE]"]
    assert streams.chat(with_usage, include_usage=True) == []
    assert streams.chat([chunk(None), chunk("stop"), "[DONE]"], include_usage=True) == [
        ("stream", "include_usage: no last chunk with usage and no choices")
    ]
    again = streams.chat([chunk("stop"), chunk("stop"), "[DONE]"], include_usage=False)
    assert again == [("event 1", "choice 0's finish_reason set again")]


# -- with the published documents -------------------------------------------------------------


@pytest.fixture(scope="module")
def specs() -> Specs:
    return fetched_specs()


def _case(dialect: str, name: str) -> Case:
    (case,) = [c for c in CASES if c.dialect == dialect and c.name == name]
    return case


def _sse(events: list[dict[str, Any]], named: bool = True) -> Answer:
    text = "".join(
        (f"event: {e['type']}\n" if named else "") + f"data: {json.dumps(e)}\n\n" for e in events
    )
    return Answer(200, "text/event-stream", text.encode())


USAGE = {"input_tokens": 3, "output_tokens": 2}
MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "m",
    "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": USAGE,
}


def test_an_anthropic_message_held_to_anthropic_s_document(specs: Specs) -> None:
    case = _case("anthropic", "message tools")
    answer = Answer(200, "application/json", json.dumps(MESSAGE).encode())
    found = check(case, "/v1/messages", case.body, answer, specs, {})
    assert [(v.path, v.kind) for v in found if v.kind != NULLABLE] == [
        ("$.content[0].caller", "schema")
    ]
    assert ("$.stop_details", NULLABLE) in [(v.path, v.kind) for v in found]
    whole = {
        **MESSAGE,
        "content": [{**MESSAGE["content"][0], "caller": {"type": "direct"}}],  # type: ignore[dict-item]
        "stop_details": None,
        "container": None,
        "usage": {
            **USAGE,
            **dict.fromkeys(
                (
                    "cache_creation",
                    "cache_creation_input_tokens",
                    "cache_read_input_tokens",
                    "inference_geo",
                    "output_tokens_details",
                    "server_tool_use",
                    "service_tier",
                )
            ),
        },
    }
    answer = Answer(200, "application/json", json.dumps(whole).encode())
    assert check(case, "/v1/messages", case.body, answer, specs, {}) == []


def test_an_error_in_another_dialect_s_shape_is_found(specs: Specs) -> None:
    case = _case("anthropic", "error: unknown path")
    openai_shaped = {"error": {"message": "no", "type": "not_found_error", "code": None}}
    answer = Answer(404, "application/json", json.dumps(openai_shaped).encode())
    found = check(case, "/v1/complete", case.body, answer, specs, {})
    assert ("$.type", "schema") in [(v.path, v.kind) for v in found]
    answer = Answer(
        500,
        "application/json",
        b'{"type": "error", "error": {"type": "api_error", "message": "x"}}',
    )
    kinds = [v.kind for v in check(case, "/v1/complete", case.body, answer, specs, {})]
    assert "status" in kinds


def test_a_responses_stream_cut_short_must_end_incomplete(specs: Specs) -> None:
    case = _case("responses", "response stream max_output_tokens cut")
    response = {"id": "resp_1", "object": "response", "status": "incomplete"}
    events = [
        _event("response.created", 0, response={**response, "status": "in_progress"}),
        _event("response.completed", 1, response=response),
    ]
    found = check(case, "/v1/responses", case.body, _sse(events), specs, {})
    assert ("event 1 (response.completed)", "carries a response whose status is 'incomplete'") in [
        (v.path, v.what) for v in found if v.kind == "order"
    ]
    # A data line that is sent under another event name.
    renamed = _sse(events, named=False)
    renamed = Answer(
        200, "text/event-stream", renamed.body.replace(b"data: ", b"event: x\ndata: ", 1)
    )
    assert any(
        v.what == "sent as event 'x'"
        for v in check(case, "/v1/responses", case.body, renamed, specs, {})
    )


def test_an_ollama_call_without_its_index(specs: Specs) -> None:
    case = _case("ollama", "chat tools")
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    line = {
        "model": "tools",
        "created_at": "2026-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": "", "tool_calls": [call]},
        "done": True,
    }
    answer = Answer(200, "application/json", json.dumps(line).encode())
    found = check(case, "/api/chat", case.body, answer, specs, {})
    assert [(v.path, v.what) for v in found] == [
        ("$.message.tool_calls[0].function.index", "types.go: missing (always sent)")
    ]
    call["function"]["index"] = 0  # type: ignore[index]
    answer = Answer(200, "application/json", json.dumps(line).encode())
    assert check(case, "/api/chat", case.body, answer, specs, {}) == []
    del line["message"]  # ollama-python's ChatResponse requires it
    answer = Answer(200, "application/json", json.dumps(line).encode())
    found = check(case, "/api/chat", case.body, answer, specs, {})
    assert {v.path for v in found} == {"$.message"}
    assert any(v.what.startswith("ollama-python: ") for v in found)


def test_a_systemone_answer_is_held_to_the_client_s_model(specs: Specs) -> None:
    case = _case("ollama", "systemone")
    answer_body: dict[str, Any] = {
        "model": "smollm2:135m",
        "answers": {
            "polite": {"type": "noul", "noul": 0.7},
            "team": {
                "type": "choice",
                "choice": "billing",
                "probabilities": {"billing": 0.6, "other": 0.4},
                "confidence": 0.03,
            },
        },
        "usage": {"input_tokens": 230, "output_tokens": 2},
    }
    answer = Answer(200, "application/json", json.dumps(answer_body).encode())
    assert check(case, "/v1/systemone", case.body, answer, specs, {}) == []
    del answer_body["answers"]["team"]["confidence"]
    answer_body["usage"] = {"input_tokens": 230}
    answer = Answer(200, "application/json", json.dumps(answer_body).encode())
    found = check(case, "/v1/systemone", case.body, answer, specs, {})
    assert {v.path for v in found} == {"$.answers.team.choice.confidence", "$.usage.output_tokens"}
