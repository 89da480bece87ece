"""Reasoning models through the real server and the official clients of every dialect.

The runners use the worker's scripted engine (the fake backend) answering
"<think>plan</think>answer", so what is under test is the real template rendering and the
worker's split of the reasoning from the answer, shown in each dialect's shape. A second module
server runs the real llama.cpp on a tiny GGUF whose template takes Qwen3's `enable_thinking`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from localrun.formats.reasoning import Splitter, opens_thinking, supports, template_variables
from localrun.scheduler import Scheduler
from localrun.store.local import Store

from support import PATIENCE_S
from support.server import LiveServer, add_model

pytestmark = pytest.mark.server

REPLY = "<think>plan</think>answer"
HARMONY = (  # gpt-oss's template, cut down: earlier answers are in the final channel
    "{% for m in messages %}{% if m['role'] == 'assistant' %}"
    "<|start|>assistant<|channel|>final<|message|>{{ m['content'] }}<|end|>"
    "{% else %}<|start|>{{ m['role'] }}<|message|>{{ m['content'] }}<|end|>{% endif %}"
    "{% endfor %}{% if reasoning_effort is defined %}(effort {{ reasoning_effort }}){% endif %}"
    "<|start|>assistant"
)
HARMONY_REPLY = (
    "<|channel|>analysis<|message|>plan<|end|><|start|>assistant<|channel|>final<|message|>answer"
)
HI: Any = [{"role": "user", "content": "hi"}]


def split(pieces: list[str], inside: bool = False) -> tuple[str, str]:
    splitter = Splitter(inside=inside)
    parts = [splitter.feed(p) for p in pieces] + [splitter.finish()]
    return "".join(t for t, _ in parts), "".join(a for _, a in parts)


@pytest.mark.parametrize(
    ("pieces", "inside", "expected"),
    [
        (["<think>plan</think>answer"], False, ("plan", "answer")),
        (["<th", "ink>\npl", "an</th", "ink>\n\nans", "wer"], False, ("plan", "answer")),
        (["plan</think>answer"], True, ("plan", "answer")),
        (["a <b>c</b> <thi"], False, ("", "a <b>c</b> <thi")),  # no tag: text as it is
        (["<think>cut short"], False, ("cut short", "")),
        (["x<", "/think>y"], True, ("x", "y")),
    ],
)
def test_the_splitter(pieces: list[str], inside: bool, expected: tuple[str, str]) -> None:
    assert split(pieces, inside) == expected


def test_the_channel_splitter() -> None:
    from localrun.formats.parsers.families.harmony import HarmonyStream

    reply = HARMONY_REPLY
    for size in (len(reply), 3, 1):
        splitter = HarmonyStream()
        parts = [splitter.feed(reply[i : i + size]) for i in range(0, len(reply), size)]
        parts.append(splitter.finish())
        assert "".join(t for t, _ in parts) == "plan"
        assert "".join(a for _, a in parts) == "answer"
    plain = HarmonyStream()
    assert plain.feed("no channels at all") == ("", "no channels at all")


def test_which_templates_think() -> None:
    from testmodels.vocab import CHATML_TEMPLATE, THINKING_TEMPLATE

    assert supports(THINKING_TEMPLATE)
    assert not supports(CHATML_TEMPLATE) and not supports(None)
    assert template_variables(None, None, "m") == {}
    assert template_variables(False, None, "m") == {"enable_thinking": False}
    assert template_variables("high", "<think>", "m") == {
        "enable_thinking": True,
        "reasoning_effort": "high",
    }
    assert opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, tiny_thinking_model: Path, tiny_model: Path
) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("thinking") / "models")
    add_model(store, "thinker", tiny_thinking_model)
    add_model(store, "plain", tiny_model)
    scheduler = Scheduler(
        store, num_parallel=2, max_loaded=2, backend="fake", backend_options={"replies": [REPLY]}
    )
    server = LiveServer(store, scheduler)
    yield server
    server.close()


def test_ollama_think(live: LiveServer) -> None:
    oc = ollama.Client(host=live.url, timeout=PATIENCE_S)
    answer = oc.chat("thinker", HI, think=True)
    assert answer.message.thinking == "plan" and answer.message.content == "answer"
    parts = list(oc.chat("thinker", HI, think="high", stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == "plan"
    assert "".join(p.message.content or "" for p in parts) == "answer"
    # The reasoning streams first, as it is generated.
    first = next(i for i, p in enumerate(parts) if p.message.thinking)
    assert first < next(i for i, p in enumerate(parts) if p.message.content)
    generated = oc.generate("thinker", "hi", think=True)
    assert generated.thinking == "plan" and generated.response == "answer"
    hidden = oc.chat("thinker", HI, think=False)
    assert hidden.message.content == "answer" and not hidden.message.thinking
    default = oc.chat("thinker", HI)  # the model's default: it thinks, shown apart
    assert default.message.thinking == "plan" and default.message.content == "answer"
    with pytest.raises(ollama.ResponseError) as refused:
        oc.chat("plain", HI, think=True)
    assert refused.value.status_code == 400 and "does not support thinking" in refused.value.error
    plain = oc.chat("plain", HI, think=False)
    assert plain.message.content == REPLY  # not a reasoning model: its text as it is
    bad = httpx.post(f"{live.url}/api/chat", json={"model": "thinker", "messages": HI,
                                                    "think": "max"})  # fmt: skip
    assert bad.status_code == 400
    assert "thinking" in (oc.show("thinker").capabilities or [])
    assert "thinking" not in (oc.show("plain").capabilities or [])


def test_gpt_oss_channels(tmp_path: Path, tiny_model: Path) -> None:
    """gpt-oss speaks in channels (markers that are special tokens, spelled out for it)."""
    store = Store(tmp_path / "models")
    add_model(store, "channels", tiny_model, f'TEMPLATE """{HARMONY}"""')
    scheduler = Scheduler(
        store, num_parallel=1, max_loaded=1, backend="fake",
        backend_options={"replies": [HARMONY_REPLY]},
    )  # fmt: skip
    server = LiveServer(store, scheduler)
    try:
        oc = ollama.Client(host=server.url, timeout=PATIENCE_S)
        answer = oc.chat("channels", HI, think="high")
        assert answer.message.thinking == "plan" and answer.message.content == "answer"
        parts = list(oc.chat("channels", HI, stream=True))
        assert "".join(p.message.thinking or "" for p in parts) == "plan"
        assert "".join(p.message.content or "" for p in parts) == "answer"
        assert "thinking" in (oc.show("channels").capabilities or [])
    finally:
        server.close()


def test_openai_reasoning_content(live: LiveServer) -> None:
    ai = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0)
    reply = ai.chat.completions.create(model="thinker", messages=HI, reasoning_effort="low")
    message = reply.choices[0].message
    assert message.content == "answer"
    assert message.model_extra and message.model_extra["reasoning_content"] == "plan"
    chunks = list(ai.chat.completions.create(model="thinker", messages=HI, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == "plan"
    assert "".join(d.content or "" for d in deltas) == "answer"
    off = ai.chat.completions.create(
        model="thinker",
        messages=HI,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert off.choices[0].message.content == "answer"
    assert not (off.choices[0].message.model_extra or {}).get("reasoning_content")
    with pytest.raises(openai.BadRequestError, match="does not support thinking"):
        ai.chat.completions.create(model="plain", messages=HI, reasoning_effort="high")


def test_anthropic_thinking_blocks(live: LiveServer) -> None:
    ant = anthropic.Anthropic(base_url=live.url, api_key="x", max_retries=0)
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    message = ant.messages.create(model="thinker", messages=HI, max_tokens=100, thinking=thinking)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "plan"  # type: ignore[union-attr]
    assert message.content[1].text == "answer"  # type: ignore[union-attr]
    with ant.messages.stream(
        model="thinker", messages=HI, max_tokens=100, thinking=thinking
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "plan"  # type: ignore[union-attr]
    assert kinds.count("content_block_start") == 2
    with pytest.raises(anthropic.BadRequestError, match="does not support thinking"):
        ant.messages.create(model="plain", messages=HI, max_tokens=10, thinking=thinking)


def test_responses_reasoning_items(live: LiveServer) -> None:
    ai = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0)
    response = ai.responses.create(model="thinker", input="hi", reasoning={"effort": "low"})
    assert [item.type for item in response.output] == ["reasoning", "message"]
    reasoning = response.output[0]
    assert reasoning.content and reasoning.content[0].text == "plan"  # type: ignore[union-attr]
    assert response.output_text == "answer"
    with ai.responses.stream(model="thinker", input="hi", reasoning={"effort": "low"}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.reasoning_text.delta" in kinds
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == "answer"


def test_every_route_takes_every_reasoning_effort(live: LiveServer) -> None:
    """OpenAI's efforts (none to xhigh) and Anthropic's (to max), on each of the three routes
    that take one; "none" turns thinking off (Ollama's tools-routes test sends it)."""
    from localrun.formats.reasoning import EFFORTS

    ai = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0)
    ant = anthropic.Anthropic(base_url=live.url, api_key="x", max_retries=0)
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    for effort in EFFORTS:
        thinks = effort != "none"
        chat = (
            ai.chat.completions.create(
                model="thinker",
                messages=HI,
                reasoning_effort=effort,  # type: ignore[arg-type]
            )
            .choices[0]
            .message
        )
        assert chat.content == "answer", effort
        assert (chat.model_extra or {}).get("reasoning_content") == ("plan" if thinks else None)
        response = ai.responses.create(
            model="thinker",
            input="hi",
            reasoning={"effort": effort},  # type: ignore[typeddict-item]
        )
        kinds = [item.type for item in response.output]
        assert kinds == (["reasoning", "message"] if thinks else ["message"]), effort
        message = ant.messages.create(
            model="thinker", messages=HI, max_tokens=50, thinking=thinking,
            extra_body={"output_config": {"effort": effort}},
        )  # fmt: skip
        assert [b.type for b in message.content] == (["thinking", "text"] if thinks else ["text"])
    # A model that cannot think takes "none" too (it asks for no thinking).
    plain = ai.responses.create(model="plain", input="hi", reasoning={"effort": "none"})
    assert plain.output_text == REPLY
    for path, body in (
        ("/v1/chat/completions", {"messages": HI, "reasoning_effort": "extreme"}),
        ("/v1/responses", {"input": "hi", "reasoning": {"effort": "extreme"}}),
        ("/v1/messages", {"messages": HI, "max_tokens": 5, "thinking": thinking,
                          "output_config": {"effort": "extreme"}}),
    ):  # fmt: skip
        refused = httpx.post(
            f"{live.url}{path}", json={"model": "thinker", **body}, timeout=PATIENCE_S
        )
        assert refused.status_code == 400 and "effort" in refused.text, (path, refused.text)


def test_the_cli_shows_thinking_apart(live: LiveServer, cli: Any) -> None:
    """`localrun run` over the server: thinking between Thinking... and ...done thinking."""
    env = {"LOCALRUN_HOST": live.url}
    shown = cli("run", "thinker", "hi", "--think", env=env)
    assert shown.code == 0, shown.stderr
    assert shown.stdout == "Thinking...\nplan\n...done thinking.\n\nanswer\n"
    hidden = cli("run", "thinker", "hi", "--think=high", "--hidethinking", env=env)
    assert hidden.code == 0 and hidden.stdout == "answer\n"
    off = cli("run", "thinker", "hi", "--think=false", env=env)
    assert off.code == 0 and off.stdout == "answer\n"
    refused = cli("run", "plain", "hi", "--think", env=env)
    assert refused.code != 0 and "does not support thinking" in refused.stderr
    assert "Traceback" not in refused.stderr
    bad = cli("run", "thinker", "hi", "--think=lots", env=env)
    assert bad.code != 0 and "--think" in bad.stderr


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory, tiny_thinking_model: Path) -> Iterator[str]:
    store = Store(tmp_path_factory.mktemp("thinking-real") / "models")
    add_model(store, "thinker", tiny_thinking_model)
    server = LiveServer(store, Scheduler(store, num_parallel=1, max_loaded=1))
    yield server.url
    server.close()


@pytest.mark.model
def test_the_template_gets_enable_thinking(real: str) -> None:
    """With real llama.cpp: think false renders the closed <think></think> of Qwen3's template
    into the prompt, so the prompt is longer than with think true."""
    oc = ollama.Client(host=real, timeout=PATIENCE_S)
    options = {"temperature": 0, "num_predict": 1}
    on = oc.chat("thinker", HI, think=True, options=options)
    off = oc.chat("thinker", HI, think=False, options=options)
    assert on.prompt_eval_count and off.prompt_eval_count
    assert off.prompt_eval_count > on.prompt_eval_count


# A template that opens a thought whatever it is asked (MiniMax-M2's, Nemotron Nano v2's).
ALWAYS_THINKS = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}<|im_start|>assistant\n<think>\n"
)


def test_a_thought_never_closed_with_thinking_off_is_the_answer(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Asked not to think, a model whose template opened a thought may answer without ever
    closing it: that text is its answer (it came back empty: no content, no reasoning)."""
    store = Store(tmp_path / "models")
    add_model(store, "opens", tiny_model, f'TEMPLATE """{ALWAYS_THINKS}"""')
    scheduler = Scheduler(
        store, num_parallel=1, max_loaded=1, backend="fake",
        backend_options={"replies": ["Paris is sunny."]},
    )  # fmt: skip
    server = LiveServer(store, scheduler)
    try:
        oc = ollama.Client(host=server.url, timeout=PATIENCE_S)
        hidden = oc.chat("opens", HI, think=False)
        assert hidden.message.content == "Paris is sunny." and not hidden.message.thinking
        parts = list(oc.chat("opens", HI, think=False, stream=True))
        assert "".join(p.message.content or "" for p in parts) == "Paris is sunny."
        shown = oc.chat("opens", HI, think=True)  # thinking on: an unfinished thought
        assert shown.message.thinking == "Paris is sunny." and not shown.message.content
        ai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        reply = ai.chat.completions.create(model="opens", messages=HI, reasoning_effort="none")
        assert reply.choices[0].message.content == "Paris is sunny."
    finally:
        server.close()
