"""The one request of a generation, from the dialect that builds it to the runner.

A dialect builds it from its wire shape, the scheduler routes it, the runner protocol carries it
whole, and the runner prepares it. A chat has `messages`, rendered with the model's template;
anything else is a completion of `prompt` as it is (with `suffix`: fill in the middle).

A field is added here, in the dialect that speaks it and in the code that uses it, and nowhere
between. `to_wire` and `from_wire` carry every field by name, and `from_wire` checks each one's JSON
type where a request arrives in a runner; what a value means is checked where it is used. Pure: only
localrun.errors is imported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from localrun.errors import BadRequestError

Message = dict[str, Any]


@dataclass
class GenRequest:
    """A chat (`messages`) or a completion (`prompt`) of one model, dialect-free."""

    model: str
    messages: list[Message] | None = None
    prompt: str | None = None
    system: str | None = None  # replaces the model's SYSTEM (a system message wins over it)
    options: dict[str, Any] = field(default_factory=dict)  # PARAMETERs for this request
    format: str | dict[str, Any] | None = None  # "json" or a JSON schema
    # Ollama's `format`: a keyword the engine cannot enforce is left out of the constraint
    # (its clients send pydantic's `uniqueItems`), and the answer validated after (the server).
    format_lenient: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    # The Responses API's custom tools' grammars of their input, by the tool's name:
    # {"syntax": "lark" | "regex", "definition": "..."}; a call of one is held to it.
    tool_grammars: dict[str, dict[str, str]] | None = None
    think: bool | str | None = None  # None: the model's default; True or low/medium/high
    # Anthropic's adaptive thinking: `think` applies where the model can think; a model that
    # cannot answers without (instead of the request being refused).
    think_adaptive: bool = False
    suffix: str | None = None  # with `prompt`: fill in the middle (FIM) up to this text
    extra: list[dict[str, str]] | None = None  # FIM: other files, [{"filename", "text"}]
    logprobs: int | None = None  # log-probabilities with N alternatives per token (None: none)
    # With `logprobs`: the entry of the token that ends the answer (its end-of-generation
    # token) too, its text empty, as OpenAI's legacy completions and vLLM give it (an
    # evaluation harness counts on one entry past the prompt).
    logprobs_end: bool = False
    # Log-probabilities of the prompt's own tokens, with N alternatives each (None: none):
    # OpenAI's legacy `echo`, vLLM's `prompt_logprobs`; the first token has none.
    prompt_logprobs: int | None = None
    # A completion's prompt as token ids, read as they are (no BOS added): OpenAI's and vLLM's
    # token prompts, which evaluation harnesses send; `prompt` is then empty.
    tokens: list[int] | None = None
    logit_bias: list[list[Any]] | None = None  # [token id, bias or None: never that token]
    # Texts the answer's first token is read over (Ollama's /v1/systemone): each one's first
    # token's log-probability at that position comes in the first token's log-probability
    # entry ("candidates"), and the token is chosen among them. None: no such reading.
    candidates: list[str] | None = None
    parallel_tool_calls: bool = True  # False: at most one tool call per answer
    context: list[int] | None = None  # token ids before the prompt (a previous answer's)
    return_context: bool = False  # the answer's end carries the prompt's and answer's tokens
    keep_alive: float | None = None  # seconds the model stays loaded after it (scheduler)
    # A completion's images and audio (media.Media.to_wire()), in the order of the markers in
    # `prompt`; a chat's are each message's "media".
    media: list[dict[str, str]] | None = None
    # Whom the answer is remembered for, and whose earlier answers to the same prompt
    # speculation may draft from (engine.speculation.answers): set by the server from the API key,
    # or "local" on a loopback-only server without one; None: neither.
    memory: str | None = None

    @property
    def chat(self) -> bool:
        return self.messages is not None

    def to_wire(self) -> dict[str, Any]:
        """The fields that differ from their defaults, as JSON values."""
        out: dict[str, Any] = {"model": self.model}
        for f in dataclasses.fields(self)[1:]:
            factory = f.default_factory
            default = f.default if factory is dataclasses.MISSING else factory()
            value = getattr(self, f.name)
            if value != default:
                out[f.name] = value
        return out

    @classmethod
    def from_wire(cls, data: Any) -> GenRequest:
        """A request from `to_wire`'s JSON, each field's type checked.

        A field of the wrong type is a BadRequestError naming it. Fields this version does not know,
        a newer sender's, are ignored.
        """
        if not isinstance(data, dict):
            raise BadRequestError("request must be an object")
        names = [f.name for f in dataclasses.fields(cls)]
        values = {name: data[name] for name in names if data.get(name) is not None}
        for name, value in values.items():
            _CHECKS.get(name, _anything)(name, value)
        # A runner serves one model: a request to it need not name it.
        return cls(**{"model": "", **values})


def _kind(*kinds: type) -> Any:
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) and bool not in kinds:
            raise BadRequestError(f"{name} has the wrong type (bool)")
        if not isinstance(value, kinds):
            raise BadRequestError(f"{name} has the wrong type ({type(value).__name__})")

    return check


def _anything(name: str, value: Any) -> None:
    """Checked where it is used, by the code that knows its shapes (tools, think, context)."""


def _messages(name: str, value: Any) -> None:
    if not isinstance(value, list):
        raise BadRequestError("messages must be a list")
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequestError(f"messages[{index}] must be an object with a role")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise BadRequestError(f"messages[{index}].content must be a string")
        if message.get("tool_calls") is not None and not isinstance(message["tool_calls"], list):
            raise BadRequestError(f"messages[{index}].tool_calls must be a list")
        if message.get("media") is not None:
            _media(f"messages[{index}].media", message["media"])


def _media(name: str, value: Any) -> None:
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("type"), str) and isinstance(m.get("data"), str)
        for m in value
    ):
        raise BadRequestError(f"{name} must be a list of {{type, data}} objects")


def _tool_grammars(name: str, value: Any) -> None:
    def grammar(spec: Any) -> bool:
        return (
            isinstance(spec, dict)
            and spec.get("syntax") in ("lark", "regex")
            and isinstance(spec.get("definition"), str)
        )

    if not isinstance(value, dict) or not all(grammar(spec) for spec in value.values()):
        raise BadRequestError(f"{name} must map tool names to their grammars")


def _format(name: str, value: Any) -> None:
    if value == "" or value == "json" or isinstance(value, dict):
        return
    raise BadRequestError(f"unknown format {value!r}", hint='use "json" or a JSON schema object')


def _extra(name: str, value: Any) -> None:
    """Infill's other files: [{"filename": str, "text": str}]."""
    if not isinstance(value, list) or not all(
        isinstance(c, dict) and all(isinstance(c.get(k, ""), str) for k in ("filename", "text"))
        for c in value
    ):
        raise BadRequestError("input_extra must be a list of {filename, text} objects")


def _logprobs(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequestError(f"{name} must be a count of alternatives (0 or more)")


def _token_list(name: str, value: Any) -> None:
    """Token ids (whether the model has them is checked where the vocabulary is known)."""
    if not isinstance(value, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    ):
        raise BadRequestError(f"{name} must be a list of token ids")


def _logit_bias(name: str, value: Any) -> None:
    def pair(item: Any) -> bool:
        if not isinstance(item, list) or len(item) != 2:
            return False
        token, bias = item
        return (
            isinstance(token, int)
            and not isinstance(token, bool)
            and (bias is None or (isinstance(bias, int | float) and not isinstance(bias, bool)))
        )

    if not isinstance(value, list) or not all(pair(item) for item in value):
        raise BadRequestError("logit_bias must be a list of [token id, bias] pairs")


def _candidates(name: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(text, str) for text in value):
        raise BadRequestError(f"{name} must be a list of texts")


# The JSON type of a field, checked where a request arrives in a runner; a field without an
# entry is checked where it is used.
_CHECKS = {
    "model": _kind(str),
    "messages": _messages,
    "prompt": _kind(str),
    "system": _kind(str),
    "options": _kind(dict),
    "format": _format,
    "tool_grammars": _tool_grammars,
    "suffix": _kind(str),
    "extra": _extra,
    "logprobs": _logprobs,
    "prompt_logprobs": _logprobs,
    "logprobs_end": _kind(bool),
    "tokens": _token_list,
    "logit_bias": _logit_bias,
    "candidates": _candidates,
    "parallel_tool_calls": _kind(bool),
    "think_adaptive": _kind(bool),
    "format_lenient": _kind(bool),
    "return_context": _kind(bool),
    "keep_alive": _kind(int, float),
    "media": _media,
    "memory": _kind(str),
}


def pair_tool_results(messages: list[Message]) -> list[Message]:
    """`messages` with every tool call given an id, and every tool result its call's id.

    The messages given are changed; a call given an id is a new object. A result without an id
    answers the first call of the turn before it not answered yet, or the first of its tool's name
    where it names one. Ids a request gives are kept. Ids made here depend only on the message's
    place, so a growing conversation renders the same prefix each time, for the prompt cache.
    """
    # Ollama's messages carry no ids: a call is {"function": {...}} and its result names the tool
    # (`tool_name`, Zed) or nothing (Continue, the `ollama` clients). Chat templates are written
    # for OpenAI's messages, where a result names its call by id, and some refuse a result without
    # one (Mistral's: "Tool call IDs should be alphanumeric strings with length 9!").
    waiting: list[tuple[str, Any]] = []  # the last turn's calls not answered yet: (id, name)
    for index, message in enumerate(messages):
        if message.get("role") == "assistant":
            waiting = []
            calls = message.get("tool_calls")
            if calls:
                message["tool_calls"] = [
                    _with_id(c, f"call_{index}_{n}") for n, c in enumerate(calls)
                ]
                waiting = [
                    (c["id"], _name(c)) for c in message["tool_calls"] if isinstance(c, dict)
                ]
        elif message.get("role") == "tool":
            given = message.get("tool_call_id")
            if given:
                waiting = [w for w in waiting if w[0] != given]
                continue
            name = message.get("tool_name") or message.get("name")
            match = next((w for w in waiting if name and w[1] == name), None)
            match = match or (waiting[0] if waiting else None)
            if match is not None:
                message["tool_call_id"] = match[0]
                waiting.remove(match)
    return messages


def _with_id(call: Any, made: str) -> Any:
    """A tool call with an id: its own, else `made` (a new object; the request's is kept)."""
    if not isinstance(call, dict) or (isinstance(call.get("id"), str) and call["id"]):
        return call
    return {**call, "id": made}


def _name(call: dict[str, Any]) -> Any:
    function = call.get("function")
    return function.get("name") if isinstance(function, dict) else None
