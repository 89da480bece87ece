"""Go's fmt and strconv for templates: values as %v prints them, Sprint, Sprintf.

What Go prints is what the model reads, so this follows Go to the byte: floats in their
shortest form (1e+06, 0.0001), maps in key order, structs as {a b}, `<nil>`, and printf's
complaints (%!d(string=x), %!v(MISSING), %!(EXTRA ...)) instead of errors. Widths over a million
read as Go reads them (no width at all); any width, and any result, over the template bound
(sandbox.limit()) is refused.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any


class Fail(Exception):
    """An execution error (a TemplateError once the line is known)."""


# -- values -----------------------------------------------------------------------------------


_FIELDS: dict[type, tuple[str, ...]] = {}


def struct_fields(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def is_struct(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def go_type(value: Any) -> str:
    if value is None:
        return "<nil>"
    named = getattr(type(value), "go_type", None)
    if isinstance(named, str):
        return named
    for kind, name in ((bool, "bool"), (int, "int"), (float, "float64"), (str, "string")):
        if isinstance(value, kind):
            return name
    if isinstance(value, bytes):
        return "[]uint8"
    if isinstance(value, list | tuple):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return type(value).__name__


def sorted_keys(mapping: Mapping[Any, Any]) -> list[Any]:
    try:
        return sorted(mapping)
    except TypeError:
        return sorted(mapping, key=repr)


def format_value(value: Any, top: bool = True) -> str:
    """A value as Go's fmt prints it with %v."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value, "g", -1)
    if isinstance(value, str):
        return value
    if callable(getattr(type(value), "go_string", None)):
        return str(value.go_string())
    if isinstance(value, bytes):
        return "[" + " ".join(str(b) for b in value) + "]"
    if isinstance(value, list | tuple):
        return "[" + " ".join(format_value(v, False) for v in value) + "]"
    if isinstance(value, dict):
        pairs = (
            f"{format_value(k, False)}:{format_value(value[k], False)}" for k in sorted_keys(value)
        )
        return "map[" + " ".join(pairs) + "]"
    if is_struct(value):
        body = " ".join(format_value(getattr(value, f), False) for f in struct_fields(type(value)))
        return ("&" if top and getattr(value, "go_pointer", False) else "") + "{" + body + "}"
    return f"<{type(value).__name__}>"


def sprint(args: list[Any], limit: int, line: bool = False) -> str:
    """fmt.Sprint (spaces between operands when neither is a string) or fmt.Sprintln."""
    out: list[str] = []
    size = 0
    for i, arg in enumerate(args):
        if i and (line or not (isinstance(arg, str) or isinstance(args[i - 1], str))):
            out.append(" ")
        text = format_value(arg)
        size += len(text) + 1
        if size > limit:
            raise Fail(f"print built a value over {limit} characters")
        out.append(text)
    return "".join(out) + ("\n" if line else "")


def _digits(f: float) -> tuple[str, int]:
    """The shortest digits of abs(f) that read back as f, and the decimal point's position.

    So f = 0.DIGITS x 10^dp, as Go's strconv computes them.
    """
    if f == 0:
        return "0", 1
    _, digits, exponent = Decimal(repr(abs(f))).as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    stripped = text.lstrip("0")
    dp = len(text) + exponent - (len(text) - len(stripped))
    return stripped.rstrip("0") or "0", dp


def format_float(f: float, verb: str, prec: int) -> str:
    """strconv.FormatFloat(f, verb, prec, 64) for verb e, f or g (prec -1: shortest)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, f) < 0 else ""
    if prec >= 0:
        spec = {"e": "e", "f": "f", "g": "g"}[verb]
        text = f"{abs(f):.{prec}{spec}}"
        if verb == "g" and "e" in text:  # Go and C agree but for the exponent's two digits
            mant, power = text.split("e")
            text = f"{mant}e{power[0]}{int(power[1:]):02d}"
        return sign + text
    digits, dp = _digits(f)
    exp = dp - 1
    if verb == "e" or (verb == "g" and (exp < -4 or exp >= 6)):
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return sign + digits + "0" * (dp - len(digits))
    return f"{sign}{digits[:dp]}.{digits[dp:]}"


def go_quote(text: str, quote: str = '"') -> str:
    """strconv.Quote (or QuoteRune with quote="'")."""
    out = [quote]
    named = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
             "\v": "\\v"}  # fmt: skip
    for ch in text:
        code = ord(ch)
        if ch in (quote, "\\"):
            out.append("\\" + ch)
        elif ch.isprintable() and not 0xD800 <= code < 0xE000:
            out.append(ch)
        elif ch in named:
            out.append(named[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{0xFFFD if 0xD800 <= code < 0xE000 else code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out) + quote


# -- printf -----------------------------------------------------------------------------------


def _bad(verb: str, arg: Any, flags: str = "", width: int | None = None,
         prec: int | None = None) -> str:  # fmt: skip
    """Go's complaint for a verb that does not fit the value.

    It shows the value as %v, with the same flags and width.
    """
    if arg is None:
        return f"%!{verb}(<nil>)"
    shown = format_value(arg) if verb == "v" else _format_arg(arg, "v", flags, width, prec)
    return f"%!{verb}({go_type(arg)}={shown})"


def _pad(text: str, flags: str, width: int | None, number: bool = False) -> str:
    """Pad to `width` runes: spaces, or zeros with the 0 flag (after a number's sign)."""
    if width is None or len(text) >= width:
        return text
    if "-" in flags:
        return text + " " * (width - len(text))
    if "0" in flags:
        sign = text[0] if number and text[:1] in ("+", "-", " ") else ""
        return sign + "0" * (width - len(text)) + text[len(sign) :]
    return " " * (width - len(text)) + text


def _format_arg(
    arg: Any, verb: str, flags: str, width: int | None, prec: int | None, top: bool = True
) -> str:
    """One argument as printf's `verb` formats it (`top`: not inside a slice, map or struct)."""
    if verb == "v":  # %+v and %#v: field names and Go syntax, which templates do not need
        if "#" in flags and isinstance(arg, str):
            return _pad(go_quote(arg), flags.replace("#", ""), width)
        flags = flags.replace("+", "").replace("#", "")
    if verb == "T":
        return _pad(go_type(arg), flags, width)
    if arg is None:
        return (
            _pad("<nil>", flags, width)
            if verb == "v" or not top
            else _bad(verb, arg, flags, width, prec)
        )
    if isinstance(arg, bool):
        return (
            _pad(format_value(arg), flags, width)
            if verb in "tv"
            else _bad(verb, arg, flags, width, prec)
        )
    if isinstance(arg, int):
        return _format_int(arg, verb, flags, width, prec)
    if isinstance(arg, float):
        return _format_float64(arg, verb, flags, width, prec)
    if callable(getattr(type(arg), "go_string", None)) and verb in "vsqxX":
        arg = str(arg.go_string())
    if isinstance(arg, str | bytes):
        return _format_text(arg, verb, flags, width, prec)
    return _format_composite(arg, verb, flags, width, prec, top)


def _format_float64(f: float, verb: str, flags: str, width: int | None, prec: int | None) -> str:
    if verb not in "veEfFgG":
        return _bad(verb, f, flags, width, prec)
    if math.isnan(f) or math.isinf(f):
        text = format_float(f, "g", -1)
        text = text[1:] if text == "+Inf" and "+" not in flags else text
        return _pad(text, flags.replace("0", ""), width)
    lower = {"v": "g", "F": "f"}.get(verb, verb).lower()
    if prec is None:
        prec = -1 if lower == "g" else 6
    text = format_float(f, lower, prec)
    text = text.upper() if verb in "EG" else text
    if "+" in flags and not text.startswith("-"):
        text = "+" + text
    elif " " in flags and not text.startswith("-"):
        text = " " + text
    return _pad(text, flags, width, number=True)


def _format_text(
    arg: str | bytes, verb: str, flags: str, width: int | None, prec: int | None
) -> str:
    text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else arg
    if isinstance(arg, bytes) and verb in "vd":
        return _pad(format_value(arg), flags, width)
    if verb in "vs":
        return _pad(text[:prec] if prec is not None else text, flags, width)
    if verb == "q":
        return _pad(go_quote(text), flags, width)
    if verb in "xX":
        raw = text.encode("utf-8", "replace").hex()
        return _pad(raw.upper() if verb == "X" else raw, flags, width)
    return _bad(verb, arg, flags, width, prec)


def _format_composite(
    arg: Any, verb: str, flags: str, width: int | None, prec: int | None, top: bool
) -> str:
    """A slice, map or struct: the verb applies to each element, as Go's printValue does."""
    if isinstance(arg, list | tuple):
        return "[" + " ".join(_format_arg(x, verb, flags, width, prec, False) for x in arg) + "]"
    if isinstance(arg, dict):
        pairs = (
            _format_arg(k, verb, flags, width, prec, False)
            + ":"
            + _format_arg(arg[k], verb, flags, width, prec, False)
            for k in sorted_keys(arg)
        )
        return "map[" + " ".join(pairs) + "]"
    if is_struct(arg):
        parts = (
            _format_arg(getattr(arg, f), verb, flags, width, prec, False)
            for f in struct_fields(type(arg))
        )
        pointer = "&" if top and getattr(arg, "go_pointer", False) else ""
        return pointer + "{" + " ".join(parts) + "}"
    return _bad(verb, arg, flags, width, prec)


def _format_int(n: int, verb: str, flags: str, width: int | None, prec: int | None) -> str:
    if verb == "c":
        return _pad(chr(n) if 0 <= n <= 0x10FFFF else "\ufffd", flags, width)
    if verb == "q":
        return _pad(go_quote(chr(n) if 0 <= n <= 0x10FFFF else "\ufffd", "'"), flags, width)
    if verb == "U":
        return _pad(f"U+{n:04X}", flags, width)
    base = {"v": "d", "d": "d", "x": "x", "X": "X", "o": "o", "O": "o", "b": "b"}.get(verb)
    if base is None:
        return _bad(verb, n, flags, width, prec)
    digits = format(abs(n), base)
    if prec is not None:
        digits = digits.rjust(prec, "0") if prec or n else ""
    prefix = ""
    if "#" in flags or verb == "O":
        prefix = {"x": "0x", "X": "0X", "o": "0", "b": "0b"}.get(base, "")
        prefix = "0o" if verb == "O" else prefix
    sign = "-" if n < 0 else "+" if "+" in flags else " " if " " in flags else ""
    flags = flags if prec is None else flags.replace("0", "")
    return _pad(sign + prefix + digits, flags, width, number=True)


def _parsenum(form: str, i: int, end: int) -> tuple[int, bool, int]:
    """Go's parsenum: digits at form[i:end] (a number past 10^6 reads as none, to the end)."""
    num, found = 0, False
    while i < end and "0" <= form[i] <= "9":
        if num > 1_000_000:
            return 0, False, end
        num, found, i = num * 10 + ord(form[i]) - 48, True, i + 1
    return num, found, i


def sprintf(form: str, args: list[Any], limit: int) -> str:
    """fmt.Sprintf as Go runs it; widths and the result stay under `limit` characters.

    It takes flags, widths, precisions, * and [n] arguments, and writes Go's %! complaints.
    """
    return _Printf(form, args, limit).run()


class _Printf:
    """One Sprintf: Go's pp.doPrintf, a directive at a time, over the format and arguments."""

    def __init__(self, form: str, args: list[Any], limit: int) -> None:
        self.form, self.args, self.limit = form, args, limit
        self.out: list[str] = []
        self.size = 0
        self.i = 0  # the position in the format
        self.used = 0  # the next argument
        self.reordered = False  # an [n] was seen: no %!(EXTRA) complaint
        self.good = True  # the directive's [n] indexes are all good
        self.after_index = False  # the directive's last [n] chose an argument

    def run(self) -> str:
        form = self.form
        while self.i < len(form):
            pct = form.find("%", self.i)
            if pct < 0:
                self.emit(form[self.i :])
                break
            self.emit(form[self.i : pct])
            self.i = pct + 1
            if not self.directive():
                break
        args, used = self.args, self.used
        if not self.reordered and used < len(args):
            extra = ", ".join(
                "<nil>" if a is None else f"{go_type(a)}={format_value(a)}" for a in args[used:]
            )
            self.emit(f"%!(EXTRA {extra})")
        return "".join(self.out)

    def emit(self, text: str) -> None:
        self.size += len(text)
        if self.size > self.limit:
            raise Fail(f"printf built a value over {self.limit} characters")
        self.out.append(text)

    def directive(self) -> bool:
        """The directive after a %: flags, [n], width, precision, verb.

        False when the format ends before its verb.
        """
        form, start = self.form, self.i
        while self.i < len(form) and form[self.i] in "#0+- ":
            self.i += 1
        flags = form[start : self.i]
        self.good = True
        self.index()
        width, flags = self.width(flags)
        prec = self.precision()
        if not self.after_index:
            self.index()
        if self.i >= len(form):
            self.emit("%!(NOVERB)")
            return False
        verb = form[self.i]
        self.i += 1
        for bound in (width, prec):
            if bound is not None and bound > self.limit:
                raise Fail(f"printf asked for a field of width {bound} (the bound is {self.limit})")
        if verb == "%":
            self.emit("%")
        elif not self.good:
            self.emit(f"%!{verb}(BADINDEX)")
        elif self.used >= len(self.args):
            self.emit(f"%!{verb}(MISSING)")
        else:
            self.emit(_format_arg(self.args[self.used], verb, flags, width, prec))
            self.used += 1
        return True

    def index(self) -> None:
        """An [n] at the position: argument n is next; a bad one spoils the directive."""
        form, i = self.form, self.i
        if i >= len(form) or form[i] != "[":
            self.after_index = False
            return
        self.reordered = True
        close = form.find("]", i + 1)
        if close < 0:
            self.after_index, self.good, self.i = False, False, i + 1
            return
        num, ok, after = _parsenum(form, i + 1, close)
        self.i = close + 1
        if ok and after == close and 1 <= num <= len(self.args):
            self.used, self.after_index = num - 1, True
        else:
            self.after_index, self.good = ok and after == close, False

    def star(self) -> tuple[int, bool]:
        """A width or precision taken from the next argument: (value, present)."""
        self.i += 1
        self.after_index = False
        if self.used >= len(self.args):
            return 0, False
        value = self.args[self.used]
        self.used += 1
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= 1_000_000:
            return value, True
        return 0, False

    def width(self, flags: str) -> tuple[int | None, str]:
        """The width (None: none) and the flags, which a negative * width changes."""
        form = self.form
        if self.i < len(form) and form[self.i] == "*":
            value, present = self.star()
            if not present:
                self.emit("%!(BADWIDTH)")
                return None, flags
            if value < 0:
                return -value, flags.replace("0", "") + "-"
            return value, flags
        value, present, self.i = _parsenum(form, self.i, len(form))
        self.good = self.good and not (self.after_index and present)
        return (value if present else None), flags

    def precision(self) -> int | None:
        """The precision after a '.' (None: none)."""
        form = self.form
        if not (self.i + 1 < len(form) and form[self.i] == "."):
            return None
        self.i += 1
        self.good = self.good and not self.after_index
        self.index()
        if self.i < len(form) and form[self.i] == "*":
            value, present = self.star()
            if present and value >= 0:
                return value
            self.emit("%!(BADPREC)")
            return None
        prec, _, self.i = _parsenum(form, self.i, len(form))
        return prec
