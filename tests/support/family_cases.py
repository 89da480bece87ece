"""Each family's canonical answers, as their model cards and llama.cpp's tests/test-chat.cpp
write them: a call to get_weather(city="Paris") (some with reasoning before it or text around
it), with the template (tests/data/templates) the family's models ship. Shared by the parser
tests and the end-to-end tests through the real engine and server."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import CORPORA, DATA, TEMPLATES
from support.tools import TIME, WEATHER

PARIS = {"name": "get_weather", "arguments": {"city": "Paris"}}
CET = {"name": "get_time", "arguments": {"tz": "CET"}}

TOOLS: list[dict[str, Any]] = [WEATHER, TIME]


@dataclass(frozen=True)
class Case:
    """A model that says `says` under `template`: the calls, reasoning and text it means."""

    id: str
    family: str  # the row formats.template.family must choose
    template: str  # a file in tests/data/templates
    says: str
    calls: tuple[dict[str, Any], ...] = (PARIS,)
    reasoning: str = ""
    content: str = ""
    end: str | None = None
    special: tuple[str, ...] = field(default=())  # markers the vocabulary has besides

    def family_of(self) -> Any:
        """The family the runner chooses: by the template, else by the vocabulary's tokens."""
        from localrun.formats import parsers, template

        found = template.family(self.source())
        if found is parsers.DEFAULT:
            found = parsers.by_token(lambda text: text in self.special) or found
        return found

    def source(self) -> str:
        return template_at(self.template)


def template_path(name: str) -> Path:
    """A template of the llama.cpp corpus, or `corpora/...` of one scripts/corpora/fetch.py
    fetches (where LOCALRUN_CORPORA puts them)."""
    if name.startswith("corpora/"):
        return CORPORA / name.removeprefix("corpora/")
    if Path(name).is_absolute() or (TEMPLATES / name).exists():
        return TEMPLATES / name  # (an absolute path joins as itself)
    return DATA / name  # tests/data's own (Phi-4-mini's)


def template_at(name: str) -> str:
    """The template at `name` (template_path): a Python file's is the `"chat_template": "..."`
    it quotes (BFCL's handlers quote the tokenizer_config.json of their models)."""
    path = template_path(name)
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".py":
        return text
    start = text.index(":", text.index('"chat_template"')) + 1
    quoted, _ = json.JSONDecoder().raw_decode(
        text, start + len(text[start:]) - len(text[start:].lstrip())
    )
    return str(quoted)


MINICPM3 = "corpora/bfcl/bfcl_eval/model_handler/local_inference/minicpm_fc.py"


_MINICPM3_TOKENS = (
    "<|thought_start|>",
    "<|thought_end|>",
    "<|tool_call_start|>",
    "<|tool_call_end|>",
)

_CASES = (
    Case(
        "qwen2.5",
        "hermes",
        "Qwen-Qwen2.5-7B-Instruct.jinja",
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n'
        "</tool_call>",
        calls=(PARIS, CET),
        content="Let me check.",
    ),
    Case(
        "qwen3",
        "hermes",
        "Qwen-Qwen3-0.6B.jinja",
        "<think>\nThe user wants the weather.\n</think>\n\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        reasoning="The user wants the weather.",
    ),
    Case(
        "llama3.1",
        "llama3",
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    ),
    Case(
        "llama3.1-python-tag",
        "llama3",
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
    ),
    Case(
        "mistral-nemo",
        "mistral",
        "mistralai-Mistral-Nemo-Instruct-2407.jinja",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123xyz"}]',
    ),
    Case(
        "mistral-small-3.2",
        "magistral",
        "Mistral-Small-3.2-24B-Instruct-2506.jinja",
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{"tz": "CET"}',
        calls=(PARIS, CET),
    ),
    Case(
        "ministral-3-reasoning",
        "magistral",
        "mistralai-Ministral-3-14B-Reasoning-2512.jinja",
        '[THINK]The weather, then.[/THINK][TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
        reasoning="The weather, then.",
    ),
    Case(
        "gpt-oss",
        "gpt-oss",
        "openai-gpt-oss-120b.jinja",
        "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant"
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
        '{"city": "Paris"}<|call|>',
        reasoning="Need the weather.",
        end="<|call|>",
    ),
    Case(
        "qwen3-coder",
        "qwen3-coder",
        "Qwen3-Coder.jinja",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "</function>\n</tool_call>",
    ),
    Case(
        "deepseek-v3.1",
        "deepseek-v3.1",
        "deepseek-ai-DeepSeek-V3.1.jinja",
        # The prompt opens <think> (thinking is on): the answer starts inside it.
        "Paris weather.</think><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>"
        '{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        reasoning="Paris weather.",
    ),
    Case(
        "deepseek-r1",
        "deepseek-r1",
        "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
        "I should call the tool.\n</think>\n\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function"
        '<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜>'
        "<｜tool▁calls▁end｜>",
        reasoning="I should call the tool.",
    ),
    Case(
        "granite-3.3",
        "granite",
        "ibm-granite-granite-3.3-2B-Instruct.jinja",
        '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    ),
    Case(
        # Phi-4-mini's template never writes a call: its vocabulary's <|tool_call|> tells it.
        "phi-4-mini",
        "granite",
        "phi4-mini-instruct.jinja",
        '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|>',
        special=("<|tool_call|>", "<|/tool_call|>"),
        end="<|end|>",
    ),
    Case(
        "command-r7b",
        "command-r7b",
        "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja",
        "<|START_THINKING|>I will look up the weather.<|END_THINKING|><|START_ACTION|>[\n"
        '    {"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Paris"}}\n'
        "]<|END_ACTION|>",
        reasoning="I will look up the weather.",
    ),
    Case(
        "functionary-v3.2",
        "functionary-v3.2",
        "meetkai-functionary-medium-v3.2.jinja",
        'get_weather\n{"city": "Paris"}',
    ),
    Case(
        "functionary-v3.1",
        "functionary-v3.1",
        "meetkai-functionary-medium-v3.1.jinja",
        'Checking.<function=get_weather>{"city": "Paris"}</function>',
        content="Checking.",
    ),
    Case(
        "kimi-k2",
        "kimi-k2",
        "Kimi-K2-Instruct.jinja",
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        '<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>',
    ),
    Case(
        "glm-4.6",
        "glm-4.5",
        "GLM-4.6.jinja",
        "<think>Weather in Paris.</think>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n"
        "<arg_value>Paris</arg_value>\n</tool_call>",
        reasoning="Weather in Paris.",
    ),
    Case(
        "firefunction-v2",
        "firefunction",
        "fireworks-ai-llama-3-firefunction-v2.jinja",
        ' functools[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    ),
    Case(
        "nemotron-v2",
        "nemotron",
        "NVIDIA-Nemotron-Nano-v2.jinja",
        "Weather.\n</think>\n"
        '<TOOLCALL>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</TOOLCALL>',
        reasoning="Weather.",
    ),
    Case(
        "minimax-m2",
        "minimax-m2",
        "MiniMax-M2.jinja",
        'Weather.\n</think>\n<minimax:tool_call>\n<invoke name="get_weather">\n'
        '<parameter name="city">Paris</parameter>\n</invoke>\n</minimax:tool_call>',
        reasoning="Weather.",
    ),
    Case(
        "seed-oss",
        "seed-oss",
        "ByteDance-Seed-OSS.jinja",
        "<seed:think>Weather.</seed:think><seed:tool_call>\n<function=get_weather>\n"
        "<parameter=city>Paris</parameter>\n</function>\n</seed:tool_call>",
        reasoning="Weather.",
    ),
    Case(
        "lfm2.5",
        "lfm2",
        "LFM2.5-8B-A1B.jinja",
        '<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>',
    ),
    Case(  # Python values JSON cannot hold: the text as written, never a hang or a 500
        "lfm2.5-not-json",
        "lfm2",
        "LFM2.5-8B-A1B.jinja",
        "<|tool_call_start|>[get_weather(city=b'Paris', tz=1e999)]<|tool_call_end|>",
        calls=(),
        content="<|tool_call_start|>[get_weather(city=b'Paris', tz=1e999)]<|tool_call_end|>",
    ),
    Case(  # its template lists tools but writes no call: the markers live in the vocabulary
        "lfm2-8b",
        "lfm2",
        "LFM2-8B-A1B.jinja",
        '<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>',
        special=("<|tool_call_start|>", "<|tool_call_end|>"),
    ),
    # vLLM's pythonic templates (fetched by scripts/corpora/fetch.py): the whole answer a list
    *(
        Case(
            name,
            "pythonic",
            f"corpora/vllm/examples/tool_chat_template_{name}.jinja",
            '[get_weather(city="Paris"), get_time(tz="CET")]',
            calls=(PARIS, CET),
        )
        for name in ("llama3.2_pythonic", "gemma3_pythonic", "llama4_pythonic", "toolace")
    ),
    Case(
        "gemma4",
        "gemma4",
        "google-gemma-4-31B-it.jinja",
        "<|channel>thought\nParis, then.<channel|><|tool_call>call:get_weather"
        '{city:<|"|>Paris<|"|>}<tool_call|><|tool_call>call:get_time{tz:<|"|>CET<|"|>}<tool_call|>',
        calls=(PARIS, CET),
        reasoning="Paris, then.",
    ),
    Case(
        "gemma4-one",
        "gemma4",
        "google-gemma-4-31B-it.jinja",
        '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>',
    ),
    # MiniCPM 3 (its template from BFCL's handler): a thought, then Python calls one a line.
    Case(
        "minicpm3",
        "minicpm3",
        MINICPM3,
        "<|thought_start|>\nParis, then.\n<|thought_end|>\n<|tool_call_start|>\n```python\n"
        'get_weather(city="Paris")\nget_time(tz="CET")\n```\n<|tool_call_end|>\n',
        calls=(PARIS, CET),
        reasoning="Paris, then.",
        special=_MINICPM3_TOKENS,
    ),
    Case(
        "minicpm3-answer",
        "minicpm3",
        MINICPM3,
        "<|thought_start|>\nA call.\n<|thought_end|>\n<|tool_call_start|>\n```python\n"
        'get_weather(city="Paris")\n```\n<|tool_call_end|>\nI am looking it up.',
        reasoning="A call.",
        content="I am looking it up.",
        special=_MINICPM3_TOKENS,
    ),
    Case(  # no thought: a call a forced grammar writes too
        "minicpm3-call",
        "minicpm3",
        MINICPM3,
        '<|tool_call_start|>\n```python\nget_weather(city="Paris")\n```\n<|tool_call_end|>',
        special=_MINICPM3_TOKENS,
    ),
    Case(
        "minicpm5-derived",
        "derived:tagged",
        "openbmb-MiniCPM5-1B.jinja",
        'Checking.\n</think>\n<function name="get_weather">'
        '<param name="city">Paris</param></function>',
        reasoning="Checking.",
    ),
    Case(
        "apriel-1.6-derived",
        "derived:json",
        "Apriel-1.6-15b-Thinker-fixed.jinja",
        '<tool_calls>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_calls>',
    ),
)
# Those whose template is here (the corpora's are fetched by scripts/corpora/fetch.py).
CASES = tuple(case for case in _CASES if template_path(case.template).exists())
