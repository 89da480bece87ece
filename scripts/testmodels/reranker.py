"""A tiny random-weight reranker that llama.cpp loads and runs with rank pooling.

:func:`write_tiny_reranker` writes a Qwen3-Reranker-shaped model: the ``qwen3`` architecture
(a causal decoder, so llama.cpp reads the last token of each query-document pair), rank pooling,
a two-label ``cls.output`` head (``yes``, ``no``) that llama.cpp turns into a softmax, and the
``rerank`` template that places the query and the document, as Qwen3-Reranker's GGUFs carry it.
``template=False`` leaves the template out: llama.cpp then joins the pair itself
(BOS, query, EOS, document, EOS).

``scripts/make_test_models.py OUT_DIR`` writes it beside its other fixtures.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType, PoolingType

from testmodels.files import write_all
from testmodels.vocab import CHATML_TEMPLATE, add_vocab, build_vocab

__all__ = ["RERANK_TEMPLATE", "write_tiny_reranker"]

#: Qwen3-Reranker's own template, as its GGUFs carry it in tokenizer.chat_template.rerank.
RERANK_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n<Instruct>: Given a web search query, retrieve relevant passages that "
    "answer the query\n<Query>: {query}\n<Document>: {document}<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)


def write_tiny_reranker(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ctx: int = 512,
    template: bool = True,
) -> Path:
    """Write the tiny reranker to `path` and return it; the same arguments give the same bytes."""
    path = Path(path)
    head_dim = n_embd // n_head
    n_ff = 2 * n_embd
    tokens, scores, types = build_vocab()
    writer = GGUFWriter(path, "qwen3")
    writer.add_name("tiny-reranker")
    writer.add_file_type(LlamaFileType.ALL_F32)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_pooling_type(PoolingType.RANK)
    writer.add_classifier_output_labels(["yes", "no"])
    add_vocab(writer, tokens, scores, types, CHATML_TEMPLATE)
    if template:
        # add_vocab wrote the default template; the named one sits beside it.
        writer.add_string("tokenizer.chat_template.rerank", RERANK_TEMPLATE)

    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> np.ndarray:
        scale = 1.0 if len(shape) == 1 else 1.0 / np.sqrt(shape[-1])
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    def norm(size: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(size)).astype(np.float32)

    writer.add_tensor("token_embd.weight", weights(len(tokens), n_embd))
    for i in range(n_layer):
        layer = {
            "attn_norm.weight": norm(n_embd),
            "attn_q.weight": weights(n_head * head_dim, n_embd),
            "attn_k.weight": weights(n_head_kv * head_dim, n_embd),
            "attn_v.weight": weights(n_head_kv * head_dim, n_embd),
            "attn_output.weight": weights(n_embd, n_head * head_dim),
            "attn_q_norm.weight": norm(head_dim),
            "attn_k_norm.weight": norm(head_dim),
            "ffn_norm.weight": norm(n_embd),
            "ffn_gate.weight": weights(n_ff, n_embd),
            "ffn_up.weight": weights(n_ff, n_embd),
            "ffn_down.weight": weights(n_embd, n_ff),
        }
        for name, array in layer.items():
            writer.add_tensor(f"blk.{i}.{name}", array)
    writer.add_tensor("output_norm.weight", norm(n_embd))
    # The head scores "yes" against "no"; scaled up so that the softmax is not flat.
    writer.add_tensor("cls.output.weight", 4.0 * weights(2, n_embd))
    write_all(writer)
    return path
