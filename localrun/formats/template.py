"""Chat templates: a conversation -> the prompt text its model was trained on.

The one door to the template machinery; the runner's prompt and the server's /apply-template
come here, and never look inside:

    jinja_env.py   Hugging Face's environment (sandboxed Jinja with transformers' additions)
    adapt.py       the conversation adapted to what a Jinja template can render (probed)

A Jinja template is given `messages`, `add_generation_prompt`, `bos_token`, `eos_token`,
`tools` (left undefined when there are none), and what llama.cpp's server passes every
template: `date_string` and `datetime` (today: "25 Nov 2026", "Nov 25 2026") and
`enable_thinking` (true unless the request turns thinking off: a reasoning model thinks by
default, where templates that test `enable_thinking is defined` would otherwise close it), and
past reasoning kept in the history
(`preserve_thinking` true; `clear_thinking`, `truncate_history_thinking`, `drop_thinking` false).
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from localrun.formats import adapt as adapt_mod
from localrun.formats.jinja_env import compile_jinja, render_jinja

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


def check(source: str) -> None:
    """Refuse a template that cannot be compiled (TemplateError saying why and where)."""
    compile_jinja(source)


def prepare(source: str | None) -> None:
    """Compile and probe a template ahead of its first request (a runner does it at load:
    the probes take tens of milliseconds, once). A template that fails says so then."""
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
) -> str:
    """Render a conversation; raises TemplateError for any failure of the template.

    The conversation is adapted to what the template renders first (adapt.py); `variables`
    are further template variables (e.g. `enable_thinking`)."""
    source = template or CHATML
    # The template gets objects of its own: it may change them (lists are mutable in it).
    messages, tools = copy.deepcopy(messages), copy.deepcopy(tools)
    messages, tools, extra = adapt_mod.adapt(source, messages, tools)
    now = datetime.now()
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
    if add_generation_prompt:
        context["add_generation_prompt"] = True
    else:
        context["add_generation_prompt"] = False
    if tools:
        context["tools"] = tools
    return render_jinja(source, context)


def shows_tools(template: str | None) -> bool:
    """Whether a template lists the tools it is given (else they go in a system note)."""
    return template is not None and adapt_mod.probe(template).tools


def end_of_turn_markers(template: str | None) -> list[str]:
    source = template or CHATML
    return [marker for marker in END_OF_TURN if marker in source]
