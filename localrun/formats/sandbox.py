"""Bounds on rendering an untrusted chat template: time, and the size of what it builds.

A template comes inside a downloaded GGUF or a Modelfile, and Jinja's sandbox stops it reaching
Python internals but not spending the machine: `'x'|center(2147483647)` or
`'%2147483647d'|format(1)` allocate gigabytes in one call, a `~` doubling a string in a loop
grows past 4 GB before the output is checked, and nested loops over `messages * 999999` run for
minutes. So:

- calls that size their result from an argument (center, ljust, rjust, zfill, format widths,
  join, replace, indent, `*`, `+`, `%`) are checked before they run, against
  LOCALRUN_TEMPLATE_MAX_BYTES;
- while a template renders, a watchdog thread checks the deadline (LOCALRUN_TEMPLATE_TIMEOUT)
  and, every few milliseconds, that the process has not grown by more than
  LOCALRUN_TEMPLATE_MAX_BYTES times GROWTH_FACTOR since the render began (values that grow step
  by step, like `~`), and stops the render from inside on a breach.

A breach raises TemplateError inside the template, which the caller turns into a 400.
"""

from __future__ import annotations

import operator
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from localrun.errors import TemplateError, TemplateLimitError
from localrun.settings import limits

GROWTH_FACTOR = 16  # resident growth allowed, in largest values (strings are copied as they grow)
_RSS_EVERY_S = 0.005
_WIDTH = re.compile(r"%[-+ #0]*(\d+|\*)?(?:\.(\d+|\*))?")
_FORMAT_SPEC = re.compile(r"\{[^{}]*:[^{}]*?(\d+)[^{}]*\}")


def limit() -> int:
    return limits.template_max_bytes()


def _too_big(what: str) -> TemplateError:
    return TemplateError(
        f"the chat template tried to build an oversized value ({what}, over {limit()} bytes)",
        hint="fix the model's TEMPLATE; LOCALRUN_TEMPLATE_MAX_BYTES sets the bound",
    )


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple) else 0


def check_width(width: Any, what: str) -> None:
    if isinstance(width, int) and width > limit():
        raise _too_big(f"{what} to width {width}")


def check_printf(spec: Any) -> None:
    """Refuse a printf-style format whose field widths or precisions exceed the bound."""
    if isinstance(spec, str):
        for width, precision in _WIDTH.findall(spec):
            for number in (width, precision):
                if number.isdigit() and int(number) > limit():
                    raise _too_big(f"a format field of width {number}")


def check_format_spec(spec: Any) -> None:
    """The same for str.format's `{:>N}` fields."""
    if isinstance(spec, str):
        for number in _FORMAT_SPEC.findall(spec):
            if int(number) > limit():
                raise _too_big(f"a format field of width {number}")


def safe_mul(a: Any, b: Any) -> Any:
    for seq, n in ((a, b), (b, a)):
        if _size(seq) and isinstance(n, int) and _size(seq) * max(n, 0) > limit():
            raise _too_big("a repeated value")
    return operator.mul(a, b)


def safe_add(a: Any, b: Any) -> Any:
    if _size(a) + _size(b) > limit():
        raise _too_big("a joined value")
    return operator.add(a, b)


def safe_mod(a: Any, b: Any) -> Any:
    check_printf(a)
    return operator.mod(a, b)


def safe_pow(a: Any, b: Any) -> Any:
    if isinstance(b, int | float) and abs(b) > 64:
        raise TemplateError("the chat template tried to compute an oversized power")
    return operator.pow(a, b)


def joined_size(items: list[Any], separator: Any) -> int:
    sep = len(str(separator)) if separator else 0
    return sum(len(str(x)) for x in items) + sep * max(0, len(items) - 1)


def check_method(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Before a str method the template calls: refuse one whose result would be oversized.
    Returns the arguments to call it with (an iterable to join, read once, as a list)."""
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if not isinstance(owner, str):
        return args
    first = args[0] if args else None
    if name in ("center", "ljust", "rjust", "zfill"):
        check_width(first if first is not None else kwargs.get("width"), f"str.{name}")
    elif name in ("format", "format_map"):
        check_format_spec(owner)
    elif name == "expandtabs":
        size = kwargs.get("tabsize", first)
        if isinstance(size, int) and len(owner) * max(size, 1) > limit():
            raise _too_big("str.expandtabs")
    elif name == "join" and first is not None:
        items = list(first)
        if joined_size(items, owner) > limit():
            raise _too_big("str.join")
        args = (items, *args[1:])
    elif name == "replace" and len(args) >= 2:
        count = owner.count(str(args[0])) if args[0] else len(owner) + 1
        if len(owner) + count * len(str(args[1])) > limit():
            raise _too_big("str.replace")
    return args


def _rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * 4096
    except (OSError, ValueError, IndexError):
        import psutil

        return int(psutil.Process().memory_info().rss)


class _Timeout(Exception):
    """Raised inside a render that ran past LOCALRUN_TEMPLATE_TIMEOUT (then a TemplateError)."""


class _Growth(Exception):
    """Raised inside a render whose process grew past the bound (then a TemplateError)."""


def _error(kind: type[Exception]) -> TemplateError:
    if kind is _Timeout:
        return TemplateLimitError(
            f"the chat template ran for more than {limits.template_timeout():g} s and was stopped",
            hint="fix the model's TEMPLATE; LOCALRUN_TEMPLATE_TIMEOUT sets the bound",
        )
    return TemplateLimitError(
        "the chat template tried to build oversized values (memory grew past "
        f"{GROWTH_FACTOR * limit()} bytes while rendering)",
        hint="fix the model's TEMPLATE; LOCALRUN_TEMPLATE_MAX_BYTES sets the bound",
    )


def _interrupt(thread_id: int, error: type[BaseException] | None) -> None:
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(error) if error else None
    )


@contextmanager
def guarded() -> Iterator[None]:
    """Bound the time and the memory growth of the (pure Python) rendering done inside.

    A watchdog thread raises _Timeout or _Growth in the rendering thread
    (PyThreadState_SetAsyncExc: delivered between bytecodes, so Jinja's loops stop even with
    empty bodies). Nothing is traced: a render costs what it did, plus starting the thread.
    """
    import threading

    deadline = time.monotonic() + limits.template_timeout()
    allowed = _rss() + GROWTH_FACTOR * limit()
    target = threading.get_ident()
    lock = threading.Lock()
    done = threading.Event()
    fired: list[type[Exception]] = []

    def watch() -> None:
        while not done.wait(_RSS_EVERY_S):
            error: type[Exception] | None = None
            if time.monotonic() > deadline:
                error = _Timeout
            elif _rss() > allowed:
                error = _Growth
            if error is not None:
                with lock:
                    if not done.is_set():
                        fired.append(error)
                        _interrupt(target, error)
                return

    watcher = threading.Thread(target=watch, name="template-watch", daemon=True)
    watcher.start()
    try:
        yield
    except (_Timeout, _Growth) as exc:
        raise _error(type(exc)) from None
    finally:
        with lock:
            done.set()
            if fired:
                _interrupt(target, None)  # not delivered yet: it must not fire elsewhere
        watcher.join()
    if fired:  # the render ended as it fired: report it all the same
        raise _error(fired[0])
