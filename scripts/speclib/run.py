"""The request set sent to a running server, in order (a later request may use the id an
earlier one stored), each answer checked: a Result per request."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import httpx

from speclib.cases import CASES, Case, Models
from speclib.check import Specs, Violation, check
from speclib.wire import MAX_BODY, Answer

OPENAI_HEADERS = {"Authorization": "Bearer unused"}


@dataclass(frozen=True)
class Result:
    case: Case
    route: str
    status: int
    seconds: float
    violations: list[Violation]


def fill(text: str, names: dict[str, str]) -> str:
    for name, value in names.items():
        text = text.replace("{" + name + "}", value)
    return text


def send(client: httpx.Client, case: Case, path: str, body: Any) -> Answer:
    headers = {
        **(OPENAI_HEADERS if case.dialect in ("openai", "responses") else {}),
        **case.headers,
    }
    content = None if body is None else json.dumps(body).encode()
    if content is not None:
        headers["Content-Type"] = "application/json"
    with client.stream(case.method, path, content=content, headers=headers) as reply:
        data = b""
        for chunk in reply.iter_bytes():
            data += chunk
            if len(data) > MAX_BODY:
                break
        content_type = reply.headers.get("content-type", "")
        return Answer(reply.status_code, content_type, data, dict(reply.headers))


def run(
    url: str,
    specs: Specs,
    models: Models | None = None,
    cases: Iterable[Case] = CASES,
    timeout: float = 600.0,
) -> list[Result]:
    """Send each case to the server at `url` and check its answer."""
    models = models or Models()
    names = {f.name: getattr(models, f.name) for f in fields(models)}
    results = []
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout) as client:
        for case in cases:
            path = fill(case.path, names)
            body = None if case.body is None else json.loads(fill(json.dumps(case.body), names))
            started = time.monotonic()
            try:
                answer = send(client, case, path, body)
            except httpx.HTTPError as exc:  # a connection cut, a timeout: no answer to check
                gone = Violation(
                    case.dialect,
                    _route(case, path, specs),
                    case.name,
                    "$",
                    f"no answer: {exc!r}",
                    "status",
                )
                results.append(Result(case, gone.route, 0, time.monotonic() - started, [gone]))
                continue
            seconds = time.monotonic() - started
            found = check(case, path, body, answer, specs, names)
            if case.capture and 200 <= answer.status < 300:
                name, key = case.capture
                value = answer.json().get(key)
                if isinstance(value, (str, int)):
                    names[name] = str(value)
            route = found[0].route if found else _route(case, path, specs)
            results.append(Result(case, route, answer.status, seconds, found))
    return results


def _route(case: Case, path: str, specs: Specs) -> str:
    if case.dialect == "ollama":
        return f"{case.method} {path}"
    doc = specs.anthropic if case.dialect == "anthropic" else specs.openai
    operation = doc.operation(case.method, path)
    return f"{case.method} {doc.base}{operation[0]}" if operation else f"{case.method} {path}"
