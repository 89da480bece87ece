"""What a model is sent: POST /apply-template (llama-server's route, its own tests ported from
tools/server/tests/unit/test_template.py) and `localrun show NAME --prompt`, for Jinja
templates of the corpus, a family's template chosen by the vocabulary, and none at all."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localrun.recipes import create, modelfile
from localrun.store import names
from localrun.store.local import Store

from support import DATA
from support.tools import CLIENT_TOOL

CORPUS = DATA / "templates"
TEMPLATES = (
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
    "Qwen-Qwen3-0.6B",
    "Qwen-QwQ-32B",
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
    "meta-llama-Llama-3.3-70B-Instruct",
    "fireworks-ai-llama-3-firefunction-v2",
)
TEST_TOOL = {
    "type": "function",
    "function": {
        "name": "test",
        "description": "",
        "parameters": {
            "type": "object",
            "properties": {"success": {"type": "boolean", "const": True}},
            "required": ["success"],
        },
    },
}


def _name(template: str) -> str:
    return template.lower().replace(".", "-")[:60]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Any]:
    from support.server import LiveServer

    home = tmp_path_factory.mktemp("apply-template")
    store = Store(home / "models")
    work = home / "work"
    work.mkdir()
    (work / "tiny.gguf").write_bytes(tiny_model.read_bytes())
    for template in TEMPLATES:
        text = (CORPUS / f"{template}.jinja").read_text()
        mf = modelfile.parse(f'FROM tiny.gguf\nTEMPLATE """{text}"""\n')
        create.create(store, names.parse(_name(template)), mf, work)
    create.create(store, names.parse("tiny"), modelfile.parse("FROM tiny.gguf\n"), work)
    server = LiveServer(store)
    try:
        yield server
    finally:
        server.close()


def _apply(live: Any, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{live.url}/apply-template", json=body, timeout=60)


@pytest.mark.server
@pytest.mark.parametrize("tools", [None, [], [TEST_TOOL]])
@pytest.mark.parametrize(
    ("template", "reasoning", "expected_end"),
    [
        ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "on", "<think>\n"),
        ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "auto", "<think>\n"),
        ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "off", "<think>\n</think>"),
        ("Qwen-Qwen3-0.6B", "auto", "<|im_start|>assistant\n"),
        ("Qwen-Qwen3-0.6B", "off", "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
        ("Qwen-QwQ-32B", "auto", "<|im_start|>assistant\n<think>\n"),
        ("Qwen-QwQ-32B", "off", "<|im_start|>assistant\n<think>\n</think>"),
        (
            "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
            "auto",
            "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
        ),
        (
            "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
            "off",
            "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_THINKING|><|END_THINKING|>",
        ),
    ],
)
def test_reasoning(
    live: Any, template: str, reasoning: str, expected_end: str, tools: list[Any] | None
) -> None:
    body: dict[str, Any] = {
        "model": _name(template),
        "messages": [{"role": "user", "content": "What is today?"}],
        "tools": tools,
    }
    if reasoning != "auto":
        body["chat_template_kwargs"] = {"enable_thinking": reasoning == "on"}
    answer = _apply(live, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["prompt"].endswith(expected_end)


@pytest.mark.server
@pytest.mark.parametrize("tools", [None, [], [TEST_TOOL]])
@pytest.mark.parametrize(
    ("template", "format"),
    [
        ("meta-llama-Llama-3.3-70B-Instruct", "%d %b %Y"),
        ("fireworks-ai-llama-3-firefunction-v2", "%b %d %Y"),
    ],
)
def test_date_inside_prompt(live: Any, template: str, format: str, tools: list[Any] | None) -> None:
    body = {
        "model": _name(template),
        "messages": [{"role": "user", "content": "What is today?"}],
        "tools": tools,
    }
    answer = _apply(live, body)
    assert answer.status_code == 200, answer.text
    assert datetime.date.today().strftime(format) in answer.json()["prompt"]


@pytest.mark.server
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_add_generation_prompt(live: Any, add_generation_prompt: bool) -> None:
    body = {
        "model": _name("meta-llama-Llama-3.3-70B-Instruct"),
        "messages": [{"role": "user", "content": "What is today?"}],
        "add_generation_prompt": add_generation_prompt,
    }
    prompt = _apply(live, body).json()["prompt"]
    expected = "<|start_header_id|>assistant<|end_header_id|>"
    assert (expected in prompt) is add_generation_prompt


@pytest.mark.server
def test_the_prompt_is_what_the_model_is_sent(live: Any) -> None:
    # The tiny model's own (ChatML) template; no BOS (its tokenizer adds one).
    body = {
        "model": "tiny",
        "messages": [
            {"role": "system", "content": "You are a test."},
            {"role": "user", "content": "Hi there"},
        ],
    }
    prompt = _apply(live, body).json()["prompt"]
    assert prompt == (
        "<|im_start|>system\nYou are a test.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # The runner's tokens for that chat are the tokens of that text (with the BOS).
    tokens = httpx.post(
        f"{live.url}/tokenize",
        json={"model": "tiny", "content": prompt, "add_special": True},
        timeout=120,
    ).json()["tokens"]
    chat = httpx.post(
        f"{live.url}/api/chat",
        json={**body, "stream": False, "options": {"num_predict": 1}},
        timeout=120,
    ).json()
    assert chat["prompt_eval_count"] == len(tokens)


@pytest.mark.server
def test_errors_have_llama_servers_shape(live: Any) -> None:
    missing = _apply(live, {"model": "no-such-model", "messages": []})
    assert missing.status_code == 404 and "error" in missing.json()
    bad = _apply(live, {"model": "tiny", "messages": "hi"})
    assert bad.status_code == 400 and bad.json()["error"]["message"]
    bad_call = _apply(
        live, {"model": "tiny", "messages": [{"role": "assistant", "tool_calls": [{"x": 1}]}]}
    )
    assert bad_call.status_code == 400 and "function name" in bad_call.json()["error"]["message"]


@pytest.mark.model
def test_a_gguf_without_a_template_gets_its_familys(
    cli: Any, tmp_path: Path, fixtures_dir: Path
) -> None:
    from testmodels.text import write_tiny_model

    gemma = write_tiny_model(
        fixtures_dir / "tiny-gemma-vocab.gguf",
        chat_template="",
        control=("<start_of_turn>", "<end_of_turn>"),
    )
    base = write_tiny_model(fixtures_dir / "tiny-base-vocab.gguf", chat_template="", control=())
    for name, path in (("g", gemma), ("b", base)):
        (tmp_path / f"{name}.Modelfile").write_text(f"FROM {path}\n")
        made = cli("create", name, "-f", str(tmp_path / f"{name}.Modelfile"))
        assert made.code == 0, made.stderr
    shown = cli("show", "g")
    assert "chosen: the GGUF has no chat template and its vocabulary has <start_of_turn>" in (
        shown.stdout
    )
    prompt = cli("show", "g", "--prompt", "Hi")
    assert prompt.stdout == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert "a base model" in cli("show", "b").stdout
    assert cli("show", "b", "--prompt", "Hi").stdout == "User: Hi\n\nAssistant:"
    # The base model still answers (warned once that it is one).
    ran = cli("run", "b", "Hi", "--param", "num_predict=4")
    assert ran.code == 0, ran.stderr
    assert ran.stderr.count("a base model") == 1


# -- tool definitions as the client sent them (issue 58) ----------------------------------------


@pytest.mark.server
def test_a_tool_definition_reaches_the_template_as_the_client_sent_it(live: Any) -> None:
    """Qwen's template prints each tool with tojson: the text is the client's own, key for key
    and in its order (transformers' apply_chat_template and llama-server show the same)."""
    body = {
        "model": _name("Qwen-Qwen3-0.6B"),
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [CLIENT_TOOL],
    }
    answer = _apply(live, body)
    assert answer.status_code == 200, answer.text
    assert json.dumps(CLIENT_TOOL, ensure_ascii=False) in answer.json()["prompt"]
