"""The context a load or a request gets, decided here alone.

`context_for` is the rule: num_ctx asked (a request's or a caller's), else the model's own
PARAMETER num_ctx, else LOCALRUN_CONTEXT_LENGTH; never more than the model was trained on.
`rounded` is the size localrun offers and loads: the next power of two, held to the trained
context. `loaded` is what the scheduler loads for a request that must load: rounded, and never
less than asked. The model (model.Model.context), the scheduler's targets and the words for a
prompt past the context (request.overflow) all ask here.
"""

from __future__ import annotations

from typing import Any

from localrun.settings import config


def positive(value: Any) -> int | None:
    """`value` when it is a whole number of at least 1 (a bool is not), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def context_for(asked: Any, own: Any, trained: Any) -> int:
    """The context a load or a request gets, never more than the model was trained on.

    It is num_ctx `asked`, else the model's own PARAMETER num_ctx (`own`), else
    LOCALRUN_CONTEXT_LENGTH, read now. `trained` is the context the model was trained on, None where
    not known. This is Ollama's rule: a larger context only costs memory, and past the trained one a
    model's answers degrade.
    """
    chosen = positive(asked) or positive(own) or config.context_length()
    limit = positive(trained)
    return min(chosen, limit) if limit else chosen


def rounded(size: int, trained: Any) -> int:
    """`size` rounded up to a power of two, held to the context the model was trained on.

    `trained` is None where that is not known. These are the contexts localrun suggests and loads.
    """
    power = 1 << max(0, size - 1).bit_length()
    limit = positive(trained)
    return min(power, limit) if limit else power


def loaded(num_ctx: int, trained: Any) -> int:
    """The context the scheduler loads for a request of `num_ctx` that must load.

    It is `rounded`, never less than asked. So a client whose num_ctx grows a little on every
    request (Aider's, through litellm) finds the runner large enough for a while, instead of
    reloading it each time.
    """
    return max(rounded(num_ctx, trained), num_ctx)
