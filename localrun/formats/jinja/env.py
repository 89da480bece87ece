"""Hugging Face's chat template environment: Jinja, sandboxed, with transformers' additions.

A template is untrusted input: it comes inside downloaded GGUF files and Modelfiles. It is rendered
with Jinja's SandboxedEnvironment, which blocks attribute access to Python internals
(llama-cpp-python's CVE-2024-34359 was a template that reached os.popen). Limits hold the size of
what `*`, `**`, `+`, `%` and the sizing filters can build; `range` has a budget; the watchdog of
formats/sandbox.py bounds time and memory.

The environment is the one these templates are written for, transformers'. It has trim_blocks and
lstrip_blocks, the loopcontrols extension (`{% break %}`, `{% continue %}`), the `{% generation %}`
tag (its body rendered as it is), `tojson` with its keyword arguments (ensure_ascii, indent,
separators, sort_keys), `raise_exception(msg)` and `strftime_now(fmt)`. Lists and dicts are mutable,
as llama.cpp's engine has them (Kimi K2's template appends to a list it made). So the caller passes
data of its own, rebuilt for each render.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache
from typing import Any, ClassVar

from localrun.errors import TemplateError, TemplateLimitError
from localrun.formats import sandbox as guard


def _raise(message: str) -> None:
    raise TemplateError(f"the chat template refused the conversation: {message}")


# Loop iterations one rendering may run through range(): jinja's sandbox caps each range at
# 100k items but not nested ones, so `range(99999)` inside `range(99999)` would pin a runner.
MAX_STEPS = 1_000_000
_steps: ContextVar[list[int]] = ContextVar("template_steps")


def _budget_range(*args: int) -> range:
    numbers = range(*args)
    left = _steps.get([MAX_STEPS])
    left[0] -= len(numbers)
    if left[0] < 0:
        raise TemplateLimitError("the chat template tried to loop too many times")
    return numbers


def _add(left: Any, right: Any) -> Any:
    """`+`, where a string and an undefined or None value concatenate as if it were "".

    llama.cpp's engine has it so: Command R's tool template adds a parameter's missing description.
    """
    from jinja2 import Undefined

    if isinstance(left, str) and (right is None or isinstance(right, Undefined)):
        return left
    if isinstance(right, str) and (left is None or isinstance(left, Undefined)):
        return right
    return guard.safe_add(left, right)


@lru_cache(maxsize=32)
def compile_jinja(source: str) -> Any:
    """The compiled template (cached by source); TemplateError if it is not valid Jinja."""
    from jinja2 import TemplateSyntaxError

    env = _environment()
    try:
        # Guarded like a render: compiling evaluates what it can of the template (issue 57).
        return guard.call(lambda: env.from_string(source))
    except TemplateSyntaxError as exc:
        raise TemplateError(
            f"the chat template is not valid Jinja: {exc.message} (line {exc.lineno})",
            hint="fix the TEMPLATE in the Modelfile and create the model again",
        ) from None
    except (SyntaxError, RecursionError, MemoryError, ValueError, TypeError) as exc:
        # Jinja can generate Python that does not compile from odd input: still the template's
        # fault, and a 400.
        raise TemplateError(
            f"the chat template cannot be compiled: {type(exc).__name__}",
            hint="fix the TEMPLATE in the Modelfile and create the model again",
        ) from None


@lru_cache(maxsize=1)
def _environment() -> Any:
    from jinja2 import pass_context
    from jinja2.sandbox import SandboxedEnvironment

    class _Env(SandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**", "+", "%"])
        concat = staticmethod(guard.concat)  # compiled code's joins of output, checked
        _binops: ClassVar[dict[str, Callable[[Any, Any], Any]]] = {
            "*": guard.safe_mul,
            "**": guard.safe_pow,
            "+": _add,
            "%": guard.safe_mod,
        }

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator in self._binops:
                return self._binops[operator](left, right)
            return super().call_binop(context, operator, left, right)

        def call(self, context: Any, obj: Any, *args: Any, **kwargs: Any) -> Any:
            args = guard.check_method(obj, args, kwargs)
            return super().call(context, obj, *args, **kwargs)

        def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
            wrapped = super().wrap_str_format(value)
            return None if wrapped is None else _checked_format(self, value)

    # Nothing of the template runs while it compiles: Jinja's optimizer folds constant
    # expressions, and its code generator folds each constant `{{ }}` unless the finalize
    # function needs the context (a pass-through here), so `{{ [1]|batch(300000000, 0)|list }}`
    # was evaluated by the compiler, outside the watchdog (issue 57).
    env = _Env(
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        extensions=["jinja2.ext.loopcontrols", _generation_tag()],
        optimized=False,
        finalize=pass_context(_as_is),
    )
    env.globals["raise_exception"] = _raise
    env.globals["range"] = _budget_range
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters.update(_bounded_filters())
    return env


def _as_is(context: Any, value: Any) -> Any:
    return value


def _checked_format(env: Any, method: Any) -> Callable[..., str]:
    """str.format and format_map through Jinja's sandboxed formatter, each field's spec checked.

    A spec is checked once its nested fields are filled in (`'{:{}}'.format(x, N)`), before it is
    formatted.
    """
    from jinja2.sandbox import SandboxedFormatter

    class Checked(SandboxedFormatter):
        def format_field(self, value: Any, format_spec: str) -> Any:
            guard.check_format_field(format_spec)
            return super().format_field(value, format_spec)

    text, is_map = method.__self__, method.__name__ == "format_map"

    def formatted(*args: Any, **kwargs: Any) -> str:
        if is_map:
            if kwargs or len(args) != 1:
                raise TypeError("format_map() takes exactly one argument")
            return str(Checked(env).vformat(text, (), args[0]))
        return str(Checked(env).vformat(text, args, kwargs))

    return formatted


@lru_cache(maxsize=1)
def _generation_tag() -> type:
    """Hugging Face's `{% generation %}...{% endgeneration %}`: its body renders as it is.

    The tag marks the assistant's part for training masks, which a prompt has no use for.
    """
    from jinja2.ext import Extension

    class Generation(Extension):
        tags = {"generation"}  # noqa: RUF012  (jinja reads it from the class)

        def parse(self, parser: Any) -> Any:
            next(parser.stream)  # the tag's name
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    return Generation


def _bounded_filters() -> dict[str, Any]:
    """Jinja's filters that size their result from an argument, checked before they run."""
    from jinja2 import filters as f
    from jinja2.utils import pass_environment, pass_eval_context

    def center(value: Any, width: int = 80) -> str:
        guard.check_width(width, "center")
        return f.do_center(value, width)

    def format_(value: Any, *args: Any, **kwargs: Any) -> str:
        guard.check_printf(value, kwargs or args)
        return f.do_format(value, *args, **kwargs)

    def batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
        if fill_with is not None:  # the last batch is filled up to linecount
            guard.check_count(linecount, "batch")
        return f.do_batch(value, linecount, fill_with)

    @pass_environment
    def sum_(env: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
        if attribute is not None:
            iterable = map(f.make_attrgetter(env, attribute), iterable)
        return guard.bounded_sum(iterable, start)

    def slice_(value: Any, slices: int, fill_with: Any = None) -> Any:
        guard.check_count(slices, "slice")
        return f.sync_do_slice(value, slices, fill_with)

    @pass_eval_context
    def join(ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
        items = list(value)
        if guard.joined_size(items, d) > guard.limit():
            raise TemplateError("the chat template tried to build an oversized value (join)")
        return str(f.do_join(ctx, items, d, attribute))

    @pass_eval_context
    def replace(ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> str:
        text = str(s)
        found = text.count(str(old)) if old else len(text) + 1
        if len(text) + found * len(str(new)) > guard.limit():
            raise TemplateError("the chat template tried to build an oversized value (replace)")
        return str(f.do_replace(ctx, s, old, new, count))

    def indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> str:
        pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        if (str(s).count("\n") + 1) * pad > guard.limit():
            raise TemplateError("the chat template tried to build an oversized value (indent)")
        return f.do_indent(s, width, first, blank)

    return {
        "safe": _safe,
        "center": center,
        "format": format_,
        "batch": batch,
        "slice": slice_,
        "sum": sum_,
        "join": join,
        "replace": replace,
        "indent": indent,
        "tojson": _tojson,
    }


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # Hugging Face's signature (transformers' chat template environment).
    if isinstance(indent, int) and indent > 64:
        raise TemplateError("the chat template asked tojson for an indent over 64")
    if separators is not None:
        parts = tuple(separators)
        if len(parts) != 2 or any(not isinstance(p, str) or len(p) > 16 for p in parts):
            raise TemplateError("the chat template gave tojson odd separators")
        separators = parts
    return json.dumps(
        _plain(value),
        ensure_ascii=bool(ensure_ascii),
        indent=indent,
        separators=separators,
        sort_keys=bool(sort_keys),
    )


def _safe(value: Any) -> Any:
    # Nothing is escaped here (autoescape is off), so a Markup would only escape what is
    # added to it: functionary's `"..."|safe + name` wrote &#34; for quotes.
    return value


def _plain(value: Any) -> Any:
    """What tojson can write: Jinja's lazy sequences (map, select, ...) as lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if hasattr(value, "__iter__") and hasattr(value, "__next__"):  # a generator
        return [_plain(v) for v in value]
    return value


def render_jinja(source: str, context: dict[str, Any]) -> str:
    """Render `source` with `context`; TemplateError for any failure of the template."""
    from jinja2 import TemplateError as JinjaError
    from jinja2.exceptions import SecurityError

    compiled = compile_jinja(source)
    token = _steps.set([MAX_STEPS])
    try:
        out = guard.call(lambda: compiled.render(**context))
    except TemplateError:
        raise
    except SecurityError as exc:
        raise TemplateError(
            f"the chat template tried something unsafe and was stopped: {exc}"
        ) from None
    except RecursionError:
        raise TemplateLimitError("the chat template recursed too deeply") from None
    except MemoryError:
        raise TemplateLimitError("the chat template ran out of memory") from None
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
    if len(out) > guard.limit():
        raise TemplateError("the chat template produced an oversized prompt")
    return str(out)


@lru_cache(maxsize=32)
def variables(source: str) -> frozenset[str]:
    """The top-level variables the template reads (e.g. `tools`, `functions`)."""
    from jinja2 import meta

    env = _environment()
    try:
        return frozenset(meta.find_undeclared_variables(env.parse(source)))
    except Exception:  # compile_jinja says what is wrong with it
        return frozenset()
