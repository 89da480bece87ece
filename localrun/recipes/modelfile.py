"""Modelfile text <-> a Modelfile dataclass. No I/O.

Grammar (instructions are case-insensitive; one per line, a value may span lines in `\"\"\"`):

    modelfile   = *( blank / comment / instruction )
    comment     = *WSP "#" *CHAR NEWLINE
    instruction = *WSP keyword 1*WSP args *WSP NEWLINE
    keyword     = "FROM" / "PARAMETER" / "SYSTEM" / "TEMPLATE" / "ADAPTER" / "DRAFT" / "PROJECTOR"
                / "MESSAGE" / "LICENSE"
    args        = value                       ; FROM, SYSTEM, TEMPLATE, ADAPTER, DRAFT, PROJECTOR,
                                              ; LICENSE
                / word 1*WSP value            ; PARAMETER name value, MESSAGE role value
    value       = '\"\"\"' *ANY '\"\"\"'            ; verbatim, may span lines
                / DQUOTE *qchar DQUOTE        ; escapes: \\\\ \\" \\n \\t \\r
                / bare                        ; the rest of the line, trailing blanks dropped
"""

from __future__ import annotations

from dataclasses import dataclass, field

from localrun.errors import InvalidParameterError, ModelfileError
from localrun.recipes import params

ROLES = ("system", "user", "assistant")
# Each instruction with what it does and how often it may be written (docs/reference lists them
# from here).
INSTRUCTION_HELP = {
    "FROM": "Required, once: the base model, a model in the store (`smollm2:135m`, "
    "`me/base:v1`), a GGUF file or a Hugging Face safetensors checkpoint folder (converted to "
    "GGUF); a path is relative to the Modelfile's folder (`./model.gguf`, `~/models/x.gguf`, "
    "`/abs/x.gguf`, `./my-finetune`). The model inherits every layer of its FROM model.",
    "PARAMETER": "`PARAMETER name value`: a model parameter (the table below); values override "
    "inherited ones. `stop` may repeat, and its list replaces the inherited one.",
    "SYSTEM": "The system prompt; replaces the inherited one (the last SYSTEM counts).",
    "TEMPLATE": "The chat template, Jinja (as Hugging Face's models ship it) or Go's "
    "text/template (as Ollama's Modelfiles write it); without one, the GGUF's own "
    "`tokenizer.chat_template`, else its vocabulary's family's. Checked when the model is "
    "created, always rendered in a sandbox (no Python internals, bounded time and output): a "
    "template is untrusted input.",
    "ADAPTER": "A LoRA adapter for the same architecture: a GGUF (as llama.cpp's "
    "`convert_lora_to_gguf.py` writes it) or a PEFT adapter folder (`adapter_config.json`, "
    "`adapter_model.safetensors`), converted for the FROM model; may repeat.",
    "DRAFT": "At most once: a draft model for speculative decoding, a smaller model with the "
    "same vocabulary (`DRAFT smollm2:135m` for a larger SmolLM2), named like FROM: a model in "
    "the store (its weights only, shared rather than copied) or a GGUF file; refused when the "
    "vocabularies differ. `PARAMETER speculate draft` guesses with it alone, `speculate auto` "
    "uses it when set. Inherited unless set here.",
    "PROJECTOR": "At most once: the multimodal projector, the `mmproj` GGUF published beside a "
    "vision (or audio) model, which lets it take images (or audio); refused unless it is a "
    "projector that hands the model embeddings of its width. Inherited unless set here; `show "
    "--modelfile` writes it back. (Ollama's Modelfiles name it with a second FROM; here FROM "
    "stays one model and the error for a second one points to PROJECTOR.)",
    "MESSAGE": "`MESSAGE role text`: a conversation turn put before the user's (role: "
    + ", ".join(ROLES)
    + "); the model's MESSAGE turns replace the inherited ones.",
    "LICENSE": "License text; may repeat, and adds to the inherited ones.",
}
INSTRUCTIONS = tuple(INSTRUCTION_HELP)
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r"}


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass
class Modelfile:
    """A parsed Modelfile, its names and paths exactly as written.

    `from_` and `draft` are model names or paths; `projector` is a path.
    """

    from_: str
    parameters: list[tuple[str, params.Value]] = field(default_factory=list)
    system: str | None = None
    template: str | None = None
    adapters: list[str] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    draft: str | None = None
    projector: str | None = None
    # Where each instruction was written ("FROM", "TEMPLATE", "ADAPTER:0", ...), for errors found
    # after parsing (a missing file, a template that does not compile).
    lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __str__(self) -> str:
        lines = [f"FROM {format_value(self.from_)}"]
        lines += [f"ADAPTER {format_value(a)}" for a in self.adapters]
        if self.draft is not None:
            lines.append(f"DRAFT {format_value(self.draft)}")
        if self.projector is not None:
            lines.append(f"PROJECTOR {format_value(self.projector)}")
        for name, value in self.parameters:
            lines.append(f"PARAMETER {name} {format_value(format_param(value))}")
        if self.template is not None:
            lines.append(f"TEMPLATE {format_value(self.template)}")
        if self.system is not None:
            lines.append(f"SYSTEM {format_value(self.system)}")
        lines += [f"MESSAGE {m.role} {format_value(m.content)}" for m in self.messages]
        lines += [f"LICENSE {format_value(text)}" for text in self.licenses]
        return "\n".join(lines) + "\n"


def format_param(value: params.Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def format_value(value: str) -> str:
    """Write a value in the simplest form that parses back to exactly `value`."""
    plain = (
        value
        and value == value.strip()
        and value[0] not in '"#'
        and all(ch.isprintable() or ch == "\t" for ch in value)
    )
    if plain:
        return value
    if (
        '"""' not in value
        and not value.startswith('"')
        and not value.endswith('"')
        and ("\r" not in value)
    ):
        return f'"""{value}"""'
    out = ['"']
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


class _Cursor:
    """Position in the text with 1-based line/column bookkeeping."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.col = 1

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def advance(self, n: int = 1) -> str:
        chunk = self.text[self.pos : self.pos + n]
        for ch in chunk:
            if ch == "\n":
                self.line += 1
                self.col = 1
            else:
                self.col += 1
        self.pos += len(chunk)
        return chunk

    def skip_blanks(self) -> None:
        while self.peek() in (" ", "\t"):
            self.advance()

    def word(self) -> str:
        start = self.pos
        while not self.at_end() and self.peek() not in (" ", "\t", "\n"):
            self.advance()
        return self.text[start : self.pos]

    def error(
        self, message: str, *, line: int | None = None, col: int | None = None
    ) -> ModelfileError:
        return ModelfileError(message, line=line or self.line, column=col or self.col, hint=_HINT)


_HINT = "see the Modelfile reference: localrun help modelfile"


def parse(text: str) -> Modelfile:
    """Parse Modelfile text; raises ModelfileError with the line and column of the problem.

    Lines and columns are 1-based. `str(parse(text))` gives a canonical Modelfile that parses
    back to an equal object.
    """
    cur = _Cursor(text.replace("\r\n", "\n").removeprefix("\ufeff"))
    from_: str | None = None
    result = Modelfile(from_="")
    while _next_instruction(cur):
        line, col = cur.line, cur.col
        keyword = _keyword(cur)
        if keyword in ("PARAMETER", "MESSAGE"):
            _pair(cur, keyword, result)
            continue
        value = _value(cur, keyword)
        key = f"ADAPTER:{len(result.adapters)}" if keyword == "ADAPTER" else keyword
        result.lines[key] = line
        if keyword == "FROM":
            if from_ is not None:
                raise ModelfileError(
                    "FROM given twice; a Modelfile has exactly one",
                    line=line,
                    column=col,
                    hint="a projector (mmproj) GGUF goes on a PROJECTOR line: "
                    "`PROJECTOR ./mmproj.gguf`",
                )
            from_ = value
        else:
            _single(cur, keyword, value, result, line, col)
    if from_ is None:
        raise ModelfileError(
            "missing FROM: a Modelfile must say what it builds on",
            line=1,
            column=1,
            hint="start it with `FROM smollm2:135m` or `FROM ./model.gguf`",
        )
    result.from_ = from_
    return result


def _next_instruction(cur: _Cursor) -> bool:
    """Step over blank lines and comments; False at the end of the text."""
    while True:
        cur.skip_blanks()
        if cur.at_end():
            return False
        if cur.peek() == "\n":
            cur.advance()
        elif cur.peek() == "#":
            while not cur.at_end() and cur.peek() != "\n":
                cur.advance()
        else:
            return True


def _keyword(cur: _Cursor) -> str:
    """Read an instruction's keyword (upper-cased) and the blanks after it."""
    line, col = cur.line, cur.col
    keyword = cur.word()
    upper = keyword.upper()
    if upper not in INSTRUCTIONS:
        raise cur.error(
            f"unknown instruction '{_short(keyword)}'; expected one of {', '.join(INSTRUCTIONS)}",
            line=line,
            col=col,
        )
    if cur.peek() not in (" ", "\t"):
        raise cur.error(f"{upper} needs a value")
    cur.skip_blanks()
    return upper


def _pair(cur: _Cursor, keyword: str, result: Modelfile) -> None:
    """Read `PARAMETER name value` or `MESSAGE role value` (after the keyword) into `result`."""
    arg_line, arg_col = cur.line, cur.col
    arg = cur.word()
    if not arg:
        raise cur.error(f"{keyword} needs a {'name' if keyword == 'PARAMETER' else 'role'}")
    if cur.peek() not in (" ", "\t"):
        raise cur.error(f"{keyword} {arg} needs a value")
    cur.skip_blanks()
    val_line, val_col = cur.line, cur.col
    value = _value(cur, keyword)
    if keyword == "PARAMETER":
        try:
            spec = params.spec(arg)
        except InvalidParameterError as exc:
            raise cur.error(str(exc), line=arg_line, col=arg_col) from None
        try:
            result.parameters.append((spec.name, spec.parse(value)))
        except InvalidParameterError as exc:
            raise cur.error(str(exc), line=val_line, col=val_col) from None
        return
    role = arg.lower()
    if role not in ROLES:
        raise cur.error(
            f"unknown MESSAGE role '{_short(arg)}'; expected one of {', '.join(ROLES)}",
            line=arg_line,
            col=arg_col,
        )
    result.messages.append(Message(role, value))


# FROM is required, once; DRAFT and PROJECTOR may be written at most once each. SYSTEM and
# TEMPLATE may repeat (the last one counts); ADAPTER, LICENSE, MESSAGE and PARAMETER stop
# accumulate.
def _single(cur: _Cursor, keyword: str, value: str, result: Modelfile, line: int, col: int) -> None:
    """Record the value of DRAFT, PROJECTOR, SYSTEM, TEMPLATE, ADAPTER or LICENSE."""
    if keyword == "PROJECTOR":
        if result.projector is not None:
            raise cur.error(
                "PROJECTOR given twice; a model has at most one projector", line=line, col=col
            )
        result.projector = value
    elif keyword == "DRAFT":
        if result.draft is not None:
            raise cur.error(
                "DRAFT given twice; a Modelfile names at most one draft model", line=line, col=col
            )
        result.draft = value
    elif keyword == "SYSTEM":
        result.system = value
    elif keyword == "TEMPLATE":
        result.template = value
    elif keyword == "ADAPTER":
        result.adapters.append(value)
    else:
        result.licenses.append(value)


def _value(cur: _Cursor, keyword: str) -> str:
    """Read a value and the rest of its line."""
    start_line, start_col = cur.line, cur.col
    if cur.peek(3) == '"""':
        cur.advance(3)
        end = cur.text.find('"""', cur.pos)
        if end < 0:
            raise cur.error(
                'unterminated """: the multi-line value never ends',
                line=start_line,
                col=start_col,
            )
        value = cur.advance(end - cur.pos)
        cur.advance(3)
    elif cur.peek() == '"':
        cur.advance()
        chars: list[str] = []
        while True:
            ch = cur.peek()
            if ch in ("", "\n"):
                raise cur.error("unterminated quoted value", line=start_line, col=start_col)
            if ch == "\\":
                esc = cur.peek(2)[1:]
                if esc not in _ESCAPES:
                    raise cur.error(f"unknown escape '\\{_short(esc)}' in quoted value")
                chars.append(_ESCAPES[esc])
                cur.advance(2)
                continue
            cur.advance()
            if ch == '"':
                break
            chars.append(ch)
        value = "".join(chars)
    else:
        start = cur.pos
        while not cur.at_end() and cur.peek() != "\n":
            cur.advance()
        value = cur.text[start : cur.pos].rstrip(" \t")
        if not value:
            raise cur.error(f"{keyword} needs a value", line=start_line, col=start_col)
        return value
    cur.skip_blanks()
    if not cur.at_end() and cur.peek() != "\n":
        raise cur.error("unexpected text after the closing quote")
    return value


def _short(text: str) -> str:
    clean = text.encode("unicode_escape").decode("ascii")
    return clean if len(clean) <= 40 else clean[:37] + "..."
