"""The chat template environment is Hugging Face's: the syntax and filters real templates use.

Each case is the construct as a real template in llama.cpp's corpus writes it (models/templates
of the llama.cpp that llama-cpp-python vendors); before, each was a 400 for every request.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from localrun.errors import TemplateError
from localrun.formats import template

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, ünïcode"}]


def test_loop_controls_break_and_continue() -> None:
    # As DeepSeek's and Qwen3's templates find the last user turn.
    source = (
        "{% for m in messages %}{% if m.role == 'assistant' %}{% continue %}{% endif %}"
        "[{{ m.content }}]{% if loop.index > 2 %}{% break %}{% endif %}{% endfor %}"
    )
    more = [*CHAT, {"role": "assistant", "content": "no"}, {"role": "user", "content": "a"}]
    more += [{"role": "user", "content": "never"}]
    out = template.render(source, more, add_generation_prompt=False)
    assert out == "[Be brief.][Hi, ünïcode][a]"


def test_the_generation_tag_renders_its_body() -> None:
    # As SmolLM3's and Olmo's templates mark the assistant's turn for training masks.
    source = (
        "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}"
        "<a>{{ m.content }}</a>{% endgeneration %}{% else %}<{{ m.role }}>{% endif %}"
        "{% endfor %}"
    )
    answer = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "yes"}]
    assert template.render(source, answer, add_generation_prompt=False) == "<user><a>yes</a>"


def test_tojson_takes_hugging_faces_keyword_arguments() -> None:
    value = {"b": "é", "a": [1, 2]}
    source = (
        "{{ v | tojson }}|{{ v | tojson(ensure_ascii=True) }}|{{ v | tojson(indent=2) }}|"
        "{{ v | tojson(separators=(',', ':'), sort_keys=True) }}"
    )
    out = template.render(source, [], variables={"v": value})
    assert out.split("|") == [
        json.dumps(value, ensure_ascii=False),
        json.dumps(value, ensure_ascii=True),
        json.dumps(value, ensure_ascii=False, indent=2),
        json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
    ]
    with pytest.raises(TemplateError, match="indent over 64"):
        template.render("{{ 1 | tojson(indent=100000) }}", [])
    with pytest.raises(TemplateError, match="separators"):
        template.render("{{ 1 | tojson(separators=('x' * 100, ':')) }}", [])


def test_date_string_is_today_unless_given() -> None:
    # Llama 3.1 falls back to "26 Jul 2024" when the caller passes none; llama.cpp passes today.
    source = (
        "{% if not date_string is defined %}{% set date_string = '26 Jul 2024' %}{% endif %}"
        "Today Date: {{ date_string }}"
    )
    today = datetime.now().strftime("%d %b %Y")
    assert template.render(source, []) == f"Today Date: {today}"
    given = template.render(source, [], variables={"date_string": "01 Jan 2025"})
    assert given == "Today Date: 01 Jan 2025"


def test_loops_stay_bounded_with_loop_controls() -> None:
    source = (
        "{% for i in range(99999) %}{% for j in range(99999) %}"
        "{% if j > 5 %}{% continue %}{% endif %}{% endfor %}{% endfor %}"
    )
    with pytest.raises(TemplateError, match="loop too many times"):
        template.render(source, [])
