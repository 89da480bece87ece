"""The Go template that renders the prompts a model's own (Jinja) template renders.

Ollama's clients read a model's template as a Go template (`ollama show --modelfile` fed back to
`ollama create`, Open WebUI's editor), where most GGUFs carry a Jinja one. Ollama itself replaces a
GGUF's Jinja with the nearest of its built-in templates: template.Named, by edit distance to the
Jinja texts of its index.json. localrun answers by what the templates do (find):

1. the first of Ollama's built-in templates (templates/*.gotmpl, MIT, in its index's order) that
   renders every probe conversation exactly as the model's template does;
2. else one written for the model's own markers (`markers`), if it renders every probe alike;
3. else none: no Go template localrun can vouch for.

The probes are conversations of text turns: system, user, assistant, as Ollama's template tests have
them. Tools and reasoning are beyond them: a Go template without `.Tools` gets tools in a system
note, where the model's own may list them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import cache
from importlib import resources

from localrun.errors import LocalrunError

# render(source, messages): the prompt the runner would give the model with template `source`,
# the model's own where `source` is None.
Render = Callable[[str | None, list[dict[str, str]]], str]

# Ollama's template/index.json names, in its order (duplicates dropped).
NAMES = (
    "chatml", "zephyr", "openchat", "mistral-instruct", "starcoder2-instruct", "llama2-chat",
    "codellama-70b-instruct", "alpaca", "chatqa", "gemma-instruct", "gemma3-instruct",
    "llama3-instruct", "granite-instruct", "magicoder", "alfred", "phi-3", "falcon-instruct",
    "solar-instruct", "command-r",
)  # fmt: skip

# Contents no template writes itself, so that a rendering can be cut at them.
SYSTEM, USER, ANSWER, AGAIN = "SYSTEM7f3a", "USER1c9e", "ANSWER5b2d", "USER4e8a"
_S, _U, _A, _U2 = (
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": USER},
    {"role": "assistant", "content": ANSWER},
    {"role": "user", "content": AGAIN},
)
# Ollama's TestTemplate conversations, and a system message with a single turn.
PROBES = (
    [{"role": "user", "content": "Hello, how are you?"}],
    [
        {"role": "user", "content": "Hello, how are you?"},
        {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
        {"role": "user", "content": "I'd like to show off how chat templating works!"},
    ],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello, how are you?"},
        {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
        {"role": "user", "content": "I'd like to show off how chat templating works!"},
    ],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello, how are you?"},
    ],
)


@dataclass(frozen=True)
class Found:
    """A Go template and how it was found: "ollama:<name>" or "markers"."""

    source: str
    origin: str


@cache
def named(name: str) -> str:
    """The text of Ollama's built-in template `name` (package data)."""
    folder = resources.files("localrun.formats.ollama").joinpath("templates")
    return folder.joinpath(f"{name}.gotmpl").read_text(encoding="utf-8")


def find(render: Render, end_markers: list[str]) -> Found | None:
    """The Go template that renders every probe as the model's own template does, or None.

    `render` with None renders with the model's own template. `end_markers` are the markers that may
    close a turn: the model's end-of-turn tokens. None where neither one of Ollama's templates nor
    one written for the markers does.
    """
    try:
        wanted = [render(None, probe) for probe in PROBES]
    except LocalrunError:  # the model's template refuses these turns: nothing to match
        return None
    for name in NAMES:
        if _renders(render, named(name), wanted):
            return Found(named(name), f"ollama:{name}")
    written = markers(render, end_markers)
    if written is not None and _renders(render, written, wanted):
        return Found(written, "markers")
    return None


def _renders(render: Render, source: str, wanted: list[str]) -> bool:
    try:
        return [render(source, probe) for probe in PROBES] == wanted
    except LocalrunError:
        return False


def markers(render: Render, end_markers: list[str]) -> str | None:
    """A Go template for the model's own turn markers, read off its renderings of sentinel turns.

    Each message is wrapped in its role's opening and a closing the roles share. A default system
    turn comes first where the template writes one for a conversation without a system message, and
    the answer's cue last. None where the renderings do not take that shape; the caller checks the
    result.
    """
    try:
        alone = _cut(render(None, [_U]), USER)
        after_system = _cut(render(None, [_S, _U]), SYSTEM, USER)
        turns = _cut(render(None, [_U, _A, _U2]), USER, ANSWER, AGAIN)
    except LocalrunError:
        return None
    if alone is None or after_system is None or turns is None:
        return None
    before, cue = alone
    opening_system, system_to_user, cue_after_system = after_system
    first, user_to_answer, answer_to_user, cue_after_turns = turns
    if not cue == cue_after_system == cue_after_turns or first != before:
        return None
    closing = _closing([system_to_user, user_to_answer, answer_to_user, cue], end_markers)
    opening_user = system_to_user[len(closing) :]
    if answer_to_user[len(closing) :] != opening_user or not before.endswith(opening_user):
        return None
    default_system = before[: len(before) - len(opening_user)]
    openings = {
        "system": opening_system,
        "user": opening_user,
        "assistant": user_to_answer[len(closing) :],
    }
    pieces = [default_system, closing, cue[len(closing) :], *openings.values()]
    if any("{{" in p or "}}" in p for p in pieces) or _dated(pieces):
        return None
    return _written(default_system, openings, closing, cue[len(closing) :])


def _cut(text: str, *sentinels: str) -> list[str] | None:
    """`text` cut at each sentinel (each must be there once, in order)."""
    parts = []
    for sentinel in sentinels:
        if text.count(sentinel) != 1:
            return None
        head, _, text = text.partition(sentinel)
        parts.append(head)
    return [*parts, text]


def _closing(between: list[str], end_markers: list[str]) -> str:
    """What every turn ends with, or "" where nothing does.

    It is the text all the spans between turns begin with, up to the last end-of-turn marker in it
    and the line breaks after it.
    """
    common = between[0]
    for text in between[1:]:
        while not text.startswith(common):
            common = common[:-1]
    best = 0
    for marker in end_markers:
        at = common.rfind(marker) if marker else -1
        if at >= 0:
            end = at + len(marker)
            while end < len(common) and common[end] in "\r\n":
                end += 1
            best = max(best, end)
    return common[:best]


def _dated(pieces: list[str]) -> bool:
    """Whether a piece holds today's date, however written: this year beside this month.

    The month may be its name or its number. A template that writes the date, as Llama 3.1's and
    Granite 3.3's do, cannot be written down as text.
    """
    today = date.today()
    months = (today.strftime("%B"), today.strftime("%b"), today.strftime("-%m-"))
    return any(str(today.year) in p and any(m in p for m in months) for p in pieces)


def _written(default: str, openings: dict[str, str], closing: str, cue: str) -> str:
    """The Go template of those pieces, in Ollama's .Messages style.

    It writes `{{ .Role }}` where the roles' openings differ by the role's name alone.
    """
    head = ""
    if default:
        head = f'{{{{ if and (eq $i 0) (ne .Role "system") }}}}{default}{{{{ end }}}}'
    shape = _by_role(openings)
    if shape is not None:
        body = f"{shape[0]}{{{{ .Role }}}}{shape[1]}{{{{ .Content }}}}{closing}"
    else:
        branches = "".join(
            f"{{{{ {'if' if i == 0 else 'else if'} eq .Role {json.dumps(role)} }}}}"
            f"{opening}{{{{ .Content }}}}{closing}"
            for i, (role, opening) in enumerate(openings.items())
        )
        body = branches + "{{ end }}"
    return f"{{{{- range $i, $_ := .Messages }}}}{head}{body}{{{{ end }}}}{cue}"


def _by_role(openings: dict[str, str]) -> tuple[str, str] | None:
    """(before, after) where every opening is before + role + after."""
    shapes = set()
    for role, opening in openings.items():
        if opening.count(role) != 1:
            return None
        before, _, after = opening.partition(role)
        shapes.add((before, after))
    return shapes.pop() if len(shapes) == 1 else None
