"""An Ollama Modelfile whose Go template is broken is refused in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from support.cli import assert_one_line_error
from support.modelfiles import template_modelfile


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("{{ if .System }}{{ .System }}", "unexpected EOF"),
        ("{{ .System }}\n{{ range .Messages }}{{ end }}{{ end }}", "line 2"),
        ('{{ define "a" }}{{ template "a" . }}{{ end }}{{ template "a" . }}', "Go template"),
        ("{{ .Nope.Deeper }}{{ .Messages }}", "Go template"),
    ],
)
def test_a_broken_go_template_is_refused_in_one_line(
    cli: Any, tmp_path: Path, tiny_model: Path, template: str, why: str
) -> None:
    mf = template_modelfile(tmp_path / "Modelfile", tiny_model, template)
    refused = cli("create", "broken", "-f", str(mf))
    assert_one_line_error(refused, "TEMPLATE", why)
    assert "broken" not in cli("list").stdout
