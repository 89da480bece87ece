"""The one decision of what a model can do (/api/show's capabilities)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localrun.model.capabilities import capabilities, template_of
from localrun.model.stored import Model
from localrun.store import names

TOOLS_TEMPLATE = "{% for t in tools %}{{ t }}{% endfor %}{{ messages }}"


def model(details: dict[str, Any], template: str | None = None, gguf: str | None = None) -> Model:
    config: dict[str, Any] = {"details": details}
    if gguf is not None:
        config["gguf_chat_template"] = gguf
    return Model(
        name=names.parse("m"),
        digest="sha256:" + "0" * 64,
        manifest=None,  # type: ignore[arg-type]
        config=config,
        model_path=Path("m.gguf"),
        template=template,
    )


@pytest.mark.parametrize(
    ("details", "template", "gguf", "expected"),
    [
        # Tool calls work with any chat model (a system note where the template has no tools);
        # a chat model is not listed as an embedding model, as Ollama lists it.
        ({"architecture": "llama"}, None, None, ["completion", "tools"]),
        ({"architecture": "llama"}, None, TOOLS_TEMPLATE, ["completion", "tools"]),
        ({"architecture": "llama"}, "{{ messages }}", TOOLS_TEMPLATE, ["completion", "tools"]),
        ({"architecture": "qwen2", "pooling_type": 1}, None, TOOLS_TEMPLATE, ["embedding"]),
        ({"architecture": "nomic-bert"}, None, None, ["embedding"]),  # before pooling_type
        ({"architecture": "bert", "pooling_type": 4}, None, None, ["rerank"]),
    ],
)
def test_capabilities(
    details: dict[str, Any], template: str | None, gguf: str | None, expected: list[str]
) -> None:
    assert capabilities(model(details, template, gguf)) == expected


def test_template_in_force() -> None:
    assert template_of(model({}, None, "gguf's")) == "gguf's"
    assert template_of(model({}, "own", "gguf's")) == "own"
    assert template_of(model({})) is None
