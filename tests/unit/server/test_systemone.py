"""/v1/systemone's questions, checked; the prompt each is asked in; the answers made of the
labels' probabilities (the route itself, on a real model, is in the integration tier)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from localrun.errors import BadRequestError
from localrun.server.ollama import systemone
from localrun.server.ollama.systemone import answer_of, confidence, prompt_of, questions_of

TICKET = {
    "team": {
        "type": "choice",
        "instructions": "Which team should handle this ticket?",
        "criteria": {"billing": "Payments and refunds", "technical": None},
    },
    "refund": {"type": "noul", "instructions": "Does the customer ask for a refund?"},
    "urgency": {"type": "score", "instructions": "How urgent?", "criteria": ["Low", "High"]},
}


def test_questions_keep_their_order_and_options() -> None:
    team, refund, urgency = questions_of(TICKET)
    assert (team.name, team.kind, team.keys) == ("team", "choice", ("billing", "technical"))
    assert team.texts == ("billing: Payments and refunds", "technical")  # null: the key
    assert team.labels == ("A", "B")
    assert (refund.keys, refund.labels) == (("true", "false"), ("Yes", "No"))
    assert (urgency.keys, urgency.texts, urgency.labels) == (
        ("0", "1"),
        ("Low", "High"),
        ("A", "B"),
    )


def test_json_content_is_shown_as_json() -> None:
    asked = {"q": {"type": "noul", "instructions": {"ask": "refund?"}}}
    (question,) = questions_of(asked)
    assert json.loads(question.instructions) == {"ask": "refund?"}
    prompt = prompt_of(systemone.content_text(["a", 1], "state"), question)
    assert '"ask": "refund?"' in prompt and '"a",' in prompt


def test_the_prompt_shows_the_state_first_then_the_labelled_options() -> None:
    team, refund, urgency = questions_of(
        {**TICKET, "refund": {**TICKET["refund"], "criteria": {"true": "asks", "false": "not"}}}
    )
    prompt = prompt_of("I was charged twice.", team)
    assert prompt.index("I was charged twice.") < prompt.index("Which team")
    assert "A. billing: Payments and refunds\nB. technical\n" in prompt
    assert prompt.endswith("Answer with one label: A or B.")
    assert "Yes: asks\nNo: not\n" in prompt_of("s", refund)
    assert "(from the lowest to the highest):\nA. Low\nB. High" in prompt_of("s", urgency)
    # The questions share the text before their own: the state is read alike for each.
    shared = prompt_of("I was charged twice.", urgency)
    assert prompt[: prompt.index("Question:")] == shared[: shared.index("Question:")]


def _choice(n: int) -> dict[str, Any]:
    return {"type": "choice", "instructions": "x", "criteria": {f"k{i}": None for i in range(n)}}


@pytest.mark.parametrize(
    ("questions", "says"),
    [
        (None, "questions must be an object"),
        ({}, "questions must be an object"),
        ([TICKET["refund"]], "questions must be an object"),
        ({"q": "noul"}, "must be an object"),
        ({"q": {"type": "yesno", "instructions": "x"}}, "type must be choice, noul or score"),
        ({"q": {"instructions": "x"}}, "type must be choice, noul or score, not missing"),
        ({"q": {"type": "noul"}}, "instructions is required"),
        ({"q": {"type": "noul", "instructions": "  "}}, "must not be empty"),
        ({"q": {"type": "noul", "instructions": 5}}, "a string, an object or an array"),
        ({"q": {"type": "choice", "instructions": "x", "criteria": {}}}, "holds 0 options"),
        ({"q": {"type": "choice", "instructions": "x"}}, "criteria must be an object"),
        ({"q": _choice(1)}, "holds 1 options; a question has from 2 to 26"),
        ({"q": _choice(27)}, "holds 27 options"),
        ({"q": {**_choice(2), "criteria": {"": None, "b": None}}}, "empty key"),
        ({"q": {**_choice(2), "criteria": {"a": 1, "b": None}}}, "strings or null"),
        ({"q": {"type": "score", "instructions": "x", "criteria": {"a": "b"}}}, "list of levels"),
        ({"q": {"type": "score", "instructions": "x", "criteria": ["a", 2]}}, "must be strings"),
        ({"q": {"type": "noul", "instructions": "x", "criteria": {"maybe": "y"}}}, '"true"'),
        ({"q": {"type": "noul", "instructions": "x", "criteria": {"true": 1}}}, "strings"),
    ],
)
def test_a_malformed_question_is_refused_in_one_line(questions: Any, says: str) -> None:
    with pytest.raises(BadRequestError, match=says) as refused:
        questions_of(questions)
    assert "\n" not in refused.value.message


def test_questions_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALRUN_MAX_QUESTIONS", "2")
    with pytest.raises(BadRequestError, match="holds 3 questions; one request takes at most 2"):
        questions_of(TICKET)
    assert len(questions_of(dict(list(TICKET.items())[:2]))) == 2


def test_answers_from_probabilities() -> None:
    team, refund, urgency = questions_of(TICKET)
    probabilities = systemone.normalised([math.log(0.2), math.log(0.6)])
    assert math.isclose(sum(probabilities), 1.0) and math.isclose(probabilities[1], 0.75)
    assert answer_of(refund, [0.3, 0.7]) == {"type": "noul", "noul": 0.3}
    chosen = answer_of(team, [0.25, 0.75])
    assert chosen["choice"] == "technical" and chosen["probabilities"]["billing"] == 0.25
    assert answer_of(team, [0.5, 0.5])["choice"] == "billing"  # a tie: the first
    scored = answer_of(urgency, [0.25, 0.75])
    assert scored["score"] == 0.75 and scored["legend"] == {"0": "Low", "1": "High"}
    assert scored["probabilities"] == {"0": 0.25, "1": 0.75}


def test_confidence_is_one_minus_the_normalised_entropy() -> None:
    assert confidence([0.5, 0.5]) == 0.0
    assert confidence([1.0, 0.0, 0.0]) == 1.0
    # Ollama's docs' example: 0.0125, 0.9781, 0.0093 -> 0.8906 (from their rounded numbers).
    assert abs(confidence([0.0125, 0.9781, 0.0093]) - 0.8906) < 5e-4
