"""Chat templates: a conversation -> prompt text, rendered in a sandboxed Jinja environment.

A template is untrusted input (it comes inside downloaded GGUF files and Modelfiles): it is
rendered with Jinja's ImmutableSandboxedEnvironment, which blocks attribute access to Python
internals (llama-cpp-python's CVE-2024-34359 was a template that reached os.popen), and with
limits on the size of what `*` and `**` can build so a template cannot exhaust memory.

Variables, as in Hugging Face chat templates: `messages` (list of {role, content}),
`add_generation_prompt`, `bos_token`, `eos_token`, `tools` (None unless given); functions
`raise_exception(msg)` and `strftime_now(fmt)`.
"""

from __future__ import annotations

import json
import operator
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache
from typing import Any

from localrun.errors import TemplateError

# llama.cpp falls back to ChatML when a model has no template; so do we.
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

MAX_OUTPUT = 4 * 1024 * 1024
_MAX_REPEAT = 1_000_000


def _raise(message: str) -> None:
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _safe_mul(a: Any, b: Any) -> Any:
    for seq, n in ((a, b), (b, a)):
        sized = isinstance(seq, str | list | tuple | bytes) and isinstance(n, int)
        if sized and len(seq) * max(n, 0) > _MAX_REPEAT:
            raise TemplateError("the chat template tried to build an oversized value")
    return operator.mul(a, b)


def _safe_pow(a: Any, b: Any) -> Any:
    if isinstance(b, int | float) and abs(b) > 64:
        raise TemplateError("the chat template tried to compute an oversized power")
    return operator.pow(a, b)


# Loop iterations one rendering may run through range(): jinja's sandbox caps each range at
# 100k items but not nested ones, so `range(99999)` inside `range(99999)` would pin a runner.
MAX_STEPS = 1_000_000
_steps: ContextVar[list[int]] = ContextVar("template_steps")


def _budget_range(*args: int) -> range:
    numbers = range(*args)
    left = _steps.get([MAX_STEPS])
    left[0] -= len(numbers)
    if left[0] < 0:
        raise TemplateError("the chat template tried to loop too many times")
    return numbers


@lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Env(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
            if operator_ == "*":
                return _safe_mul(left, right)
            if operator_ == "**":
                return _safe_pow(left, right)
            return super().call_binop(context, operator_, left, right)

    env = _Env(trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.globals["raise_exception"] = _raise
    env.globals["range"] = _budget_range
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = lambda value, indent=None: json.dumps(
        value, ensure_ascii=False, indent=indent
    )
    try:
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(
            f"the chat template is not valid Jinja: {exc.message} (line {exc.lineno})",
            hint="fix the TEMPLATE in the Modelfile and create the model again",
        ) from None


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

    `variables` are further template variables (e.g. `enable_thinking`)."""
    from jinja2 import TemplateError as JinjaError
    from jinja2.exceptions import SecurityError

    compiled = _compile(template or CHATML)
    token = _steps.set([MAX_STEPS])
    try:
        out = compiled.render(
            **(variables or {}),
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            tools=tools,
        )
    except TemplateError:
        raise
    except SecurityError as exc:
        raise TemplateError(
            f"the chat template tried something unsafe and was stopped: {exc}"
        ) from None
    except RecursionError:
        raise TemplateError("the chat template recursed too deeply") from None
    except (
        JinjaError,
        TypeError,
        ValueError,
        KeyError,
        IndexError,
        AttributeError,
        OverflowError,
        ZeroDivisionError,
    ) as exc:
        raise TemplateError(f"the chat template failed: {type(exc).__name__}: {exc}") from None
    finally:
        _steps.reset(token)
    if len(out) > MAX_OUTPUT:
        raise TemplateError("the chat template produced an oversized prompt")
    return str(out)


def end_of_turn_markers(template: str | None) -> list[str]:
    source = template or CHATML
    return [marker for marker in END_OF_TURN if marker in source]
