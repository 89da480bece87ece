"""Where OpenAI's document says less than its own API answers, read as that API and its SDK
have it. Each reading allows what OpenAI's own API sends for a request the document offers
(a schema it lacks, a value it leaves out); none drops a required field. They are written down
here, with their reason, so that a reader can judge each:

- `/completions` with `stream`: the document gives no schema for the streamed chunks (its
  200 lists only application/json); its `stream` text says partial progress comes as
  data-only events, and the chunks OpenAI sends (and openai-python parses as `Completion`) are
  the answer's shape with `finish_reason: null` until a choice ends, as the chat chunk's
  schema writes it. The chunk schema is CreateCompletionResponse with that one change.
- `/completions` with `echo` and `logprobs`: the first token of the prompt follows nothing, so
  it has no log-probability: OpenAI, vLLM and lm-evaluation-harness's readers take `null` at
  `token_logprobs[0]` and `top_logprobs[0]`; the document's items are numbers and objects.
- `/embeddings` with `encoding_format: "base64"` (the one the document's request offers, and
  the one openai-python sends by default): each `embedding` is the vector's little-endian
  float32 bytes in base64, a string; the document's answer has only the list of floats.
"""

from __future__ import annotations

import copy
from typing import Any

COMPLETION_CHUNK = "x-localrun-CompletionStreamChunk"


def openai(data: dict[str, Any]) -> None:
    """Add the readings above to OpenAI's document (its parsed YAML, before Document)."""
    schemas = data["components"]["schemas"]
    choice = schemas["CreateCompletionResponse"]["properties"]["choices"]["items"]
    for branch in choice["properties"]["logprobs"]["anyOf"]:
        if branch.get("type") == "object":
            props = branch["properties"]
            props["token_logprobs"]["items"]["nullable"] = True
            props["top_logprobs"]["items"]["nullable"] = True
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]["nullable"] = True
    schemas[COMPLETION_CHUNK] = chunk
    embedding = schemas["Embedding"]["properties"]
    floats = embedding["embedding"]
    embedding["embedding"] = {"anyOf": [floats, {"type": "string", "contentEncoding": "base64"}]}
