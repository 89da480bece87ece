"""Bounds on rendering an untrusted chat template: time, and the size of what it builds.

A template comes inside a downloaded GGUF or a Modelfile. Jinja's sandbox stops it reaching Python
internals but not spending the machine: `'x'|center(2147483647)` or `'%2147483647d'|format(1)`
allocate gigabytes in one call. A `~` doubling a string in a loop grows past 4 GB before the output
is checked, and nested loops over `messages * 999999` run for minutes.

So calls that size their result from an argument (center, ljust, rjust, zfill, format widths, join,
replace, indent, `*`, `+`, `%`) are checked before they run, against LOCALRUN_TEMPLATE_MAX_BYTES.
While a template renders, a watchdog thread checks the deadline (LOCALRUN_TEMPLATE_TIMEOUT). Every
few milliseconds it also checks the process's growth since the render began, against
LOCALRUN_TEMPLATE_MAX_BYTES times GROWTH_FACTOR, for values that grow step by step, like `~`. A
breach stops the render from inside with a TemplateError, which the caller turns into a 400.
"""

from __future__ import annotations

import operator
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from localrun.errors import TemplateError, TemplateLimitError
from localrun.settings import limits

GROWTH_FACTOR = 16  # resident growth allowed, in largest values (strings are copied as they grow)
_RSS_EVERY_S = 0.005
# A printf conversion: its width, its precision (digits, or `*` taken from the arguments), its kind.
_CONVERSION = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\d+|\*)?(?:\.(\d+|\*)?)?[hlL]?(.?)", re.S)
_NUMBER = re.compile(r"\d+")
_WORD = 8  # bytes a list holds per item
T = TypeVar("T")


def limit() -> int:
    return limits.template_max_bytes()


def _too_big(what: str) -> TemplateError:
    return TemplateError(
        f"the chat template tried to build an oversized value ({what}, over {limit()} bytes)",
        hint="fix the model's TEMPLATE; LOCALRUN_TEMPLATE_MAX_BYTES sets the bound",
    )


def _size(value: Any) -> int:
    """About the bytes `value` holds: a character or byte each, a pointer per list item."""
    if isinstance(value, list | tuple):
        return len(value) * _WORD
    return len(value) if isinstance(value, str | bytes | bytearray) else 0


def check_width(width: Any, what: str) -> None:
    if isinstance(width, int) and abs(width) > limit():
        raise _too_big(f"{what} to width {width}")


def _check_number(number: Any) -> None:
    if isinstance(number, str):
        number = int(number) if len(number) < 12 else limit() + 1
    check_width(number, "a format field")


def check_printf(spec: Any, args: Any = ()) -> None:
    """Refuse a printf-style format (`%`, |format) with a width or precision past the bound.

    Widths and precisions are written in the format or taken from the arguments by `*`
    (`'%*d' % (N, x)`).
    """
    if isinstance(spec, bytes | bytearray):
        spec = bytes(spec).decode("latin-1")
    if not isinstance(spec, str) or "%" not in spec:
        return
    values = list(args) if isinstance(args, tuple) else [args]
    taken = 0
    for width, precision, kind in _CONVERSION.findall(spec):
        if kind == "%":
            continue
        for number in (width, precision):
            if number == "*":
                _check_number(values[taken] if taken < len(values) else None)
                taken += 1
            elif number:
                _check_number(number)
        taken += 1


def check_format_field(spec: str) -> None:
    """Refuse a str.format field whose spec has a width or precision past the bound.

    The spec is checked where the value is formatted, with its nested fields filled in
    (`'{:{}}'.format(x, N)`).
    """
    for number in _NUMBER.findall(spec):
        _check_number(number)


def check_count(count: Any, what: str) -> None:
    """Refuse a filter that builds `count` items (batch's filler, slice's lists) past the bound."""
    if isinstance(count, int) and count * _WORD > limit():
        raise _too_big(f"{what} of {count} items")


def _int_bits(a: Any, b: Any) -> bool:
    return isinstance(a, int) and isinstance(b, int)


def safe_mul(a: Any, b: Any) -> Any:
    for seq, n in ((a, b), (b, a)):
        if _size(seq) and isinstance(n, int) and _size(seq) * max(n, 0) > limit():
            raise _too_big("a repeated value")
    if _int_bits(a, b) and a.bit_length() + b.bit_length() > 8 * limit():
        raise _too_big("a product")
    return operator.mul(a, b)


def safe_add(a: Any, b: Any) -> Any:
    if _size(a) + _size(b) > limit():
        raise _too_big("a joined value")
    return operator.add(a, b)


def safe_mod(a: Any, b: Any) -> Any:
    check_printf(a, b)
    return operator.mod(a, b)


def safe_pow(a: Any, b: Any) -> Any:
    if isinstance(b, int | float) and abs(b) > 64:
        raise TemplateError("the chat template tried to compute an oversized power")
    # one C call that squares on: ((9**64)**64)**64... would reach gigabytes after a few steps
    if _int_bits(a, b) and a.bit_length() * abs(b) > 8 * limit():
        raise _too_big("a power")
    return operator.pow(a, b)


def concat(pieces: Iterable[Any]) -> str:
    """Jinja's join of a render's pieces, a block's or a macro's, refused once they pass the bound.

    It refuses before the join. A loop printing one large string N times holds N references to it,
    cheap, until one C call joins them into gigabytes (issue 57).
    """
    parts, total = [], 0
    for piece in pieces:
        total += len(piece)
        if total > limit():
            raise _too_big("the template's output")
        parts.append(piece)
    return "".join(parts)


def bounded_sum(items: Iterable[Any], start: Any = 0) -> Any:
    """`sum`, one checked `+` at a time.

    Builtin sum adds lists or strings in one C call the watchdog cannot stop: `|sum(start=[])` over
    a list of large lists ran for minutes.
    """
    total = start
    for item in items:
        total = safe_add(total, item)
    return total


def joined_size(items: list[Any], separator: Any) -> int:
    sep = len(str(separator)) if separator else 0
    return sum(len(str(x)) for x in items) + sep * max(0, len(items) - 1)


def _replaced_size(text: str | bytes | bytearray, old: Any, new: Any) -> int:
    try:
        found = text.count(old) if old else len(text) + 1
    except TypeError:  # the call itself refuses these arguments
        return 0
    return len(text) + found * len(str(new) if isinstance(text, str) else new)


def _longest_replacement(table: Any) -> int:
    """The longest string a str.translate table maps a character to."""
    if isinstance(table, str):
        return 1
    if isinstance(table, dict):
        values: Any = table.values()
    elif isinstance(table, list | tuple):
        values = table
    else:
        raise TemplateError("the chat template gave str.translate a table it cannot use")
    return max((len(v) if isinstance(v, str) else 1 for v in values), default=1)


def check_method(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Check a str or bytes method the template calls, and return the arguments to call it with.

    It refuses one whose result would be oversized. str.format is checked field by field as it
    formats (jinja/env.py). An iterable to join is read once, as a list.
    """
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if not isinstance(owner, str | bytes | bytearray):
        return args
    first = args[0] if args else None
    if name in ("center", "ljust", "rjust", "zfill"):
        check_width(first if first is not None else kwargs.get("width"), f"{name}")
    elif name == "expandtabs":
        size = kwargs.get("tabsize", first)
        if isinstance(size, int) and len(owner) * max(size, 1) > limit():
            raise _too_big("expandtabs")
    elif name == "join" and first is not None:
        items = list(first)
        if joined_size(items, owner) > limit():
            raise _too_big("join")
        args = (items, *args[1:])
    elif name == "replace" and len(args) >= 2:
        if _replaced_size(owner, args[0], args[1]) > limit():
            raise _too_big("replace")
    elif name == "translate" and isinstance(owner, str) and first is not None:
        if len(owner) * _longest_replacement(first) > limit():
            raise _too_big("translate")
    elif name == "hex" and 3 * len(owner) > limit():
        raise _too_big("hex")
    return args


def _rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * 4096
    except (OSError, ValueError, IndexError):
        import psutil

        return int(psutil.Process().memory_info().rss)


class _Stop(BaseException):
    """The watchdog's interruption, a BaseException so that no `except Exception` swallows it.

    Jinja's compiler folding constants, or a filter, may catch Exception on the way.
    """


class _Timeout(_Stop):
    """Raised inside a render that ran past LOCALRUN_TEMPLATE_TIMEOUT (then a TemplateError)."""


class _Growth(_Stop):
    """Raised inside a render whose process grew past the bound (then a TemplateError)."""


def _error(kind: type[BaseException]) -> TemplateError:
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


class _Watchdog:
    """A thread that raises _Timeout or _Growth, once, in the thread that started it.

    It uses PyThreadState_SetAsyncExc, delivered between bytecodes, so Jinja's loops stop even with
    empty bodies. Nothing is traced: a render costs what it did, plus starting the thread.
    """

    def __init__(self) -> None:
        import threading

        self.deadline = time.monotonic() + limits.template_timeout()
        self.allowed = _rss() + GROWTH_FACTOR * limit()
        self.target = threading.get_ident()
        self.lock = threading.Lock()
        self.done = False
        self.fired: list[type[_Stop]] = []
        self.thread = threading.Thread(target=self._watch, name="template-watch", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while True:
            time.sleep(_RSS_EVERY_S)
            error: type[_Stop] | None = None
            if time.monotonic() > self.deadline:
                error = _Timeout
            elif _rss() > self.allowed:
                error = _Growth
            with self.lock:
                if self.done:
                    return
                if error is not None:
                    self.fired.append(error)
                    _interrupt(self.target, error)
                    return

    def stop(self) -> None:
        """Stand the watchdog down.

        Its one interruption, sent and not yet delivered, is withdrawn. If it is delivered here (it
        arrives at any bytecode), it is caught and the stop done again; the caller reports it from
        `fired`.
        """
        for _ in range(3):
            try:
                with self.lock:
                    self.done = True
                    if self.fired:
                        _interrupt(self.target, None)
                return
            except _Stop:
                continue


def call(render: Callable[[], T]) -> T:
    """`render()` bounded in time and memory growth.

    A breach is a TemplateLimitError however the watchdog's interruption and the render's end
    interleave. It is never the watchdog's own exception (issue 57, a 500 under concurrent renders).
    """
    watchdog: _Watchdog | None = None
    try:
        try:
            watchdog = _Watchdog()
            result = render()
        finally:
            if watchdog is not None:
                watchdog.stop()
    except _Stop as exc:
        if watchdog is not None:
            watchdog.stop()
        raise _error(type(exc)) from None
    if watchdog is not None and watchdog.fired:  # the render ended as it fired: reported
        raise _error(watchdog.fired[0])
    return result
