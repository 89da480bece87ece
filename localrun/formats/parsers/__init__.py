"""Each model family's tool-call and reasoning format, chosen from the model's chat template.

    base.py         what a syntax is, and the helpers the families share
    stream.py       an answer streamed with its calls taken out, in any syntax
    wrapped.py      JSON between markers (Hermes, Granite, Phi-4, Nemotron, Firefunction,
                    Command R, LFM2's Python calls)
    xml.py          values written as text (Qwen3-Coder, Seed-OSS, MiniMax, GLM)
    python.py       calls written as Python, read with `ast` (LFM2, pythonic, Llama's tools)
    families/       one family a module (llama3.py, mistral.py, deepseek.py, kimi.py, ...)
    derive.py       a syntax read from a template's own rendering of a call

FAMILIES holds a row for each family; the first whose markers the template writes wins. The dialects
never look in here: the runner's sink turns an answer into text, reasoning and calls, and each
dialect writes those in its own shape.
"""

from __future__ import annotations

from collections.abc import Callable

from localrun.formats.parsers.base import Family as Family
from localrun.formats.parsers.base import Syntax as Syntax
from localrun.formats.parsers.derive import Named
from localrun.formats.parsers.families.deepseek import DeepSeek
from localrun.formats.parsers.families.functionary import Functionary
from localrun.formats.parsers.families.gemma4 import Gemma4
from localrun.formats.parsers.families.harmony import Harmony
from localrun.formats.parsers.families.kimi import Kimi
from localrun.formats.parsers.families.llama3 import Llama3
from localrun.formats.parsers.families.minimax import Nested
from localrun.formats.parsers.families.mistral import Mistral
from localrun.formats.parsers.families.pythonic import Pythonic
from localrun.formats.parsers.wrapped import Wrapped
from localrun.formats.parsers.xml import ArgKeys, FunctionTags, Invoke, Recipient

HERMES = Wrapped(
    name="hermes",
    starts=("<tool_call>",),
    ends=("</tool_call>",),
    leading="{[`",
    open="<tool_call>",
    close="</tool_call>",
    bare=True,
)

# A family is one row: the markers its template writes, its call syntax (one parser a module:
# markers, how the arguments are written, how it streams) and its reasoning tags. All its markers
# must appear, as llama.cpp's chat.cpp and Ollama's parsers choose. The first row that matches
# wins, so the specific rows come first. A template that matches no row but renders an
# assistant's tool calls gets a syntax derived from that rendering (derive.py; formats/template.py's
# `family` renders the probe). One that renders none gets the Hermes `<tool_call>` syntax the tool
# note asks for (formats/calls.py).
FAMILIES: tuple[Family, ...] = (
    Family("gpt-oss", ("<|channel|>",), Harmony(), harmony=True),
    Family(
        "kimi-k2",
        ("<|tool_calls_section_begin|>",),
        Kimi(),
        tokens=("<|tool_calls_section_begin|>",),
    ),
    Family(
        "gemma4",
        ("<|tool_call>call:",),
        Gemma4(),
        think=("<|channel>thought", "<channel|>"),
        special=("<|channel>", "<channel|>"),
    ),
    Family(
        "functiongemma",
        ("<start_function_call>",),
        Gemma4(
            name="functiongemma",
            starts=("<start_function_call>",),
            ends=("<end_function_call>",),
            special=("<start_function_call>", "<end_function_call>", "<escape>"),
            open="<start_function_call>",
            close="<end_function_call>",
            quote="<escape>",
        ),
    ),
    Family(
        "deepseek-r1",
        ("tool▁calls▁begin", "```json"),
        DeepSeek(name="deepseek-r1", fenced=True),
    ),
    Family("deepseek-v3.1", ("tool▁calls▁begin",), DeepSeek()),
    Family(
        "seed-oss",
        ("<seed:tool_call>",),
        FunctionTags(
            name="seed-oss",
            starts=("<seed:tool_call>",),
            ends=("</seed:tool_call>",),
            open="<seed:tool_call>",
            close="</seed:tool_call>",
            bare_open="",
        ),
        think=("<seed:think>", "</seed:think>"),
    ),
    Family(
        "apertus",
        ("<|tools_prefix|>",),
        Wrapped(
            name="apertus",
            starts=("<|tools_prefix|>",),
            ends=("<|tools_suffix|>",),
            special=("<|tools_prefix|>", "<|tools_suffix|>"),
            open="<|tools_prefix|>",
            close="<|tools_suffix|>",
            as_list=True,
            keyed=True,
        ),
        think=("<|inner_prefix|>", "<|inner_suffix|>"),  # its deliberation
        special=("<|inner_prefix|>", "<|inner_suffix|>"),
    ),
    Family(
        "internlm2",
        ("<|action_start|>", "<|plugin|>"),
        Wrapped(
            name="internlm2",
            starts=("<|action_start|>",),
            ends=("<|action_end|>",),
            special=("<|action_start|>", "<|plugin|>", "<|action_end|>"),
            open="<|action_start|><|plugin|>",
            close="<|action_end|>",
            close_optional=True,
            argument_keys=("parameters", "arguments"),
        ),
    ),
    Family(
        "gigachat3.1",
        ("<|function_call|>",),
        Wrapped(
            name="gigachat3.1",
            starts=("<|function_call|>",),
            special=("<|function_call|>",),
            open="<|function_call|>",
        ),
    ),
    Family(
        "gigachat3",
        ("<|message_sep|>", "<|role_sep|>", "function call"),
        Wrapped(
            name="gigachat3",
            starts=("<|message_sep|>", "function call<|role_sep|>"),
            special=("<|message_sep|>", "<|role_sep|>"),
            lead="<|message_sep|>",
            open="function call<|role_sep|>",
        ),
    ),
    Family("minimax-m2", ("<minimax:tool_call>",), Invoke()),
    Family(
        "minimax-m3",
        ("]<]minimax[>[",),
        Nested(),
        think=("<mm:think>", "</mm:think>"),
        special=("<mm:think>", "</mm:think>"),
    ),
    Family(
        "muse-glimmer",
        ("<atem:function_calls>",),
        Recipient(
            name="muse-glimmer",
            starts=("to=", "<atem:function_calls>"),
            ends=("</atem:function_calls>",),
            special=("<|message|>",),
            open="<atem:function_calls>",
            close="</atem:function_calls>",
            prefix="atem:",
        ),
        # Its turns are messages, `<|start|>assistant to=RECIPIENT<|message|>...`: a thought to
        # `self` ends with `<|eom|>`, the answer to `user` (the generation prompt stops before
        # ` to=`); the headers are nobody's text, with tools or without (llama.cpp's parser).
        think=("to=self<|message|>", "<|eom|>"),
        drop=("<|start|>assistant", "to=user<|message|>", "<|eom|>"),
        special=("<|start|>", "<|message|>", "<|eom|>"),
    ),
    Family("glm-4.5", ("<arg_key>",), ArgKeys()),
    Family(
        "qwen3-coder",
        ("<function=", "<parameter="),
        FunctionTags(
            name="qwen3-coder",
            starts=("<tool_call>", "<function="),
            ends=("</tool_call>", "</function>"),
        ),
    ),
    Family(
        "functionary-v3.1",
        ("<function=", "<|start_header_id|>"),
        Named(
            name="functionary-v3.1",
            starts=("<function=",),
            ends=("</function>",),
            open="<function=",
            sep=">",
            close="</function>",
        ),
    ),
    Family(
        "command-r7b",
        ("<|START_ACTION|>",),
        Wrapped(
            name="command-r7b",
            starts=("<|START_ACTION|>",),
            ends=("<|END_ACTION|>",),
            special=("<|START_ACTION|>", "<|END_ACTION|>"),
            open="<|START_ACTION|>",
            close="<|END_ACTION|>",
            name_key="tool_name",
            argument_keys=("parameters",),
            as_list=True,
        ),
        think=("<|START_THINKING|>", "<|END_THINKING|>"),
        drop=("<|START_RESPONSE|>", "<|END_RESPONSE|>"),
        special=(
            "<|START_THINKING|>",
            "<|END_THINKING|>",
            "<|START_RESPONSE|>",
            "<|END_RESPONSE|>",
        ),
    ),
    Family("functionary-v3.2", (">>>",), Functionary()),
    # MiniCPM 3: its thought, then Python calls one a line in a ```python fence between LFM2's
    # markers (the same tokens in its vocabulary: its thought's tell it apart).
    Family(
        "minicpm3",
        ("<|tool_call_start|>", "<|thought_start|>"),
        Wrapped(
            name="minicpm3",
            starts=("<|tool_call_start|>",),
            ends=("<|tool_call_end|>",),
            special=("<|tool_call_start|>", "<|tool_call_end|>"),
            open="<|tool_call_start|>",
            close="<|tool_call_end|>",
            python=True,
            lines=True,
        ),
        think=("<|thought_start|>", "<|thought_end|>"),
        special=("<|thought_start|>", "<|thought_end|>"),
        tokens=("<|tool_call_start|>", "<|thought_start|>"),
    ),
    Family(
        "lfm2",
        ("<|tool_call_start|>",),
        Wrapped(
            name="lfm2",
            starts=("<|tool_call_start|>",),
            ends=("<|tool_call_end|>",),
            special=("<|tool_call_start|>", "<|tool_call_end|>"),
            open="<|tool_call_start|>",
            close="<|tool_call_end|>",
            python=True,
        ),
        tokens=("<|tool_call_start|>",),  # LFM2-8B-A1B's template writes no call: its vocabulary
    ),
    Family(
        "nemotron",
        ("<TOOLCALL>",),
        Wrapped(
            name="nemotron",
            starts=("<TOOLCALL>",),
            ends=("</TOOLCALL>",),
            special=("<TOOLCALL>", "</TOOLCALL>"),
            open="<TOOLCALL>",
            close="</TOOLCALL>",
            as_list=True,
        ),
    ),
    Family(
        "firefunction",
        ("functools[",),
        Wrapped(name="firefunction", starts=("functools",), open="functools", as_list=True),
    ),
    Family(
        "magistral",
        ("[TOOL_CALLS]", "[ARGS]"),
        Mistral(name="mistral-v11", named=True),
        think=("[THINK]", "[/THINK]"),
    ),
    Family("mistral", ("[TOOL_CALLS]",), Mistral(), tokens=("[TOOL_CALLS]",)),
    Family(
        "granite",
        ("<|tool_call|>",),
        Wrapped(
            name="granite",
            starts=("<|tool_call|>", "functools["),
            ends=("<|/tool_call|>",),
            special=("<|tool_call|>", "<|/tool_call|>"),
            open="<|tool_call|>",
            close="<|/tool_call|>",
            close_optional=True,
            as_list=True,
            others=(("functools", ""),),  # Phi-4-mini, which shares the vocabulary's token
        ),
        drop=("<response>", "</response>"),
        tokens=("<|tool_call|>",),
    ),
    # xLAM's templates ask for a JSON list in their own words (before Llama 3's and Hermes's
    # rows, whose markers they also write).
    Family(
        "xlam",
        ('[{"name": "tool_call_name"',),
        Wrapped(
            name="xlam",
            starts=('[{"name"', "```json", "<tool_call>", "[TOOL_CALLS]"),
            leading="[",
            as_list=True,
            others=(("```json", "```"), ("<tool_call>", "</tool_call>"), ("[TOOL_CALLS]", "")),
        ),
    ),
    # Asked for in the template's own words (vLLM's pythonic templates: Llama 3.2 / 4, Gemma 3,
    # ToolACE): before Llama 3's row, whose markers Llama's pythonic templates also write.
    Family("pythonic", ("[func_name1(",), Pythonic()),
    Family("llama3", ("<|start_header_id|>", "ipython"), Llama3()),
    Family("hermes", ("<tool_call>",), HERMES),
)

DEFAULT = Family("hermes", (), HERMES)


def by_markers(template: str) -> Family | None:
    """The first row whose markers the template writes, with no derivation.

    The tool note asks for this family's syntax while the template is being rendered.
    """
    for family in FAMILIES:
        if all(marker in template for marker in family.markers):
            return family
    return None


def by_token(is_special: Callable[[str], bool]) -> Family | None:
    """The first family whose call tokens the vocabulary has as special tokens."""
    for family in FAMILIES:
        if family.tokens and all(is_special(token) for token in family.tokens):
            return family
    return None


def by_name(name: str) -> Family:
    """A family by its row's name (tests, `show`)."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise KeyError(name)
