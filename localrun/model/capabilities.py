"""What a stored model can do, as /api/show's `capabilities` tells clients: one decision.

Clients act on the list (llm-ollama embeds only with a model that says `embedding`, tool-using
agents refuse a model without `tools`), so it says what localrun will actually do with the
model, not what the model was trained for:

- `completion`: a generative model. Encoders made for embeddings (a GGUF that names its
  pooling, or a BERT-like architecture in manifests older than the pooling field) do not
  generate.
- `embedding`: a model made for embeddings (its GGUF names a pooling type other than rank, or
  an encoder architecture), as Ollama lists it: clients offer the models that say it as
  embedding models (Open WebUI's and llm-ollama's lists), and a chat model's averaged token
  states are poor vectors for retrieval. /api/embed still embeds a chat model when asked
  (engine.embed), as Ollama does.
- `rerank`: a reranker (its GGUF names rank pooling): /v1/rerank scores documents with it.
- `tools`: every generative model. A template that renders tools gets them; any other gets
  them in a system note (localrun.formats.calls), and a forced call is held to its schema by a
  grammar, so tool calls work with any chat model.
- `thinking`: the chat template renders or expects reasoning (localrun.formats.reasoning.supports).
- `insert`: the vocabulary has fill-in-the-middle tokens (recorded when the model was created or
  pulled; a manifest older than that field says nothing).
- `vision`, `audio`: the model has a projector (Modelfile PROJECTOR, or pulled with its mmproj)
  with an image or an audio encoder; Ollama lists `vision` the same way.

Pure: reads only the model's manifest fields and template.
"""

from __future__ import annotations

from localrun.formats import reasoning
from localrun.model.stored import Model

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
    details = model.details
    pooling = details.get("pooling_type")
    encoder = pooling is not None or details.get("architecture") in ENCODERS
    out = []
    if not encoder:
        out.append("completion")
    if encoder and pooling != POOLING_RANK:
        out.append("embedding")
    if pooling == POOLING_RANK:
        out.append("rerank")
    if not encoder:
        out.append("tools")
    if not encoder and reasoning.supports(template_of(model)):
        out.append("thinking")
    if not encoder and details.get("fim"):
        out.append("insert")
    if not encoder:
        out += [m for m in ("vision", "audio") if m in projector_modalities(model)]
    return out


def projector_modalities(model: Model) -> list[str]:
    """What the model's projector takes ("vision", "audio"), as recorded when it was stored;
    a projector layer without the record (a manifest made elsewhere) is taken for vision."""
    if model.projector_path is None:
        return []
    recorded = model.config.get("projector")
    details = recorded.get("details") if isinstance(recorded, dict) else None
    modalities = details.get("modalities") if isinstance(details, dict) else None
    if isinstance(modalities, list):
        return [m for m in modalities if m in ("vision", "audio")]
    return ["vision"]
