"""Ollama's System One API: choice, yes/no ("noul") and score questions about a state.

    POST /v1/systemone {"model", "state", "questions": {name: question}, "keep_alive"?}
      question: {"type": "choice", "instructions", "criteria": {key: description | null}}
              | {"type": "noul", "instructions", "criteria"?: {"true"?: text, "false"?: text}}
              | {"type": "score", "instructions", "criteria": [lowest, ..., highest]}
      -> {"model", "answers": {name: answer}, "usage": {"input_tokens", "output_tokens"}}
      answer: {"type": "noul", "noul": P(true)}
            | {"type": "choice", "choice", "probabilities": {key: p}, "confidence"}
            | {"type": "score", "score", "legend": {"0": text, ...}, "probabilities": {"0": p,
               ...}, "confidence"}

Ollama answers with a model trained for it (nimble), whose prompt format it does not publish.
localrun reads any chat model of the store instead, over the same core as every other route: a
probability per option, from the model's next token (the comment above `read` says how).
"""

from __future__ import annotations

import json
import math
import string
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localrun.errors import BadRequestError, EngineError
from localrun.request.genrequest import GenRequest
from localrun.server import core
from localrun.server.body import Body, at_most, read_json
from localrun.server.generation import start
from localrun.settings import limits

KINDS = ("choice", "noul", "score")
# Options a choice or a score may have: one a capital letter (Ollama's bound too).
LETTERS = string.ascii_uppercase
MIN_OPTIONS = 2
# A noul's labels: true first.
YES, NO = "Yes", "No"
# The reading: greedy (no sampling), one token (the label's first).
READ_OPTIONS = {"temperature": 0.0, "num_predict": 1}


@dataclass(frozen=True)
class Question:
    """One question, checked: its kind, instructions (as text) and options, in order.

    Each option has its key, which the answer names it by, and its text, which the prompt shows.
    """

    name: str
    kind: str
    instructions: str
    keys: tuple[str, ...]
    texts: tuple[str, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return (YES, NO) if self.kind == "noul" else tuple(LETTERS[: len(self.keys)])


def content_text(value: Any, key: str) -> str:
    """SystemOneContent as text: a string as it is, an object or array as JSON."""
    if isinstance(value, str):
        if not value.strip():
            raise BadRequestError(f"{key} must not be empty")
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, indent=2)
    raise BadRequestError(f"{key} must be a string, an object or an array")


def questions_of(value: Any) -> list[Question]:
    """The request's questions, checked: 1 to LOCALRUN_MAX_QUESTIONS of them."""
    if not isinstance(value, dict) or not value:
        raise BadRequestError(
            "questions must be an object of named questions",
            hint='send {"questions": {"name": {"type": "noul", "instructions": "..."}}}',
        )
    at_most(len(value), limits.max_questions(), "questions", "questions", "LOCALRUN_MAX_QUESTIONS")
    return [question_of(str(name), item) for name, item in value.items()]


def question_of(name: str, item: Any) -> Question:
    where = f"questions[{json.dumps(name[:60], ensure_ascii=False)}]"
    if not isinstance(item, dict):
        raise BadRequestError(f"{where} must be an object")
    kind = item.get("type")
    if kind not in KINDS:
        shown = json.dumps(kind)[:40] if kind is not None else "missing"
        raise BadRequestError(f"{where}.type must be choice, noul or score, not {shown}")
    if "instructions" not in item:
        raise BadRequestError(f"{where}.instructions is required")
    instructions = content_text(item["instructions"], f"{where}.instructions")
    criteria = item.get("criteria")
    if kind == "choice":
        keys, texts = _choice(criteria, where)
    elif kind == "score":
        keys, texts = _score(criteria, where)
    else:
        keys, texts = _noul(criteria, where)
    return Question(name, kind, instructions, keys, texts)


def _options(count: int, where: str) -> None:
    if not MIN_OPTIONS <= count <= len(LETTERS):
        raise BadRequestError(
            f"{where}.criteria holds {count} options; a question has from {MIN_OPTIONS} to "
            f"{len(LETTERS)}"
        )


def _choice(criteria: Any, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Options in the request's order; a null description shows the key."""
    if not isinstance(criteria, dict):
        raise BadRequestError(f"{where}.criteria must be an object of options")
    _options(len(criteria), where)
    texts = []
    for key, description in criteria.items():
        if not key.strip():
            raise BadRequestError(f"{where}.criteria has an option with an empty key")
        if description is not None and not isinstance(description, str):
            raise BadRequestError(f"{where}.criteria's descriptions must be strings or null")
        texts.append(f"{key}: {description}" if description else key)
    return tuple(criteria), tuple(texts)


def _score(criteria: Any, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Levels from the lowest (0) to the highest."""
    if not isinstance(criteria, list):
        raise BadRequestError(f"{where}.criteria must be a list of levels, lowest first")
    _options(len(criteria), where)
    if not all(isinstance(level, str) for level in criteria):
        raise BadRequestError(f"{where}.criteria's levels must be strings")
    return tuple(str(i) for i in range(len(criteria))), tuple(criteria)


def _noul(criteria: Any, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """True, then false; each outcome's description, if the request gives one."""
    if criteria is None:
        criteria = {}
    if not isinstance(criteria, dict) or not set(criteria) <= {"true", "false"}:
        raise BadRequestError(f'{where}.criteria may only describe "true" and "false"')
    if not all(isinstance(text, str) for text in criteria.values()):
        raise BadRequestError(f"{where}.criteria's descriptions must be strings")
    return ("true", "false"), (criteria.get("true", ""), criteria.get("false", ""))


def prompt_of(state: str, question: Question) -> str:
    """The user message a question is asked in.

    The state comes first, as the questions' shared prefix. Then come the question, its options
    under their labels, and the labels to answer with.
    """
    labels = question.labels
    pairs = zip(labels, question.texts, strict=True)
    if question.kind == "noul":
        lines = [f"{label}: {text}" if text else label for label, text in pairs]
    else:
        lines = [f"{label}. {text}" for label, text in pairs]
    ordered = " (from the lowest to the highest)" if question.kind == "score" else ""
    allowed = ", ".join(labels[:-1]) + f" or {labels[-1]}"
    return (
        "Read the state, then answer the question with the label of one option.\n\n"
        f"State:\n{state}\n\n"
        f"Question:\n{question.instructions}\n\n"
        f"Options{ordered}:\n" + "\n".join(lines) + "\n\n"
        f"Answer with one label: {allowed}."
    )


def normalised(logprobs: list[float]) -> list[float]:
    """Probabilities in proportion to exp(logprob), summing to 1."""
    peak = max(logprobs)
    weights = [math.exp(lp - peak) for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def confidence(probabilities: list[float]) -> float:
    """1 - entropy / log(n): 1 where one option holds all, 0 where all are alike."""
    entropy = -sum(p * math.log(p) for p in probabilities if p > 0)
    return min(1.0, max(0.0, 1.0 - entropy / math.log(len(probabilities))))


# A choice is the likeliest option, the first in the request's order on a tie. A score is the
# expected zero-based level. `confidence` is one minus the distribution's entropy over the most
# it can have (1: one option holds it all, 0: flat), as Ollama's docs define it.
def answer_of(question: Question, probabilities: list[float]) -> dict[str, Any]:
    """A question's answer from its options' probabilities (in the question's order)."""
    if question.kind == "noul":
        return {"type": "noul", "noul": probabilities[0]}
    shown = dict(zip(question.keys, probabilities, strict=True))
    if question.kind == "choice":
        best = max(range(len(probabilities)), key=lambda i: (probabilities[i], -i))
        return {
            "type": "choice",
            "choice": question.keys[best],
            "probabilities": shown,
            "confidence": confidence(probabilities),
        }
    return {
        "type": "score",
        "score": sum(i * p for i, p in enumerate(probabilities)),
        "legend": dict(zip(question.keys, question.texts, strict=True)),
        "probabilities": shown,
        "confidence": confidence(probabilities),
    }


@dataclass
class Reading:
    """What one question's prompt gave: its options' probabilities, and its token counts."""

    probabilities: list[float]
    input_tokens: int
    output_tokens: int


# Each question is one chat prompt in a layout of localrun's own (prompt_of): the state, the
# question's instructions, and its options, each under a label (A, B, C ... for choice and
# score, Yes and No for noul). The model's template renders it, and it is read once. The
# answer's first token is not sampled but read (GenRequest.candidates): the model's next-token
# log-probabilities of the labels' first tokens, normalised over the labels. Nothing is
# sampled, and the engine reads such a prompt whole on an emptied slot, never after what its
# cache held: the same rows read in other batches give other numbers. So the same request gives
# the same numbers. Questions are asked one after another, each costing its whole prompt.
async def read(
    request: Request, model: str, state: str, question: Question, keep_alive: float | None
) -> Reading:
    """One question asked of the model: its prompt read once, the labels' probabilities."""
    req = GenRequest(
        model,
        messages=[{"role": "user", "content": prompt_of(state, question)}],
        options=dict(READ_OPTIONS),
        think=False,
        keep_alive=keep_alive,
        candidates=list(question.labels),
    )
    generation = await start(request, req)
    await core.until_disconnect(request, generation.collect)
    entries = generation.logprobs
    found = entries[0].get("candidates") if entries else None
    if not found or len(found) != len(question.labels):
        raise EngineError(f"{model} gave no reading of question {question.name!r}")
    return Reading(
        normalised([float(c["logprob"]) for c in found]),
        generation.prompt_count,
        generation.stream.timings.eval_tokens,
    )


async def systemone(request: Request) -> Response:
    body = Body(await read_json(request))
    model = body.model()
    if "state" not in body.data:
        raise BadRequestError("state is required", hint='send {"state": "text or JSON", ...}')
    state = content_text(body.data["state"], "state")
    questions = questions_of(body.data.get("questions"))
    if body.data.get("images"):
        raise BadRequestError(
            "images are not read on /v1/systemone here",
            hint="describe what the image shows in the state",
        )
    keep_alive = body.keep_alive()
    answers: dict[str, Any] = {}
    used = [0, 0]
    for index, question in enumerate(questions):
        # The model stays loaded between the questions; the request's keep_alive (0: unload)
        # holds after the last.
        last = index == len(questions) - 1
        reading = await read(request, model, state, question, keep_alive if last else None)
        answers[question.name] = answer_of(question, reading.probabilities)
        used[0] += reading.input_tokens
        used[1] += reading.output_tokens
    return JSONResponse(
        {
            "model": model,
            "answers": answers,
            "usage": {"input_tokens": used[0], "output_tokens": used[1]},
        }
    )
