"""The llama.cpp engine with one slot on real models: SmolLM2 and the generated tiny llama."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from localrun.engine.batch import BatchEngine
from localrun.engine.sampling.constraint import Constraint
from localrun.engine.types import LoadOptions, SamplingOptions
from localrun.errors import ContextOverflowError, InvalidGGUFError, ModelLoadError
from localrun.formats import template
from localrun.worker.grammars.format import constraint_for

from support.speculation import one_token_logits

pytestmark = pytest.mark.model

GREEDY = SamplingOptions(temperature=0, num_predict=48)


@pytest.fixture(scope="module")
def smollm2(smollm2_path: str) -> BatchEngine:
    model = BatchEngine(smollm2_path, LoadOptions(num_ctx=1024, num_thread=2), 1)
    yield model
    model.close()


def _chat_tokens(model: BatchEngine, messages: list[dict[str, str]]) -> list[int]:
    text = template.render(model.chat_template, messages, bos_token=model.bos_text)
    return model.tokenize(text, add_special=False, parse_special=True)


def _stops(model: BatchEngine) -> frozenset[int]:
    markers = template.end_of_turn_markers(model.chat_template)
    return frozenset(i for marker in markers for i in model.token_ids(marker))


def test_greedy_answer_is_sensible_and_deterministic(smollm2: BatchEngine) -> None:
    tokens = _chat_tokens(smollm2, [{"role": "user", "content": "What is the capital of France?"}])
    first = smollm2.generate(tokens, GREEDY, stop_tokens=_stops(smollm2))
    text = "".join(first)
    smollm2.reset()
    again = "".join(smollm2.generate(tokens, GREEDY, stop_tokens=_stops(smollm2)))
    assert text == again
    assert "Paris" in text
    assert first.done_reason == "stop"  # ended at <|im_end|>, which is not in the text
    assert "<|im_end|>" not in text
    assert first.timings.eval_tokens == len(first.tokens) > 3
    assert first.timings.prompt_tokens == len(tokens)


def test_the_gguf_chat_template_is_applied(smollm2: BatchEngine) -> None:
    assert smollm2.chat_template is not None and "<|im_start|>" in smollm2.chat_template
    text = template.render(smollm2.chat_template, [{"role": "user", "content": "hi"}])
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert _stops(smollm2) == frozenset({2})  # <|im_end|>


def test_a_follow_up_turn_evaluates_only_new_tokens(smollm2: BatchEngine) -> None:
    smollm2.reset()
    convo = [{"role": "user", "content": "Name a colour."}]
    first = smollm2.generate(_chat_tokens(smollm2, convo), GREEDY, stop_tokens=_stops(smollm2))
    answer = "".join(first)
    convo += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Another?"}]
    tokens = _chat_tokens(smollm2, convo)
    second = smollm2.generate(tokens, GREEDY, stop_tokens=_stops(smollm2))
    "".join(second)
    new = _chat_tokens(smollm2, [{"role": "user", "content": "Another?"}])
    # The cached prefix covers the whole first turn; only the closing of the answer and the new
    # user turn are evaluated.
    assert second.timings.cached_tokens >= len(tokens) - len(new)
    assert second.timings.prompt_tokens <= len(new) - 20 + 4


def test_multibyte_characters_come_out_whole(smollm2: BatchEngine) -> None:
    target = "日本語 café ☕ naïve"
    grammar = f"start: {json.dumps(target, ensure_ascii=False)}"
    gen = smollm2.generate(
        smollm2.tokenize("Say it:", add_special=False, parse_special=False),
        SamplingOptions(temperature=0, num_predict=64, constraint=grammar),
    )
    pieces = list(gen)
    assert "".join(pieces) == target
    assert all("\ufffd" not in p for p in pieces)
    token_pieces = [smollm2._weights.piece_bytes(t) for t in gen.tokens]
    assert any(_incomplete_utf8(b) for b in token_pieces), "a character is split over tokens"


def _incomplete_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_json_grammar_output_parses(smollm2: BatchEngine) -> None:
    tokens = _chat_tokens(
        smollm2, [{"role": "user", "content": "Give me a JSON object with a name and an age."}]
    )
    text = "".join(
        smollm2.generate(
            tokens,
            SamplingOptions(temperature=0, num_predict=200, constraint=constraint_for("json")),
        )
    )
    json.loads(text)


def test_masks_computed_while_the_batch_decodes_give_the_same_answers(
    smollm2: BatchEngine,
) -> None:
    import jsonschema

    schemas = [
        {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "days": {"type": "integer", "minimum": 1, "maximum": 9},
                "tags": {"type": "array", "items": {"enum": ["sun", "rain"]}, "maxItems": 3},
            },
            "required": ["city", "days", "tags"],
        },
        {"type": "array", "items": {"type": "number", "maximum": 5}, "minItems": 2, "maxItems": 6},
    ]
    asks = ["Plan a short trip as JSON.", "List some numbers as JSON."]
    answers: dict[bool, list[str]] = {}
    try:
        for ahead in (False, True):
            smollm2.masks_ahead = ahead
            answers[ahead] = []
            for schema, ask in zip(schemas, asks, strict=True):
                smollm2.reset()  # both cold: the prompt read the same way
                tokens = _chat_tokens(smollm2, [{"role": "user", "content": ask}])
                grammar = constraint_for(schema)
                options = SamplingOptions(temperature=0, num_predict=120, constraint=grammar)
                text = "".join(smollm2.generate(tokens, options, stop_tokens=_stops(smollm2)))
                jsonschema.validate(json.loads(text), schema)
                answers[ahead].append(text)
    finally:
        smollm2.masks_ahead = None
    assert smollm2._masks is not None  # the mask thread ran
    assert answers[True] == answers[False]


def _allowed(model: BatchEngine, grammar: str, prefix: str, piece: str) -> bool:
    """Whether `grammar`, having read `prefix`, lets the single token `piece` come next."""
    weights = model._weights
    constraint = Constraint(weights.guide(), grammar, weights.n_vocab)
    constraint.matcher.consume_tokens(
        model.tokenize(prefix, add_special=False, parse_special=False)
    )
    [token] = model.tokenize(piece, add_special=False, parse_special=False)
    return constraint.allows(token)


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param("json", id="json"),
        pytest.param({"type": "object", "properties": {"a": {"type": "string"}}}, id="schema"),
    ],
)
def test_json_constraints_refuse_raw_control_characters_in_strings(
    smollm2: BatchEngine, schema: Any
) -> None:
    text = constraint_for(schema)
    assert text is not None
    prefix = '{"a": "'
    assert _allowed(smollm2, text, prefix, "x")
    assert _allowed(smollm2, text, prefix, '"')
    for control in ("\n", "\t", "\r"):
        assert not _allowed(smollm2, text, prefix, control), repr(control)
    assert _allowed(smollm2, text, prefix + "\\", "n")  # the escaped form is fine


def test_cancel_stops_generation(smollm2: BatchEngine) -> None:
    cancel = threading.Event()
    gen = smollm2.generate(
        smollm2.tokenize("Once upon a time", add_special=False, parse_special=False),
        SamplingOptions(temperature=0, num_predict=500),
        cancel=cancel,
    )
    for count, _ in enumerate(gen):
        if count == 3:
            cancel.set()
    assert gen.done_reason == "cancelled"
    assert 3 <= gen.timings.eval_tokens <= 5


def test_num_predict_and_length(smollm2: BatchEngine) -> None:
    gen = smollm2.generate(
        smollm2.tokenize("Once upon a time", add_special=False, parse_special=False),
        SamplingOptions(temperature=0, num_predict=7),
    )
    list(gen)
    assert gen.done_reason == "length" and gen.timings.eval_tokens == 7


def test_prompt_longer_than_context(smollm2_path: str) -> None:
    model = BatchEngine(smollm2_path, LoadOptions(num_ctx=64, num_thread=2), 1)
    try:
        with pytest.raises(ContextOverflowError) as info:
            model.generate(list(range(100, 110 + model.n_ctx)), GREEDY)
        assert "num_ctx" in (info.value.hint or "")
    finally:
        model.close()


def test_lora_changes_logits_and_scale_zero_equals_base(tiny_model: Path, tiny_lora: Path) -> None:
    options = LoadOptions(num_ctx=128, num_thread=2)
    base = BatchEngine(str(tiny_model), options, 1)
    tokens = base.tokenize("the a b", add_special=True, parse_special=False)
    base_logits = list(one_token_logits(base, tokens))
    base.close()
    adapted = BatchEngine(
        str(tiny_model),
        LoadOptions(num_ctx=128, num_thread=2, adapters=((str(tiny_lora), 1.0),)),
        1,
    )
    lora_logits = list(one_token_logits(adapted, tokens))
    adapted.close()
    zero = BatchEngine(
        str(tiny_model),
        LoadOptions(num_ctx=128, num_thread=2, adapters=((str(tiny_lora), 0.0),)),
        1,
    )
    zero_logits = list(one_token_logits(zero, tokens))
    zero.close()
    assert max(abs(a - b) for a, b in zip(base_logits, lora_logits, strict=True)) > 0.1
    assert max(abs(a - b) for a, b in zip(base_logits, zero_logits, strict=True)) < 1e-4


def test_invalid_files_never_reach_llama_cpp(malformed: dict[str, Path]) -> None:
    for path in malformed.values():
        with pytest.raises(InvalidGGUFError):
            BatchEngine(str(path), LoadOptions(num_ctx=64), 1)


def test_a_well_formed_file_llama_cpp_refuses(tmp_path: Path, tiny_model: Path) -> None:
    # Every header rule holds, but a tensor llama.cpp needs is missing: its refusal is a
    # ModelLoadError, not a crash.
    from fuzzlib import layout as gguf_layout

    layout = gguf_layout.parse(tiny_model.read_bytes())
    layout.tensors = [t for t in layout.tensors if t.name != "blk.0.attn_q.weight"]
    path = tmp_path / "missing-tensor.gguf"
    path.write_bytes(gguf_layout.serialize(layout))
    with pytest.raises(ModelLoadError) as info:
        BatchEngine(str(path), LoadOptions(num_ctx=64), 1)
    assert "could not load" in info.value.message


def test_a_mismatched_adapter_is_refused(smollm2_path: str, tiny_lora: Path) -> None:
    with pytest.raises(ModelLoadError):
        BatchEngine(smollm2_path, LoadOptions(num_ctx=64, adapters=((str(tiny_lora), 1.0),)), 1)


def test_inconsistent_hyperparameters_are_refused_before_llama_cpp(
    tmp_path: Path, tiny_model: Path
) -> None:
    import gguf as gguf_lib

    path = tmp_path / "inconsistent.gguf"
    path.write_bytes(tiny_model.read_bytes())
    reader = gguf_lib.GGUFReader(str(path), "r+")
    reader.fields["llama.embedding_length"].parts[-1][0] = 96  # the tensors say 64
    del reader
    with pytest.raises(InvalidGGUFError) as info:
        BatchEngine(str(path), LoadOptions(num_ctx=64), 1)
    assert "token_embd.weight is 64 wide but llama.embedding_length is 96" in info.value.message


_LOAD_ORDER = """
import ctypes, json, sys

class Info(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_void_p), ("name", ctypes.c_char_p)]

names = []
Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(Info), ctypes.c_size_t, ctypes.c_void_p)

def record(info, size, data):
    names.append((info.contents.name or b"").decode())
    return 0

def link_map():
    names.clear()
    ctypes.CDLL(None).dl_iterate_phdr(Callback(record), None)
    return [n.rsplit("/", 1)[-1] for n in names if n]

def global_cxx():
    # a libstdc++ symbol in the global scope, where every library's lookup starts
    return hasattr(ctypes.CDLL(None), "_ZNSt6locale7classicEv")

before, global_before = link_map(), global_cxx()
import localrun.engine.batch
out = {"before": before, "after": link_map()}
print(json.dumps({**out, "global_before": global_before, "global_after": global_cxx()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the C++ runtime is libstdc++")
def test_the_cxx_runtime_loads_before_llama_cpp_libraries() -> None:
    """A CUDA build's libggml-cuda.so exports weak copies of C++ standard-library symbols; when
    it brings them into a Python process before libstdc++ does, libllama's std::regex binds to
    them and loading a BPE model crashes (seen on an H100 with CUDA 13). Importing the engine
    loads libstdc++ first: in the process's link map (dl_iterate_phdr walks it in load order)
    it comes before libllama and every ggml library, and its symbols are global."""
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_ORDER], capture_output=True, text=True, check=True
    ).stdout
    maps = json.loads(out)
    assert not any(n.startswith("libllama") for n in maps["before"])
    after = maps["after"]
    cxx = next(i for i, n in enumerate(after) if n.startswith("libstdc++"))
    native = [i for i, n in enumerate(after) if n.startswith(("libllama", "libggml"))]
    assert native, after
    assert cxx < min(native), after
    assert not maps["global_before"] and maps["global_after"]
