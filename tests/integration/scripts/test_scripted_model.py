"""The scripted test model (scripts/scripted_model.py): a tiny GGUF with SmolLM2's real BPE
vocabulary whose greedy answer to any prompt is one given text.

Checked by llama.cpp itself (through llama-cpp-python), for prompts that hold the answer's own
text and special tokens, long ones too, where the answer's markers must come out as their own
tokens; and by localrun's real server with the official `openai` client, where a Hermes
`<tool_call>` answer comes back as a tool call. Its writer alone: tests/unit/scripts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import openai
import pytest
from testmodels.scripted import write_scripted_model

from localrun.engine.library.machine import machine_params
from localrun.scheduler import Scheduler
from localrun.store.local import Store

from support import PATIENCE_S, TEMPLATES
from support.server import LiveServer, add_model
from support.tools import WEATHER

QWEN = TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja"
GPT_OSS = TEMPLATES / "openai-gpt-oss-120b.jinja"
CAT = "the cat sat on the mat and the cat slept"
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
CALLS = CALL + "\n" + CALL.replace("Paris", "Rome")  # the same markers twice
UNICODE = "Ça va? 🐱 naïve café <|im_start|> [TOOL_CALLS] <｜tool▁sep｜>"
ADJACENT = "a<tool_call><tools></tool_call>b<|im_start|><tool_call>c"
HARMONY = (
    "<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>Hi"
)
# name: (the answer, its template, its end token)
SCRIPTS: dict[str, tuple[str, Path | None, str | None]] = {
    "cat": (CAT, None, None),
    "call": (CALL, QWEN, None),
    "calls": (CALLS, QWEN, None),
    "unicode": (UNICODE, QWEN, None),
    "adjacent": (ADJACENT, QWEN, None),
    "harmony": (HARMONY, GPT_OSS, "<|return|>"),
    "empty": ("", None, None),
}
_CONTROL = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
_MARKER = _CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED


def prompts(text: str) -> list[str]:
    """Prompts that a bigram model over the vocabulary's own tokens would get wrong, and long
    ones, where the answer's tokens sit hundreds of positions in."""
    return [
        "Hello",
        text,  # the answer itself: it must start again, not stop
        text[: len(text) // 2],
        text + text,
        "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n",
        f"<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n",
        "<tool_call></tool_call><tools> <|im_end|>",  # ends on the EOS
        "Ünïcödé 🐱 " * 20,
        " ".join(["the"] * 400) + text + " the",
        f"{text} <|im_start|> word " * 30 + "go",
    ]


class Scripted:
    """A scripted model loaded by llama.cpp, and its greedy answers token by token."""

    def __init__(self, path: Path, text: str) -> None:
        self.text = text
        self.llm = machine_params().llama(str(path), n_ctx=2048, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        # The answer's byte tokens are the last ids; nothing before them is one.
        self.first_byte = self.llm.n_vocab()
        while self.first_byte and self.attr(self.first_byte - 1) & llama_cpp.LLAMA_TOKEN_ATTR_BYTE:
            self.first_byte -= 1

    def attr(self, token: int) -> int:
        return int(llama_cpp.llama_vocab_get_attr(self.vocab, token))

    def tokenize(self, prompt: str) -> list[int]:
        return self.llm.tokenize(prompt.encode(), add_bos=False, special=True)

    def markers(self, tokens: list[int]) -> list[int]:
        """The special tokens (CONTROL or USER_DEFINED) among `tokens`."""
        return [t for t in tokens if self.attr(t) & _MARKER]

    def plain(self, text: str) -> str:
        """`text` as llama.cpp renders its tokens without special tokens: CONTROL ones left out."""
        for token in set(self.markers(self.tokenize(text))):
            if self.attr(token) & _CONTROL:
                text = text.replace(llama_cpp.llama_vocab_get_text(self.vocab, token).decode(), "")
        return text

    def answer(self, prompt: str) -> list[int]:
        """The greedy answer's tokens, up to an end-of-generation token (left out)."""
        tokens = self.tokenize(prompt)
        assert tokens and max(tokens) < self.first_byte, "a prompt hit a script token"
        out: list[int] = []
        for token in self.llm.generate(tokens, temp=0.0, reset=True):
            if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                assert token == self.llm.token_eos()
                return out
            out.append(token)
            assert len(out) <= len(self.text.encode()), "the answer runs past the script"
        raise AssertionError("generation stopped without an end token")

    def close(self) -> None:
        self.llm.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("scripted")
    return {
        name: write_scripted_model(
            out / f"{name}.gguf",
            text,
            template=template.read_text(encoding="utf-8") if template else None,
            end=end,
        )
        for name, (text, template, end) in SCRIPTS.items()
    }


# -- the writer --------------------------------------------------------------------------------


# -- llama.cpp ---------------------------------------------------------------------------------


@pytest.mark.model
@pytest.mark.parametrize("name", [name for name in SCRIPTS if SCRIPTS[name][0]])
def test_every_prompt_gets_exactly_the_script(models: dict[str, Path], name: str) -> None:
    text = SCRIPTS[name][0]
    model = Scripted(models[name], text)
    try:
        markers = model.markers(model.tokenize(text))
        plain = model.plain(text)
        for prompt in prompts(text):
            answer = model.answer(prompt)
            assert model.llm.detokenize(answer, special=True).decode() == text, prompt
            # The markers are their own tokens, as a tokenizer that parses them makes them.
            assert [t for t in answer if t < model.first_byte] == markers, prompt
            assert model.markers(answer) == markers
            # Without special tokens, CONTROL ones are left out, as of a real model's answer.
            assert model.llm.detokenize(answer, special=False).decode() == plain
        done = model.llm.create_completion("Say it.", max_tokens=300, temperature=0)
        assert done["choices"][0]["text"] == plain  # type: ignore[index]
        assert done["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
    finally:
        model.close()


@pytest.mark.model
def test_the_markers_come_out_as_a_real_models_do(models: dict[str, Path]) -> None:
    model = Scripted(models["harmony"], HARMONY)
    try:
        channel, end = model.tokenize("<|channel|>"), model.tokenize("<|end|>")
        answer = model.answer("<|start|>user<|message|>Hi<|end|><|start|>assistant")
        assert answer[:1] == channel and answer.count(end[0]) == 1 and len(end) == 1
        # llama.cpp renders gpt-oss's markers even without special tokens, as for the real one.
        assert model.plain(HARMONY) == HARMONY
    finally:
        model.close()
    model = Scripted(models["unicode"], UNICODE)
    try:
        assert model.plain(UNICODE) == UNICODE.replace("<|im_start|>", "")
    finally:
        model.close()


@pytest.mark.model
def test_a_prompt_ending_with_the_first_marker_gets_the_rest(models: dict[str, Path]) -> None:
    model = Scripted(models["call"], CALL)
    try:  # from the tokens it has seen, no model can tell it from an answer under way
        answer = model.answer("Call it: <tool_call>")
        assert model.llm.detokenize(answer, special=True).decode() == CALL[len("<tool_call>") :]
    finally:
        model.close()


@pytest.mark.model
def test_an_end_of_turn_in_the_script_ends_the_answer(tmp_path: Path) -> None:
    qwen = QWEN.read_text(encoding="utf-8")
    path = write_scripted_model(tmp_path / "eot.gguf", "Hi<|im_end|>there", template=qwen)
    model = Scripted(path, "Hi<|im_end|>there")
    try:
        assert model.llm.detokenize(model.answer("Hello"), special=True) == b"Hi"
    finally:
        model.close()


@pytest.mark.model
def test_the_vocabulary_is_smollm2s_with_the_templates_markers(models: dict[str, Path]) -> None:
    model = Scripted(models["call"], CALL)
    try:
        llm, vocab = model.llm, model.vocab
        assert llm.tokenize(b"the cat sat", add_bos=False) == [1195, 2644, 2643]  # SmolLM2's
        (start,) = model.tokenize("<|im_start|>")
        assert llama_cpp.llama_vocab_is_control(vocab, start)
        (call,) = model.tokenize("<tool_call>")
        assert call >= 49152 and not llama_cpp.llama_vocab_is_control(vocab, call)
        assert len(model.tokenize("<tool_")) > 1  # a marker's part is subwords
        assert llm.detokenize([llm.token_eos()], special=True) == b"<|im_end|>"
        n_bytes = len(CALL.encode()) - len("<tool_call></tool_call>")
        assert llm.n_vocab() == 49152 + 6 + n_bytes  # Qwen's 6 tags, then the script's bytes
        assert model.first_byte == 49152 + 6
    finally:
        model.close()


@pytest.mark.model
def test_an_empty_script_ends_at_once(models: dict[str, Path]) -> None:
    model = Scripted(models["empty"], "")
    try:
        assert model.answer("Hello there") == []
    finally:
        model.close()


# -- localrun's server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("scripted-server") / "models")
    add_model(store, "cat", models["cat"])
    add_model(store, "caller", models["call"])
    server = LiveServer(store, Scheduler(store, num_parallel=1, max_loaded=2, max_queue=8))
    yield server
    server.close()


@pytest.fixture
def client(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=PATIENCE_S
    )


@pytest.mark.server
@pytest.mark.model
def test_the_server_answers_with_the_script(client: openai.OpenAI) -> None:
    ask: Any = [{"role": "user", "content": f"Say {CAT!r} twice."}]
    reply = client.chat.completions.create(model="cat", messages=ask, temperature=0)
    assert reply.choices[0].message.content == CAT
    assert reply.choices[0].finish_reason == "stop"
    chunks = client.chat.completions.create(model="cat", messages=ask, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == CAT


@pytest.mark.server
@pytest.mark.model
def test_a_hermes_script_is_a_tool_call(client: openai.OpenAI) -> None:
    ask: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    reply = client.chat.completions.create(
        model="caller", messages=ask, tools=[WEATHER], temperature=0
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content  # no marker text left over
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
