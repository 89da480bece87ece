"""What an Ollama answer is held to: Ollama publishes no OpenAPI document, so

- ollama-python's own response types (ollama/_types.py of its sdist, fetched by
  scripts/corpora/fetch.py as `ollama-types`): each answer parsed into the pydantic model its
  client parses it into (`ChatResponse`, `GenerateResponse`, ...), as strictly as those models
  are (their required fields and types; they ignore fields they do not know);
- the fields Ollama's server always sends (its api/types.go declares them without
  `omitempty`) that those models leave optional, such as `message.tool_calls[].function.index`:
  a JSON schema kept by hand in tests/data/ollama_api_types.json, its `$comment` naming the
  types.go it was read from.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from jsonschema import Draft202012Validator

from speclib.openapi import Problem, json_path

# A route's answer (its streamed lines too) and its error: the model in _types.py, the
# definition in the hand-kept schema.
ROUTES: dict[str, tuple[str | None, str]] = {
    "POST /api/chat": ("ChatResponse", "ChatResponse"),
    "POST /api/generate": ("GenerateResponse", "GenerateResponse"),
    "POST /api/embed": ("EmbedResponse", "EmbedResponse"),
    "POST /api/embeddings": ("EmbeddingsResponse", "EmbeddingResponse"),
    "GET /api/tags": ("ListResponse", "ListResponse"),
    "POST /api/show": ("ShowResponse", "ShowResponse"),
    "GET /api/ps": ("ProcessResponse", "ProcessResponse"),
    "POST /api/pull": ("ProgressResponse", "ProgressResponse"),
    "GET /api/version": (None, "VersionResponse"),  # server/routes.go: gin.H{"version": ...}
    # Ollama 0.35's System One: its Go types are not in the api/types.go the schema was read from.
    "POST /v1/systemone": ("SystemOneResponse", ""),
}
ERROR = "StatusError"


class OllamaTypes:
    """ollama-python's response models and the hand-kept schema of what types.go always
    sends."""

    def __init__(self, types_py: Path, always: Path) -> None:
        self.module = _load(types_py)
        self.always = json.loads(always.read_text(encoding="utf-8"))

    def problems(self, route: str, instance: Any, error: bool = False) -> list[Problem]:
        """How `instance` (an answer or one streamed line of `route`) fails the client's model
        and the fields always sent."""
        model, definition = (None, ERROR) if error else ROUTES.get(route, (None, ""))
        found: list[Problem] = []
        if model is not None:
            found += self._pydantic(getattr(self.module, model), instance)
        if definition:
            found += self._schema(definition, instance)
        return sorted(set(found), key=lambda p: (p.path, p.what))

    def _pydantic(self, model: Any, instance: Any) -> list[Problem]:
        from pydantic import ValidationError

        try:
            model.model_validate(instance)
        except ValidationError as exc:
            return [
                Problem(json_path(e["loc"]), f"ollama-python: {e['msg']}")
                for e in exc.errors(include_url=False)
            ]
        return []

    def _schema(self, definition: str, instance: Any) -> list[Problem]:
        schema = {**self.always, "$ref": f"#/$defs/{definition}"}
        validator = Draft202012Validator(schema)
        found = []
        for error in validator.iter_errors(instance):
            if error.validator == "required":
                missing = [n for n in error.validator_value if n not in error.instance]
                found += [
                    Problem(json_path([*error.absolute_path, n]), "types.go: missing (always sent)")
                    for n in missing
                ]
            else:
                found.append(Problem(json_path(error.absolute_path), f"types.go: {error.message}"))
        return found


def _load(path: Path) -> ModuleType:
    """ollama/_types.py of the corpus as a module of its own (not the installed `ollama`)."""
    name = "ollama_types_corpus"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
