"""The Go template that renders a Jinja template's prompts (formats.ollama.equivalent): one of
Ollama's built-in templates, shipped as package data, or one written for the template's turn
markers, each held to the Jinja's own prompts beyond the probes it was found with. Pure."""

from __future__ import annotations

from datetime import date
from importlib import resources

import pytest

from localrun.formats import template
from localrun.formats.families import TRANSCRIPT
from localrun.formats.ollama import equivalent

from support import OLLAMA_TEMPLATES, TEMPLATES

# SmolLM2's chat template (HuggingFaceTB/SmolLM2-135M-Instruct, Apache-2.0): ChatML with a
# default system turn where the conversation has none.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Conversations the probes do not hold: more turns, lines in a message, a system turn alone.
OTHERS = [
    [{"role": "system", "content": "Line one.\nLine two."}],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b\n\nc"},
        {"role": "user", "content": "d"},
        {"role": "assistant", "content": "e"},
        {"role": "user", "content": "  spaced  "},
    ],
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "y"},
        {"role": "user", "content": "z"},
    ],
]


def renderer(jinja: str) -> equivalent.Render:
    def render(source: str | None, messages: list[dict[str, str]]) -> str:
        chosen = source if source is not None else jinja
        return template.render(chosen, list(messages), bos_token="", eos_token="</s>")

    return render


def found(jinja: str) -> equivalent.Found | None:
    return equivalent.find(renderer(jinja), [*template.end_of_turn_markers(jinja), "</s>"])


def test_the_packaged_templates_are_ollamas_with_its_license() -> None:
    for name in equivalent.NAMES:
        shipped = equivalent.named(name)
        assert shipped == (OLLAMA_TEMPLATES / f"{name}.gotmpl").read_text(encoding="utf-8")
        template.check(shipped)  # each parses and renders as Ollama's
    folder = resources.files("localrun.formats.ollama").joinpath("templates")
    notice = folder.joinpath("LICENSE").read_text(encoding="utf-8")
    assert "MIT License" in notice and "Copyright (c) Ollama" in notice


def test_smollm2_gets_one_written_for_its_markers() -> None:
    go = found(SMOLLM2)
    assert go is not None and go.origin == "markers"
    assert go.source == (
        '{{- range $i, $_ := .Messages }}{{ if and (eq $i 0) (ne .Role "system") }}'
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n{{ end }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n"
    )
    render = renderer(SMOLLM2)
    for messages in OTHERS:
        assert render(go.source, messages) == render(None, messages)


@pytest.mark.parametrize(
    ("name", "origin"),
    [
        ("Qwen-Qwen3-0.6B", "ollama:chatml"),
        ("microsoft-Phi-3.5-mini-instruct", "ollama:phi-3"),
        ("Qwen-Qwen2.5-7B-Instruct", "markers"),
        ("ibm-granite-granite-4.0", "markers"),
    ],
)
def test_a_template_gets_the_go_template_that_renders_its_prompts(name: str, origin: str) -> None:
    jinja = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    go = found(jinja)
    assert go is not None and go.origin == origin
    render = renderer(jinja)
    for messages in [*equivalent.PROBES, *OTHERS[1:]]:
        assert render(go.source, messages) == render(None, messages)


def test_none_where_no_go_template_can_say_the_same() -> None:
    # Llama 3.1 writes today's date: a template written today would be wrong tomorrow.
    llama = (TEMPLATES / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text(encoding="utf-8")
    assert found(llama) is None
    today = date.today().strftime("%d %B %Y")
    dated = SMOLLM2.replace("trained by Hugging Face", f"today is {today}")
    assert found(dated) is None
    # Markers that would be Go actions, and a template that takes no conversation.
    assert found(SMOLLM2.replace("<|im_start|>", "{{")) is None
    assert found("{{ raise_exception('no chats here') }}") is None


def test_a_base_models_transcript_is_ollamas_chatqa() -> None:
    go = found(TRANSCRIPT)  # "User: ...\n\nAssistant:", as chatqa writes it
    assert go is not None and go.origin == "ollama:chatqa"
    render = renderer(TRANSCRIPT)
    assert all(render(go.source, m) == render(None, m) for m in OTHERS[1:])
