"""What a stored model can do, as /api/show's `capabilities` tells clients: one decision.

Clients act on the list (llm-ollama embeds only with a model that says `embedding`, tool-using
agents refuse a model without `tools`), so it says what localrun will actually do with the
model, not what the model was trained for:

- `completion`: a generative model. Encoders made for embeddings (a GGUF that names its
  pooling, or a BERT-like architecture in manifests older than the pooling field) do not
  generate.
- `embedding`: any model but a reranker. The runner embeds a generative model too, averaging
  its token states (engine.batch.BatchEngine.embed).
- `tools`: the chat template renders tools.
- `thinking`: the chat template renders or expects reasoning (localrun.thinking.supports).
- `insert`: the vocabulary has fill-in-the-middle tokens (recorded when the model was created or
  pulled; a manifest older than that field says nothing).

Pure: reads only the model's manifest fields and template.
"""

from __future__ import annotations

from localrun import thinking
from localrun.model import Model

# llama.cpp's LLAMA_POOLING_TYPE_RANK: a reranker scores text pairs and makes no embeddings.
POOLING_RANK = 4

# Encoder-only architectures (llama.cpp's names): they embed but cannot generate.
ENCODERS = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "modern-bert",
     "neo-bert", "t5encoder"}
)  # fmt: skip


def template_of(model: Model) -> str | None:
    """The chat template in force: the model's TEMPLATE, else the GGUF's own."""
    if model.template is not None:
        return model.template
    found = model.config.get("gguf_chat_template")
    return found if isinstance(found, str) else None


def capabilities(model: Model) -> list[str]:
    """The capabilities of `model`, in Ollama's words and order."""
    from localrun.tools import template_supports_tools

    details = model.details
    pooling = details.get("pooling_type")
    encoder = pooling is not None or details.get("architecture") in ENCODERS
    out = []
    if not encoder:
        out.append("completion")
    if pooling != POOLING_RANK:
        out.append("embedding")
    if not encoder and template_supports_tools(template_of(model)):
        out.append("tools")
    if not encoder and thinking.supports(template_of(model)):
        out.append("thinking")
    if not encoder and details.get("fim"):
        out.append("insert")
    return out
