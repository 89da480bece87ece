"""A prompt that does not fit the context, worded as each API's own server words it.

Agents match these words to compact a conversation and retry. Claude Code reads Anthropic's
`prompt is too long: N tokens > M maximum`, with the numbers. OpenCode and litellm (Aider) read
OpenAI's `This model's maximum context length is M tokens` and its `context_length_exceeded` code.
Codex reads that code in a streamed `response.failed` (server.responses.routes). litellm's Ollama
route reads `is longer than the model's context length`.

The hint names how a client of that API raises the context: a Modelfile's `PARAMETER num_ctx`, the
server-wide default (LOCALRUN_CONTEXT_LENGTH, as Ollama's OLLAMA_CONTEXT_LENGTH), `localrun launch`
for an agent, and in Ollama's API the request's own options.num_ctx. It never suggests more than the
model was trained on. The engine raises the error with the numbers (`error`); the server words it
per dialect. Pure.
"""

from __future__ import annotations

from typing import Literal

from localrun.errors import ContextOverflowError
from localrun.request import context

# "cli": the localrun command's own words (its --param flag and the chat's /set).
Dialect = Literal["ollama", "openai", "responses", "anthropic", "cli"]

# The answer's room a suggested context leaves after the prompt.
ROOM = 1024


def suggested(tokens: int, trained: int | None) -> int | None:
    """A context that holds `tokens` and an answer: a power of two, held to the trained context.

    None when even that cannot hold the prompt.
    """
    size = context.rounded(tokens + ROOM, trained)
    return size if size > tokens else None


def hint(exc: ContextOverflowError, dialect: Dialect) -> str | None:
    """How a client of `dialect` gets a context that holds the prompt, or why none does."""
    if exc.tokens is None:
        return exc.hint
    size = suggested(exc.tokens, exc.trained)
    if size is None:
        return (
            f"the model was trained on a context of {exc.trained} tokens, fewer than the "
            "prompt's: shorten the conversation, or use a model trained on a longer context"
        )
    ways = [
        f"PARAMETER num_ctx {size} in a Modelfile (`localrun create`)",
        f"LOCALRUN_CONTEXT_LENGTH={size} on the server for every model",
        "`localrun launch` for a coding agent",
    ]
    if dialect == "ollama":
        ways.insert(0, f'"options": {{"num_ctx": {size}}} in the request')
    elif dialect == "cli":
        ways[2:] = []
        ways.insert(0, f"--param num_ctx={size} (in a chat: /set parameter num_ctx {size})")
    trained = f" (the model was trained on {exc.trained})" if exc.trained else ""
    return f"raise the context to {size} tokens{trained}: " + ", or ".join(ways)


def message(exc: ContextOverflowError, dialect: Dialect) -> str:
    """The error's message in `dialect`'s own words, with the numbers where known."""
    tokens, limit = exc.tokens, exc.limit
    if tokens is None or limit is None:
        return exc.message
    if dialect == "anthropic":
        return f"prompt is too long: {tokens} tokens > {limit} maximum"
    if dialect == "openai":
        return (
            f"This model's maximum context length is {limit} tokens. However, your messages "
            f"resulted in {tokens} tokens. Please reduce the length of the messages."
        )
    if dialect == "responses":
        return (
            "Your input exceeds the context window of this model. Please adjust your input and "
            f"try again. (The input is {tokens} tokens; the context holds {limit}.)"
        )
    return (
        f"the prompt is {tokens} tokens, which is longer than the model's context length of "
        f"{limit} tokens currently available"
    )


def error(tokens: int, limit: int, trained: int | None) -> ContextOverflowError:
    """The error for a prompt of `tokens` tokens that a context of `limit` cannot hold.

    It is in Ollama's words, as `localrun run` and Ollama's clients show it.
    """
    exc = ContextOverflowError("", tokens=tokens, limit=limit, trained=trained)
    exc.message = message(exc, "ollama")
    exc.args = (exc.message,)
    exc.hint = hint(exc, "ollama")
    return exc
