"""The one request object: every field travels to the runner, each checked on arrival."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from localrun.errors import BadRequestError
from localrun.request.genrequest import GenRequest

EVERY_FIELD = GenRequest(
    "m",
    messages=[{"role": "user", "content": "hi"}],
    prompt="p",
    system="s",
    options={"temperature": 0},
    format="json",
    format_lenient=True,
    tool_grammars={"shout": {"syntax": "regex", "definition": "[A-Z]+!"}},
    tools=[{"type": "function", "function": {"name": "f"}}],
    tool_choice="required",
    think="low",
    think_adaptive=True,
    suffix="after",
    extra=[{"filename": "a.py", "text": "x = 1"}],
    logprobs=3,
    logprobs_end=True,
    prompt_logprobs=2,
    tokens=[9707, 11],
    logit_bias=[[15, -100.0], [7, None]],
    candidates=["Yes", "No"],
    parallel_tool_calls=False,
    context=[1, 2, 3],
    return_context=True,
    keep_alive=30.0,
    media=[{"type": "image", "data": "iVBORw0KGgo="}],
    memory="key:0123456789abcdef",
)


def test_every_field_travels() -> None:
    defaults = GenRequest("m")
    for f in dataclasses.fields(GenRequest)[1:]:
        assert getattr(EVERY_FIELD, f.name) != getattr(defaults, f.name), f"set {f.name} above"
    wire = json.loads(json.dumps(EVERY_FIELD.to_wire()))
    assert GenRequest.from_wire(wire) == EVERY_FIELD
    assert GenRequest("m").to_wire() == {"model": "m"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("logit_bias", {"15": -100}),
        ("logit_bias", [[15]]),
        ("logit_bias", [["15", 1.0]]),
        ("logit_bias", [[15, "high"]]),
        ("logit_bias", [[True, 1.0]]),
        ("candidates", "Yes"),
        ("candidates", ["Yes", 1]),
        ("logprobs", -1),
        ("prompt_logprobs", True),
        ("tokens", [1, "2"]),
        ("tokens", 5),
        ("prompt", 5),
        ("options", []),
        ("memory", 7),
    ],
)
def test_a_field_of_the_wrong_type_is_refused_on_arrival(field: str, value: Any) -> None:
    with pytest.raises(BadRequestError, match=field):
        GenRequest.from_wire({"model": "m", field: value})
