"""A pytest plugin that runs vLLM's own tool-parser tests against localrun's parsers.

vLLM's tests (tests/tool_parsers/ of its source, fetched by scripts/corpora/fetch.py) ask a
parser, by vLLM's name for it, to read model outputs, whole (`extract_tool_calls`) and streamed
(`extract_tool_calls_streaming`, a token at a time), and assert the calls and text vLLM reads.
This plugin installs a stand-in `vllm` package in which every tool parser is localrun's, as
the runner chooses it: the family of the chat template the models of that parser ship (PARSERS),
its call syntax reading the answer through localrun's call stream (the runner's own, in
formats/parsers/stream.py). The protocol classes are pydantic models with vLLM's fields; the
tokenizers (`get_tokenizer`, `AutoTokenizer.from_pretrained`, hub names nobody can fetch here)
are one that cuts text into the families' markers, then as GPT-2's pre-tokenizer does.

A test that reaches into a vLLM parser's internals, or imports vLLM pieces outside the tool-parser
API, fails or errors for that reason; tests/integration/formats/test_corpus_vllm_parsers.py tells
those apart from a call read differently. Each output a parser reads is written, with what localrun
read from it, to the file LOCALRUN_VLLM_RECORD names (JSON lines), for the end-to-end test through
the server.

    python -m pytest -p vllm_shim <corpus>/tests/tool_parsers ...   (tests/ and the corpus
    root on PYTHONPATH)
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import json
import os
import re
import sys
import types
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from localrun.formats import parsers, template
from localrun.formats.parsers.stream import CallStream

from support import CORPORA, DATA, TEMPLATES

# vLLM's corpus: where the test names it, else where scripts/corpora/fetch.py puts it.
CORPUS = Path(os.environ.get("LOCALRUN_VLLM_CORPUS") or CORPORA / "vllm")
EXAMPLES = CORPUS / "examples"

# vLLM's parser (its registered name, or its module's name without `_tool_parser`) -> the chat
# template its models ship: llama.cpp's corpus (tests/data/templates) or vLLM's examples.
PARSERS: dict[str, Path] = {
    "hermes": TEMPLATES / "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
    "llama": TEMPLATES / "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "llama3_json": TEMPLATES / "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "pythonic": EXAMPLES / "tool_chat_template_llama3.2_pythonic.jinja",
    "llama4_pythonic": EXAMPLES / "tool_chat_template_llama4_pythonic.jinja",
    "lfm2": TEMPLATES / "LFM2.5-Instruct.jinja",
    "qwen3_coder": TEMPLATES / "Qwen3-Coder.jinja",
    "qwen3_engine": TEMPLATES / "Qwen3-Coder.jinja",
    "minimax_m2": TEMPLATES / "MiniMax-M2.jinja",
    "minimax_m3": TEMPLATES / "MiniMax-M3.jinja",
    "glm45": TEMPLATES / "GLM-4.6.jinja",
    "glm4_moe": TEMPLATES / "GLM-4.6.jinja",
    "glm47": TEMPLATES / "GLM-4.7-Flash.jinja",
    "glm47_moe": TEMPLATES / "GLM-4.7-Flash.jinja",
    "kimi_k2": TEMPLATES / "Kimi-K2-Instruct.jinja",
    "deepseek_v3": EXAMPLES / "tool_chat_template_deepseekv3.jinja",
    "deepseekv3": EXAMPLES / "tool_chat_template_deepseekv3.jinja",
    "deepseek_v31": TEMPLATES / "deepseek-ai-DeepSeek-V3.1.jinja",
    "deepseekv31": TEMPLATES / "deepseek-ai-DeepSeek-V3.1.jinja",
    "granite": TEMPLATES / "ibm-granite-granite-3.3-2B-Instruct.jinja",
    "granite4": TEMPLATES / "ibm-granite-granite-4.0.jinja",
    "granite-20b-fc": EXAMPLES / "tool_chat_template_granite_20b_fc.jinja",
    "granite_20b_fc": EXAMPLES / "tool_chat_template_granite_20b_fc.jinja",
    "gemma4_engine": TEMPLATES / "google-gemma-4-31B-it.jinja",
    "functiongemma": EXAMPLES / "tool_chat_template_functiongemma.jinja",
    "gigachat3": TEMPLATES / "GigaChat3-10B-A1.8B.jinja",
    "phi4_mini_json": DATA / "phi4-mini-instruct.jinja",
    "mistral": TEMPLATES / "mistralai-Mistral-Nemo-Instruct-2407.jinja",
    "internlm": EXAMPLES / "tool_chat_template_internlm2_tool.jinja",
    "internlm2": EXAMPLES / "tool_chat_template_internlm2_tool.jinja",
    "hunyuan_a13b": EXAMPLES / "tool_chat_template_hunyuan_a13b.jinja",
    "xlam": EXAMPLES / "tool_chat_template_xlam_llama.jinja",
    "apertus": TEMPLATES / "Apertus-8B-Instruct.jinja",
    "minicpm5": TEMPLATES / "openbmb-MiniCPM5-1B.jinja",
    "minicpm5xml": TEMPLATES / "openbmb-MiniCPM5-1B.jinja",
    "step3p5": TEMPLATES / "StepFun3.5-Flash.jinja",
    "hy_v3": TEMPLATES / "tencent-Hy3.jinja",
    "poolside_v1": TEMPLATES / "poolside-Laguna-XS.2.jinja",
    "kimi_k3": TEMPLATES / "Kimi-K3.jinja",
    "deepseek_v32": TEMPLATES / "deepseek-ai-DeepSeek-V3.2.jinja",
    "deepseekv32_engine": TEMPLATES / "deepseek-ai-DeepSeek-V3.2.jinja",
    "deepseek_v4": TEMPLATES / "deepseek-ai-DeepSeek-V4.jinja",
    "deepseekv4_engine": TEMPLATES / "deepseek-ai-DeepSeek-V4.jinja",
}

# Markers the models' vocabularies have as special tokens where their templates never write
# them: the runner chooses the family by them (worker/prompt.py), as it does for the GGUF.
VOCABULARY = {
    "lfm2": ("<|tool_call_start|>", "<|tool_call_end|>"),
    "phi4_mini_json": ("<|tool_call|>",),
}


@functools.cache
def family(parser: str) -> parsers.Family:
    """The family the runner chooses for the models of vLLM's `parser`."""
    found = template.family(PARSERS[parser].read_text(encoding="utf-8"))
    if found is parsers.DEFAULT:
        found = parsers.by_token(lambda text: text in VOCABULARY.get(parser, ())) or found
    return found


# -- vLLM's protocol, as pydantic models with its fields --------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionCall(_Model):
    name: str
    arguments: str


class ToolCall(_Model):
    id: str = Field(default_factory=lambda: f"chatcmpl-tool-{uuid.uuid4().hex[:24]}")
    type: str = "function"
    function: FunctionCall


class DeltaFunctionCall(_Model):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(_Model):
    id: str | None = None
    type: str | None = None
    index: int
    function: DeltaFunctionCall | None = None


class DeltaMessage(_Model):
    role: str | None = None
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[DeltaToolCall] = Field(default_factory=list)


class ExtractedToolCallInformation(_Model):
    tools_called: bool
    tool_calls: list[ToolCall]
    content: str | None = None


class FunctionDefinition(_Model):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ChatCompletionToolsParam(_Model):
    type: str = "function"
    function: FunctionDefinition


class ChatCompletionNamedFunction(_Model):
    name: str


class ChatCompletionNamedToolChoiceParam(_Model):
    function: ChatCompletionNamedFunction
    type: str = "function"


class ChatCompletionRequest(_Model):
    messages: list[Any] = Field(default_factory=list)
    model: str | None = None
    tools: list[ChatCompletionToolsParam] | None = None
    tool_choice: Any = "auto"


# -- a tokenizer: the families' markers, words, blanks, single characters ---------------------


def _markers() -> list[str]:
    found: set[str] = set()
    for family in parsers.FAMILIES:
        syntax = family.syntax
        found.update(m for m in (*syntax.starts, *syntax.ends, *syntax.special) if m)
        found.update(m for m in (*family.think, *family.special, *family.tokens) if m)
    return sorted(found, key=len, reverse=True)


class Tokenizer:
    """Text cut into the families' markers, then words and punctuation with the blank before
    them; each distinct piece an id (the vocabulary grows as text is cut)."""

    def __init__(self, name: str = "") -> None:
        self.name_or_path = name
        markers = "|".join(re.escape(m) for m in _markers())
        # GPT-2's pre-tokenizer: a word or number with the blank before it, punctuation runs,
        # blanks (the last one left to the word after them).
        self._cut = re.compile(
            rf"(?:{markers})| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+|.", re.DOTALL
        )
        self.vocab: dict[str, int] = {}
        self.pieces: list[str] = []

    def _id(self, piece: str) -> int:
        if piece not in self.vocab:
            self.vocab[piece] = len(self.pieces)
            self.pieces.append(piece)
        return self.vocab[piece]

    def tokenize(self, text: str, **_: Any) -> list[str]:
        return self._cut.findall(text)

    def encode(self, text: str, add_special_tokens: bool = True, **_: Any) -> list[int]:
        return [self._id(p) for p in self.tokenize(text)]

    def decode(self, ids: Any, **_: Any) -> str:
        ids = [ids] if isinstance(ids, int) else ids
        return "".join(self.pieces[i] for i in ids)

    def convert_tokens_to_ids(self, tokens: Any) -> Any:
        return self._id(tokens) if isinstance(tokens, str) else [self._id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: Any, **_: Any) -> Any:
        return self.pieces[ids] if isinstance(ids, int) else [self.pieces[i] for i in ids]

    def add_tokens(self, tokens: Any, special_tokens: bool = False) -> int:
        tokens = [tokens] if isinstance(tokens, str) else tokens
        for token in tokens:
            self._id(str(getattr(token, "content", token)))
        return len(tokens)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)  # a copy: tests add their own ids to it

    def __call__(self, text: str, **_: Any) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}


def get_tokenizer(*args: Any, **kwargs: Any) -> Tokenizer:
    return Tokenizer(str(kwargs.get("tokenizer_name") or (args[0] if args else "")))


def detokenize_incrementally(
    tokenizer: Any,
    all_input_ids: list[int],
    prev_tokens: Any,
    prefix_offset: int,
    read_offset: int,
    *args: Any,
    **kwargs: Any,
) -> tuple[list[str], str, int, int]:
    """vLLM's incremental detokenizer: the last token's text (pieces decode alone here)."""
    piece = tokenizer.decode([all_input_ids[-1]])
    return [piece], piece, read_offset, len(prev_tokens or []) + 1


# -- the parsers: localrun's, as the runner chooses them --------------------------------------


def _tools(request: Any, own: Any) -> list[dict[str, Any]]:
    """The request's tools (else the parser's) as plain OpenAI tool dicts."""
    tools = getattr(request, "tools", None) or own or []
    out = []
    for tool in tools:
        value = tool.model_dump(exclude_none=True) if isinstance(tool, BaseModel) else tool
        if isinstance(value, dict) and "function" not in value and "name" in value:
            value = {"type": "function", "function": value}  # Responses' flat tools
        out.append(value)
    return out


def _record(
    parser: str,
    tools: list[dict[str, Any]],
    text: str,
    content: str | None,
    calls: list[dict[str, Any]],
) -> None:
    """What localrun read from one output, with the test that asked (its verdict is in the
    report) and the tools it offered."""
    path = os.environ.get("LOCALRUN_VLLM_RECORD")
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
        entry = {"test": test, "parser": parser, "tools": tools, "text": text}
        entry.update(content=content, calls=calls)
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry, ensure_ascii=False) + "\n")


def _tool_call(call: dict[str, Any]) -> ToolCall:
    arguments = json.dumps(call["arguments"], ensure_ascii=False)
    return ToolCall(function=FunctionCall(name=call["name"], arguments=arguments))


class ToolParser:
    """localrun's parser for one vLLM parser name (`parser`, set by `for_parser`)."""

    parser = ""

    def __init__(self, tokenizer: Any = None, tools: Any = None, *args: Any, **_: Any) -> None:
        self.model_tokenizer = tokenizer
        self.vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        self.tools = tools
        self.family = family(self.parser)
        self._stream: CallStream | None = None
        self._index = 0

    def adjust_request(self, request: Any) -> Any:
        return request

    def _syntax(self, request: Any) -> Any:
        return self.family.syntax.with_tools(_tools(request, self.tools))

    def extract_tool_calls(self, model_output: str, request: Any = None) -> Any:
        tools = _tools(request, self.tools)
        stream = CallStream(self.family.syntax.with_tools(tools))
        text, calls = stream.feed(model_output)
        rest, more = stream.finish()
        text, calls = text + rest, calls + more
        content = text if text.strip() or not calls else None
        _record(self.parser, tools, model_output, content, calls)
        return ExtractedToolCallInformation(
            tools_called=bool(calls), tool_calls=[_tool_call(c) for c in calls], content=content
        )

    def extract_tool_calls_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_token_ids: Any = None,
        current_token_ids: Any = None,
        delta_token_ids: Any = None,
        request: Any = None,
    ) -> DeltaMessage | None:
        if self._stream is None:
            self._stream = CallStream(self._syntax(request))
        return self._delta(*self._stream.feed(delta_text))

    def finish_streaming(self) -> DeltaMessage | None:
        """The end of the answer (vLLM's parsers need none; localrun's sink is told `done`)."""
        if self._stream is None:
            return None
        delta = self._delta(*self._stream.finish())
        self._stream, self._index = None, 0  # the next answer starts afresh
        return delta

    def _delta(self, text: str, calls: list[dict[str, Any]]) -> DeltaMessage | None:
        if not text and not calls:
            return None
        deltas = []
        for call in calls:
            tool = _tool_call(call)
            function = DeltaFunctionCall(name=call["name"], arguments=tool.function.arguments)
            deltas.append(
                DeltaToolCall(id=tool.id, type="function", index=self._index, function=function)
            )
            self._index += 1
        return DeltaMessage(content=text or None, tool_calls=deltas)


_CLASSES: dict[str, type[ToolParser]] = {}


def for_parser(name: str) -> type[ToolParser]:
    """localrun's parser under vLLM's name (KeyError: a family this corpus does not map)."""
    if name not in PARSERS or not PARSERS[name].exists():
        raise KeyError(name)
    if name not in _CLASSES:
        _CLASSES[name] = type(f"Localrun_{name}", (ToolParser,), {"parser": name})
    return _CLASSES[name]


class ToolParserManager:
    @staticmethod
    def get_tool_parser(name: str) -> type[ToolParser]:
        try:
            return for_parser(name)
        except KeyError:
            pytest.skip(f"no template mapped for vLLM's {name!r} parser")


# -- the stand-in package ---------------------------------------------------------------------

PROTOCOL = {
    cls.__name__: cls
    for cls in (
        FunctionCall,
        ToolCall,
        DeltaFunctionCall,
        DeltaToolCall,
        DeltaMessage,
        ExtractedToolCallInformation,
    )
}
CHAT = {
    cls.__name__: cls
    for cls in (
        ChatCompletionRequest,
        ChatCompletionToolsParam,
        FunctionDefinition,
        ChatCompletionNamedFunction,
        ChatCompletionNamedToolChoiceParam,
    )
}
MODULES: dict[str, dict[str, Any]] = {
    "vllm": {},
    "vllm.entrypoints": {},
    "vllm.entrypoints.generate": {},
    "vllm.entrypoints.generate.base": {},
    "vllm.entrypoints.generate.base.protocol": PROTOCOL,
    "vllm.entrypoints.openai": {},
    "vllm.entrypoints.openai.chat_completion": {},
    "vllm.entrypoints.openai.chat_completion.protocol": CHAT,
    "vllm.tokenizers": {"TokenizerLike": Any, "get_tokenizer": get_tokenizer},
    "vllm.tokenizers.detokenizer_utils": {"detokenize_incrementally": detokenize_incrementally},
    "vllm.tool_parsers": {"ToolParser": ToolParser, "ToolParserManager": ToolParserManager},
    "vllm.tool_parsers.abstract_tool_parser": {"ToolParser": ToolParser},
    # the markers a parser module exports, as its family writes them
    "vllm.tool_parsers.apertus_tool_parser": {
        "TOOL_CALLS_PREFIX": "<|tools_prefix|>",
        "TOOL_CALLS_SUFFIX": "<|tools_suffix|>",
    },
}
PARSER_MODULE = re.compile(r"vllm\.tool_parsers\.(\w+?)(?:_tool_parser)?$")


class _Module(types.ModuleType):
    """A stand-in module: its table's names, and for a parser module, localrun's parser under
    any `...ToolParser` name; other names are missing (the import fails, as it should)."""

    def __getattr__(self, name: str) -> Any:
        match = PARSER_MODULE.match(self.__name__)
        if match and name.endswith("ToolParser"):
            try:
                return for_parser(match.group(1))
            except KeyError:
                pass
        raise AttributeError(f"localrun's stand-in {self.__name__} has no {name}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname in MODULES or PARSER_MODULE.match(fullname):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        module = _Module(spec.name)
        module.__dict__.update(MODULES.get(spec.name, {}))
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def _with_finish(run: Any) -> Any:
    """vLLM's streaming harness, telling the parser where the answer ends."""

    def wrapped(tool_parser: Any, *args: Any, **kwargs: Any) -> Any:
        reconstructor = run(tool_parser, *args, **kwargs)
        finish = getattr(tool_parser, "finish_streaming", None)
        delta = finish() if finish else None
        if delta is not None:
            reconstructor.append_delta(delta)
        return reconstructor

    return wrapped


def install() -> None:
    """The stand-in `vllm`, the tokenizer for hub names, and the harness's end of stream."""
    sys.meta_path.insert(0, _Finder())
    import transformers

    transformers.AutoTokenizer.from_pretrained = staticmethod(get_tokenizer)  # type: ignore
    sys.path.insert(0, str(CORPUS))
    utils = __import__("tests.tool_parsers.utils", fromlist=["run_tool_extraction_streaming"])
    utils.run_tool_extraction_streaming = _with_finish(utils.run_tool_extraction_streaming)


install()  # at import: `-p vllm_shim` loads this before the corpus's conftest imports vllm


# -- the report: each test's outcome, for tests/integration/formats/test_corpus_vllm_parsers.py

OUTCOMES: dict[str, dict[str, str]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and not (report.failed or report.skipped):
        return
    outcome = "error" if report.failed and report.when != "call" else report.outcome
    if hasattr(report, "wasxfail"):
        outcome = "xfailed" if report.skipped else "xpassed"
    crash = getattr(report.longrepr, "reprcrash", None)
    message = crash.message if crash is not None else str(report.longrepr or "")
    if report.skipped and isinstance(report.longrepr, tuple):
        message = str(report.longrepr[2])
    first = (message.splitlines() or [""])[0]
    OUTCOMES[report.nodeid] = {"outcome": outcome, "message": first[:300]}


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr)
        OUTCOMES[report.nodeid] = {"outcome": "not collected", "message": message[-300:]}


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("LOCALRUN_VLLM_REPORT")
    if path:
        Path(path).write_text(json.dumps(OUTCOMES, indent=1, sort_keys=True), encoding="utf-8")
