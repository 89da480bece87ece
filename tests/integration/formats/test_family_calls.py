"""Every family end to end: a scripted model saying its call through the real engine and server,
streamed and not, in the four dialects with their official clients; forced calls written in the
family's own syntax; a call streamed as soon as it is read, with its log probabilities; thoughts
and headers around calls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from testmodels.scripted import write_scripted_model

from localrun.scheduler import Scheduler
from localrun.store.local import Store

from support import PATIENCE_S
from support.dialects import ASK, DIALECTS
from support.family_cases import (
    CASES,
    PARIS,
    TOOLS,
    Case,
    template_path,
)
from support.server import SCRIPTED, LiveServer, add_model


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("families")
    store = Store(folder / "models")
    for case in CASES:
        gguf = write_scripted_model(
            folder / f"{case.id}.gguf",
            case.says,
            template=case.source(),
            special=case.special,
            end=case.end,
        )
        add_model(store, f"fam-{case.id}", gguf, SCRIPTED)
    server = LiveServer(store, Scheduler(store, num_parallel=1, max_loaded=1, max_queue=8))
    yield server
    server.close()


@pytest.mark.model
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_each_family_calls_through_every_dialect(live: LiveServer, case: Case) -> None:
    for dialect, ask in DIALECTS.items():
        for stream in (False, True):
            content, reasoning, calls = ask(live, f"fam-{case.id}", TOOLS, stream)
            where = f"{dialect} {'streamed' if stream else 'whole'}"
            assert calls == list(case.calls), where
            assert content.strip() == case.content, where
            assert reasoning.strip() == case.reasoning, where


FORCEABLE = [c for c in CASES if not c.reasoning and not c.content and len(c.calls) == 1]


@pytest.mark.model
@pytest.mark.parametrize("case", FORCEABLE, ids=lambda c: c.id)
@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_a_forced_call_is_written_in_the_familys_own_syntax(
    live: LiveServer, case: Case, choice: Any
) -> None:
    """tool_choice required or named constrains the answer to the family's call syntax: the
    scripted model, which writes exactly its family's call, is let through unchanged (a
    grammar of generic JSON would have turned it into something else)."""
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.create(
        model=f"fam-{case.id}", messages=ASK, tools=TOOLS, tool_choice=choice, temperature=0
    )  # type: ignore[call-overload]
    message = reply.choices[0].message
    calls = [
        {"name": c.function.name, "arguments": json.loads(c.function.arguments)}
        for c in message.tool_calls or []
    ]
    assert calls == [PARIS] and not message.content


LATE = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    + "While that runs, here is a long aside about the weather in Paris in spring. " * 3
).strip()


@pytest.fixture(scope="module")
def early_caller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A Qwen2.5 model that calls first and talks after: the call must reach the client
    before the talk ends, in every dialect."""
    folder = tmp_path_factory.mktemp("early")
    source = CASES[0].source()
    gguf = write_scripted_model(folder / "early.gguf", LATE, template=source)
    store = Store(folder / "models")
    add_model(store, "early", gguf, "")
    server = LiveServer(store, Scheduler(store, num_parallel=1, max_loaded=1, max_queue=8))
    yield server
    server.close()


@pytest.mark.model
def test_a_call_is_streamed_as_soon_as_it_is_read(early_caller: LiveServer) -> None:
    url = early_caller.url
    after = LATE.split("</tool_call>", 1)[1].strip()
    chat = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    order = []
    for chunk in chat.chat.completions.create(
        model="early",
        messages=ASK,
        tools=TOOLS,
        stream=True,
        temperature=0,  # type: ignore[arg-type]
    ):
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta and delta.tool_calls:
            order.append("call")
        elif delta and delta.content:
            order.append("text")
    # The call (its name, then its arguments), then the text after it: nothing held back.
    assert order[:2] == ["call", "call"] and order.count("text") > 5 and "call" not in order[2:]

    lines = list(
        ollama.Client(host=url, timeout=PATIENCE_S).chat(
            "early", messages=ASK, tools=TOOLS, stream=True, options={"temperature": 0}
        )
    )
    with_call = [i for i, line in enumerate(lines) if line.message.tool_calls]
    assert len(with_call) == 1 and with_call[0] < len(lines) - 5
    assert "".join(line.message.content or "" for line in lines).strip() == after

    claude = anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)
    tools: Any = [
        {"name": t["function"]["name"], "input_schema": t["function"]["parameters"]} for t in TOOLS
    ]
    with claude.messages.stream(
        model="early",
        messages=ASK,
        tools=tools,
        max_tokens=400,  # type: ignore[arg-type]
    ) as events:
        kinds = [e.content_block.type for e in events if e.type == "content_block_start"]
        final = events.get_final_message()
    assert kinds == ["tool_use", "text"]
    assert [b.type for b in final.content] == ["tool_use", "text"]

    with chat.responses.stream(
        model="early",
        input=ASK,
        tools=[{"type": "function", **t["function"]} for t in TOOLS],  # type: ignore[misc]
    ) as events:
        added = [e.item.type for e in events if e.type == "response.output_item.added"]
    assert added == ["function_call", "message"]


@pytest.mark.model
def test_ollama_format_with_tools_lets_the_family_call(live: LiveServer) -> None:
    """Ollama's `format` with tools: the answer is a call in the family's own syntax or JSON
    in the format; Qwen3-Coder's call (not JSON) comes through as a call."""
    client = ollama.Client(host=live.url, timeout=PATIENCE_S)
    reply = client.chat(
        "fam-qwen3-coder", messages=ASK, tools=TOOLS, format="json", options={"temperature": 0}
    )
    calls = [
        {"name": c.function.name, "arguments": dict(c.function.arguments)}
        for c in reply.message.tool_calls or []
    ]
    assert calls == [PARIS] and not reply.message.content


@pytest.mark.model
def test_the_tool_note_asks_for_the_familys_own_syntax(live: LiveServer) -> None:
    """Phi-4-mini's template shows no tools and no calls: the note that lists them asks for
    the `<|tool_call|>` its vocabulary tells (what its parser reads), in /apply-template as in
    the runner's prompt."""
    body = {"model": "fam-phi-4-mini", "messages": ASK, "tools": TOOLS}
    prompt = httpx.post(f"{live.url}/apply-template", json=body, timeout=60).json()["prompt"]
    assert '<|tool_call|>[{"name": "<tool name>", "arguments": <arguments' in prompt
    assert "<tool_call>" not in prompt


@pytest.mark.model
def test_log_probabilities_stay_with_their_tokens_around_a_call(early_caller: LiveServer) -> None:
    """The tokens of a call's block carry their entries with the call; each piece of text
    after it carries its own tokens' entries, which spell it."""
    chat = openai.OpenAI(base_url=f"{early_caller.url}/v1", api_key="x", max_retries=0)
    stream = chat.chat.completions.create(
        model="early",
        messages=ASK,
        tools=TOOLS,
        temperature=0,
        logprobs=True,
        stream=True,  # type: ignore[arg-type]
    )
    count = 0
    for chunk in stream:
        if not chunk.choices or chunk.choices[0].logprobs is None:
            continue
        entries = chunk.choices[0].logprobs.content or []
        count += len(entries)
        content = chunk.choices[0].delta.content
        if content:
            assert "".join(e.token for e in entries) == content
    assert count > 250  # every token's entry arrived


CALL_IN = {
    # Qwen3.5 calls before it closes the thought its prompt opened: the call is made.
    "qwen3.5": (
        "Qwen3.5-4B.jinja",
        "Let me check.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n"
        "</parameter>\n</function>\n</tool_call>",
        (),
        ("", "Let me check.", [PARIS]),
    ),
    # MiniMax-M1's own <think> (its template shows none) is text: the call in it is not made.
    "minimax-m1": (
        "MiniMax-M1.jinja",
        '<think>Maybe <tool_calls>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n'
        '</tool_calls> no.</think>\n<tool_calls>\n{"name": "get_weather", "arguments": '
        '{"city": "Paris"}}\n</tool_calls>',
        (),
        (
            '<think>Maybe <tool_calls>\n{"name": "get_weather", "arguments": {"city": "Rome"}}'
            "\n</tool_calls> no.</think>",
            "",
            [PARIS],
        ),
    ),
    # Muse Glimmer's recipient header is nobody's text.
    "muse-glimmer": (
        "corpora/vllm/examples/tool_chat_template_muse_glimmer.jinja",
        ' to=get_weather<|message|><atem:function_calls>\n<atem:invoke name="get_weather">\n'
        '<atem:parameter name="city">Paris</atem:parameter>\n</atem:invoke>\n'
        "</atem:function_calls>",
        ("<|message|>",),
        ("", "", [PARIS]),
    ),
    # An empty block (LFM2's `[]`) calls nothing and is nobody's text, as vLLM reads it (the
    # markers told by the vocabulary: this template writes no call).
    "lfm2-empty": (
        "LFM2-8B-A1B.jinja",
        "<|tool_call_start|>[]<|tool_call_end|>",
        ("<|tool_call_start|>", "<|tool_call_end|>"),
        ("", "", []),
    ),
    # ... with tools or without: a thought to `self`, the answer to `user` (its messages'
    # headers nobody's text), as llama.cpp's parser reads them.
    "muse-glimmer-chat": (
        "corpora/vllm/examples/tool_chat_template_muse_glimmer.jinja",
        " to=self<|message|>The user greets.<|eom|><|start|>assistant to=user<|message|>Hello.",
        ("<|message|>", "<|start|>", "<|eom|>"),
        ("Hello.", "The user greets.", []),
    ),
    "muse-glimmer-thought": (
        "corpora/vllm/examples/tool_chat_template_muse_glimmer.jinja",
        " to=self<|message|>Weather: a tool.<|eom|><|start|>assistant to=get_weather<|message|>"
        '<atem:function_calls>\n<atem:invoke name="get_weather">\n'
        '<atem:parameter name="city">Paris</atem:parameter>\n</atem:invoke>\n'
        "</atem:function_calls>",
        ("<|message|>", "<|start|>", "<|eom|>"),
        ("", "Weather: a tool.", [PARIS]),
    ),
}


@pytest.mark.model
@pytest.mark.parametrize("name", sorted(CALL_IN))
def test_thoughts_and_headers_around_calls_through_every_dialect(name: str, tmp_path: Any) -> None:
    file, says, special, (content, reasoning, calls) = CALL_IN[name]
    source = template_path(file)
    if not source.exists():
        pytest.skip("vLLM's templates are not fetched: run scripts/corpora/fetch.py")
    store = Store(tmp_path / "models")
    gguf = write_scripted_model(
        tmp_path / "m.gguf", says, template=source.read_text(encoding="utf-8"), special=special
    )
    add_model(store, name, gguf, "")
    live = LiveServer(store, Scheduler(store, num_parallel=1, max_loaded=1, max_queue=8))
    try:
        for dialect, ask in DIALECTS.items():
            for stream in (False, True):
                text, thought, made = ask(
                    live, name, [] if name.endswith("-chat") else TOOLS, stream
                )
                where = f"{dialect} {'streamed' if stream else 'whole'}"
                assert (text.strip(), thought.strip(), made) == (content, reasoning, calls), where
    finally:
        live.close()
