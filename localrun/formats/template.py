"""Chat templates: a conversation -> the prompt text its model was trained on.

The one door to the template machinery. The runner's prompt and the server's /apply-template come
here, and never look inside:

    jinja/         Hugging Face's environment (sandboxed Jinja with transformers' additions)
    adapt.py       the conversation adapted to what a Jinja template can render (probed)
    ollama/        Ollama's Go templates (a Modelfile's TEMPLATE written for Ollama), rendered
                   as Ollama renders them, on gotemplate/ (Go's text/template)

A Jinja template is given `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools`,
and what llama.cpp's server passes every template (render).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import datetime
from functools import lru_cache
from typing import Any

from localrun.errors import LocalrunError, TemplateError, TemplateLimitError
from localrun.formats import adapt as adapt_mod
from localrun.formats import calls as calls_mod
from localrun.formats import parsers
from localrun.formats.gotemplate.lex import looks_like_go
from localrun.formats.jinja.env import compile_jinja
from localrun.formats.parsers import derive

# llama.cpp falls back to ChatML when a model has no template.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Markers that end an assistant turn in common templates; those found in a template are stop
# tokens for its model (when the vocabulary has them as single special tokens).
END_OF_TURN = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
    "<|END_OF_TURN_TOKEN|>",
    "[/INST]",
)


def is_go(source: str | None) -> bool:
    """Whether a template is Ollama's Go kind (else Hugging Face's Jinja)."""
    return source is not None and looks_like_go(source)


def _ollama() -> Any:
    """Ollama's template layer, imported only where a Go template is met.

    Its modules take a third of a runner's import of this package, and most models are Jinja.
    """
    from localrun.formats.ollama import template as ollama_template

    return ollama_template


def check(source: str) -> None:
    """Refuse a template that cannot be used, with a TemplateError saying why and where.

    Jinja must compile; a Go template must parse and render a short conversation, as Ollama checks.
    """
    if is_go(source):
        _ollama().check(source)
    else:
        compile_jinja(source)


def prepare(source: str | None) -> None:
    """Compile and probe a template ahead of its first request, so a failing one says so then.

    A runner does it at load: the probes take tens of milliseconds, once.
    """
    if is_go(source):
        _ollama().load(source or "")
    else:
        adapt_mod.probe(source or CHATML)


def render(
    template: str | None,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    tools: list[dict[str, Any]] | None = None,
    variables: dict[str, Any] | None = None,
    family: parsers.Family | None = None,
) -> str:
    """Render a conversation; raises TemplateError for any failure of the template.

    The conversation is adapted to what the template renders first (adapt.py); `variables`
    are further template variables (e.g. `enable_thinking`); `family` is the model's, when
    the runner knows it better than the template's markers tell (formats/parsers)."""
    source = template or CHATML
    # The template gets objects of its own: it may change them (lists are mutable in it).
    if is_go(source):
        messages, tools = copy.deepcopy(messages), copy.deepcopy(tools)
        return _render_go(source, messages, tools, variables or {}, add_generation_prompt)
    given, given_tools = messages, tools  # each try's own copies are made from these
    now = datetime.now()
    failure: TemplateError | None = None
    first = ""
    # As it is; else, where the template refused it (strict alternation of user and assistant,
    # one tool call a turn) or kept only one of its system messages, repaired step by step as
    # adapt.repairs_for says: the first rendering that takes wins.
    for repairs in _tries(given):
        messages, tools = copy.deepcopy(given), copy.deepcopy(given_tools)
        messages, tools, extra = adapt_mod.adapt(source, messages, tools, family, repairs=repairs)
        # What llama.cpp's server passes every template too: `date_string` and `datetime` (today:
        # "25 Nov 2026", "Nov 25 2026"), `enable_thinking` true unless the request turns thinking
        # off, and past reasoning kept in the history (adapt.DEFAULTS says why).
        context: dict[str, Any] = {
            "date_string": now.strftime("%d %b %Y"),
            "datetime": now.strftime("%b %d %Y"),
            **adapt_mod.DEFAULTS,
            **extra,
            **(variables or {}),
            "messages": messages,
            "bos_token": bos_token,
            "eos_token": eos_token,
        }
        context["add_generation_prompt"] = add_generation_prompt
        context["tools"] = tools or None  # as Hugging Face and llama-server pass no tools
        try:
            prompt = adapt_mod.rendered(source, context)
        except TemplateLimitError:
            raise
        except TemplateError as exc:
            failure = failure if repairs else exc
            continue
        if not adapt_mod.lost_later_system(given, prompt):
            return prompt
        first = first if repairs else prompt
    if failure is not None:
        raise failure
    return first


def _tries(messages: list[dict[str, Any]]) -> Iterator[frozenset[str]]:
    """The conversation as it is, then (only if asked for) each repair adapt suggests."""
    yield frozenset()
    yield from adapt_mod.repairs_for(messages)


def _render_go(
    source: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    variables: dict[str, Any],
    add_generation_prompt: bool,
) -> str:
    """An Ollama template's prompt, `think` taken from the request's thinking variables.

    Tools go in a system note where the template has no `.Tools`, since Ollama refuses them there.
    """
    if tools and not shows_tools(source):
        messages, tools = calls_mod.add_system_note(messages, tools), None
    think = variables.get("reasoning_effort", variables.get("enable_thinking"))
    if think is None and "think" in _ollama().load(source).vars:
        think = True  # Ollama's default for a model that can think
    prompt: str = _ollama().render(
        source,
        messages,
        tools=tools or None,
        think=think if isinstance(think, bool | str) else None,
        add_generation_prompt=add_generation_prompt,
    )
    return prompt


@lru_cache(maxsize=64)
def family(template: str | None) -> parsers.Family:
    """The model family a template writes for (formats/parsers).

    It is the row whose markers it writes, else one derived from its own rendering of a call, else
    Hermes.
    """
    if not template:
        return parsers.DEFAULT
    found = parsers.by_markers(template)
    if found is not None:
        return found
    if not is_go(template) and adapt_mod.probe(template).tool_calls:
        user, probe = {"role": "user", "content": "U"}, derive.PROBE_TOOL
        shown = []
        for turn in derive.PROBE_TURNS:
            try:
                shown.append(
                    render(template, [user, turn], add_generation_prompt=False, tools=[probe])
                )
            except LocalrunError:  # refused: no shape from it (one call only: two refused)
                shown.append("")
        with_call, without, with_two = shown
        derived = derive.family(with_call, without, with_two) if with_call and without else None
        if derived is not None:
            return derived
    return parsers.DEFAULT


def shows_tools(template: str | None) -> bool:
    """Whether a template lists the tools it is given (else they go in a system note)."""
    if template is None:
        return False
    if is_go(template):
        return "tools" in _ollama().load(template).vars
    return adapt_mod.probe(template).tools


def end_of_turn_markers(template: str | None) -> list[str]:
    source = template or CHATML
    return [marker for marker in END_OF_TURN if marker in source]
