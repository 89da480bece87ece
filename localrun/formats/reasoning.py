"""Reasoning models: which templates think, how a request asks, and the answer split in two.

A model thinks when its chat template says so: it writes a `<think>` section (DeepSeek-R1, QwQ,
Qwen3), takes Qwen3's `enable_thinking` variable, renders `reasoning_content`, or speaks in
gpt-oss's channels (`<|channel|>analysis` for reasoning, `final` for the answer). A request asks
with `think`: None (the model's default), False (off), True or a level ("low", "medium", "high").
The template gets `enable_thinking` and `reasoning_effort`, as Hugging Face templates expect. Asking
a model that cannot think is a BadRequestError.

`Splitter` parts the streamed answer's reasoning from the rest; gpt-oss's channels are parted by
formats/parsers/families/harmony.py. Pure: no I/O, no llama_cpp, since the server side and the
runner both import it.
"""

from __future__ import annotations

from localrun.errors import BadRequestError
from localrun.formats.parsers.base import partial_marker

OPEN = "<think>"
CLOSE = "</think>"
LEVELS = ("low", "medium", "high")
CHANNEL = "<|channel|>"
# An Ollama (Go) template thinks when it reads `.Think` or writes `.Thinking`.
_MARKERS = (
    OPEN, "enable_thinking", "reasoning_content", CHANNEL, ".Think",
    "<seed:think>", "[THINK]", "<|START_THINKING|>", "<|channel>", "<|thought_start|>",
)  # fmt: skip

Think = bool | str | None

# The reasoning efforts the dialects name (OpenAI's reasoning_effort and reasoning.effort,
# Anthropic's output_config.effort), each route accepting all of them: "none" turns thinking off,
# the others are the nearest level a template takes.
EFFORTS: dict[str, bool | str] = {
    "none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high",
    "xhigh": "high", "max": "high",
}  # fmt: skip


def from_effort(effort: object, key: str) -> bool | str:
    """A request's reasoning effort as `think` (False or a level); `key` names the field."""
    if not isinstance(effort, str) or effort not in EFFORTS:
        raise BadRequestError(f"{key} must be one of {', '.join(EFFORTS)}, not {effort!r}")
    return EFFORTS[effort]


def supports(template: str | None) -> bool:
    """Whether a chat template renders or expects reasoning."""
    return bool(template) and any(m in template for m in _MARKERS)  # type: ignore[operator]


def check(think: object) -> Think:
    """A request's `think`, validated: None, a boolean or a level."""
    if think is None or isinstance(think, bool):
        return think
    if isinstance(think, str) and think in LEVELS:
        return think
    raise BadRequestError(f"think must be true, false or one of {', '.join(LEVELS)}, not {think!r}")


def template_variables(think: Think, template: str | None, model: str) -> dict[str, object]:
    """The variables a template gets for `think` (none when the request leaves it alone)."""
    think = check(think)
    if think is None:
        return {}
    if think is not False and not supports(template):
        raise BadRequestError(
            f"{model} does not support thinking",
            hint="leave think out, or use a reasoning model (Qwen3, DeepSeek-R1, QwQ ...)",
        )
    variables: dict[str, object] = {"enable_thinking": think is not False}
    if isinstance(think, str):
        variables["reasoning_effort"] = think
    return variables


def opens_thinking(prompt: str, open: str = OPEN, close: str = CLOSE) -> bool:
    """Whether a rendered prompt ends inside a reasoning section the template opened."""
    return prompt.rfind(open) > prompt.rfind(close)


class Splitter:
    """Parts streamed text into (thinking, answer) at a family's reasoning tags.

    The tags are `<think>`, `<seed:think>`, `[THINK]`, `<|START_THINKING|>` ... It holds back only
    what could be the start of a tag. `inside` starts it in a thought the prompt opened. `drop` are
    markers around the answer that are nobody's text (Granite's `<response>`, Command R's
    `<|START_RESPONSE|>`). `calls` are the markers that start a tool call: a thought the prompt
    opened ends at one of them, which starts the answer. Qwen3.5 may call before it writes
    `</think>`, and vLLM reads that call; a `</think>` after it is then nobody's text.
    """

    def __init__(
        self,
        *,
        inside: bool = False,
        open: str = OPEN,
        close: str = CLOSE,
        drop: tuple[str, ...] = (),
        calls: tuple[str, ...] = (),
    ) -> None:
        self.inside = inside
        self.open, self.close, self.drop = open, close, drop
        self.calls = calls if inside else ()
        self.pending = ""
        # The blank lines templates put after a tag are not part of either text.
        self._trim = True

    def feed(self, text: str) -> tuple[str, str]:
        """The thinking and the answer text that are safe to pass on now."""
        thinking: list[str] = []
        answer: list[str] = []
        pending = self.pending + text
        while pending:
            if self._trim:
                pending = pending.lstrip()
                if not pending:
                    break
                self._trim = False
            tags = (self.close, *self.calls) if self.inside else (self.open, *self.drop)
            found = [(i, tag) for tag in tags if (i := pending.find(tag)) >= 0]
            if found:
                index, tag = min(found)
                (thinking if self.inside else answer).append(pending[:index])
                if tag in self.calls:  # a call ends the thought: the answer starts with it
                    self.inside, self.calls = False, ()
                    self.drop = (*self.drop, self.close)
                    pending = pending[index:]
                    continue
                pending = pending[index + len(tag) :]
                if tag == self.open or (self.inside and tag == self.close):
                    self.inside = not self.inside
                    self.calls = ()
                self._trim = True
                continue
            keep = partial_marker(pending, tags)
            (thinking if self.inside else answer).append(pending[: len(pending) - keep])
            pending = pending[len(pending) - keep :]
            break
        self.pending = pending
        return "".join(thinking), "".join(answer)

    def finish(self) -> tuple[str, str]:
        """What was held back at the end (an unfinished tag is text after all)."""
        rest, self.pending = self.pending, ""
        return (rest, "") if self.inside else ("", rest)
