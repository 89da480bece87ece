"""What a model is sent, without loading it: its chat template and the prompt a request renders.

The runner's own Prompter renders here too, with the vocabulary's BOS and EOS read from the
GGUF header instead of llama.cpp. So `POST /apply-template` and `localrun show NAME --prompt`
show the text a loaded model would be given. `go_template` is the template as Ollama's clients
read one (a Go template: /api/show), found by rendering (formats.ollama.equivalent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from localrun.engine.types import FimTokens
from localrun.errors import InvalidGGUFError
from localrun.formats import families
from localrun.formats import template as template_mod
from localrun.gguf import scan as scan_mod
from localrun.gguf.header import Header
from localrun.hardware import fit as fit_mod
from localrun.model.stored import Model
from localrun.request.genrequest import GenRequest
from localrun.worker.prompt import Prompter


class _HeaderTokens:
    """The part of a tokenizer rendering needs, from the GGUF header."""

    def __init__(self, header: Header) -> None:
        self.header = header
        self.n_vocab = 0

    @property
    def bos_text(self) -> str:
        return self.header.bos_text

    @property
    def eos_text(self) -> str:
        return self.header.eos_text

    @property
    def fim(self) -> FimTokens | None:
        return None

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        raise NotImplementedError("rendering only")

    def token_ids(self, text: str) -> list[int]:
        """Return a stand-in id for a marker the header found in the vocabulary.

        Rendering asks only whether it is there (the family a template without calls gets,
        formats/parsers).
        """
        return [-1] if text in self.header.chat_tokens else []

    def media_prompt(self, text: str, media: list[Any], *, add_special: bool) -> Any:
        raise NotImplementedError("rendering only")


def header_of(model: Model) -> Header:
    try:
        return scan_mod.scan(model.model_path)
    except InvalidGGUFError as exc:
        raise fit_mod.damaged(model, exc) from None


def template_choice(model: Model, header: Header | None = None) -> families.Choice:
    """The template `model` is prompted with, and why (as the runner chooses it)."""
    header = header or header_of(model)
    own = header.metadata.get("tokenizer.chat_template")
    return families.choose(
        model.template, own if isinstance(own, str) else None, header.chat_tokens
    )


def prompt_of(model: Model, request: GenRequest, *, add_generation_prompt: bool = True) -> str:
    """Return the prompt text a chat `request` renders to for `model`, llama-server's way.

    That is without the leading BOS the tokenizer adds.
    """
    header = header_of(model)
    choice = template_choice(model, header)
    prompter = Prompter(
        model, dict(model.parameters), choice.source, _HeaderTokens(header), frozenset()
    )
    text = prompter.chat_text(request, add_generation_prompt=add_generation_prompt)
    return _without_bos(header, text)


def _adds_bos(header: Header) -> bool:
    """Whether the tokenizer puts a BOS before a prompt."""
    # llama.cpp's default where the file does not say: BOS for SentencePiece vocabularies.
    default = header.metadata.get("tokenizer.ggml.model") == "llama"
    return header.metadata.get("tokenizer.ggml.add_bos_token", default) is True


def _without_bos(header: Header, text: str) -> str:
    """`text` without the leading BOS the tokenizer adds (where it adds one)."""
    if _adds_bos(header) and header.bos_text:
        return text.removeprefix(header.bos_text)
    return text


@dataclass(frozen=True)
class GoChoice:
    """The Go template that stands for a model's chat template where Ollama's clients read one.

    `origin` says where it came from: "own" (the model's template is one), "ollama:<name>" (one
    of Ollama's that renders its prompts), "markers" (one written for its turn markers that
    does), or "none" (`source` empty: no Go template renders them).
    """

    source: str
    origin: str


_GO_CHOICES: dict[tuple[Any, ...], GoChoice] = {}


def go_template(choice: families.Choice, header: Header) -> GoChoice:
    """Return the Go template for a model prompted with `choice`, with `header`'s vocabulary.

    `choice` is template_choice's. The model's own template is used if it is a Go one. Else it is
    one that renders the same prompts for conversations of text turns (formats.ollama.equivalent).
    Each answer is kept, at most 64.
    """
    if template_mod.is_go(choice.source):
        return GoChoice(choice.source or "", "own")
    key = (choice.source, header.bos_text, header.eos_text, _adds_bos(header))
    found = _GO_CHOICES.get(key)
    if found is None:
        from localrun.formats.ollama import equivalent

        def render(source: str | None, messages: list[dict[str, str]]) -> str:
            text = template_mod.render(
                source if source is not None else choice.source,
                list(messages),
                bos_token=header.bos_text,
                eos_token=header.eos_text,
            )
            return _without_bos(header, text)

        ends = [*template_mod.end_of_turn_markers(choice.source), header.eos_text]
        match = equivalent.find(render, ends)
        found = GoChoice(match.source, match.origin) if match else GoChoice("", "none")
        if len(_GO_CHOICES) >= 64:
            _GO_CHOICES.clear()
        _GO_CHOICES[key] = found
    return found
