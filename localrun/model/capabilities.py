"""What a stored model can do, as /api/show's `capabilities` tells clients: one decision.

Clients act on the list: llm-ollama embeds only with a model that says `embedding`, and tool-using
agents refuse a model without `tools`. So it says what localrun will actually do with the model, not
what the model was trained for; `capabilities` says why each one is listed.

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
    # Encoders made for embeddings do not generate: a GGUF that names its pooling, or a BERT-like
    # architecture in manifests older than the pooling field.
    if not encoder:
        out.append("completion")
    # As Ollama lists it: clients offer the models that say it as embedding models (Open WebUI's
    # and llm-ollama's lists), and a chat model's averaged token states are poor vectors for
    # retrieval. /api/embed still embeds a chat model when asked (engine.embed), as Ollama does.
    if encoder and pooling != POOLING_RANK:
        out.append("embedding")
    if pooling == POOLING_RANK:  # /v1/rerank scores documents with it
        out.append("rerank")
    # Every generative model: a template that renders tools gets them, any other gets them in a
    # system note (formats.calls), and a forced call is held to its schema by a grammar.
    if not encoder:
        out.append("tools")
    if not encoder and reasoning.supports(template_of(model)):
        out.append("thinking")
    # Recorded when the model was created or pulled; a manifest older than that says nothing.
    if not encoder and details.get("fim"):
        out.append("insert")
    # A projector (Modelfile PROJECTOR, or pulled with its mmproj) with an image or an audio
    # encoder; Ollama lists `vision` the same way.
    if not encoder:
        out += [m for m in ("vision", "audio") if m in projector_modalities(model)]
    return out


def projector_modalities(model: Model) -> list[str]:
    """What the model's projector takes ("vision", "audio"), as recorded when it was stored.

    A projector layer without the record, from a manifest made elsewhere, is taken for vision.
    """
    if model.projector_path is None:
        return []
    recorded = model.config.get("projector")
    details = recorded.get("details") if isinstance(recorded, dict) else None
    modalities = details.get("modalities") if isinstance(details, dict) else None
    if isinstance(modalities, list):
        return [m for m in modalities if m in ("vision", "audio")]
    return ["vision"]
