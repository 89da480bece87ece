"""vLLM's example chat templates: localrun's prompt against Hugging Face transformers' rendering.

The corpus is vLLM 0.33.0's examples/**/*.jinja (35 chat templates, 11 pooling ones; Apache-2.0,
its LICENSE beside them) and MiniCPM 3's template as BFCL's handler quotes it, fetched by
`scripts/corpora/fetch.py` (README's test command runs it first); without it these tests skip,
saying so. Each template renders each of CONVERSATIONS
twice and the prompts must be equal:

    transformers  render_jinja_template (what apply_chat_template calls with the template, no
                  tokenizer needed) given what vLLM's server gives it: tool-call arguments as
                  objects (renderers/chat_utils/chat_message.py's _postprocess_messages) and
                  `content: null` as "" (no content parts, joined);
    localrun      formats.template.render given the messages as the openai client sends them
                  (arguments as JSON text, `content: null` beside tool calls), left to adapt.

Both sides see one frozen now (strftime_now, and localrun's date_string). A pair transformers
refuses is in REFUSED (it must still refuse); a pair whose prompts differ for a known cause is in
EXPECTED with the cause (it must still differ: a fixed one is taken off the list); every other
pair must be equal.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from corpora import fetch as fetch_corpora

from localrun.formats import template as template_mod
from localrun.formats.jinja import env as jinja_env

from support.family_cases import MINICPM3, template_at

NOW = datetime(2026, 3, 14, 9, 26, 53)
BOS, EOS = "<s>", "</s>"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_abc123",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ],
}
RESULT = {
    "role": "tool",
    "tool_call_id": "call_abc123",
    "name": "get_weather",
    "content": '{"temperature": 18, "unit": "celsius"}',
}
ASK = {"role": "user", "content": "What is the weather in Paris?"}

# name -> (messages as the openai client sends them, tools or None)
CONVERSATIONS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = {
    "system_user": (
        [{"role": "system", "content": "You are a helpful assistant."}, ASK],
        [WEATHER],
    ),
    "tool_call": ([ASK, CALL, RESULT], [WEATHER]),
    "tool_follow_up": (
        [ASK, CALL, RESULT, {"role": "user", "content": "And in Lyon?"}],
        [WEATHER],
    ),
    "no_tools": (
        [
            {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "Hi! How can I help?"},
            {"role": "user", "content": "Tell me a joke."},
        ],
        None,
    ),
}

TOOL_TURNS = "system_user tool_call tool_follow_up"  # the conversations offering tools
EVERY = " ".join(CONVERSATIONS)


def _pairs(templates: str, conversations: str, why: str) -> dict[tuple[str, str], str]:
    return {(t, c): why for t in templates.split() for c in conversations.split()}


# (template, conversation) -> what transformers raises (5.24: 33 of 184 pairs).
REFUSED: dict[tuple[str, str], str] = {
    **_pairs(
        "nemotron_embed_vl vlm2vec_phi3v vlm2vec_qwen2vl",
        EVERY,
        "an embedding model's: 'Embedding models should only embed one message at a time'",
    ),
    **_pairs(
        "bge-reranker-v2-gemma mxbai_rerank_v2 nemotron-rerank nemotron-vl-rerank",
        EVERY,
        "a reranker's, for query and document messages: 'No first item, sequence was empty'",
    ),
    **_pairs(
        "tool_chat_template_functiongemma",
        "no_tools",
        "`tools | length` on the None transformers passes (TypeError)",
    ),
    **_pairs(
        "tool_chat_template_gemma3_pythonic tool_chat_template_mistral "
        "tool_chat_template_mistral_parallel",
        "tool_follow_up",
        "a user turn after a tool result: 'conversation roles must alternate'",
    ),
    **_pairs(
        "tool_chat_template_granite_20b_fc",
        "system_user",
        "no system role: 'Unexpected combination of role and message content'",
    ),
}

# (template, conversation) -> why localrun's prompt differs from transformers' (48 of 151).
EXPECTED: dict[tuple[str, str], str] = {
    **_pairs(
        "dse_qwen2_vl qwen3_reranker qwen3_vl_reranker template_alpaca template_chatglm "
        "template_chatglm2 template_chatml template_falcon template_falcon_180b template_inkbot "
        "template_teleflm",
        TOOL_TURNS,
        "the template never shows `tools`: localrun lists them in a system note and writes the "
        "call and its result as <tool_call> and <tool_response> blocks (adapt.py); transformers "
        "passes them to be dropped, and shows an empty assistant turn",
    ),
    **_pairs(
        "tool_chat_template_functiongemma",
        "tool_call tool_follow_up",
        "the template lists the tools only inside a system message: without one, transformers "
        "shows the model no tools; localrun adds an empty system message so its tools are "
        "listed where the template lists them (adapt.Caps.tools_in_system)",
    ),
    **_pairs(
        "tool_chat_template_apertus tool_chat_template_gemma4",
        EVERY,
        "enable_thinking is true unless the request turns thinking off (llama-server's default): "
        "Apertus says 'Deliberation: enabled', Gemma 4 opens a system turn with <|think|> and "
        "writes no empty thought channel; transformers passes no enable_thinking",
    ),
    **_pairs(
        "tool_chat_template_glm4",
        "system_user",
        "the template drops a system message when tools are given: localrun folds it into the "
        "first user turn (adapt.py, llama.cpp's choice)",
    ),
    **_pairs(
        "tool_chat_template_glm4",
        "tool_call tool_follow_up",
        "the template writes no tool calls and has no tool role: localrun writes the call as a "
        "<tool_call> JSON block (not the <arg_key> form the template's instructions give) and "
        "the result as a user turn in <tool_response>; transformers shows empty turns",
    ),
    **_pairs(
        "tool_chat_template_phi4_mini",
        "tool_call tool_follow_up",
        "the template prints `arguments` as given: localrun passes the client's JSON text "
        '({"city": "Paris"}); transformers, given the object vLLM hands it, prints its Python '
        "repr ({'city': 'Paris'})",
    ),
}


def _templates() -> list[Path]:
    """vLLM's templates, and MiniCPM 3's (BFCL's handler quotes it: family_cases.template_at)."""
    folder = fetch_corpora.corpus_dir(fetch_corpora.VLLM)
    found = sorted((folder / "examples").rglob("*.jinja")) if folder else []
    bfcl = fetch_corpora.corpus_dir(fetch_corpora.BFCL)
    return found + ([bfcl.parent / MINICPM3.removeprefix("corpora/")] if bfcl and found else [])


TEMPLATES = _templates()
NOT_FETCHED = (
    "vLLM's templates are not fetched: run `python scripts/corpora/fetch.py` "
    f"(they go to {fetch_corpora.corpora_dir()})"
)
PAIRS = [pytest.param(t, c, id=f"{t.stem}-{c}") for t in TEMPLATES for c in CONVERSATIONS] or [
    pytest.param(None, None, id="not-fetched", marks=pytest.mark.skip(reason=NOT_FETCHED))
]


class _Frozen(datetime):
    @classmethod
    def now(cls, tz: Any = None) -> _Frozen:  # type: ignore[override]
        return cls.fromisoformat(NOW.isoformat())


@pytest.fixture
def frozen_now(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One now for both sides: transformers' strftime_now, localrun's and its date_string."""
    from transformers.utils import chat_template_utils

    monkeypatch.setattr(chat_template_utils, "datetime", _Frozen)
    monkeypatch.setattr(jinja_env, "datetime", _Frozen)
    monkeypatch.setattr(template_mod, "datetime", _Frozen)
    yield


def render_transformers(source: str, conversation: str) -> str:
    """The prompt transformers renders, given what vLLM's server gives it."""
    from transformers.utils.chat_template_utils import render_jinja_template

    messages, tools = copy.deepcopy(CONVERSATIONS[conversation])
    for message in messages:
        if message.get("content") is None:
            message["content"] = ""
        for call in message.get("tool_calls") or []:
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    rendered, _ = render_jinja_template(
        conversations=[messages],
        tools=tools,
        chat_template=source,
        add_generation_prompt=True,
        bos_token=BOS,
        eos_token=EOS,
    )
    return str(rendered[0])


def render_localrun(source: str, conversation: str) -> str:
    messages, tools = copy.deepcopy(CONVERSATIONS[conversation])
    return template_mod.render(
        source, messages, tools=tools, add_generation_prompt=True, bos_token=BOS, eos_token=EOS
    )


def test_the_corpus_was_fetched() -> None:
    if not TEMPLATES:
        pytest.skip(NOT_FETCHED)
    names = {t.stem for t in TEMPLATES}
    listed = {t for t, _ in EXPECTED} | {t for t, _ in REFUSED}
    assert listed <= names, (
        f"EXPECTED or REFUSED name templates not in the corpus: {listed - names}"
    )
    assert not set(EXPECTED) & set(REFUSED)


@pytest.mark.parametrize(("path", "conversation"), PAIRS)
def test_prompt_matches_transformers(path: Path, conversation: str, frozen_now: None) -> None:
    source = template_at(str(path))
    pair = (path.stem, conversation)
    if pair in REFUSED:
        with pytest.raises(Exception):  # noqa: B017 - whatever transformers raises
            render_transformers(source, conversation)
        pytest.skip(f"transformers refuses it: {REFUSED[pair]}")
    expected = render_transformers(source, conversation)
    try:
        prompt = render_localrun(source, conversation)
    except Exception as exc:  # a refusal is a difference like any other
        prompt = f"<localrun raised {type(exc).__name__}: {exc}>"
    if pair in EXPECTED:
        assert prompt != expected, f"equal now: take {pair} off EXPECTED ({EXPECTED[pair]})"
    else:
        assert prompt == expected
