"""The tiny SentencePiece-style vocabulary every tiny text model shares, and its chat templates.

:func:`build_vocab` lays the tokens out; :func:`add_vocab` writes them, the special token ids and
a chat template into a GGUF being written.
"""

from __future__ import annotations

from gguf import GGUFWriter, TokenType

__all__ = [
    "BOS_ID",
    "CHATML_TEMPLATE",
    "EOS_ID",
    "FIM_ID_PIECES",
    "FIM_PIECES",
    "THINKING_TEMPLATE",
    "UNK_ID",
    "add_vocab",
    "build_vocab",
]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: A Qwen3-style reasoning template: the model opens <think> itself; `enable_thinking` false
#: closes an empty one in the generation prompt.
THINKING_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}{% endif %}"
)

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2

# Multi-character pieces first (they get the higher SentencePiece scores); every one of them can
# be built by merging two shorter pieces that are also in the vocabulary.
_MULTI_PIECES_TEXT = (
    "▁t ▁a ▁b ▁i ▁o ▁s ▁w ▁h ▁c th he in er an on re nd at en or es ed ll lo ld ng ▁th ▁the ▁is"
    " ▁of ▁to ▁and ▁in ▁it ▁on ▁he ▁hell ▁hello ▁wor ▁world ing"
)
_MULTI_PIECES = tuple(_MULTI_PIECES_TEXT.split())
_SINGLE_PIECES = ("▁", *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()")
_CONTROL_PIECES = ("<|im_start|>", "<|im_end|>")


#: Fill-in-the-middle control tokens (Qwen2.5-Coder's texts, which llama.cpp recognises).
FIM_PIECES = (
    "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|repo_name|>",
    "<|file_sep|>",
)  # fmt: skip


#: FIM tokens with texts llama.cpp does not know: found only by the GGUF's fim_*_token_id keys.
FIM_ID_PIECES = ("[INFILL_BEFORE]", "[INFILL_AFTER]", "[INFILL_HERE]")


def build_vocab(
    *, fim: bool | str = False, control: tuple[str, ...] | None = None
) -> tuple[list[str], list[float], list[int]]:
    """Return ``(tokens, scores, token_types)`` of the tiny SentencePiece-style vocabulary.

    Layout: ``<unk>``, ``<s>``, ``</s>``, the 256 byte tokens ``<0x00>``..``<0xFF>``, about 130
    normal pieces (``▁the``, ``a``, ...) and the ChatML control tokens ``<|im_start|>`` and
    ``<|im_end|>`` last; with ``fim``, the FIM_PIECES control tokens after them (with
    ``fim="ids"``, FIM_ID_PIECES instead). ``control`` replaces the ChatML tokens (another
    family's turn markers, or none: a base model's vocabulary).
    """
    tokens = ["<unk>", "<s>", "</s>"]
    types = [int(TokenType.UNKNOWN), int(TokenType.CONTROL), int(TokenType.CONTROL)]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [int(TokenType.BYTE)] * 256
    scores = [0.0] * len(tokens)
    for rank, piece in enumerate(_MULTI_PIECES + _SINGLE_PIECES):
        tokens.append(piece)
        scores.append(-float(rank))
        types.append(int(TokenType.NORMAL))
    extra = FIM_ID_PIECES if fim == "ids" else FIM_PIECES if fim else ()
    for piece in (_CONTROL_PIECES if control is None else control) + extra:
        tokens.append(piece)
        scores.append(0.0)
        types.append(int(TokenType.CONTROL))
    return tokens, scores, types


def add_vocab(
    writer: GGUFWriter, tokens: list[str], scores: list[float], types: list[int], template: str
) -> None:
    """The tiny SentencePiece-style vocabulary (build_vocab), its special tokens and template."""
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if template:
        writer.add_chat_template(template)
