"""Embeddings from a model the batch engine serves, in a second context of the same weights.

The context is made on first use. The engine's loop thread runs its decodes between two steps of
generation (engine.calls says why).

A model made for embeddings names its pooling, and llama.cpp pools each text its way, whole texts
per decode. For a generative model the hidden states of a text's tokens are averaged. They are read
per token, so a text may span several decodes. Vectors are L2-normalized.

A reranker (rank pooling) scores a query against each document instead. The pair is one text, laid
out by the model's `rerank` template, or else as llama-server joins it (BOS, query, EOS/SEP,
document, EOS). Its "vector" is the classifier's raw outputs; the first is the score llama-server
reports.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Sequence
from typing import Any

from localrun.engine.library import native
from localrun.engine.library.native import lc
from localrun.engine.sequence import overflow_error, put
from localrun.engine.types import EmbedInput, LoadOptions, rank_mismatch
from localrun.engine.weights import Weights
from localrun.errors import BadRequestError, EngineError

# Texts embedded in one decode (sequences of the embedding context).
EMBED_SEQUENCES = 16

# Runs a llama_decode (given as a call) and returns its code.
Compute = Callable[[Callable[[], int]], int]


class Embedder:
    """The embedding context of `weights` (freed with them), and how a model embeds."""

    def __init__(self, weights: Weights, options: LoadOptions, compute: Compute) -> None:
        self._weights = weights
        self._options = options
        # Runs each llama_decode: the engine's loop thread does (engine.calls), between steps.
        self._compute = compute
        self._ctx: Any = None
        self._n_ctx = 0
        self._limit = 0
        self.pooled = False  # the model pools (known once the context is made)
        self.rank = False  # the model is a reranker (rank pooling)
        self._template: str | None = None  # its `rerank` template, if it has one

    def embed(
        self, texts: Sequence[EmbedInput], *, truncate: bool = True, query: str | None = None
    ) -> tuple[list[list[float]], int]:
        """Return L2-normalized embeddings of `texts` and the number of tokens read.

        `texts` are texts or token ids, which the caller checked against the vocabulary. One thread
        at a time calls this (the engine holds a lock); each decode runs through `compute`. A text
        longer than the context is cut to fit, or with truncate=False raises ContextOverflowError.
        With `query` (a reranker only), each text is a document, and its vector is the classifier's
        outputs for the pair. A pair is never cut: its end is what a causal reranker reads.
        """
        import numpy as np

        weights = self._weights
        ctx = self._context()
        if (query is not None) != self.rank:
            raise rank_mismatch(self.rank)
        n_ctx = self._limit
        inputs: list[list[int]] = []
        for text in texts:
            if query is not None:
                if not isinstance(text, str):
                    raise BadRequestError("documents to rerank must be texts")
                ids = self._pair(query, text)
                if len(ids) > n_ctx:
                    raise overflow_error(len(ids), n_ctx, weights.n_ctx_train)
            elif isinstance(text, str):
                ids = weights.tokenize(text, add_special=True, parse_special=False)
            else:
                ids = list(text)
            if len(ids) > n_ctx:
                if not truncate:
                    raise overflow_error(len(ids), n_ctx, weights.n_ctx_train)
                ids = ids[:n_ctx]
            if not ids:  # an empty text with no BOS: embed the end-of-text token
                ids = [int(lc.llama_vocab_eos(weights.vocab))]
            inputs.append(ids)
        if self.rank:
            n_embd = max(1, int(lc.llama_model_n_cls_out(weights.model)))
        else:
            n_embd = int(lc.llama_model_n_embd_out(weights.model))
        sums = np.zeros((len(inputs), n_embd), dtype=np.float64)
        if self.pooled:
            self._pooled_batches(ctx, inputs, sums)
        else:
            self._token_batches(ctx, inputs, sums)
        if self.rank:
            return sums.tolist(), sum(len(ids) for ids in inputs)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        vectors = sums / np.where(norms > 0, norms, 1.0)
        return vectors.tolist(), sum(len(ids) for ids in inputs)

    def _context(self) -> Any:
        if self._ctx:
            return self._ctx
        weights, options = self._weights, self._options
        # A model made for embeddings names its pooling (and may attend both ways, so a whole
        # text must be in one ubatch); for a generative model average the token states, read
        # per token so a text may span several decodes.
        self.pooled = weights.header.arch_value("pooling_type") is not None
        cparams = weights.context_params(options, options.num_ctx)
        cparams.embeddings = True
        cparams.kv_unified = True
        if self.pooled:
            cparams.pooling_type = lc.LLAMA_POOLING_TYPE_UNSPECIFIED
            cparams.n_batch = cparams.n_ubatch = options.num_ctx
        else:
            cparams.pooling_type = lc.LLAMA_POOLING_TYPE_NONE
        # llama.cpp asserts a context of at least one token per sequence (num_ctx 1 to 15
        # aborted the runner), and reserves outputs for a ubatch of at least a token per
        # sequence: with more sequences than a ubatch has tokens (num_batch 1 to 15) its first
        # decode failed GGML_ASSERT(n_outputs_max <= cparams.n_outputs_max). Fewer sequences.
        cparams.n_seq_max = max(1, min(EMBED_SEQUENCES, options.num_ctx, cparams.n_ubatch))
        ctx = weights.context(cparams)
        self._n_ctx = int(lc.llama_n_ctx(ctx))  # cells for all sequences (padded by llama.cpp)
        # The longest text: the num_ctx asked for, not the padded context.
        self._limit = min(self._n_ctx, options.num_ctx)
        if self.pooled:
            self.rank = lc.llama_pooling_type(ctx) == lc.LLAMA_POOLING_TYPE_RANK
            self._template = _rerank_template(weights.model) if self.rank else None
            # The batch holds whole texts, and an encoder knows no position past its training.
            self._limit = min(self._limit, int(lc.llama_n_batch(ctx)), weights.n_ctx_train)
        self._ctx = ctx
        return ctx

    def _pair(self, query: str, document: str) -> list[int]:
        """The tokens of one query-document pair, laid out as llama-server lays them out."""
        weights = self._weights
        template = self._template
        if template is not None:
            text = template.replace("{query}", query).replace("{document}", document)
            return weights.tokenize(text, add_special=False, parse_special=True)
        vocab = weights.vocab
        eos = int(lc.llama_vocab_eos(vocab))
        if eos == lc.LLAMA_TOKEN_NULL:
            eos = int(lc.llama_vocab_sep(vocab))
        add_eos = lc.llama_vocab_get_add_eos(vocab)
        ids = [int(lc.llama_vocab_bos(vocab))] if lc.llama_vocab_get_add_bos(vocab) else []
        ids += weights.tokenize(query, add_special=False, parse_special=False)
        ids += [eos] if add_eos else []
        ids += [int(lc.llama_vocab_sep(vocab))] if lc.llama_vocab_get_add_sep(vocab) else []
        ids += weights.tokenize(document, add_special=False, parse_special=False)
        ids += [eos] if add_eos else []
        return ids

    def _pooled_batches(self, ctx: Any, inputs: list[list[int]], out: Any) -> None:
        """Whole texts per decode, llama.cpp pooling each sequence the model's way."""
        import numpy as np

        n_embd = out.shape[1]
        with _EmbedBatch(ctx, self._compute) as batch:
            index = 0
            while index < len(inputs):
                group: list[int] = []
                while (
                    index < len(inputs)
                    and len(group) < batch.n_seq
                    and batch.n + len(inputs[index]) <= batch.size
                ):
                    batch.add(inputs[index], 0, len(inputs[index]), len(group))
                    group.append(index)
                    index += 1
                batch.decode()
                for seq, text_index in enumerate(group):
                    row = lc.llama_get_embeddings_seq(ctx, seq)
                    if not row:
                        raise EngineError("llama.cpp returned no embeddings for this model")
                    out[text_index] = np.ctypeslib.as_array(row, shape=(n_embd,))
                if batch.memory:
                    lc.llama_memory_clear(batch.memory, True)

    def _token_batches(self, ctx: Any, inputs: list[list[int]], out: Any) -> None:
        """Texts as separate sequences, decoded in chunks; sums the hidden state of each token."""
        import numpy as np

        n_embd = out.shape[1]
        with _EmbedBatch(ctx, self._compute) as batch:
            memory = batch.memory
            lc.llama_memory_clear(memory, True)
            waiting = collections.deque(range(len(inputs)))
            reading: list[list[int]] = []  # [text index, sequence, tokens read]
            free = list(range(batch.n_seq))
            held = 0  # KV cells taken by the texts being read
            while waiting or reading:
                while waiting and free and held + len(inputs[waiting[0]]) <= self._n_ctx:
                    text_index = waiting.popleft()
                    reading.append([text_index, free.pop(), 0])
                    held += len(inputs[text_index])
                spans: list[tuple[list[int], int, int]] = []
                for entry in reading:
                    text_index, seq, done = entry
                    ids = inputs[text_index]
                    take = min(len(ids) - done, batch.size - batch.n)
                    if take <= 0:
                        break
                    spans.append((entry, batch.n, take))
                    batch.add(ids, done, done + take, seq)
                n = batch.decode()
                states = np.ctypeslib.as_array(lc.llama_get_embeddings(ctx), shape=(n, n_embd))
                for entry, first, take in spans:
                    text_index, seq, done = entry
                    out[text_index] += states[first : first + take].sum(axis=0)
                    entry[2] = done + take
                    if entry[2] == len(inputs[text_index]):
                        out[text_index] /= len(inputs[text_index])
                        lc.llama_memory_seq_rm(memory, seq, -1, -1)
                        reading.remove(entry)
                        free.append(seq)
                        held -= len(inputs[text_index])


def _rerank_template(model: Any) -> str | None:
    """The model's `rerank` template (tokenizer.chat_template.rerank), or None."""
    found = lc.llama_model_chat_template(model, b"rerank")
    return found.decode("utf-8", errors="replace") if found else None


class _EmbedBatch:
    """A llama_batch for the embedding context: tokens of several sequences, each an output."""

    def __init__(self, ctx: Any, compute: Compute) -> None:
        self.ctx = ctx
        self.compute = compute
        self.size = int(lc.llama_n_batch(ctx))
        self.n_seq = int(lc.llama_n_seq_max(ctx))
        self.memory = native.memory(ctx)
        self.n = 0  # tokens added since the last decode
        self._batch = lc.llama_batch_init(self.size, 0, 1)

    def __enter__(self) -> _EmbedBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        lc.llama_batch_free(self._batch)

    def add(self, ids: Sequence[int], start: int, stop: int, seq: int) -> None:
        """Tokens ids[start:stop], at those positions of sequence `seq`."""
        self.n = put(self._batch, self.n, ids[start:stop], start, seq, True)

    def decode(self) -> int:
        """Decode what was added; returns how many tokens that was."""
        n, self.n = self.n, 0
        self._batch.n_tokens = n
        rc = self.compute(functools.partial(lc.llama_decode, self.ctx, self._batch))
        if rc != 0:
            if self.memory:
                lc.llama_memory_clear(self.memory, True)
            raise EngineError(f"llama.cpp failed to compute embeddings (code {rc})")
        return n
