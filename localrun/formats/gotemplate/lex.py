"""Go text/template source -> tokens, as Go's text/template/parse lexer reads it.

It also gives the values of the literals it finds: strings, raw strings, numbers, character
constants. Outside actions everything is text. `{{- ` trims the white space before the action and
` -}}` the white space after it. The dash must touch the braces and have a space on its inner side:
`{{-3}}` is the number -3. `{{/* */}}` is a comment. Inside an action the lexer keeps the white
space as tokens of its own, since the parser needs it to tell `.A .B` from `.A.B`. Literals decode
as Go's strconv.Unquote and its untyped constants do. Every error is a TemplateError naming the
line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from localrun.errors import TemplateError

SPACE = " \t\r\n"
KEYWORDS = frozenset(
    ("block", "break", "continue", "define", "else", "end", "if", "range", "template", "with")
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # text {{ }} space ident field var string char number bool nil dot | ( ) := = , eof
    value: str
    line: int


def one_line(text: str, limit: int = 200) -> str:
    """A message part that may quote the template or its data: one line, not too long."""
    short = " ".join(text[: limit * 4].split())
    return short if len(short) <= limit and len(text) <= limit * 4 else short[: limit - 3] + "..."


def invalid(reason: str, line: int) -> TemplateError:
    return TemplateError(
        f"the Go template is not valid: {one_line(reason)} (line {line})",
        hint="fix the TEMPLATE in the Modelfile (Go text/template syntax)",
    )


# -- lexer ------------------------------------------------------------------------------------


def _alnum(c: str) -> bool:
    return c == "_" or c.isalpha() or c.isdecimal()


_NUMBER = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]*(?:\.[0-9a-fA-F_]*)?(?:[pP][+-]?[0-9_]*)?"
    r"|0[oO][0-7_]*|0[bB][01_]*"
    r"|[0-9_]*(?:\.[0-9_]*)?(?:[eE][+-]?[0-9_]*)?)i?"
)


class _Lexer:
    """One pass over the source; run() gives the tokens, ending with eof."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.pos = 0
        self.line = 1
        self.tokens: list[Token] = []

    def emit(self, kind: str, value: str, line: int | None = None) -> None:
        self.tokens.append(Token(kind, value, self.line if line is None else line))

    def advance(self, end: int) -> str:
        text = self.src[self.pos : end]
        self.line += text.count("\n")
        self.pos = end
        return text

    def at_right(self) -> tuple[bool, bool]:
        """(at the closing delimiter, with a trim marker)"""
        src, pos = self.src, self.pos
        if src.startswith("}}", pos):
            return True, False
        if pos + 1 < len(src) and src[pos] in SPACE and src.startswith("-}}", pos + 1):
            return True, True
        return False, False

    def close(self, trim: bool) -> None:
        """Past the closing delimiter (and the white space after it, with a trim marker)."""
        self.advance(self.pos + (4 if trim else 2))
        if trim:
            end = self.pos
            while end < len(self.src) and self.src[end] in SPACE:
                end += 1
            self.advance(end)

    def run(self) -> list[Token]:
        src = self.src
        while self.pos < len(src):
            start = src.find("{{", self.pos)
            if start < 0:
                self.emit("text", self.advance(len(src)))
                break
            trim = src.startswith("-", start + 2) and src[start + 3 : start + 4] in tuple(SPACE)
            line = self.line
            text = self.advance(start)
            if trim:
                text = text.rstrip(SPACE)
            if text:
                self.emit("text", text, line)
            self.advance(start + (4 if trim else 2))
            if src.startswith("/*", self.pos):
                end = src.find("*/", self.pos + 2)
                if end < 0:
                    raise invalid("unclosed comment", self.line)
                self.advance(end + 2)
                at, trim = self.at_right()
                if not at:
                    raise invalid("comment ends before closing delimiter", self.line)
                self.close(trim)
                continue
            self.emit("{{", "{{")
            self.action()
        self.emit("eof", "")
        return self.tokens

    def action(self) -> None:
        src, depth = self.src, 0
        while True:
            at, trim = self.at_right()
            if at:
                if depth:
                    raise invalid("unclosed left paren", self.line)
                self.emit("}}", "}}")
                self.close(trim)
                return
            if self.pos >= len(src):
                raise invalid("unclosed action", self.line)
            c, start = src[self.pos], self.pos
            if c in SPACE:
                end = start
                while end < len(src) and src[end] in SPACE:
                    end += 1
                if src.startswith("-}}", end):
                    end -= 1  # the last space belongs to the closing " -}}"
                if end > start:
                    self.emit("space", self.advance(end))
                else:
                    continue
            elif c in "|=,()":
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth < 0:
                        raise invalid("unexpected right paren", self.line)
                self.emit(c, self.advance(start + 1))
            elif c == ":":
                if not src.startswith(":=", start):
                    raise invalid("expected :=", self.line)
                self.emit(":=", self.advance(start + 2))
            elif c in "\"'":
                self.quoted(c)
            elif c == "`":
                end = src.find("`", start + 1)
                if end < 0:
                    raise invalid("unterminated raw quoted string", self.line)
                line = self.line
                self.emit("raw", self.advance(end + 1), line)
            elif c == "$":
                self.word("var", start + 1)
            elif c == "." and not src[start + 1 : start + 2].isdigit():
                self.word("field", start + 1)
            elif c in "+-." or c.isdigit():
                match = _NUMBER.match(src, start)
                end = match.end() if match else start + 1
                if end < len(src) and _alnum(src[end]):
                    raise invalid(f"bad number syntax: {src[start : end + 1]!r}", self.line)
                self.emit("number", self.advance(max(end, start + 1)))
            elif _alnum(c):
                self.word("ident", start)
            elif c.isascii() and c.isprintable():
                self.emit("punct", self.advance(start + 1))
            else:
                raise invalid(f"unrecognized character in action: {c!r}", self.line)

    def quoted(self, quote: str) -> None:
        src, end = self.src, self.pos + 1
        while True:
            c = src[end : end + 1]
            if c == "\\":
                end += 1
                c = src[end : end + 1]
                if c in ("", "\n"):
                    break
            elif c in ("", "\n"):
                break
            elif c == quote:
                kind = "string" if quote == '"' else "char"
                self.emit(kind, self.advance(end + 1))
                return
            end += 1
        what = "quoted string" if quote == '"' else "character constant"
        raise invalid(f"unterminated {what}", self.line)

    def word(self, kind: str, end: int) -> None:
        src = self.src
        while end < len(src) and _alnum(src[end]):
            end += 1
        text = src[self.pos : end]
        terminator = src[end : end + 1]
        ends = terminator in ("", ".", ",", "|", ":", ")", "(") or terminator in SPACE
        if not ends and not src.startswith("}}", end):
            raise invalid(f"bad character {terminator!r}", self.line)
        if kind == "field" and text == ".":
            kind = "dot"
        elif kind == "ident":
            if text in KEYWORDS:
                kind = text
            elif text in ("true", "false"):
                kind = "bool"
            elif text == "nil":
                kind = "nil"
        self.emit(kind, self.advance(end))


def lex(src: str) -> list[Token]:
    """The tokens of a template's source, ending with an eof token, or a TemplateError."""
    return _Lexer(src).run()


# -- literals ---------------------------------------------------------------------------------

_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92}


def unquote(text: str, line: int) -> str:
    """A Go string or raw string literal's value."""
    if text.startswith("`"):
        return text[1:-1].replace("\r", "")
    out, i, body = bytearray(), 0, text[1:-1]
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8", "surrogatepass")
            i += 1
            continue
        code, i = _escape(body, i + 1, '"', line)
        if code < 0:
            out.append(-code - 1)  # \x and octal escapes are bytes
        else:
            out += chr(code).encode("utf-8", "surrogatepass")
    return out.decode("utf-8", "replace")


def _escape(body: str, i: int, quote: str, line: int) -> tuple[int, int]:
    """The escape at body[i:] (after the backslash): (code point, or -1-byte; next index)."""
    c = body[i : i + 1]
    if c in _ESCAPES:
        return _ESCAPES[c], i + 1
    if c == quote:
        return ord(c), i + 1
    if c in ("x", "u", "U"):
        size = {"x": 2, "u": 4, "U": 8}[c]
        digits = body[i + 1 : i + 1 + size]
        if len(digits) == size and all(d in "0123456789abcdefABCDEF" for d in digits):
            value = int(digits, 16)
            if c == "x":
                return -1 - value, i + 1 + size
            if value <= 0x10FFFF and not 0xD800 <= value < 0xE000:
                return value, i + 1 + size
    elif c and c in "01234567":
        digits = body[i : i + 3]
        if len(digits) == 3 and all(d in "01234567" for d in digits) and int(digits, 8) < 256:
            return -1 - int(digits, 8), i + 3
    raise invalid(f"invalid escape \\{c} in a quoted string", line)


def number(text: str, kind: str, line: int) -> int | float:
    """A number or character constant: an int unless written as a float.

    This is how Go's idealConstant decides what an untyped constant is.
    """
    if kind == "char":
        body = text[1:-1]
        if body.startswith("\\"):
            code, end = _escape(body, 1, "'", line)
            code = -code - 1 if code < 0 else code
        else:
            code, end = (ord(body[0]), 1) if body else (0, 0)
        if not body or end != len(body):
            raise invalid(f"malformed character constant: {text}", line)
        return code
    clean = text.replace("_", "")
    sign, body = ("", clean) if clean[:1] not in ("+", "-") else (clean[0], clean[1:])
    lower = body.lower()
    try:
        if lower.endswith("i"):
            raise ValueError  # complex constants: no template needs them
        hex_ = lower.startswith("0x")
        if ("p" in lower) if hex_ else ("." in lower or "e" in lower):
            value: int | float = float.fromhex(clean) if hex_ else float(clean)
            if math.isinf(value):  # out of a float64's range: Go's ParseFloat refuses it
                raise ValueError
            return value
        # More than 64 significant digits fit no 64-bit int in any base; they never reach
        # int(), whose own digit limit would raise a ValueError of another kind.
        if len(re.sub(r"^0[xob]?0*", "", lower)) > 64:
            raise invalid(f"integer overflow: {text!r}", line)
        value = int(sign + body, 8) if re.fullmatch(r"0[0-7]+", body) else int(clean, 0)
    except (ValueError, OverflowError):
        raise invalid(f"illegal number syntax: {text!r}", line) from None
    if not -(2**63) <= value < 2**63:
        raise invalid(f"{text} overflows int", line)
    return value


_GO_ACTION = re.compile(
    r"\{\{-?\s*(?:\.|\$|/\*|(?:if|range|with|end|else|define|template|block)\b"
    # a function called Go's way, its first argument after a space (Jinja would write
    # `x|length` or `f(x)`): `{{ printf "%s" .X }}`, `{{ index .Messages 0 }}`, `{{ json .T }}`
    r"|(?:print|printf|println|index|slice|len|not|and|or|eq|ne|lt|le|gt|ge|html|js|urlquery"
    r"|call|json)[ \t]+[\"`.$(])"
)


def looks_like_go(source: str) -> bool:
    """Whether a TEMPLATE is Go (Ollama's) rather than Jinja (Hugging Face's).

    Jinja has `{% %}` blocks and bare names (`{{ messages }}`). Go has `{{ .Field }}`, `{{ $x }}`,
    `{{ if }}`/`{{ range }}`/`{{ end }}`, and functions called with a space before their first
    argument (`{{ printf "%s" .X }}`). Text with no action at all is Go, as Ollama reads it.
    """
    if "{%" in source or "{#" in source:
        return False
    return bool(_GO_ACTION.search(source)) or "{{" not in source
