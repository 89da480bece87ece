"""What `create` checks before it stores anything.

Each file is the kind its instruction takes (FROM, ADAPTER, DRAFT, PROJECTOR). An adapter and a
projector belong to the base model, a draft model shares its vocabulary, and a TEMPLATE renders.
"""

from __future__ import annotations

from localrun.errors import InvalidGGUFError, ModelfileError
from localrun.gguf import scan

# The Modelfile instruction that names a file of each kind.
KEYWORDS = {"model": "FROM", "adapter": "ADAPTER", "draft": "DRAFT", "projector": "PROJECTOR"}


def adapters(found: list[tuple[str, scan.GGUFInfo]], architecture: str | None) -> None:
    """Every adapter (as written, its summary) made for the base model's architecture."""
    for value, info in found:
        if architecture and info.architecture and info.architecture != architecture:
            raise InvalidGGUFError(
                f"adapter {value} is for {info.architecture} models, but the base "
                f"model is {architecture}",
                hint="use an adapter trained for this base model",
            )


def projector(model: scan.GGUFInfo, value: str, found: scan.GGUFInfo, shown: str) -> None:
    """The projector hands the model embeddings of the model's width, or it is another's."""
    width, made = model.embedding_length, found.projection_dim
    if width is not None and made is not None and width != made:
        raise InvalidGGUFError(
            f"the projector {value} makes embeddings {made} wide, but {shown} takes "
            f"{width}: it belongs to another model",
            hint="use the mmproj file published with this model",
        )


def fits(info: scan.GGUFInfo, value: str, kind: str) -> None:
    """Refuse a GGUF of the wrong kind for its instruction (FROM, ADAPTER, DRAFT, PROJECTOR)."""
    if kind == "projector" and info.kind != "projector":
        raise InvalidGGUFError(
            f"{value} is not a projector (its general.architecture is not clip)",
            hint="PROJECTOR takes the model's mmproj GGUF, published beside its model file",
        )
    if kind != "projector" and info.kind == "projector":
        keyword = KEYWORDS[kind]
        raise InvalidGGUFError(
            f"{value} is a projector (mmproj), not what {keyword} takes",
            hint=f"put it on a PROJECTOR line: `PROJECTOR {value}`",
        )
    if kind == "model" and info.kind == "adapter":
        raise InvalidGGUFError(
            f"{value} is a LoRA adapter, not a model",
            hint="name a base model in FROM and the adapter in ADAPTER",
        )
    if kind == "adapter" and (info.kind != "adapter" or info.adapter_type not in (None, "lora")):
        raise InvalidGGUFError(
            f"{value} is not a LoRA adapter (its general.type is not 'adapter')",
            hint="ADAPTER takes a LoRA adapter in GGUF form, as llama.cpp's "
            "convert_lora_to_gguf.py writes it",
        )
    if kind == "draft" and info.kind == "adapter":
        raise InvalidGGUFError(
            f"the draft model {value} is a LoRA adapter, not a model",
            hint="DRAFT takes a smaller model with the same vocabulary (adapters go in ADAPTER)",
        )
    split = info.metadata.get("split.count")
    if kind == "draft" and isinstance(split, int) and split > 1:
        raise InvalidGGUFError(
            f"the draft model {value} is part 1 of {split} files; a draft model must be one "
            "GGUF file",
            hint="draft with a smaller model of the same family, in one file",
        )


# llama.cpp's own test of a draft model (common_speculative_are_compatible in
# common/speculative.cpp): the same tokenizer, BOS and EOS, at most 128 tokens more or fewer,
# and the same token texts from id 5 on over the range both have.
_VOCAB_SIZE_SLACK = 128
_VOCAB_CHECK_FROM = 5


def vocabulary(
    target: scan.GGUFInfo, draft: scan.GGUFInfo, target_name: str, draft_name: str
) -> None:
    """Refuse a draft model whose tokens do not mean what the model's tokens mean."""
    difference = _vocab_difference(target, draft, target_name)
    if difference:
        raise InvalidGGUFError(
            f"the draft model {draft_name} {difference}",
            hint="a draft model must share its model's tokenizer: use a smaller model of the "
            "same family and release",
        )


def _vocab_difference(target: scan.GGUFInfo, draft: scan.GGUFInfo, target_name: str) -> str:
    """What differs between the two vocabularies, in words; empty when they are compatible."""
    key = "tokenizer.ggml.model"
    ours, theirs = draft.metadata.get(key), target.metadata.get(key)
    n_draft, n_target = len(draft.tokens), len(target.tokens)
    first, common = _VOCAB_CHECK_FROM, min(n_draft, n_target)
    detail = ""
    if ours != theirs:
        detail = f"; its tokenizer is {ours!r}, not {theirs!r}"
    elif draft.tokens[first:common] != target.tokens[first:common]:
        i = next(i for i in range(first, common) if draft.tokens[i] != target.tokens[i])
        detail = f"; token {i} is {_token(draft.tokens[i])}, not {_token(target.tokens[i])}"
    if detail or abs(n_draft - n_target) > _VOCAB_SIZE_SLACK:
        return (
            f"has {n_draft} tokens and a different vocabulary than {target_name} "
            f"({n_target} tokens{detail})"
        )
    for what in ("bos", "eos"):
        ours, theirs = (
            info.metadata.get(f"tokenizer.ggml.{what}_token_id") for info in (draft, target)
        )
        if ours is not None and theirs is not None and ours != theirs:
            return f"has {what.upper()} token id {ours}, {target_name} has {theirs}"
        ours, theirs = (
            info.metadata.get(f"tokenizer.ggml.add_{what}_token") for info in (draft, target)
        )
        if isinstance(ours, bool) and isinstance(theirs, bool) and ours != theirs:
            does, other = ("adds", "does not") if ours else ("does not add", "does")
            return f"{does} a {what.upper()} token to a prompt and {target_name} {other}"
    return ""


def _token(raw: bytes) -> str:
    text = repr(raw.decode("utf-8", "replace"))
    return text if len(text) <= 40 else text[:37] + "..."


def template(template: str, line: int) -> None:
    """Refuse a TEMPLATE that cannot be rendered (it is rendered sandboxed at run time)."""
    from localrun.errors import TemplateError
    from localrun.formats import template as template_mod

    try:
        template_mod.check(template)
    except TemplateError as exc:
        raise ModelfileError(
            f"TEMPLATE: {exc.message}",
            line=line,
            hint="a TEMPLATE is a Jinja chat template (messages, add_generation_prompt, "
            "bos_token, eos_token, tools) or an Ollama Go template (.System, .Prompt, "
            ".Messages, .Tools ...)",
        ) from None
