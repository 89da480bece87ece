"""Real Hugging Face tokenizer files for tiny test checkpoints, trained in milliseconds with the
`tokenizers` library on a small corpus, in the shapes the families ship:

- "llama3": byte-level BPE with Llama 3's split regex and ignore_merges (tokenizer.ggml.pre
  llama-bpe), <|begin_of_text|> added by the post-processor;
- "qwen2": byte-level BPE with Qwen 2's regex (pre qwen2), no BOS;
- "spm": SentencePiece-style BPE with byte fallback, "▁" for spaces and a ▁ put before the text
  (Llama 2, Mistral, Phi-3), <s> added, Phi-3's <|end|> and friends as added tokens;
- "gemma": the same without the leading ▁ (Gemma 2/3), <bos> added;
- "sentencepiece": a tokenizer.model trained by SentencePiece itself (BPE, byte fallback), with
  no tokenizer.json, as older Llama 2 and Mistral folders have.

Each writes tokenizer.json and tokenizer_config.json (special tokens, add_bos_token, a chat
template) into a folder and returns what the checkpoint's config.json needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CORPUS = [
    "The lighthouse keeper climbed the stairs every evening to light the great lamp.",
    "Storms came in from the west, and the waves broke white against the rocks below.",
    "She wrote in her log: wind north-east, 35 knots; visibility poor; two ships passed.",
    "def get_weather(city: str) -> dict:\n    return {'city': city, 'temp': 21.5}\n",
    "Paris, Berlin, Tokyo and São Paulo reported rain; Zürich was sunny at 12:30.",
    "Numbers like 1234567 and 3.14159 and 2026-11-25 appear in logs and code.",
    "Why is the sky blue? Because air scatters short wavelengths more than long ones.",
    "The quick brown fox jumps over the lazy dog. Über naïve café résumé — 東京 🌧️",
] * 4

SAMPLES = [
    "Hello, world! The keeper lit the lamp at 19:45.",
    "def get_weather(city):\n    return city  # São Paulo, 東京",
    "  leading spaces, trailing spaces  ",
    "Zürich 1234567 🌧️ naïve",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@dataclass(frozen=True)
class Written:
    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int


def write_tokenizer(folder: Path, kind: str, vocab_size: int = 600) -> Written:
    """Train a tokenizer of `kind` and write its files into `folder`."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "sentencepiece":
        return _write_sentencepiece(folder, vocab_size)
    if kind in ("llama3", "qwen2"):
        bos: str | None = "<|begin_of_text|>" if kind == "llama3" else None
        eos = "<|end_of_text|>" if kind == "llama3" else "<|endoftext|>"
        specials = [t for t in (bos, eos, "<|eot_id|>" if kind == "llama3" else "<|im_end|>") if t]
        tok = Tokenizer(models.BPE(ignore_merges=kind == "llama3"))
        regex = LLAMA3_REGEX if kind == "llama3" else QWEN2_REGEX
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])  # fmt: skip
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )  # fmt: skip
        tok.train_from_iterator(CORPUS, trainer)
        tok.add_special_tokens(["<think>"])  # an added token the model says, not special
    elif kind in ("spm", "gemma"):
        bos, eos = ("<s>", "</s>") if kind == "spm" else ("<bos>", "<eos>")
        specials = ["<unk>", bos, eos] + [f"<0x{i:02X}>" for i in range(256)]
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        # Trained split on spaces (SentencePiece keeps pieces within words), saved without the
        # split, as Llama 2's tokenizer.json is.
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, show_progress=False
        )
        tok.train_from_iterator(CORPUS, trainer)
        tok.pre_tokenizer = None
        steps: list[Any] = [normalizers.Replace(" ", "\u2581")]
        if kind == "spm":
            steps.insert(0, normalizers.Prepend("\u2581"))
        tok.normalizer = normalizers.Sequence(steps)
        tok.decoder = decoders.Sequence([
            decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
            *([decoders.Strip(" ", 1, 0)] if kind == "spm" else []),
        ])  # fmt: skip
        # Phi-3's own added tokens (llama.cpp looks for <|endoftext|> in a model named phi3).
        tok.add_special_tokens(["<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>"])
    else:
        raise ValueError(kind)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B:1",
            special_tokens=[(bos, tok.token_to_id(bos))],
        )  # fmt: skip
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "add_bos_token": bos is not None,
        "add_eos_token": False,
        "bos_token": bos,
        "eos_token": eos,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 4096,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    eos_id = tok.token_to_id(eos)
    assert eos_id is not None
    return Written(tok.get_vocab_size(), tok.token_to_id(bos) if bos else None, eos_id)


def _write_sentencepiece(folder: Path, vocab_size: int) -> Written:
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
        # Llama 2's settings: no normalization, whitespace kept as it is, digits split.
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True,
    )  # fmt: skip
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    size = spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
              "eos_token": "</s>", "chat_template": CHAT_TEMPLATE,
              "tokenizer_class": "LlamaTokenizer"}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return Written(size, 1, 2)


def hf_ids(folder: Path, text: str) -> list[int]:
    """What Hugging Face's tokenizer makes of `text` (special tokens added as it adds them)."""
    if not (folder / "tokenizer.json").exists():
        import sentencepiece as spm

        processor = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        return [processor.bos_id(), *processor.encode(text)]
    from tokenizers import Tokenizer

    return list(Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text).ids)
