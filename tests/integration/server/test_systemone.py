"""Ollama's /v1/systemone through the real server (llama.cpp on SmolLM2) and the official
`ollama` client: each question's options read from the model's next-token probabilities,
normalised, the same numbers for the same request; malformed bodies refused in Ollama's shape.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import ollama
import pytest
from testmodels.text import write_tiny_model
from testmodels.vocab import CHATML_TEMPLATE, THINKING_TEMPLATE

from localrun.scheduler import Scheduler
from localrun.sources import obtain
from localrun.store import reference
from localrun.store.local import Store

from support import PATIENCE_S
from support.server import SMOL, LiveServer, add_model, post

pytestmark = [pytest.mark.server, pytest.mark.model]

# The request of ollama-python's examples/systemone.py.
STATE = {"ticket": "I was charged twice. Please refund the extra payment."}
QUESTIONS: Any = {
    "team": {
        "type": "choice",
        "instructions": "Which team should handle this ticket?",
        "criteria": {
            "billing": "Payments and refunds",
            "technical": "Bugs and integrations",
            "other": "None of the above",
        },
    },
    "refund": {"type": "noul", "instructions": "Does the customer explicitly ask for a refund?"},
    "urgency": {
        "type": "score",
        "instructions": "How urgent is this ticket?",
        "criteria": ["Routine", "Soon", "Urgent"],
    },
}


# A template that opens the model's thinking in every prompt, told not to think or not
# (DeepSeek-R1's does).
ALWAYS_THINKS = CHATML_TEMPLATE.replace(
    "'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'"
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("systemone")
    store = Store(folder / "models")
    obtain.find(store, reference.parse(SMOL))
    for name, template in (("thinker", THINKING_TEMPLATE), ("reasoner", ALWAYS_THINKS)):
        gguf = write_tiny_model(folder / f"{name}.gguf", chat_template=template, n_ctx=4096)
        add_model(store, name, gguf)
    server = LiveServer(store, Scheduler(store, num_parallel=2, max_loaded=1, max_queue=16))
    yield server
    server.close()


def test_the_clients_systemone_reads_each_question(oc: ollama.Client) -> None:
    response = oc.systemone(model=SMOL, state=STATE, questions=QUESTIONS)
    assert isinstance(response, ollama.SystemOneResponse) and response.model == SMOL
    assert list(response.answers) == ["team", "refund", "urgency"]

    team = response.answers["team"]
    assert isinstance(team, ollama.SystemOneChoiceAnswer)
    assert list(team.probabilities) == ["billing", "technical", "other"]
    assert math.isclose(sum(team.probabilities.values()), 1.0, abs_tol=1e-6)
    assert all(0 < p < 1 for p in team.probabilities.values())
    assert team.choice == max(team.probabilities, key=team.probabilities.__getitem__)
    flat = -sum(p * math.log(p) for p in team.probabilities.values()) / math.log(3)
    assert math.isclose(team.confidence, 1 - flat, abs_tol=1e-9)

    refund = response.answers["refund"]
    assert isinstance(refund, ollama.SystemOneNoulAnswer) and 0 < refund.noul < 1

    urgency = response.answers["urgency"]
    assert isinstance(urgency, ollama.SystemOneScoreAnswer)
    assert urgency.legend == {"0": "Routine", "1": "Soon", "2": "Urgent"}
    assert list(urgency.probabilities) == ["0", "1", "2"]
    assert math.isclose(sum(urgency.probabilities.values()), 1.0, abs_tol=1e-6)
    expected = sum(int(k) * p for k, p in urgency.probabilities.items())
    assert math.isclose(urgency.score, expected, abs_tol=1e-9) and 0 <= urgency.score <= 2
    assert 0 <= urgency.confidence <= 1

    # A prompt a question (its whole rendering counted), one token read from each.
    assert response.usage.output_tokens == 3 and response.usage.input_tokens > 3 * 60

    # Not sampled, and read whole each time (never from what the cache held): the same numbers.
    again = oc.systemone(model=SMOL, state=STATE, questions=QUESTIONS)
    assert again.model_dump() == response.model_dump()


def test_the_same_numbers_beside_other_requests(oc: ollama.Client) -> None:
    two = {k: QUESTIONS[k] for k in ("team", "refund")}

    def ask(_: int) -> Any:
        return oc.systemone(model=SMOL, state=STATE, questions=two).model_dump()

    alone = ask(0)
    with ThreadPoolExecutor(2) as pool:  # two at once, read in the same batches
        assert list(pool.map(ask, range(2))) == [alone, alone]


def test_a_noul_leans_the_way_the_state_says(oc: ollama.Client) -> None:
    # SmolLM2-135M leans towards yes whatever it reads; what it does manage is to lean further
    # where the state says so.
    ask = {"rain": {"type": "noul", "instructions": "Is it raining?"}}
    wet = oc.systemone(model=SMOL, state="It is raining heavily.", questions=ask)
    dry = oc.systemone(model=SMOL, state="It is sunny and dry.", questions=ask)
    assert wet.answers["rain"].noul > dry.answers["rain"].noul  # type: ignore[union-attr]


def test_keep_alive_zero_unloads_after_the_answer(live: LiveServer, oc: ollama.Client) -> None:
    two = {k: QUESTIONS[k] for k in ("refund", "urgency")}
    oc.systemone(model=SMOL, state="Refund me.", questions=two, keep_alive=0)
    live.wait_for(lambda: SMOL not in live.running(), "the model to unload")
    oc.systemone(model=SMOL, state="Refund me.", questions=two, keep_alive="10m")
    assert SMOL in live.running()


def test_a_reasoning_model_is_asked_with_its_thinking_off(live: LiveServer) -> None:
    # Its template closes the thinking it opens when told not to think: the next token answers.
    ask = {"model": "thinker", "state": "A ticket.", "questions": QUESTIONS}
    answered = post(live, "/v1/systemone", ask)
    assert answered.status_code == 200, answered.text
    for answer in answered.json()["answers"].values():
        if answer["type"] != "noul":
            assert math.isclose(sum(answer["probabilities"].values()), 1.0, abs_tol=1e-6)
    # One that opens its thinking whatever it is told: its next token is no answer.
    refused = post(live, "/v1/systemone", {**ask, "model": "reasoner"})
    assert "reasons before it answers" in _refusal(refused, 400)


def _refusal(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and "\n" not in body["error"]
    return str(body["error"])


def _ask(**fields: Any) -> dict[str, Any]:
    return {"model": SMOL, "state": "A ticket.", "questions": QUESTIONS, **fields}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "not valid JSON"),
        ({"state": "x", "questions": QUESTIONS}, "model is required"),
        ({"model": SMOL, "questions": QUESTIONS}, "state is required"),
        (_ask(state=7), "state must be a string, an object or an array"),
        (_ask(questions={}), "questions must be an object"),
        (_ask(questions={"q": {"type": "maybe", "instructions": "x"}}), "type must be choice"),
        (_ask(questions={"q": {"type": "choice", "instructions": "x", "criteria": {}}}), "0 opt"),
        (
            _ask(questions={"q": {"type": "score", "instructions": "x", "criteria": ["a"] * 27}}),
            "holds 27 options",
        ),
        (_ask(questions={f"q{i}": QUESTIONS["refund"] for i in range(33)}), "at most 32"),
        (_ask(images=["iVBORw0KGgo="]), "images are not read"),
        (_ask(keep_alive="soon"), "keep_alive"),
        (_ask(state="word " * 20_000), "longer than the model's context length"),
    ],
)
def test_a_malformed_body_is_refused_in_ollamas_shape(
    live: LiveServer, body: Any, says: str
) -> None:
    assert says in _refusal(post(live, "/v1/systemone", body), 400)


def test_an_unknown_model_and_a_wrong_method(live: LiveServer, oc: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        oc.systemone(model="nimble", state="x", questions={"q": QUESTIONS["refund"]})
    assert missing.value.status_code == 404 and "nimble" in missing.value.error
    got = httpx.get(f"{live.url}/v1/systemone", timeout=PATIENCE_S)
    assert "GET is not allowed" in _refusal(got, 405)
    streamed = post(live, "/v1/systemone", _ask(stream=True, questions={"q": QUESTIONS["refund"]}))
    assert set(json.loads(streamed.text)) == {"model", "answers", "usage"}  # one object
