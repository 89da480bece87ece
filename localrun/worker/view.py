"""What a model is sent, without loading it: its chat template and the prompt a request renders.

The runner's own Prompter renders here too, with the vocabulary's BOS and EOS read from the
GGUF header instead of llama.cpp, so `POST /apply-template` and `localrun show NAME --prompt`
show the text a loaded model would be given.
"""

from __future__ import annotations

from typing import Any

from localrun.engine.types import FimTokens
from localrun.errors import InvalidGGUFError
from localrun.formats import families
from localrun.gguf import scan as scan_mod
from localrun.gguf.header import Header
from localrun.hardware import fit as fit_mod
from localrun.model import Model
from localrun.request import GenRequest
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
        """A stand-in id for a marker the header found in the vocabulary: rendering asks only
        whether it is there (the family a template without calls gets, formats/parsers)."""
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
    """The prompt text `request` (a chat) renders to for `model`, llama-server's way: without
    the leading BOS the tokenizer adds."""
    header = header_of(model)
    choice = template_choice(model, header)
    prompter = Prompter(
        model, dict(model.parameters), choice.source, _HeaderTokens(header), frozenset()
    )
    text = prompter.chat_text(request, add_generation_prompt=add_generation_prompt)
    # llama.cpp's default where the file does not say: BOS for SentencePiece vocabularies.
    default = header.metadata.get("tokenizer.ggml.model") == "llama"
    adds_bos = header.metadata.get("tokenizer.ggml.add_bos_token", default) is True
    if adds_bos and header.bos_text:
        text = text.removeprefix(header.bos_text)
    return text
